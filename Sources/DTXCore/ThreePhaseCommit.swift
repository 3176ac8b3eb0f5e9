/// Three-phase commit (Skeen), the coordinator's side, as a pure state machine.
///
/// Coordinator log writes: `begin` (lazy) → CANCOMMIT to every branch → all YES:
/// `preCommit` **forced** → PRECOMMIT to every branch → all acknowledged:
/// `decision(commit)` **forced** → DOCOMMIT, retried until done → `end` (lazy). A
/// CanCommit that never reached its participant is sent again until the timeout. Any NO,
/// other CanCommit failure or the timeout before the pre-commit: `decision(abort)`
/// (lazy, presumed abort) → ROLLBACK to every branch that may have prepared.
///
/// The extra round is what makes 3PC non-blocking when the coordinator crashes: a
/// participant reaches p only after every one voted yes, so participants that lose
/// the coordinator can decide among themselves (`Termination`). The coordinator must
/// therefore expect a participant to have decided already: an answer `committed` or
/// `aborted` (409 `already_aborted`/`already_committed`) is its state, not an error.
/// - While waiting for the PreCommit acknowledgements, a branch that aborted makes the
///   transaction abort (forced now: the pre-commit is logged); one that committed
///   counts as acknowledged. Both at once is the partition anomaly: the rest commits
///   and the transaction is flagged `heuristic`.
/// - When the acknowledgements do not all come in time (`phaseOne`, re-armed for the
///   round), the coordinator commits anyway (Bernstein, Hadzilacos & Goodman): a
///   silent participant is down or cut off, and learns the outcome from DoCommit, from
///   the coordinator when it asks, or from its peers.
/// - A DoCommit answered `aborted` (or a ROLLBACK answered `committed`) means the
///   participants decided differently under a partition: recorded as it is, and the
///   transaction is flagged `heuristic` (heuristic-mixed), never retried forever.
///
/// There is no one-phase shortcut and no read-only vote (a `read_only` answer is a yes),
/// and no interactive form. Operator force: abort of an undecided transaction is an
/// ordinary abort; during the PreCommit round either outcome may be forced (the
/// operator stops the wait); the opposite of a logged decision is a heuristic override.
/// Recovery: `begin` only → abort every branch; `preCommit` logged → PreCommit again
/// (every answer is a participant's state, so this also collects what termination
/// decided meanwhile); decided → resume DoCommit or ROLLBACK on the logged targets.
public struct ThreePhaseCommit: TransactionStateMachine {
    public enum Event: Sendable, Equatable {
        case start
        /// The application or an operator asks to abort.
        case abortRequested(reason: String)
        /// An operator forces the outcome (see `forceRejection`).
        case forced(Decision, reason: String)
        /// An operator settled a branch outside dtx (see `CommonEvent.resolvedByHand`).
        case resolvedByHand(BranchID, Decision, reason: String)
        /// A CanCommit answer.
        /// A CanCommit answer, with what the participant answered (the branch's result).
        case voted(BranchID, Vote, result: JSONValue? = nil)
        /// The state a participant reported in answer to PreCommit, DoCommit or ROLLBACK.
        case reported(BranchID, ThreePhaseState)
        /// `message` could not be delivered or got no usable answer.
        case deliveryFailed(BranchID, ParticipantMessage, String)
        /// A CanCommit certainly never reached the participant: it may be sent again.
        case notDelivered(BranchID, String)
        case timedOut(TimerID)
        /// Rebuild after a restart from what the log holds for this transaction.
        case recovered(Recovered)
    }

    /// What replaying the log found.
    public enum Recovered: Sendable, Equatable {
        /// `begin` only: presumed abort.
        case undecided
        /// `preCommit` without a decision.
        case preCommitted
        case decided(Decision, targets: [BranchID], heuristic: Bool = false)
    }

    public let gid: GlobalTransactionID
    public internal(set) var status: TransactionStatus = .created
    public var displayStatus: TransactionStatus { status == .created ? .preparing : status }
    public internal(set) var branches: [Branch]
    /// Branches the decision (DoCommit or ROLLBACK) must reach.
    public internal(set) var targets: Set<BranchID> = []
    /// Branches ended differently: participants decided apart (heuristic-mixed), or an
    /// operator overrode a logged decision.
    public internal(set) var heuristic = false
    /// Participants decided apart (a partition): logged with the outcome, so that the
    /// history keeps the flag after a restart.
    private var decidedApart = false

