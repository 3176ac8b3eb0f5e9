/// Try / Confirm / Cancel, as a pure state machine.
///
/// Coordinator log writes: `begin` **forced** (every Try has side effects, so the
/// transaction must survive a crash) → TRY to every branch in parallel → all done:
/// `decision(commit)` **forced** → CONFIRM each, retried until done → `end` (lazy).
/// Any Try refused or failed, or the transaction timeout (`phaseOne`) before
/// every Try answered: `decision(abort)` **forced** → CANCEL to every branch — also those
/// whose Try was refused or never answered (the participant's barrier makes a Cancel
/// without Try a no-op and a Try after its Cancel a no-op) — retried until done → `end`.
/// A Try that certainly never reached its participant (no connection was made) is sent
/// again with backoff until the timeout; any other failure of a Try cancels the transaction.
///
/// Interactive (XA style): `open` **forced** → services enlist their branches and run
/// their Trys, in either order (`enlist`, **forced**: the coordinator owes the branch a
/// Confirm or a Cancel; the kit enlists first, and the barrier makes a Cancel that
/// overtakes its Try a no-op and the late Try refused) → the application's commit
/// confirms them all; its abort, or the timeout, cancels them all.
///
/// An operator may force an outcome with a reason, as in 2PC: cancel of an undecided
/// transaction is an ordinary abort; the opposite of a logged decision is a heuristic
/// override sent to the branches that have not acknowledged yet; forcing the decision
/// already taken is refused. Recovery: undecided → cancel every branch (presumed
/// cancel); decided → resume Confirm or Cancel on the logged targets.
public struct TryConfirmCancel: TransactionStateMachine {
    public enum Event: Sendable, Equatable {
        case start
        /// Interactive: open the transaction for enlistment.
        case open
        /// Interactive: a service enlisted a branch whose Try it has run.
        case enlisted(BranchSpec)
        /// Interactive: the application asks to confirm.
        case commitRequested
        /// The application or an operator asks to cancel.
        case abortRequested(reason: String)
        /// An operator forces the outcome (see `forceRejection`).
        case forced(Decision, reason: String)
        /// An operator settled a branch outside dtx (see `CommonEvent.resolvedByHand`).
        case resolvedByHand(BranchID, Decision, reason: String)
        /// A Try succeeded, with the participant's result.
        case tried(BranchID, result: JSONValue?)
        /// A Try was refused (409): a definitive business failure.
        case tryRefused(BranchID, code: String, message: String)
        case confirmed(BranchID, result: JSONValue?)
        case cancelled(BranchID)
        /// `message` could not be delivered or got no usable answer (for Confirm and
        /// Cancel, a refusal counts as this too: they are retried until done).
        case deliveryFailed(BranchID, ParticipantMessage, String)
        /// A Try certainly never reached the participant: it may be sent again.
        case notDelivered(BranchID, String)
        case timedOut(TimerID)
        /// Rebuild after a restart from what the log holds for this transaction.
        case recovered(Recovered)
    }

    /// What replaying the log found: `undecided` (presumed cancel) or a decision.
    public typealias Recovered = TwoPhaseCommit.Recovered

    public let gid: GlobalTransactionID
    public let interactive: Bool
    public internal(set) var status: TransactionStatus = .created
    public var displayStatus: TransactionStatus { status == .created ? (interactive ? .active : .trying) : status }
    public internal(set) var branches: [Branch]
    /// Branches that must receive the decision (Confirm or Cancel) and acknowledge it.
    public internal(set) var targets: Set<BranchID> = []
    /// An operator overrode a logged decision: branches may have ended differently.
    public internal(set) var heuristic = false

    /// A submitted transaction: the coordinator runs Try, then Confirm or Cancel.
    public init(gid: GlobalTransactionID, branches: [BranchSpec]) {
        precondition(!branches.isEmpty, "a transaction has at least one branch")
        self.gid = gid
        self.interactive = false
        self.branches = branches.enumerated().map { Branch(id: $0.offset, spec: $0.element) }
    }

