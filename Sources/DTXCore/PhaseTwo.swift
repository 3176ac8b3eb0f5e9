/// The words a protocol carries a decision in: the message that delivers it and the
/// states a branch and the transaction pass through on the way.
struct DecisionWords: Sendable {
    var message: ParticipantMessage
    /// A branch that has been sent the decision and not acknowledged it.
    var pending: BranchState
    /// A branch that acknowledged it.
    var done: BranchState
    /// The transaction while the decision is being delivered.
    var status: TransactionStatus
}

/// A protocol whose second phase delivers one decision to its branches and retries until
/// every target acknowledges: 2PC, 3PC and TCC. They differ only in `DecisionWords`, so
/// delivery, aborting before a decision, an operator's override and the recovery of a
/// logged decision are written once, here.
protocol DecisionDelivering {
    static func words(for decision: Decision) -> DecisionWords
    /// A branch sent the round's work message (PREPARE, TRY, CANCOMMIT) and not yet answered.
    static var working: BranchState { get }
    var gid: GlobalTransactionID { get }
    var branches: [Branch] { get set }
    /// The branches the decision is delivered to.
    var targets: Set<BranchID> { get set }
    var status: TransactionStatus { get set }
    var heuristic: Bool { get set }
}

extension DecisionDelivering {
    /// Sends `decision` to `ids`, each pending again with a fresh attempt count (and, when
    /// `resending`, its retry timer and last error cleared). With nobody to tell, the
    /// transaction ends now.
    mutating func deliver(_ decision: Decision, to ids: [BranchID], resending: Bool = false) -> [TransactionAction] {
        let words = Self.words(for: decision)
        status = words.status
        var actions: [TransactionAction] = []
        for id in ids {
            if resending {
                actions.append(.cancel(.retry(id)))
                branches[id].lastError = nil
            }
            branches[id].state = words.pending
            branches[id].attempts = 1
            actions.append(.send(words.message, to: id))
        }
        return ids.isEmpty ? actions + end(decision) : actions
    }

    /// Sends `message` to every branch (but `skipped`), each now `state` with a fresh
    /// attempt count: the round before a decision (PREPARE, TRY, CANCOMMIT, 3PC's PRECOMMIT).
    mutating func sendToEveryBranch(_ message: ParticipantMessage, as state: BranchState, except skipped: BranchID? = nil) -> [TransactionAction] {
        branches.indices.filter { $0 != skipped }.map { id in
            branches[id].state = state
            branches[id].attempts = 1
            return .send(message, to: id)
        }
    }

    /// Aborts before any decision: `ids` are told to abort; `reason` (an application's,
    /// an operator's) is logged with the decision as a non-heuristic `resolution`.
    mutating func abort(_ ids: [BranchID], reason: String?, forced: Bool) -> [TransactionAction] {
        targets = Set(ids)
        let entry: LogEntry = reason.map { .resolution(gid: gid, .abort, targets: ids, reason: $0, heuristic: false) }
            ?? .decision(gid: gid, .abort, targets: ids)
        return [.cancel(.phaseOne)] + stopResending(ids) + [.log(entry, forced: forced), .decided(.abort)] + deliver(.abort, to: ids)
    }

    /// A work message that never reached its participant waits to be sent again (see
    /// `resend`); once the round ends, its retry timer is cancelled.
    private func stopResending(_ ids: [BranchID]) -> [TransactionAction] {
        guard status != .created else { return [] }  // a restart: no timer was armed
        return ids.filter { branches[$0].state == Self.working && branches[$0].attempts > 1 }.map { .cancel(.retry($0)) }
    }

    /// The round's work message never reached branch `id` (no connection was made): it is
    /// sent again after the engine's backoff, as long as the round lasts (the phase-one
    /// timer ends it).
    mutating func resend(_ id: BranchID, error: String) -> [TransactionAction] {
        guard branches.indices.contains(id), branches[id].state == Self.working else { return [] }
        return retry(id, error: error)
    }

