/// Two-phase commit with presumed abort (R*, Mohan et al. 1986), as a pure state machine.
///
/// Coordinator log writes: `begin` (lazy) → all YES: `decision(commit)` **forced** →
/// all ACK: `end` (lazy). A PREPARE that never reached its participant (no connection
/// was made) is sent again with backoff until the timeout. Any NO, other phase-one
/// delivery failure or the timeout (`phaseOne`): `decision(abort)`
/// (lazy) → ROLLBACK to every branch that may have prepared, retried until acknowledged.
/// So a committed transaction costs one forced write and an aborted one none; a gid
/// the log does not know is aborted. Read-only voters drop out of phase two. When every
/// branch voted read-only, the commit decision is logged lazily (nothing waits for it).
///
/// A single branch commits in one phase: it is its transaction's agent (below), without a
/// delegation record — its `begin` says as much, since nothing else can have prepared.
/// Its commit is logged lazily; after a restart without one, the branch is asked.
///
/// Last agent (Gray & Reuter's last-agent optimisation; `lastAgent`): the last branch of
/// a submitted transaction is not prepared. Once every other branch voted yes, a
/// `delegation` record is **forced** and the last branch gets COMMIT_ONE_PHASE: its
/// participant decides, and records the outcome in its own database. Committed → the
/// decision (lazy, the agent's record already makes it durable) and COMMIT to the
/// others; refused → abort, with ROLLBACK to the others and to the agent (which records
/// the refusal, so no late copy of the message can commit). Never delivered → sent again
/// until the transaction's timeout, then treated as no usable answer. No usable answer → the
/// coordinator cannot know, so it sends the agent ROLLBACK until it answers: acknowledged
/// (the branch is now rolled back for good) → abort; `already_committed` → commit. A
/// restart that finds the delegation without a decision does the same. It saves the
/// agent's PREPARE round and a forced write at the agent; the price is that once
/// delegated, the transaction waits for the agent (neither a timeout nor an abort
/// request can end it).
///
/// Interactive (XA style): `open` (lazy) → services enlist branches they have already
/// prepared (`enlist`, lazy) → the application's commit forces the decision and phase
/// two runs as above; its abort, or the timeout, aborts.
///
/// An operator may force an outcome with a reason: abort of an undecided transaction
/// is an ordinary abort; the opposite of a logged decision is a heuristic override,
/// logged (forced) and sent to every branch that has not acknowledged yet.
public struct TwoPhaseCommit: TransactionStateMachine {
    public enum Event: Sendable, Equatable {
        case start
        /// Interactive: open the transaction for enlistment.
        case open
        /// Interactive: a service enlisted a branch it has prepared.
        case enlisted(BranchSpec)
        /// Interactive: the application asks to commit.
        case commitRequested
        /// The application or an operator asks to abort.
        case abortRequested(reason: String)
        /// An operator forces the outcome (see `forceRejection`).
        case forced(Decision, reason: String)
        /// An operator settled a branch outside dtx (see `CommonEvent.resolvedByHand`).
        case resolvedByHand(BranchID, Decision, reason: String)
        /// A vote, with what the participant answered (the branch's result).
        case voted(BranchID, Vote, result: JSONValue? = nil)
        /// The participant confirmed COMMIT or ROLLBACK (or, in one phase, its commit,
        /// with its result).
        case acknowledged(BranchID, result: JSONValue? = nil)
        /// A message could not be delivered or got no usable answer.
        case deliveryFailed(BranchID, String)
        /// A PREPARE or COMMIT_ONE_PHASE certainly never reached the participant: it may be
        /// sent again.
        case notDelivered(BranchID, String)
        /// Phase two found the branch already ended the other way (a COMMIT answered
        /// `already_rolled_back`, a ROLLBACK `already_committed`): a heuristic outcome,
        /// recorded as it is instead of retried forever.
        case endedOtherwise(BranchID, BranchState, String)
        case timedOut(TimerID)
        /// Rebuild after a restart from what the log holds for this transaction.
        case recovered(Recovered)
        /// Rebuild after a restart that found the delegation to the last agent, with
        /// `targets` prepared, and no decision.
        case recoveredDelegation(targets: [BranchID])
    }

    /// What replaying the log found.
    public enum Recovered: Sendable, Equatable {
        /// `begin` without a decision: presumed abort.
        case undecided
        case decided(Decision, targets: [BranchID], heuristic: Bool = false)
    }