    /// An interactive transaction; after a restart, `enlisted` are the branches the log holds.
    public init(interactive gid: GlobalTransactionID, enlisted: [BranchSpec] = []) {
        self.gid = gid
        self.interactive = true
        self.branches = enlisted.enumerated().map { Branch(id: $0.offset, spec: $0.element, state: .tried) }
    }

    /// Why an operator may not force `decision` now, or nil when it may.
    public func forceRejection(_ decision: Decision) -> String? {
        switch (status, decision) {
        case (.created, _):
            return "the transaction has not started"
        case (.committed, _), (.aborted, _):
            return "the transaction is already \(status.rawValue)"
        case (.active, .commit), (.trying, .commit):
            return "the transaction is undecided and not every Try has succeeded; only cancel (abort) can be forced"
        case (.confirming, .commit), (.cancelling, .abort):
            return "the transaction is already decided (\(decision.rawValue)); \(status == .confirming ? "Confirm" : "Cancel") is retried until every branch has done it — bring the participant back, or run `dtx recover` to retry now"
        case (.active, .abort), (.trying, .abort), (.confirming, .abort), (.cancelling, .commit):
            return nil
        default:
            return "the transaction is \(status.rawValue)"
        }
    }

    public mutating func handle(_ event: Event) -> [TransactionAction] {
        switch (status, event) {
        case (.created, .start) where !interactive:
            return start()
        case (.created, .open) where interactive:
            status = .active
            return [.log(.open(gid: gid, protocol: .tcc), forced: true), .schedule(.phaseOne, attempt: 1)]
        case (.created, .recovered(let recovered)):
            return recover(recovered)
        case (.active, .enlisted(let spec)):
            let id = branches.count
            var branch = Branch(id: id, spec: spec, state: .tried)
            branch.attempts = 1
            branches.append(branch)
            return [.log(.enlist(gid: gid, branch: id, spec: spec), forced: true)]
        case (.active, .commitRequested):
            return decideCommit()
        case (.active, .abortRequested(let reason)), (.trying, .abortRequested(let reason)):
            return cancelAll(reason: reason)
        case (.active, .timedOut(.phaseOne)):
            return cancelAll(reason: "timed out before commit")
        case (.trying, .timedOut(.phaseOne)):
            return cancelAll(reason: "Try timed out")
        case (_, .forced(let decision, let reason)):
            guard forceRejection(decision) == nil else { return [] }
            if status == .active || status == .trying { return cancelAll(reason: reason) }
            return override(decision, reason: reason)
        case let (_, .resolvedByHand(id, outcome, reason)):
            return resolveByHand(id, as: outcome, reason: reason)
        case let (.trying, .tried(id, result)):
            guard state(of: id) == .trying else { return [] }  // duplicate or unknown branch
            branches[id].state = .tried
            branches[id].result = result
            guard branches.allSatisfy({ $0.state == .tried }) else { return [] }
            return decideCommit()
        case let (.trying, .tryRefused(id, code, message)):
            guard state(of: id) == .trying else { return [] }
            branches[id].state = .failed
            branches[id].lastError = message
            branches[id].result = .refusal(code: code, message: message)
            return cancelAll(reason: nil)
        case let (.trying, .deliveryFailed(id, .try, error)):
            guard state(of: id) == .trying else { return [] }
            branches[id].lastError = error
            return cancelAll(reason: nil)
        case let (.trying, .notDelivered(id, error)):
            return resend(id, error: error)
        case (.trying, .timedOut(.retry(let id))):
            return state(of: id) == .trying ? [.send(.try, to: id)] : []
        case let (.confirming, .confirmed(id, result)):
            guard state(of: id) == .confirming else { return [] }
            branches[id].state = .confirmed
            if let result { branches[id].result = result }
            return finishIfDone(after: [.cancel(.retry(id))])
        case (.cancelling, .cancelled(let id)):
            guard state(of: id) == .cancelling else { return [] }
            branches[id].state = .cancelled
            return finishIfDone(after: [.cancel(.retry(id))])
        case let (.confirming, .deliveryFailed(id, .confirm, error)):
            return state(of: id) == .confirming ? retry(id, error: error) : []
        case let (.cancelling, .deliveryFailed(id, .cancel, error)):
            return state(of: id) == .cancelling ? retry(id, error: error) : []
        case (.confirming, .timedOut(.retry(let id))):
            return state(of: id) == .confirming ? [.send(.confirm, to: id)] : []
        case (.cancelling, .timedOut(.retry(let id))):
            return state(of: id) == .cancelling ? [.send(.cancel, to: id)] : []
        case let (.cancelling, .tried(id, result)) where state(of: id) == .cancelling && branches[id].result == nil:
            // A Try that was still running when another branch's refusal cancelled the
            // transaction: its Cancel is on its way; what the Try did is kept to be shown.
            branches[id].result = result
            return []
        default:
            return ignored(event)
        }
    }