    public init(gid: GlobalTransactionID, branches: [BranchSpec]) {
        precondition(!branches.isEmpty, "a transaction has at least one branch")
        self.gid = gid
        self.branches = branches.enumerated().map { Branch(id: $0.offset, spec: $0.element) }
    }

    public var terminationAnswer: ThreePhaseState? { threePhaseState }

    /// The coordinator's own state, which is what it answers a participant that asks
    /// during termination: `prepared` (still collecting votes: wait), `pre_committed`
    /// (move to p and wait for DoCommit), or the decision.
    public var threePhaseState: ThreePhaseState {
        switch status {
        case .preparing: return .prepared
        case .preCommitting: return .preCommitted
        case .committing, .committed: return .committed
        case .aborting, .aborted: return .aborted
        default: return .initial
        }
    }

    /// Why an operator may not force `decision` now, or nil when it may.
    public func forceRejection(_ decision: Decision) -> String? {
        switch (status, decision) {
        case (.created, _):
            return "the transaction has not started"
        case (.committed, _), (.aborted, _):
            return "the transaction is already \(status.rawValue)"
        case (.preparing, .commit):
            return "the transaction is undecided and not every branch has voted yes; only abort can be forced"
        case (.committing, .commit), (.aborting, .abort):
            return "the transaction is already decided (\(decision.rawValue)); it is retried until every branch acknowledges — bring the participant back, or run `dtx recover` to retry now"
        case (.preparing, .abort), (.preCommitting, _), (.committing, .abort), (.aborting, .commit):
            return nil
        default:
            return "the transaction is \(status.rawValue)"  // another protocol's status: never a 3PC's
        }
    }

    public mutating func handle(_ event: Event) -> [TransactionAction] {
        let actions = react(to: event)
        return recordingDecidedApart(actions)  // after `react`: it reads the state `react` left
    }

    /// Before `end`, a transaction whose participants decided apart logs a heuristic
    /// resolution with its outcome (lazily: it only tells the history what happened).
    private func recordingDecidedApart(_ actions: [TransactionAction]) -> [TransactionAction] {
        guard decidedApart, let end = actions.firstIndex(where: { if case .log(.end, _) = $0 { true } else { false } }) else { return actions }
        let record = LogEntry.resolution(gid: gid, status == .committed ? .commit : .abort, targets: [],
                                         reason: "participants decided differently (heuristic-mixed)", heuristic: true)
        var actions = actions
        actions.insert(.log(record, forced: false), at: end)
        return actions
    }

    private mutating func react(to event: Event) -> [TransactionAction] {
        switch (status, event) {
        case (.created, .start):
            return start()
        case (.created, .recovered(let recovered)):
            return recover(recovered)
        case (.preparing, .abortRequested(let reason)):
            return abort(reason: reason)
        case (_, .forced(let decision, let reason)):
            guard forceRejection(decision) == nil else { return [] }
            switch status {
            case .preparing: return abort(reason: reason)
            case .preCommitting: return decide(decision, reason: reason)
            default: return override(decision, reason: reason)
            }
        case let (_, .resolvedByHand(id, outcome, reason)):
            return resolveByHand(id, as: outcome, reason: reason)
        case (.preparing, .voted(let id, let vote, let result)):
            return voted(id, vote, result: result)
        case (.preparing, .deliveryFailed(let id, .canCommit, let error)):
            guard state(of: id) == .preparing else { return [] }
            branches[id].lastError = error
            return abort(reason: nil)
        case (.preparing, .notDelivered(let id, let error)):
            return resend(id, error: error)
        case (.preparing, .timedOut(.phaseOne)):
            return abort(reason: "phase one timed out")
        case (.preCommitting, .reported(let id, let reported)):
            return preCommitAnswered(id, reported)
        case (.preCommitting, .timedOut(.phaseOne)):
            return decide(.commit, reason: nil)
        case (.committing, .reported(let id, let reported)), (.aborting, .reported(let id, let reported)):
            return decisionAnswered(id, reported)
        case let (_, .deliveryFailed(id, message, error)):
            return awaitedMessage(of: id) == message ? retry(id, error: error) : []
        case (_, .timedOut(.retry(let id))):
            return awaitedMessage(of: id).map { [.send($0, to: id)] } ?? []
        default:
            return ignored(event)
        }
    }