    /// An operator reverses a logged decision: the branches that have not acknowledged
    /// the old one get the new one, and the transaction is marked heuristic.
    mutating func override(_ decision: Decision, reason: String) -> [TransactionAction] {
        let pending = [Self.words(for: .commit).pending, Self.words(for: .abort).pending]
        let unacknowledged = targets.filter { pending.contains(branches[$0].state) }.sorted()
        heuristic = true
        targets = Set(unacknowledged)
        return [.log(.resolution(gid: gid, decision, targets: unacknowledged, reason: reason, heuristic: true), forced: true), .decided(decision)]
            + deliver(decision, to: unacknowledged, resending: true)
    }

    /// Resumes a decision the log holds: its targets are told again; the other branches
    /// had ended before it was logged, as `others`.
    mutating func resume(_ decision: Decision, targets logged: [BranchID], heuristic wasHeuristic: Bool, others: BranchState) -> [TransactionAction] {
        heuristic = wasHeuristic
        let known = logged.filter { branches.indices.contains($0) }.sorted()
        targets = Set(known)
        for id in branches.indices where !targets.contains(id) {
            branches[id].state = others
        }
        return [.decided(decision)] + deliver(decision, to: known)
    }

    /// Logs `end` once every target has acknowledged the decision.
    mutating func finishIfDone(after actions: [TransactionAction]) -> [TransactionAction] {
        let done = [Self.words(for: .commit).done, Self.words(for: .abort).done]
        guard targets.allSatisfy({ done.contains(branches[$0].state) }) else { return actions }
        return actions + end(status == Self.words(for: .commit).status ? .commit : .abort)
    }

    /// The decision being delivered, nil before there is one or once delivered.
    private var delivering: Decision? {
        status == Self.words(for: .commit).status ? .commit : status == Self.words(for: .abort).status ? .abort : nil
    }

    /// Why branch `id` cannot be resolved by hand now, or nil: only a branch still owed the
    /// decision being delivered can be.
    func handResolutionRejection(_ id: BranchID) -> String? {
        guard branches.indices.contains(id) else { return "the transaction has no branch \(id)" }
        guard let decision = delivering else {
            return "the transaction is \(status.rawValue): a branch is resolved by hand only while a decision is being delivered; to end an undecided transaction, force its outcome (dtx abort or dtx commit with --reason)"
        }
        let owed = Self.words(for: decision)
        guard branches[id].state == owed.pending else {
            return "branch \(id) is \(branches[id].state.rawValue): it is owed nothing (only a branch still being sent \(owed.message.rawValue) can be resolved by hand)"
        }
        return nil
    }

    /// An operator settled branch `id` outside dtx as `outcome`: it is owed nothing more.
    /// The opposite of the decision makes the transaction heuristic. Forced: a restart
    /// must not send the decision to that branch again (the record names the branches
    /// still owed it).
    mutating func resolveByHand(_ id: BranchID, as outcome: Decision, reason: String) -> [TransactionAction] {
        guard handResolutionRejection(id) == nil, let decision = delivering else { return [] }
        branches[id].state = Self.words(for: outcome).done
        branches[id].lastError = nil
        if outcome != decision { heuristic = true }
        let owed = targets.filter { branches[$0].state == Self.words(for: decision).pending }.sorted()
        let record = LogEntry.resolution(gid: gid, decision, targets: owed, reason: "branch \(id) resolved by hand as \(outcome.outcome): \(reason)",
                                         heuristic: heuristic)
        return finishIfDone(after: [.cancel(.retry(id)), .log(record, forced: true)])
    }

    /// A failed delivery: counted, and retried after the engine's backoff.
    mutating func retry(_ id: BranchID, error: String) -> [TransactionAction] {
        branches[id].lastError = error
        branches[id].attempts += 1
        return [.schedule(.retry(id), attempt: branches[id].attempts - 1)]
    }

    private mutating func end(_ decision: Decision) -> [TransactionAction] {
        status = decision == .commit ? .committed : .aborted
        return [.log(.end(gid: gid), forced: false), .finish(status)]
    }
}