    /// Late and duplicate answers and timers change nothing (beyond the result kept
    /// above): a Try's answer after the decision, the timeout after it, an acknowledgement
    /// repeated. Impossible: a second start, a request `rejection(of:)` refuses, a Try's
    /// answer in an interactive transaction (it sends none), a Confirm's or Cancel's answer
    /// or a retry before the decision, any timer before the start.
    private func ignored(_ event: Event) -> [TransactionAction] {
        let undecided = status == .created || status == .active || status == .trying
        switch event {
        case .start, .open, .recovered, .enlisted, .commitRequested, .abortRequested:
            return ignoring(event, impossible: true)
        case .forced, .resolvedByHand:
            return []  // taken above in every state
        case .tried, .tryRefused, .deliveryFailed(_, .try, _), .notDelivered:
            return ignoring(event, impossible: interactive || status == .created || status == .active)
        case .timedOut(.retry):
            return ignoring(event, impossible: status == .created || status == .active)
        case .confirmed, .cancelled, .deliveryFailed(_, .confirm, _), .deliveryFailed(_, .cancel, _):
            return ignoring(event, impossible: undecided)
        case .deliveryFailed, .timedOut(.step), .timedOut(.checkBack):
            return ignoring(event, impossible: true)  // TCC sends nothing else, arms no step or check-back timer
        case .timedOut(.phaseOne):
            return ignoring(event, impossible: status == .created)
        }
    }

    /// nil for an id no branch has (a confused or hostile message).
    private func state(of id: BranchID) -> BranchState? {
        branches.indices.contains(id) ? branches[id].state : nil
    }

    private mutating func start() -> [TransactionAction] {
        status = .trying
        let begin: TransactionAction = .log(.begin(gid: gid, protocol: .tcc, branches: branches.map(\.spec)), forced: true)
        return [begin] + sendToEveryBranch(.try, as: .trying) + [.schedule(.phaseOne, attempt: 1)]
    }

    /// Every Try succeeded (or, interactive, the application commits its enlisted branches).
    private mutating func decideCommit() -> [TransactionAction] {
        let all = branches.map(\.id)
        targets = Set(all)
        var actions: [TransactionAction] = [.cancel(.phaseOne)]
        if all.isEmpty {
            // An interactive transaction nobody enlisted in: nothing to confirm. The decision
            // is logged all the same (lazily), so that a restart reports the commit.
            status = .committed
            return actions + [.log(.decision(gid: gid, .commit, targets: []), forced: false), .decided(.commit),
                              .log(.end(gid: gid), forced: false), .finish(.committed)]
        }
        actions += [.log(.decision(gid: gid, .commit, targets: all), forced: true), .decided(.commit)]
        return actions + deliver(.commit, to: all)
    }

    /// Cancel before a decision: every branch gets CANCEL, whatever its Try did.
    /// `reason` (an application's, an operator's, the timeout) is logged with the
    /// decision as a non-heuristic `resolution`.
    private mutating func cancelAll(reason: String?) -> [TransactionAction] {
        abort(branches.map(\.id), reason: reason, forced: true)
    }

