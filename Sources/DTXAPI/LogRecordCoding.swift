import DTXCore
import Foundation

/// How protocol log entries become DTXLog records: a small type number and a JSON
/// payload, so that `dtx wal dump` shows them readably and any tool can parse them.
/// One codec: written by `JSONWriter`, read by `JSONValue(parsing:)` (JSONDecoder took
/// five times as long per `begin` record, `dtx-bench codec`: a restart reads every record).
extension LogEntry {
    public enum RecordType: UInt16, CaseIterable, Sendable {
        case begin = 1
        case decision = 2
        case end = 3
        case open = 4
        case enlist = 5
        case resolution = 6
        case preCommit = 7
        case delegation = 8
        case submitted = 9
        case history = 10

        public var name: String {
            switch self {
            case .begin: return "begin"
            case .decision: return "decision"
            case .end: return "end"
            case .open: return "open"
            case .enlist: return "enlist"
            case .resolution: return "resolution"
            case .preCommit: return "pre_commit"
            case .delegation: return "delegation"
            case .submitted: return "submitted"
            case .history: return "history"
            }
        }
    }

    public struct DecodingProblem: Error, Equatable, CustomStringConvertible {
        public var description: String

        public init(description: String) {
            self.description = description
        }
    }

    /// The record: JSON with the gid first and the other keys sorted, written by hand
    /// (this is on every transaction's path); `init(type:payload:)` reads it back by hand,
    /// and `gid(type:payload:)` reads the gid alone from the front.
    public func encoded() -> (type: UInt16, payload: [UInt8]) {
        var json = JSONWriter()
        json.member("{\"gid\":", gid.rawValue)
        let type: RecordType
        switch self {
        case let .begin(_, proto, branches, service):
            type = .begin
            json.raw(",\"branches\":[")
            for (index, branch) in branches.enumerated() {
                if index > 0 { json.raw(",") }
                json.branch(branch)
            }
            json.member("],\"protocol\":", proto.rawValue)
            if let service { json.member(",\"service\":", service) }
        case let .decision(_, decision, targets):
            type = .decision
            json.member(",\"decision\":", decision.rawValue)
            json.member(",\"targets\":", .array(targets.map { .number(Double($0)) }))
        case .end:
            type = .end
        case let .open(_, proto):
            type = .open
            json.member(",\"protocol\":", proto.rawValue)
        case let .enlist(_, branch, spec):
            type = .enlist
            json.member(",\"branch\":", branch)
            json.raw(",\"spec\":")
            json.branch(spec)
        case let .resolution(_, decision, targets, reason, heuristic):
            type = .resolution
            json.member(",\"decision\":", decision.rawValue)
            json.member(",\"heuristic\":", heuristic)
            json.member(",\"reason\":", reason)
            json.member(",\"targets\":", .array(targets.map { .number(Double($0)) }))
        case .preCommit:
            type = .preCommit
        case let .delegation(_, agent, targets):
            type = .delegation
            json.member(",\"agent\":", agent)
            json.member(",\"targets\":", .array(targets.map { .number(Double($0)) }))
        case let .submitted(_, at, timeout):
            type = .submitted
            // Milliseconds are what a view shows.
            json.member(",\"at\":", .number((at.timeIntervalSince1970 * 1000).rounded(.down) / 1000))
            json.member(",\"timeout\":", .number(timeout.apiSeconds))
        case let .history(_, history):
            type = .history
            if !history.audit.isEmpty {
                json.raw(",\"audit\":[")
                for (index, entry) in history.audit.enumerated() {
                    json.member(index == 0 ? "{\"action\":" : ",{\"action\":", entry.action)
                    json.member(",\"at\":", .number(entry.at))
                    if let branch = entry.branch { json.member(",\"branch\":", branch) }
                    json.member(",\"reason\":", entry.reason)
                    json.member(",\"who\":", entry.who)
                    json.raw("}")
                }
                json.raw("]")
            }
            if let compensations = history.compensations {
                json.member(",\"compensations\":", .array(compensations.map { .number(Double($0)) }))
            }
            json.raw(",\"details\":[")
            for (index, branch) in history.branches.enumerated() {
                json.raw(index == 0 ? "{" : ",{")
                json.member("\"attempts\":", branch.attempts)
                if let lastError = branch.lastError { json.member(",\"lastError\":", lastError) }
                if let result = branch.result { json.member(",\"result\":", result) }
                json.raw("}")
            }
            json.raw("]")
            if let error = history.error { json.member(",\"error\":", error) }
            json.raw(",\"timeline\":[")
            for (index, event) in history.timeline.enumerated() {
                json.member(index == 0 ? "{\"at\":" : ",{\"at\":", .number(event.at))
                if let branch = event.branch { json.member(",\"branch\":", branch) }
                if let detail = event.detail { json.member(",\"detail\":", detail) }
                json.member(",\"event\":", event.event)
                json.raw("}")
            }
            json.member("],\"updatedAt\":", .number(history.updatedAt))
        }
        json.raw("}")
        return (type.rawValue, json.bytes)
    }