    /// Late and duplicate answers and timers change nothing: a vote after the pre-commit
    /// or the abort, a state reported twice, the timeout after the decision. Impossible:
    /// a second start or recovery, an abort request `rejection(of:)` refuses, an answer to
    /// PreCommit, DoCommit or ROLLBACK while every branch is still asked CanCommit, any
    /// answer or timer before the start.
    private func ignored(_ event: Event) -> [TransactionAction] {
        switch event {
        case .start, .recovered, .abortRequested, .timedOut(.step), .timedOut(.checkBack):
            return ignoring(event, impossible: true)
        case .forced, .deliveryFailed, .timedOut(.retry), .resolvedByHand:
            return []  // taken above in every state
        case .notDelivered:
            return ignoring(event, impossible: status == .created)
        case .voted, .timedOut(.phaseOne):
            return ignoring(event, impossible: status == .created)
        case .reported:
            return ignoring(event, impossible: status == .created || status == .preparing)
        }
    }

    /// nil for an id no branch has (a confused or hostile message).
    private func state(of id: BranchID) -> BranchState? {
        branches.indices.contains(id) ? branches[id].state : nil
    }

    /// The message branch `id` owes an answer to, which a retry delivers again.
    private func awaitedMessage(of id: BranchID) -> ParticipantMessage? {
        switch state(of: id) {
        case .preparing: return status == .preparing ? .canCommit : nil
        case .preCommitting: return .preCommit
        case .committing: return .doCommit
        case .rollingBack: return .rollback
        default: return nil
        }
    }

    private mutating func start() -> [TransactionAction] {
        status = .preparing
        let begin: TransactionAction = .log(.begin(gid: gid, protocol: .threePhaseCommit, branches: branches.map(\.spec)), forced: false)
        return [begin] + sendToEveryBranch(.canCommit, as: .preparing) + [.schedule(.phaseOne, attempt: 1)]
    }

    private mutating func voted(_ id: BranchID, _ vote: Vote, result: JSONValue?) -> [TransactionAction] {
        guard state(of: id) == .preparing else { return [] }  // duplicate or unknown branch
        branches[id].result = result
        switch vote {
        case .yes, .readOnly:
            // 3PC has no read-only optimisation: every branch takes part in every round.
            branches[id].state = .prepared
        case .no(let reason):
            branches[id].state = .votedNo
            branches[id].lastError = reason
            return abort(reason: nil)
        }
        guard branches.allSatisfy({ $0.state == .prepared }) else { return [] }
        return preCommit()
    }

    /// Every branch voted yes: the pre-commit is made durable before any PreCommit goes
    /// out, since a participant in p may commit without the coordinator.
    private mutating func preCommit() -> [TransactionAction] {
        status = .preCommitting
        var actions: [TransactionAction] = [.cancel(.phaseOne), .log(.preCommit(gid: gid), forced: true)]
        actions += sendPreCommitToAll()
        return actions
    }

    private mutating func sendPreCommitToAll() -> [TransactionAction] {
        sendToEveryBranch(.preCommit, as: .preCommitting) + [.schedule(.phaseOne, attempt: 1)]
    }

    /// A participant answered PreCommit with the state it is in.
    private mutating func preCommitAnswered(_ id: BranchID, _ reported: ThreePhaseState) -> [TransactionAction] {
        guard state(of: id) == .preCommitting else { return [] }
        switch reported {
        case .preCommitted:
            branches[id].state = .preCommitted
        case .committed:
            // Its termination committed: someone had reached p, so commit is the outcome.
            branches[id].state = .committed
        case .aborted:
            // Its termination aborted (it could not reach us or anyone in p).
            branches[id].state = .rolledBack
            branches[id].lastError = "the participant had already aborted (termination protocol)"
        case .initial, .prepared:
            return retry(id, error: "the participant answered PreCommit with \(reported.rawValue)")
        }
        let actions: [TransactionAction] = [.cancel(.retry(id))]
        let anyCommitted = branches.contains { $0.state == .committed }
        if branches.contains(where: { $0.state == .rolledBack }) {
            // Any aborted → abort, unless another branch committed already: then the
            // branches decided apart (a partition), and the rest follows the commit.
            if anyCommitted { heuristic = true; decidedApart = true }
            return actions + decide(anyCommitted ? .commit : .abort, reason: nil)
        }
        guard branches.allSatisfy({ $0.state == .preCommitted || $0.state == .committed }) else { return actions }
        return actions + decide(.commit, reason: nil)
    }