    public let gid: GlobalTransactionID
    public let interactive: Bool
    public internal(set) var status: TransactionStatus = .created
    public var displayStatus: TransactionStatus { status == .created ? (interactive ? .active : .preparing) : status }
    public internal(set) var branches: [Branch]
    /// Branches phase two must reach.
    public internal(set) var targets: Set<BranchID> = []
    /// An operator overrode a logged decision: branches may have ended differently.
    public internal(set) var heuristic = false
    /// The branch that commits in one phase and so decides: the only one of a
    /// single-branch transaction, or the last one when the last-agent optimisation is on.
    public let lastAgent: BranchID?
    /// The last agent was sent COMMIT_ONE_PHASE (with other branches, once the delegation
    /// was logged): its branch has left `pending`, where it waits while the others prepare.
    public var delegated: Bool { lastAgent.map { branches[$0].state != .pending } ?? false }
    /// Its answer was lost: ROLLBACK goes to it until it says how the branch ended.
    public internal(set) var askingTheAgent = false
    /// Its COMMIT_ONE_PHASE never reached it and waits to be sent again.
    public internal(set) var agentBackingOff = false
    /// The transaction's timeout passed while the agent decides: a COMMIT_ONE_PHASE that
    /// never reaches it is not sent again; ROLLBACK asks it instead.
    public internal(set) var agentPastTimeout = false
    /// Delegated and not yet answered: only the agent can decide.
    private var awaitingTheAgent: Bool { status == .preparing && lastAgent.map(isPending) == true }

    /// A submitted transaction: the coordinator runs both phases; with `lastAgent` the
    /// last branch commits in one phase and decides. A single branch always does.
    public init(gid: GlobalTransactionID, branches: [BranchSpec], lastAgent: Bool = false) {
        precondition(!branches.isEmpty, "a transaction has at least one branch")
        self.gid = gid
        self.interactive = false
        self.branches = branches.enumerated().map { Branch(id: $0.offset, spec: $0.element) }
        self.lastAgent = lastAgent || branches.count == 1 ? branches.count - 1 : nil
    }

    /// An interactive transaction; after a restart, `enlisted` are the branches the log holds.
    public init(interactive gid: GlobalTransactionID, enlisted: [BranchSpec] = []) {
        self.gid = gid
        self.interactive = true
        self.branches = enlisted.enumerated().map { Branch(id: $0.offset, spec: $0.element, state: .prepared) }
        self.lastAgent = nil
    }

    /// Why an operator may not force `decision` now, or nil when it may.
    public func forceRejection(_ decision: Decision) -> String? {
        if awaitingTheAgent, let lastAgent {
            return "branch \(lastAgent) (\(branches[lastAgent].spec.participant)) commits in one phase and decides the outcome; dtxd asks it until it answers — bring it back, or run `dtx recover` to ask now"
        }
        switch (status, decision) {
        case (.created, _):
            return "the transaction has not started"
        case (.committed, _), (.aborted, _):
            return "the transaction is already \(status.rawValue)"
        case (.active, .commit), (.preparing, .commit):
            return "the transaction is undecided and not every branch has voted yes; only abort can be forced"
        case (.committing, .commit), (.aborting, .abort):
            return "the transaction is already decided (\(decision.rawValue)); phase two retries until every branch acknowledges — bring the participant back, or run `dtx recover` to retry now"
        case (.active, .abort), (.preparing, .abort), (.committing, .abort), (.aborting, .commit):
            return nil
        case (.trying, _), (.confirming, _), (.cancelling, _), (.running, _), (.compensating, _), (.preCommitting, _), (.prepared, _), (.failed, _):
            return "the transaction is \(status.rawValue)"  // other protocols' statuses: never a 2PC's
        }
    }