    /// The gid of the transaction a record is about, read from the front of the record
    /// without decoding the rest: a checkpoint asks it of every record it may copy forward.
    public static func gid(type: UInt16, payload: [UInt8]) throws -> GlobalTransactionID {
        guard let recordType = RecordType(rawValue: type) else {
            throw DecodingProblem(description: "unknown log record type \(type)")
        }
        let prefix = Array(#"{"gid":""#.utf8)
        guard payload.starts(with: prefix), let close = payload[prefix.count...].firstIndex(of: UInt8(ascii: "\"")) else {
            throw DecodingProblem(description: "unreadable \(recordType.name) record: it does not start with its gid")
        }
        do {
            return try GlobalTransactionID(validating: String(decoding: payload[prefix.count..<close], as: UTF8.self))
        } catch {
            throw DecodingProblem(description: "\(recordType.name) record: \(error)")
        }
    }

    public init(type: UInt16, payload: [UInt8]) throws(DecodingProblem) {
        guard let recordType = RecordType(rawValue: type) else {
            throw DecodingProblem(description: "unknown log record type \(type)")
        }
        let document: JSONValue
        do {
            document = try JSONValue(parsing: payload)
        } catch {
            throw DecodingProblem(description: "unreadable \(recordType.name) record: \(error)")
        }
        do {
            self = try Self.read(recordType, document)
        } catch let lacking as Lacking {
            throw DecodingProblem(description: "\(recordType.name) record of \(lacking.gid) lacks its \(lacking.what)")
        } catch {
            throw DecodingProblem(description: "unreadable \(recordType.name) record: \(error)")
        }
    }

    /// A record without a member its type needs.
    private struct Lacking: Error {
        var gid: GlobalTransactionID
        var what: String
    }

    private static func read(_ recordType: RecordType, _ document: JSONValue) throws -> LogEntry {
        let record = try Members(document, at: "")
        guard let text = try record.string("gid", required: true), let gid = try? GlobalTransactionID(validating: text) else {
            throw UnreadableJSON(message: "gid must be a transaction id")
        }
        func lacking(_ what: String) -> Lacking { Lacking(gid: gid, what: what) }
        func integers(_ key: String) throws(UnreadableJSON) -> [Int]? {
            try record.array(key).map { items throws(UnreadableJSON) in
                try items.enumerated().map { (index, item) throws(UnreadableJSON) -> Int in
                    guard let number = Members.integer(item) else { throw record.wrong("\(key)[\(index)]", "an integer") }
                    return number
                }
            }
        }
        func decision() throws(UnreadableJSON) -> Decision? {
            try record.string("decision").map { word throws(UnreadableJSON) in
                guard let decision = Decision(rawValue: word) else { throw record.wrong("decision", "commit or abort") }
                return decision
            }
        }
        func transactionProtocol() throws(UnreadableJSON) -> TransactionProtocol? {
            try record.string("protocol").map { name throws(UnreadableJSON) in
                guard let proto = TransactionProtocol(rawValue: name) else { throw record.wrong("protocol", "a protocol") }
                return proto
            }
        }
        switch recordType {
        case .begin:
            guard let proto = try transactionProtocol(), let items = try record.array("branches"), !items.isEmpty else { throw lacking("protocol or branches") }
            var branches: [BranchSpec] = []
            for (index, item) in items.enumerated() { branches.append(try BranchSpec(json: item, at: "branches[\(index)]")) }
            let service = try record.string("service")
            if proto == .msg, service == nil { throw lacking("service") }
            return .begin(gid: gid, protocol: proto, branches: branches, service: service)
        case .decision:
            guard let decision = try decision(), let targets = try integers("targets") else { throw lacking("decision or targets") }
            return .decision(gid: gid, decision, targets: targets)
        case .end:
            return .end(gid: gid)
        case .open:
            guard let proto = try transactionProtocol() else { throw lacking("protocol") }
            return .open(gid: gid, protocol: proto)
        case .enlist:
            guard let branch = try record.integer("branch"), let spec = try record.object("spec") else { throw lacking("branch or spec") }
            return .enlist(gid: gid, branch: branch, spec: try BranchSpec(json: spec, at: "spec"))
        case .resolution:
            guard let decision = try decision(), let targets = try integers("targets"), let reason = try record.string("reason"),
                  let heuristic = try record.bool("heuristic") else {
                throw lacking("decision, targets, reason or heuristic flag")
            }
            return .resolution(gid: gid, decision, targets: targets, reason: reason, heuristic: heuristic)
        case .preCommit:
            return .preCommit(gid: gid)
        case .delegation:
            guard let agent = try record.integer("agent"), let targets = try integers("targets") else { throw lacking("agent or targets") }
            return .delegation(gid: gid, agent: agent, targets: targets)
        case .submitted:
            guard let at = try record.number("at"), let timeout = try record.number("timeout") else { throw lacking("time or timeout") }
            return .submitted(gid: gid, at: Date(timeIntervalSince1970: at), timeout: Duration(apiSeconds: timeout))
        case .history:
            guard let details = try record.array("details"), let timeline = try record.array("timeline"), let updatedAt = try record.number("updatedAt") else {
                throw lacking("details, timeline or update time")
            }
            var history = TransactionHistory(branches: [], timeline: [], error: try record.string("error"), updatedAt: Date(timeIntervalSince1970: updatedAt),
                                             compensations: try integers("compensations"))
            history.updatedAt = updatedAt
            for (index, detail) in details.enumerated() {
                let fields = try Members(detail, at: "details[\(index)]")
                guard let attempts = try fields.integer("attempts") else { throw lacking("details[\(index)].attempts") }
                history.branches.append(TransactionHistory.BranchDetail(attempts: attempts, lastError: try fields.string("lastError"),
                                                                        result: fields.members["result"].flatMap { $0 == .null ? nil : $0 }))
            }
            for (index, entry) in (try record.array("audit") ?? []).enumerated() {
                let fields = try Members(entry, at: "audit[\(index)]")
                guard let at = try fields.number("at"), let who = try fields.string("who"), let action = try fields.string("action"),
                      let reason = try fields.string("reason") else { throw lacking("audit[\(index)].at, who, action or reason") }
                var audited = TransactionHistory.AuditEntry(at: Date(timeIntervalSince1970: at), who: who, action: action, reason: reason, branch: try fields.integer("branch"))
                audited.at = at
                history.audit.append(audited)
            }
            for (index, entry) in timeline.enumerated() {
                let fields = try Members(entry, at: "timeline[\(index)]")
                guard let at = try fields.number("at"), let event = try fields.string("event") else { throw lacking("timeline[\(index)].at or event") }
                var recorded = TransactionHistory.Event(at: Date(timeIntervalSince1970: at), event: event, branch: try fields.integer("branch"), detail: try fields.string("detail"))
                recorded.at = at
                history.timeline.append(recorded)
            }
            return .history(gid: gid, history)
        }
    }
}
