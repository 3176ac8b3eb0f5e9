import Foundation

/// How protocol log entries become DTXLog records: a small type number and a JSON
/// payload, so that `dtx wal dump` shows them readably and any tool can parse them.
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

    public var gid: GlobalTransactionID {
        switch self {
        case let .begin(gid, _, _), let .decision(gid, _, _), let .end(gid), let .open(gid, _),
             let .enlist(gid, _, _), let .resolution(gid, _, _, _, _), let .preCommit(gid), let .delegation(gid, _, _),
             let .submitted(gid, _, _), let .history(gid, _):
            return gid
        }
    }

    /// Once durable, a restart finds the transaction's outcome in this record, or (a
    /// delegation) the branch that holds it: a decision, a resolution or a delegation.
    /// Any other record leaves an outcome to be found elsewhere or presumed.
    public var fixesTheOutcome: Bool {
        switch self {
        case .decision, .resolution, .delegation: return true
        case .begin, .end, .open, .enlist, .preCommit, .submitted, .history: return false
        }
    }

    /// The forced records a crash test stops just before or just after (dtxd's failpoints
    /// `before-<name>` and `after-<name>`): the points where what a restart finds changes.
    public enum Milestone: String, Sendable, CaseIterable {
        case commitDecision = "commit-decision"
        case abortDecision = "abort-decision"
        case preCommitDecision = "pre-commit-decision"
        case delegation
    }

    /// The milestone this record is when logged `forced`, if any.
    public func milestone(forced: Bool) -> Milestone? {
        guard forced else { return nil }
        switch self {
        case .decision(_, .commit, _): return .commitDecision
        case .decision(_, .abort, _), .resolution(_, .abort, _, _, _): return .abortDecision
        case .preCommit: return .preCommitDecision
        case .delegation: return .delegation
        case .begin, .end, .open, .enlist, .resolution, .submitted, .history: return nil
        }
    }

    private struct Body: Codable {
        var gid: GlobalTransactionID
        var `protocol`: TransactionProtocol?
        var branches: [BranchSpec]?
        var decision: Decision?
        var targets: [BranchID]?
        var branch: BranchID?
        var spec: BranchSpec?
        var reason: String?
        var heuristic: Bool?
        var agent: BranchID?
        /// Seconds since 1970.
        var at: Double?
        var timeout: Double?
        // history
        var details: [TransactionHistory.BranchDetail]?
        var timeline: [TransactionHistory.Event]?
        var error: String?
        var updatedAt: Double?
        var compensations: [BranchID]?
    }

    /// The record: JSON with the gid first and the other keys sorted, written by hand
    /// (this is on every transaction's path); `init(type:payload:)` reads it back through
    /// Codable, and `gid(type:payload:)` reads the gid alone from the front.
    public func encoded() -> (type: UInt16, payload: [UInt8]) {
        var json = JSONWriter()
        json.member("{\"gid\":", gid.rawValue)
        let type: RecordType
        switch self {
        case let .begin(_, proto, branches):
            type = .begin
            json.raw(",\"branches\":[")
            for (index, branch) in branches.enumerated() {
                if index > 0 { json.raw(",") }
                json.branch(branch)
            }
            json.member("],\"protocol\":", proto.rawValue)
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
        func missing(_ what: String) -> DecodingProblem {
            DecodingProblem(description: "\(recordType.name) record of \(body.gid) lacks its \(what)")
        }
        switch recordType {
        case .begin:
            guard let proto = body.protocol, let branches = body.branches, !branches.isEmpty else { throw missing("protocol or branches") }
            self = .begin(gid: body.gid, protocol: proto, branches: branches)
        case .decision:
            guard let decision = body.decision, let targets = body.targets else { throw missing("decision or targets") }
            self = .decision(gid: body.gid, decision, targets: targets)
        case .end:
            self = .end(gid: body.gid)
        case .open:
            guard let proto = body.protocol else { throw missing("protocol") }
            self = .open(gid: body.gid, protocol: proto)
        case .enlist:
            guard let branch = body.branch, let spec = body.spec else { throw missing("branch or spec") }
            self = .enlist(gid: body.gid, branch: branch, spec: spec)
        case .resolution:
            guard let decision = body.decision, let targets = body.targets, let reason = body.reason, let heuristic = body.heuristic else {
                throw missing("decision, targets, reason or heuristic flag")
            }
            self = .resolution(gid: body.gid, decision, targets: targets, reason: reason, heuristic: heuristic)
        case .preCommit:
            self = .preCommit(gid: body.gid)
        case .delegation:
            guard let agent = body.agent, let targets = body.targets else { throw missing("agent or targets") }
            self = .delegation(gid: body.gid, agent: agent, targets: targets)
        case .submitted:
            guard let at = body.at, let timeout = body.timeout else { throw missing("time or timeout") }
            self = .submitted(gid: body.gid, at: Date(timeIntervalSince1970: at), timeout: Duration(apiSeconds: timeout))
        case .history:
            guard let details = body.details, let timeline = body.timeline, let updatedAt = body.updatedAt else { throw missing("details, timeline or update time") }
            var history = TransactionHistory(branches: details, timeline: [], error: body.error, updatedAt: Date(timeIntervalSince1970: updatedAt), compensations: body.compensations)
            history.timeline = timeline
            self = .history(gid: body.gid, history)
        }
    }
}