    /// The decision after the pre-commit, forced (a restart must not send PreCommit again
    /// after an abort went out). It goes to every branch that has not ended already;
    /// `reason` is an operator's, logged with it.
    private mutating func decide(_ decision: Decision, reason: String?) -> [TransactionAction] {
        status = decision == .commit ? .committing : .aborting
        let open = branches.filter { $0.state != .committed && $0.state != .rolledBack }.map(\.id)
        targets = Set(open)
        var actions: [TransactionAction] = [.cancel(.phaseOne)]
        if open.isEmpty {
            // Every branch ended by termination already: nothing to send. The decision is
            // still logged (lazily, before `end`) so that the history shows the outcome.
            status = decision == .commit ? .committed : .aborted
            return actions + [.log(.decision(gid: gid, decision, targets: []), forced: false), .decided(decision),
                              .log(.end(gid: gid), forced: false), .finish(status)]
        }
        let entry: LogEntry = reason.map { .resolution(gid: gid, decision, targets: open, reason: $0, heuristic: false) }
            ?? .decision(gid: gid, decision, targets: open)
        actions += [.log(entry, forced: true), .decided(decision)]
        for id in open {
            // A PreCommit retry may be waiting for its backoff: the decision replaces it.
            if branches[id].state == .preCommitting { actions.append(.cancel(.retry(id))) }
            branches[id].state = decision == .commit ? .committing : .rollingBack
            branches[id].attempts = 1
            actions.append(.send(decision == .commit ? .doCommit : .rollback, to: id))
        }
        return actions
    }

    /// A participant answered DoCommit or ROLLBACK with the state it is in.
    private mutating func decisionAnswered(_ id: BranchID, _ reported: ThreePhaseState) -> [TransactionAction] {
        let expected: BranchState = status == .committing ? .committing : .rollingBack
        guard state(of: id) == expected else { return [] }
        switch (status, reported) {
        case (.committing, .committed):
            branches[id].state = .committed
        case (.aborting, .aborted):
            branches[id].state = .rolledBack
        case (.committing, .aborted):
            heuristic = true
            decidedApart = true
            branches[id].state = .rolledBack
            branches[id].lastError = "heuristic: the participant had already aborted (participants decided differently)"
        case (.aborting, .committed):
            heuristic = true
            decidedApart = true
            branches[id].state = .committed
            branches[id].lastError = "heuristic: the participant had already committed (participants decided differently)"
        default:
            return retry(id, error: "the participant answered \(status == .committing ? "DoCommit" : "ROLLBACK") with \(reported.rawValue)")
        }
        return finishIfDone(after: [.cancel(.retry(id))])
    }

    /// Abort before the pre-commit: lazy, as in 2PC (an unknown gid is aborted), to
    /// every branch that may have prepared. `reason` is an application's or operator's.
    private mutating func abort(reason: String?) -> [TransactionAction] {
        abort(branches.filter { $0.state == .prepared || $0.state == .preparing }.map(\.id), reason: reason, forced: false)
    }

    private mutating func recover(_ recovered: Recovered) -> [TransactionAction] {
        switch recovered {
        case .undecided:
            // Presumed abort: nobody can be in p without the pre-commit record, so no
            // participant can have committed; every branch gets ROLLBACK.
            for id in branches.indices { branches[id].state = .preparing }
            return abort(reason: nil)
        case .preCommitted:
            // Participants may be in w or p, or have decided by termination: PreCommit
            // again, and their answers say which.
            status = .preCommitting
            return sendPreCommitToAll()
        case let .decided(decision, decidedTargets, wasHeuristic):
            // Branches outside the targets had ended before the decision was logged: the
            // decided way, unless an operator's override left them on the other side.
            let settled: BranchState = (decision == .commit) != wasHeuristic ? .committed : .rolledBack
            return resume(decision, targets: decidedTargets, heuristic: wasHeuristic, others: settled)
        }
    }
}