    public mutating func handle(_ event: Event) -> [TransactionAction] {
        switch (status, event) {
        case (.created, .start) where !interactive:
            return start()
        case (.created, .open) where interactive:
            status = .active
            return [.log(.open(gid: gid, protocol: .twoPhaseCommit), forced: false), .schedule(.phaseOne, attempt: 1)]
        case (.created, .recovered(let recovered)):
            return recover(recovered)
        case (.created, .recoveredDelegation(let prepared)):
            return recoverDelegation(prepared: prepared)
        case (.active, .enlisted(let spec)):
            let id = branches.count
            branches.append(Branch(id: id, spec: spec, state: .prepared))
            return [.log(.enlist(gid: gid, branch: id, spec: spec), forced: false)]
        case (.active, .commitRequested):
            return voted(nil, .yes)
        case (.preparing, _) where awaitingTheAgent:
            return handleDelegated(event)
        case (.active, .abortRequested(let reason)), (.preparing, .abortRequested(let reason)):
            return abort(reason: reason)
        case (.active, .timedOut(.phaseOne)):
            return abort(reason: "timed out before commit")
        case (_, .forced(let decision, let reason)):
            guard forceRejection(decision) == nil else { return [] }
            if status == .active || status == .preparing { return abort(reason: reason) }
            return override(decision, reason: reason)
        case let (_, .resolvedByHand(id, outcome, reason)):
            return resolveByHand(id, as: outcome, reason: reason)
        case (.preparing, .voted(let id, let vote, let result)):
            return voted(id, vote, result: result)
        case (.preparing, .deliveryFailed(let id, let error)):
            guard isPending(id) else { return [] }
            branches[id].lastError = error
            return abort(reason: nil)
        case (.preparing, .notDelivered(let id, let error)):
            return resend(id, error: error)
        case (.preparing, .timedOut(.retry(let id))):
            return isPending(id) ? [.send(.prepare, to: id)] : []
        case (.preparing, .timedOut(.phaseOne)):
            return abort(reason: "phase one timed out")
        case (.committing, .acknowledged(let id, _)), (.aborting, .acknowledged(let id, _)):
            return acknowledged(id)
        case let (.committing, .endedOtherwise(id, actual, detail)), let (.aborting, .endedOtherwise(id, actual, detail)):
            let expected: BranchState = status == .committing ? .committing : .rollingBack
            guard state(of: id) == expected else { return [] }
            heuristic = true
            branches[id].lastError = detail
            branches[id].state = actual
            return finishIfDone(after: [.cancel(.retry(id))])
        case (.committing, .deliveryFailed(let id, let error)):
            return state(of: id) == .committing ? retry(id, error: error) : []
        case (.aborting, .deliveryFailed(let id, let error)):
            return state(of: id) == .rollingBack ? retry(id, error: error) : []
        case (.committing, .timedOut(.retry(let id))):
            return state(of: id) == .committing ? [.send(.commit, to: id)] : []
        case (.aborting, .timedOut(.retry(let id))):
            return state(of: id) == .rollingBack ? [.send(.rollback, to: id)] : []
        default:
            return ignored(event)
        }
    }

    /// Late and duplicate answers and timers change nothing: a vote after the decision, an
    /// acknowledgement repeated, the timeout after the decision. Impossible: a second
    /// start or recovery, a request `rejection(of:)` refuses, a vote in an interactive
    /// transaction (it sends no PREPARE), a phase-two answer before phase two, any answer
    /// or timer before the start.
    private func ignored(_ event: Event) -> [TransactionAction] {
        let started = status != .created && status != .active
        switch event {
        case .start, .open, .recovered, .recoveredDelegation, .enlisted, .commitRequested, .abortRequested:
            return ignoring(event, impossible: true)
        case .forced, .resolvedByHand:
            return []  // taken above in every state
        case .voted:
            return ignoring(event, impossible: interactive || !started)
        case .deliveryFailed, .notDelivered:
            return ignoring(event, impossible: status == .created || status == .active)
        case .acknowledged, .endedOtherwise:
            return ignoring(event, impossible: !started || status == .preparing)
        case .timedOut:
            return ignoring(event, impossible: status == .created)
        }
    }

    /// nil for an id no branch has (a confused or hostile message).
    private func state(of id: BranchID) -> BranchState? {
        branches.indices.contains(id) ? branches[id].state : nil
    }

    private func isPending(_ id: BranchID) -> Bool {
        state(of: id) == .preparing
    }

    private mutating func start() -> [TransactionAction] {
        status = .preparing
        let begin: TransactionAction = .log(.begin(gid: gid, protocol: .twoPhaseCommit, branches: branches.map(\.spec)), forced: false)
        if branches.count == 1, let lastAgent { return [begin] + delegate(to: lastAgent) + [.schedule(.phaseOne, attempt: 1)] }
        return [begin] + sendToEveryBranch(.prepare, as: .preparing, except: lastAgent) + [.schedule(.phaseOne, attempt: 1)]
    }

