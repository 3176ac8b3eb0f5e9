import Foundation

/// How protocol log entries become DTXLog records: a small type number and a JSON
/// payload, so that `dtx wal dump` shows them readably and any tool can parse them.
extension LogEntry {
    public enum RecordType: UInt16, CaseIterable, Sendable {
        case begin = 1
        case decision = 2
        case end = 3

        public var name: String {
            switch self {
            case .begin: return "begin"
            case .decision: return "decision"
            case .end: return "end"
            }
        }
    }

    public struct DecodingProblem: Error, Equatable, CustomStringConvertible {
        public var description: String

        public init(description: String) {
            self.description = description
        }
    }

    public var gid: GlobalTransactionID {
        switch self {
        case let .begin(gid, _, _), let .decision(gid, _, _), let .end(gid): return gid
        }
    }

    private struct Body: Codable {
        var gid: GlobalTransactionID
        var `protocol`: TransactionProtocol?
        var branches: [BranchSpec]?
        var decision: Decision?
        var targets: [BranchID]?
    }

    public func encoded() -> (type: UInt16, payload: [UInt8]) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let (type, body): (RecordType, Body)
        switch self {
        case let .begin(gid, proto, branches):
            (type, body) = (.begin, Body(gid: gid, protocol: proto, branches: branches))
        case let .decision(gid, decision, targets):
            (type, body) = (.decision, Body(gid: gid, decision: decision, targets: targets))
        case let .end(gid):
            (type, body) = (.end, Body(gid: gid))
        }
        // Encoding plain Codable values into JSON cannot fail.
        return (type.rawValue, Array(try! encoder.encode(body)))
    }

    public init(type: UInt16, payload: [UInt8]) throws {
        guard let recordType = RecordType(rawValue: type) else {
            throw DecodingProblem(description: "unknown log record type \(type)")
        }
        let body: Body
        do {
            body = try JSONDecoder().decode(Body.self, from: Data(payload))
        } catch {
            throw DecodingProblem(description: "unreadable \(recordType.name) record: \(error)")
        }
        switch recordType {
        case .begin:
            guard let proto = body.protocol, let branches = body.branches, !branches.isEmpty else {
                throw DecodingProblem(description: "begin record of \(body.gid) lacks its protocol or branches")
            }
            self = .begin(gid: body.gid, protocol: proto, branches: branches)
        case .decision:
            guard let decision = body.decision, let targets = body.targets else {
                throw DecodingProblem(description: "decision record of \(body.gid) lacks its decision or targets")
            }
            self = .decision(gid: body.gid, decision, targets: targets)
        case .end:
            self = .end(gid: body.gid)
        }
    }
}

/// Folds log entries, in LSN order, into what recovery must do for each transaction
/// that has not ended. Also answers a checkpoint's question: is this record still live?
public struct TransactionLogReplay: Sendable {
    public struct Unfinished: Sendable, Equatable {
        public var gid: GlobalTransactionID
        public var `protocol`: TransactionProtocol
        public var branches: [BranchSpec]
        /// nil: begun but undecided.
        public var decision: Decision?
        public var targets: [BranchID]
    }

    public private(set) var unfinished: [GlobalTransactionID: Unfinished] = [:]
    /// Gids that reached `end` (kept so that a late duplicate record is recognised).
    public private(set) var ended: Set<GlobalTransactionID> = []

    public init() {}

    public mutating func apply(_ entry: LogEntry) {
        switch entry {
        case let .begin(gid, proto, branches):
            guard !ended.contains(gid), unfinished[gid] == nil else { return }
            unfinished[gid] = Unfinished(gid: gid, protocol: proto, branches: branches, decision: nil, targets: [])
        case let .decision(gid, decision, targets):
            guard unfinished[gid] != nil else { return }
            unfinished[gid]!.decision = decision
            unfinished[gid]!.targets = targets
        case let .end(gid):
            unfinished[gid] = nil
            ended.insert(gid)
        }
    }

    /// A record is live while its transaction has not ended.
    public func isLive(_ entry: LogEntry) -> Bool {
        !ended.contains(entry.gid)
    }
}