/// Folds log entries, in LSN order, into what the log says about each transaction:
/// what recovery must do for those that have not ended, and what is known of those
/// that have. Also answers a checkpoint's question: is this record still live?
public struct TransactionLogReplay: Sendable {
    public struct Replayed: Sendable, Equatable {
        public var gid: GlobalTransactionID
        public var `protocol`: TransactionProtocol
        public var branches: [BranchSpec]
        public var interactive: Bool
        /// nil: begun but undecided.
        public var decision: Decision?
        /// Branches phase two must reach.
        public var targets: [BranchID]
        /// The latest operator reason, when an operator forced the outcome.
        public var reason: String?
        public var heuristic: Bool
        public var ended: Bool
        /// 3PC: the pre-commit is logged (PreCommit may have reached participants).
        public var preCommitted = false
        /// 2PC: the branch that commits in one phase and so decides: a last agent once its
        /// delegation is logged; the only branch of a submitted single-branch transaction
        /// from its `begin` (nothing else can have prepared, so no delegation is logged).
        public var lastAgent: BranchID?
        /// From its `submitted` record; nil when that lazy record did not reach the disk.
        public var createdAt: Date?
        public var timeout: Duration?
        /// From its `history` record, logged lazily when it finished.
        public var history: TransactionHistory?

        /// An ended transaction's outcome: every ending logs its decision before its `end`.
        public var endedDecision: Decision { decision ?? .abort }

        /// An ended transaction's status.
        public var endedStatus: TransactionStatus { endedDecision == .commit ? .committed : .aborted }

        /// An ended transaction's branches: each in the state `state(branch, decision)`
        /// says (the protocol's rule), with the attempts, last errors and results the
        /// history kept.
        public func endedBranches(_ branches: [Branch], _ state: (BranchID, Decision) -> BranchState) -> [Branch] {
            var ended = branches
            for id in ended.indices { ended[id].state = state(id, endedDecision) }
            guard let details = history?.branches, details.count == ended.count else { return ended }
            for (id, detail) in details.enumerated() {
                ended[id].attempts = detail.attempts
                ended[id].lastError = detail.lastError
                ended[id].result = detail.result
            }
            return ended
        }
    }

    /// Kept for the checkpoint's and the history's sake, in the order they appeared.
    public private(set) var transactions: [GlobalTransactionID: Replayed] = [:]
    public private(set) var order: [GlobalTransactionID] = []
    /// `submitted` records ahead of their transaction's first record (the engine logs
    /// it before starting the machine).
    private var submissions: [GlobalTransactionID: (at: Date, timeout: Duration)] = [:]

    public init() {}

    /// Transactions that have not ended: recovery drives each to its end.
    public var unfinished: [GlobalTransactionID: Replayed] {
        transactions.filter { !$0.value.ended }
    }

    public mutating func apply(_ entry: LogEntry) {
        switch entry {
        case let .begin(gid, proto, branches):
            insert(Replayed(gid: gid, protocol: proto, branches: branches, interactive: false, decision: nil, targets: [], heuristic: false, ended: false,
                            lastAgent: proto == .twoPhaseCommit && branches.count == 1 ? 0 : nil))
        case let .open(gid, proto):
            insert(Replayed(gid: gid, protocol: proto, branches: [], interactive: true, decision: nil, targets: [], heuristic: false, ended: false))
        case let .enlist(gid, branch, spec):
            // Enlistments are logged in branch order; a duplicate (checkpoint copy) is skipped.
            guard var replayed = transactions[gid], !replayed.ended, branch == replayed.branches.count else { return }
            replayed.branches.append(spec)
            transactions[gid] = replayed
        case let .decision(gid, decision, targets):
            guard var replayed = transactions[gid], !replayed.ended else { return }
            replayed.decision = decision
            replayed.targets = targets
            transactions[gid] = replayed
        case let .resolution(gid, decision, targets, reason, heuristic):
            guard var replayed = transactions[gid], !replayed.ended else { return }
            replayed.decision = decision
            replayed.targets = targets
            replayed.reason = reason
            replayed.heuristic = replayed.heuristic || heuristic
            transactions[gid] = replayed
        case let .preCommit(gid):
            guard var replayed = transactions[gid], !replayed.ended else { return }
            replayed.preCommitted = true
            transactions[gid] = replayed
        case let .delegation(gid, agent, targets):
            guard var replayed = transactions[gid], !replayed.ended, replayed.decision == nil else { return }
            replayed.lastAgent = agent
            replayed.targets = targets
            transactions[gid] = replayed
        case let .end(gid):
            transactions[gid]?.ended = true
        case let .history(gid, history):
            transactions[gid]?.history = history
        case let .submitted(gid, at, timeout):
            if transactions[gid] == nil {
                submissions[gid] = (at, timeout)
            } else if transactions[gid]?.createdAt == nil {
                transactions[gid]?.createdAt = at
                transactions[gid]?.timeout = timeout
            }
        }
    }

    private mutating func insert(_ replayed: Replayed) {
        guard transactions[replayed.gid] == nil else { return }  // a checkpoint copy
        var replayed = replayed
        if let submission = submissions.removeValue(forKey: replayed.gid) {
            replayed.createdAt = submission.at
            replayed.timeout = submission.timeout
        }
        transactions[replayed.gid] = replayed
        order.append(replayed.gid)
    }
}