    /// Every branch but the last agent voted yes or read-only: the delegation is forced,
    /// then the agent is sent COMMIT_ONE_PHASE. A single branch needs no delegation record:
    /// its `begin` tells a restart the same (see `TransactionLogReplay`). The phase-one
    /// timer keeps running: it bounds how long an undelivered COMMIT_ONE_PHASE is resent.
    private mutating func delegate(to agent: BranchID) -> [TransactionAction] {
        branches[agent].state = .preparing
        branches[agent].attempts = 1
        guard branches.count > 1 else { return [.send(.commitOnePhase, to: agent)] }
        let prepared = branches.filter { $0.state == .prepared }.map(\.id)
        targets = Set(prepared)
        return [.log(.delegation(gid: gid, agent: agent, targets: prepared), forced: true), .send(.commitOnePhase, to: agent)]
    }

    /// Events while the last agent decides. Nothing but its answer (or, when that was
    /// lost, the answer to ROLLBACK) moves the transaction on.
    private mutating func handleDelegated(_ event: Event) -> [TransactionAction] {
        guard let agent = lastAgent else { return [] }
        switch event {
        case .acknowledged(agent, let result):
            // COMMIT_ONE_PHASE committed, or (while asking) ROLLBACK rolled back.
            if askingTheAgent { return agentEnded(.rolledBack, reason: nil) }
            branches[agent].result = result
            return agentEnded(.committed, reason: nil)
        case .voted(agent, let vote, let result) where !askingTheAgent:
            branches[agent].result = result
            switch vote {
            case .yes: return agentEnded(.committed, reason: nil)
            case .readOnly: return agentEnded(.readOnly, reason: nil)
            case .no(let reason): return agentEnded(.votedNo, reason: reason)
            }
        case .endedOtherwise(agent, .committed, _) where askingTheAgent:
            return agentEnded(.committed, reason: nil)
        case .deliveryFailed(agent, let error):
            guard askingTheAgent else {
                branches[agent].lastError = error
                return askTheAgent()
            }
            return retry(agent, error: error)
        case .notDelivered(agent, let error) where !askingTheAgent:
            // Nothing reached the agent: COMMIT_ONE_PHASE may go again, until the timeout.
            guard !agentPastTimeout else {
                branches[agent].lastError = error
                return askTheAgent()
            }
            agentBackingOff = true
            return retry(agent, error: error)
        case .timedOut(.retry(agent)) where askingTheAgent:
            return [.send(.rollback, to: agent)]
        case .timedOut(.retry(agent)) where agentBackingOff:
            agentBackingOff = false
            return [.send(.commitOnePhase, to: agent)]
        case .timedOut(.phaseOne):
            agentPastTimeout = true
            guard agentBackingOff else { return [] }  // the agent's answer decides
            agentBackingOff = false
            return [.cancel(.retry(agent))] + askTheAgent()
        default:
            return []
        }
    }

    /// The agent's answer was lost (or it was never reached before the timeout): ROLLBACK
    /// asks it how its branch ended, until it answers.
    private mutating func askTheAgent() -> [TransactionAction] {
        guard let agent = lastAgent else { return [] }
        askingTheAgent = true
        return [.send(.rollback, to: agent)]
    }

    /// The last agent's branch ended as `state`; the others follow.
    private mutating func agentEnded(_ state: BranchState, reason: String?) -> [TransactionAction] {
        guard let agent = lastAgent else { return [] }
        let prepared = branches.filter { $0.state == .prepared }.map(\.id)
        let stop: [TransactionAction] = [.cancel(.retry(agent))]
        branches[agent].state = state
        agentBackingOff = false
        switch state {
        case .committed, .readOnly:
            targets = Set(prepared)
            // A committed agent's own record holds the outcome; a read-only one keeps none
            // (asked after a restart, it would acknowledge ROLLBACK): then the decision is
            // forced before any COMMIT goes out.
            let forced = state == .readOnly && !prepared.isEmpty
            return [.cancel(.phaseOne)] + stop + [.log(.decision(gid: gid, .commit, targets: prepared), forced: forced), .decided(.commit)] + deliver(.commit, to: prepared)
        case .votedNo:
            // The agent refused and rolled back; ROLLBACK records that at the agent too.
            branches[agent].lastError = reason
            return stop + abort(prepared + [agent], reason: nil, forced: false)
        default:
            return stop + abort(prepared, reason: nil, forced: false)
        }
    }

