import Foundation

/// What the log's records mean to recovery and to crash tests. How they are written
/// and read (a type number and a JSON payload) is DTXAPI's `LogEntry.encoded()` and
/// `LogEntry(type:payload:)`.
extension LogEntry {
    public var gid: GlobalTransactionID {
        switch self {
        case let .begin(gid, _, _, _), let .decision(gid, _, _), let .end(gid), let .open(gid, _),
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
        /// Msg: the participant dtxd checks back with (from `begin`).
        public var service: String?
        /// From its `submitted` record; nil when that lazy record did not reach the disk.
        public var createdAt: Date?
        public var timeout: Duration?
        /// From its latest `history` record, logged lazily at its decision and when it finished.
        public var history: TransactionHistory?

        /// An ended transaction's outcome: every ending logs its decision before its `end`.
        public var endedDecision: Decision { decision ?? .abort }

        /// An ended transaction's status.
        public var endedStatus: TransactionStatus { endedDecision == .commit ? .committed : .aborted }

        /// An ended transaction's branches: each in the state `state(branch, decision)`
        /// says (the protocol's rule).
        public func endedBranches(_ branches: [Branch], _ state: (BranchID, Decision) -> BranchState) -> [Branch] {
            var ended = branches
            for id in ended.indices { ended[id].state = state(id, endedDecision) }
            return ended
        }

        /// The branches with the attempts, last errors and results the history kept (each
        /// machine's `recovering` applies them, so that a view after a restart shows them).
        public func withDetails(_ branches: [Branch]) -> [Branch] {
            guard let details = history?.branches, details.count == branches.count else { return branches }
            var restored = branches
            for (id, detail) in details.enumerated() {
                restored[id].attempts = detail.attempts
                restored[id].lastError = detail.lastError
                restored[id].result = detail.result
            }
            return restored
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
        case let .begin(gid, proto, branches, service):
            insert(Replayed(gid: gid, protocol: proto, branches: branches, interactive: false, decision: nil, targets: [], heuristic: false, ended: false,
                            lastAgent: proto == .twoPhaseCommit && branches.count == 1 ? 0 : nil, service: service))
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