extension ThreePhaseCommit.Recovered {
    /// What a restart tells the machine about a transaction the log left unfinished.
    public init(_ unfinished: TransactionLogReplay.Replayed) {
        if let decision = unfinished.decision {
            self = .decided(decision, targets: unfinished.targets, heuristic: unfinished.heuristic)
        } else {
            self = unfinished.preCommitted ? .preCommitted : .undecided
        }
    }
}

extension ThreePhaseCommit {
    public static func translate(_ event: CommonEvent) -> Event? {
        switch event {
        case .start: return .start
        case .open, .enlisted, .commitRequested: return nil  // refused by `rejection(of:)`
        case .abortRequested(let reason): return .abortRequested(reason: reason)
        case let .forced(decision, reason): return .forced(decision, reason: reason)
        case let .resolvedByHand(id, outcome, reason): return .resolvedByHand(id, outcome, reason: reason)
        case .timedOut(let timer): return .timedOut(timer)
        case .checkedBack: return nil  // a message's
        case let .replied(id, message, response):
            switch (message, response) {
            case let (.canCommit, .done(_, result)): return .voted(id, .yes, result: result)
            case let (.canCommit, .refused(code, text)): return .voted(id, .no(text), result: .refusal(code: code, message: text))
            case let (.preCommit, .done(status, _)), let (.doCommit, .done(status, _)), let (.rollback, .done(status, _)):
                // Every answer is the state the participant is in after the message.
                guard let state = ThreePhaseState(rawValue: status) else {
                    return .deliveryFailed(id, message, "unexpected status '\(status)'")
                }
                return .reported(id, state)
            case (.preCommit, .refused("already_aborted", _)), (.doCommit, .refused("already_aborted", _)):
                return .reported(id, .aborted)
            case (.rollback, .refused("already_committed", _)):
                return .reported(id, .committed)
            case let (.preCommit, .refused(code, text)), let (.doCommit, .refused(code, text)), let (.rollback, .refused(code, text)):
                return .deliveryFailed(id, message, "\(code): \(text)")
            case let (.canCommit, .undelivered(error)):
                return .notDelivered(id, error)
            case let (.canCommit, .failed(error)), let (.preCommit, .failed(error)), let (.doCommit, .failed(error)), let (.rollback, .failed(error)),
                 let (.preCommit, .undelivered(error)), let (.doCommit, .undelivered(error)), let (.rollback, .undelivered(error)):
                return .deliveryFailed(id, message, error)
            default:
                return nil  // another protocol's message
            }
        }
    }

    public func rejection(of event: CommonEvent) -> String? {
        switch event {
        case .open:
            return "a 3PC transaction is submitted whole, with its branches; it cannot be opened interactively"
        case .enlisted, .commitRequested:
            return "a 3PC transaction is submitted whole; it takes no enlistments or commit requests"
        case .abortRequested:
            return status == .preparing ? nil : "the transaction is \(status.rawValue); an abort now needs an operator's force with a reason"
        case .forced(let decision, _):
            return forceRejection(decision)
        case .resolvedByHand(let id, _, _):
            return handResolutionRejection(id)
        default:
            return nil
        }
    }

    /// 3PC has no read-only branches: those outside a commit's targets had committed by termination.
    public static func ended(_ replayed: TransactionLogReplay.Replayed) -> ThreePhaseCommit {
        var machine = recovering(replayed).0
        machine.branches = replayed.endedBranches(machine.branches) { _, decision in decision == .commit ? .committed : .rolledBack }
        machine.status = replayed.endedStatus
        machine.heuristic = replayed.heuristic
        return machine
    }

    public static func recovering(_ replayed: TransactionLogReplay.Replayed) -> (ThreePhaseCommit, Event) {
        var machine = ThreePhaseCommit(gid: replayed.gid, branches: replayed.branches)
        machine.branches = replayed.withDetails(machine.branches)
        return (machine, .recovered(Recovered(replayed)))
    }
}

extension ThreePhaseCommit: DecisionDelivering {
    static var working: BranchState { .preparing }

    static func words(for decision: Decision) -> DecisionWords {
        decision == .commit
            ? DecisionWords(message: .doCommit, pending: .committing, done: .committed, status: .committing)
            : DecisionWords(message: .rollback, pending: .rollingBack, done: .rolledBack, status: .aborting)
    }
}