    /// A vote from branch `id`; nil is the interactive commit request (every enlisted
    /// branch has already prepared).
    private mutating func voted(_ id: BranchID?, _ vote: Vote, result: JSONValue? = nil) -> [TransactionAction] {
        guard let id else { return decideAfterVotes() }
        guard isPending(id) else { return [] }  // duplicate or unknown branch
        branches[id].result = result
        switch vote {
        case .yes:
            branches[id].state = .prepared
        case .readOnly:
            branches[id].state = .readOnly
        case .no(let reason):
            branches[id].state = .votedNo
            branches[id].lastError = reason
            return abort(reason: nil)
        }
        guard branches.allSatisfy({ $0.state == .prepared || $0.state == .readOnly || $0.id == lastAgent }) else { return [] }
        if let lastAgent { return delegate(to: lastAgent) }
        return decideAfterVotes()
    }

    private mutating func decideAfterVotes() -> [TransactionAction] {
        let commitTargets = branches.filter { $0.state == .prepared }.map(\.id)
        targets = Set(commitTargets)
        // Every branch read-only: no participant waits for the decision, so it need not be
        // forced; it is logged all the same, so that a restart reports the commit.
        let decision: TransactionAction = .log(.decision(gid: gid, .commit, targets: commitTargets), forced: !commitTargets.isEmpty)
        return [.cancel(.phaseOne), decision, .decided(.commit)] + deliver(.commit, to: commitTargets)
    }

    /// Abort before a decision: every branch that may have prepared gets ROLLBACK.
    /// `reason` is an application's or operator's, logged with the decision.
    private mutating func abort(reason: String?) -> [TransactionAction] {
        abort(branches.filter { $0.state == .prepared || $0.state == .preparing }.map(\.id), reason: reason, forced: false)
    }

    private mutating func acknowledged(_ id: BranchID) -> [TransactionAction] {
        switch state(of: id) {
        case .committing: branches[id].state = .committed
        case .rollingBack: branches[id].state = .rolledBack
        default: return []  // duplicate or unexpected
        }
        return finishIfDone(after: [.cancel(.retry(id))])
    }

    private mutating func recover(_ recovered: Recovered) -> [TransactionAction] {
        switch recovered {
        case .undecided:
            // Presumed abort: we cannot know who prepared, so every branch gets ROLLBACK
            // (which a participant that never prepared acknowledges as a no-op).
            for id in branches.indices { branches[id].state = .preparing }
            return abort(reason: nil)
        case let .decided(decision, decidedTargets, wasHeuristic):
            // Branches outside the targets voted read-only (commit) or never prepared (abort).
            let actions = resume(decision, targets: decidedTargets, heuristic: wasHeuristic, others: decision == .commit ? .readOnly : .rolledBack)
            if let lastAgent, decision == .commit, !targets.contains(lastAgent) { branches[lastAgent].state = .committed }
            return actions
        }
    }

    /// The agent may have committed, or may yet: it is asked with ROLLBACK.
    private mutating func recoverDelegation(prepared: [BranchID]) -> [TransactionAction] {
        guard let agent = lastAgent else { return recover(.undecided) }
        status = .preparing
        for id in branches.indices { branches[id].state = prepared.contains(id) ? .prepared : .readOnly }
        targets = Set(prepared)
        askingTheAgent = true
        branches[agent].state = .preparing
        branches[agent].attempts = 1
        return [.send(.rollback, to: agent)]
    }
}

extension TwoPhaseCommit.Recovered {
    /// What a restart tells the machine about a transaction the log left unfinished.
    public init(_ unfinished: TransactionLogReplay.Replayed) {
        if let decision = unfinished.decision {
            self = .decided(decision, targets: unfinished.targets, heuristic: unfinished.heuristic)
        } else {
            self = .undecided
        }
    }
}