    private mutating func recover(_ recovered: Recovered) -> [TransactionAction] {
        switch recovered {
        case .undecided:
            // Presumed cancel: any Try may have run, so every branch gets CANCEL (a no-op
            // at a participant whose Try never ran).
            return cancelAll(reason: nil)
        case let .decided(decision, decidedTargets, wasHeuristic):
            // Branches outside the targets acknowledged a decision before this one: an
            // ordinary decision targets every branch, so only a heuristic override leaves
            // some out, and those ended the other way.
            let settled: BranchState = (decision == .commit) != wasHeuristic ? .confirmed : .cancelled
            return resume(decision, targets: decidedTargets, heuristic: wasHeuristic, others: settled)
        }
    }
}

extension TryConfirmCancel {
    public static func translate(_ event: CommonEvent) -> Event? {
        switch event {
        case .start: return .start
        case .open: return .open
        case .enlisted(let spec): return .enlisted(spec)
        case .commitRequested: return .commitRequested
        case .abortRequested(let reason): return .abortRequested(reason: reason)
        case let .forced(decision, reason): return .forced(decision, reason: reason)
        case let .resolvedByHand(id, outcome, reason): return .resolvedByHand(id, outcome, reason: reason)
        case .timedOut(let timer): return .timedOut(timer)
        case .checkedBack: return nil  // a message's
        case let .replied(id, message, response):
            switch (message, response) {
            case (.try, .done(_, let result)): return .tried(id, result: result)
            case let (.try, .refused(code, text)): return .tryRefused(id, code: code, message: text)
            case (.confirm, .done(_, let result)): return .confirmed(id, result: result)
            case (.cancel, .done): return .cancelled(id)
            case let (.try, .undelivered(error)):
                return .notDelivered(id, error)
            case let (.try, .failed(error)), let (.confirm, .failed(error)), let (.cancel, .failed(error)),
                 let (.confirm, .undelivered(error)), let (.cancel, .undelivered(error)):
                return .deliveryFailed(id, message, error)
            case let (.confirm, .refused(code, text)), let (.cancel, .refused(code, text)):
                // Confirm and Cancel may not fail: a refusal is a participant's bug or a
                // transient state, retried (and visible as stuck) until it is fixed.
                return .deliveryFailed(id, message, "\(code): \(text)")
            default:
                return nil  // another protocol's message
            }
        }
    }

    public func rejection(of event: CommonEvent) -> String? {
        switch event {
        case .enlisted, .commitRequested:
            guard interactive else { return "the transaction was submitted whole; only interactive transactions take enlistments and commit requests" }
            return status == .active ? nil : "the transaction is \(status.rawValue), no longer open"
        case .abortRequested:
            return status == .active || status == .trying ? nil : "the transaction is \(status.rawValue); a cancel now needs an operator's force with a reason"
        case .forced(let decision, _):
            return forceRejection(decision)
        case .resolvedByHand(let id, _, _):
            return handResolutionRejection(id)
        default:
            return nil
        }
    }

    public static func ended(_ replayed: TransactionLogReplay.Replayed) -> TryConfirmCancel {
        var machine = recovering(replayed).0
        machine.branches = replayed.endedBranches(machine.branches) { _, decision in decision == .commit ? .confirmed : .cancelled }
        machine.status = replayed.endedStatus
        machine.heuristic = replayed.heuristic
        return machine
    }

    public static func recovering(_ replayed: TransactionLogReplay.Replayed) -> (TryConfirmCancel, Event) {
        var machine = replayed.interactive
            ? TryConfirmCancel(interactive: replayed.gid, enlisted: replayed.branches)
            : TryConfirmCancel(gid: replayed.gid, branches: replayed.branches)
        machine.branches = replayed.withDetails(machine.branches)
        return (machine, .recovered(Recovered(replayed)))
    }
}

extension TryConfirmCancel: DecisionDelivering {
    static var working: BranchState { .trying }

    static func words(for decision: Decision) -> DecisionWords {
        decision == .commit
            ? DecisionWords(message: .confirm, pending: .confirming, done: .confirmed, status: .confirming)
            : DecisionWords(message: .cancel, pending: .cancelling, done: .cancelled, status: .cancelling)
    }
}