extension TwoPhaseCommit {
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
            case let (.prepare, .done(status, result)): return .voted(id, status == "read_only" ? .readOnly : .yes, result: result)
            case let (.prepare, .refused(code, message)), let (.commitOnePhase, .refused(code, message)):
                return .voted(id, .no(message), result: .refusal(code: code, message: message))
            case let (.prepare, .undelivered(error)), let (.commitOnePhase, .undelivered(error)): return .notDelivered(id, error)
            case let (.commitOnePhase, .done("read_only", result)): return .voted(id, .readOnly, result: result)
            case let (.commitOnePhase, .done("committed", result)): return .acknowledged(id, result: result)
            case (.commitOnePhase, .done(let status, _)): return .deliveryFailed(id, "commit_one_phase answered '\(status)', neither committed nor read_only")
            case (.commit, .done), (.rollback, .done): return .acknowledged(id)
            case (.try, .done), (.confirm, .done), (.cancel, .done), (.action, .done), (.compensate, .done),
                 (.canCommit, .done), (.preCommit, .done), (.doCommit, .done), (.queryPrepared, .done): return nil  // not a 2PC message
            case (.commit, .refused("already_rolled_back", let message)): return .endedOtherwise(id, .rolledBack, "heuristic: the participant had already rolled back: \(message)")
            case (.rollback, .refused("already_committed", let message)): return .endedOtherwise(id, .committed, "heuristic: the participant had already committed: \(message)")
            case (_, .refused(let code, let message)): return .deliveryFailed(id, "\(code): \(message)")
            case let (_, .failed(error)), let (_, .undelivered(error)): return .deliveryFailed(id, error)
            }
        }
    }

    public func rejection(of event: CommonEvent) -> String? {
        switch event {
        case .enlisted, .commitRequested:
            guard interactive else { return "the transaction was submitted whole; only interactive transactions take enlistments and commit requests" }
            return status == .active ? nil : "the transaction is \(status.rawValue), no longer open"
        case .abortRequested:
            if awaitingTheAgent, let lastAgent {
                return "branch \(lastAgent) (\(branches[lastAgent].spec.participant)) was sent its one-phase commit and decides the outcome; the transaction can no longer be aborted from here"
            }
            return status == .active || status == .preparing ? nil : "the transaction is \(status.rawValue); an abort now needs an operator's force with a reason"
        case .forced(let decision, _):
            return forceRejection(decision)
        case .resolvedByHand(let id, _, _):
            return handResolutionRejection(id)
        default:
            return nil
        }
    }

    /// Under a commit, only the branches phase two reaches (and a last agent, whose
    /// commit decided) commit: a read-only voter, or a branch beyond those enlisted, is
    /// told aborted (it holds nothing to commit).
    public func outcome(of id: BranchID, decided: Decision) -> Decision {
        guard decided == .commit, branches.indices.contains(id) else { return .abort }
        return branches[id].state == .committing || branches[id].state == .committed ? .commit : .abort
    }

    public static func ended(_ replayed: TransactionLogReplay.Replayed) -> TwoPhaseCommit {
        var machine = recovering(replayed).0
        // Outside the commit's targets (and the last agent, whose commit decided): read-only voters.
        let committed = Set(replayed.targets + (replayed.lastAgent.map { [$0] } ?? []))
        machine.branches = replayed.endedBranches(machine.branches) { id, decision in
            decision == .abort ? .rolledBack : committed.contains(id) ? .committed : .readOnly
        }
        machine.status = replayed.endedStatus
        machine.targets = committed
        machine.heuristic = replayed.heuristic
        return machine
    }

    public static func recovering(_ replayed: TransactionLogReplay.Replayed) -> (TwoPhaseCommit, Event) {
        var machine = replayed.interactive
            ? TwoPhaseCommit(interactive: replayed.gid, enlisted: replayed.branches)
            : TwoPhaseCommit(gid: replayed.gid, branches: replayed.branches, lastAgent: replayed.lastAgent != nil)
        machine.branches = replayed.withDetails(machine.branches)
        if replayed.decision == nil, replayed.lastAgent != nil, machine.lastAgent != nil {
            return (machine, .recoveredDelegation(targets: replayed.targets))
        }
        return (machine, .recovered(Recovered(replayed)))
    }
}

extension TwoPhaseCommit: DecisionDelivering {
    static var working: BranchState { .preparing }

    static func words(for decision: Decision) -> DecisionWords {
        decision == .commit
            ? DecisionWords(message: .commit, pending: .committing, done: .committed, status: .committing)
            : DecisionWords(message: .rollback, pending: .rollingBack, done: .rolledBack, status: .aborting)
    }
}
