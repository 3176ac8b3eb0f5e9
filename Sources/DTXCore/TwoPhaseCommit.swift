/// Two-phase commit with presumed abort (R*, Mohan et al. 1986), as a pure state machine.
///
/// Coordinator log writes: `begin` (lazy) → all YES: `decision(commit)` **forced** →
/// all ACK: `end` (lazy). Any NO, phase-one delivery failure or timeout: `decision(abort)`
/// (lazy) → ROLLBACK to every branch that may have prepared, retried until acknowledged.
/// So a committed transaction costs one forced write and an aborted one none; a gid
/// the log does not know is aborted. Read-only voters drop out of phase two; a single
/// branch commits in one phase.
public struct TwoPhaseCommit: TransactionStateMachine {
    public enum Event: Sendable, Equatable {
        case start
        case voted(BranchID, Vote)
        /// The participant confirmed COMMIT or ROLLBACK (or, in one phase, its commit).
        case acknowledged(BranchID)
        /// A message could not be delivered or got no usable answer.
        case deliveryFailed(BranchID, String)
        case timedOut(TimerID)
        /// Rebuild after a restart from what the log holds for this transaction.
        case recovered(Recovered)
    }

    /// What replaying the log found.
    public enum Recovered: Sendable, Equatable {
        /// `begin` without a decision: presumed abort.
        case undecided
        case decided(Decision, targets: [BranchID])
    }

    public let gid: GlobalTransactionID
    public private(set) var status: TransactionStatus = .created
    public private(set) var branches: [Branch]
    /// Branches phase two must reach.
    public private(set) var targets: Set<BranchID> = []

    public init(gid: GlobalTransactionID, branches: [BranchSpec]) {
        precondition(!branches.isEmpty, "a transaction has at least one branch")
        self.gid = gid
        self.branches = branches.enumerated().map { Branch(id: $0.offset, spec: $0.element) }
    }

    private var isOnePhase: Bool { branches.count == 1 }

    public mutating func handle(_ event: Event) -> [TransactionAction] {
        switch (status, event) {
        case (.created, .start):
            return start()
        case (.created, .recovered(let recovered)):
            return recover(recovered)
        case (.preparing, .voted(let id, let vote)):
            return voted(id, vote)
        case (.preparing, .deliveryFailed(let id, let error)):
            guard isPending(id) else { return [] }
            if isOnePhase {
                // The participant owns the decision in one phase: ask again until it answers.
                return retry(id, error: error)
            }
            branches[id].lastError = error
            return abort()
        case (.preparing, .acknowledged(let id)) where isOnePhase && isPending(id):
            return voted(id, .yes)
        case (.preparing, .timedOut(.phaseOne)) where !isOnePhase:
            return abort()
        case (.preparing, .timedOut(.retry(let id))) where isOnePhase && isPending(id):
            return [.send(.commitOnePhase, to: id)]
        case (.committing, .acknowledged(let id)), (.aborting, .acknowledged(let id)):
            return acknowledged(id)
        case (.committing, .deliveryFailed(let id, let error)):
            return state(of: id) == .committing ? retry(id, error: error) : []
        case (.aborting, .deliveryFailed(let id, let error)):
            return state(of: id) == .rollingBack ? retry(id, error: error) : []
        case (.committing, .timedOut(.retry(let id))):
            return state(of: id) == .committing ? [.send(.commit, to: id)] : []
        case (.aborting, .timedOut(.retry(let id))):
            return state(of: id) == .rollingBack ? [.send(.rollback, to: id)] : []
        default:
            // Late, duplicate and out-of-order messages change nothing.
            return []
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
        var actions: [TransactionAction] = [.log(.begin(gid: gid, protocol: .twoPhaseCommit, branches: branches.map(\.spec)), forced: false)]
        let message: ParticipantMessage = isOnePhase ? .commitOnePhase : .prepare
        for id in branches.indices {
            branches[id].state = .preparing
            branches[id].attempts = 1
            actions.append(.send(message, to: id))
        }
        if !isOnePhase { actions.append(.schedule(.phaseOne, attempt: 1)) }
        return actions
    }

    private mutating func voted(_ id: BranchID, _ vote: Vote) -> [TransactionAction] {
        guard isPending(id) else { return [] }  // duplicate or unknown branch
        switch vote {
        case .yes:
            branches[id].state = .prepared
        case .readOnly:
            branches[id].state = .readOnly
        case .no(let reason):
            branches[id].state = .votedNo
            branches[id].lastError = reason
            return abort()
        }
        if isOnePhase {
            // The participant committed (or found nothing to do) on its own.
            branches[id].state = vote == .readOnly ? .readOnly : .committed
            status = .committed
            return [.cancel(.retry(id)), .decided(.commit), .log(.end(gid: gid), forced: false), .finish(.committed)]
        }
        guard branches.allSatisfy({ $0.state == .prepared || $0.state == .readOnly }) else { return [] }

        let commitTargets = branches.filter { $0.state == .prepared }.map(\.id)
        targets = Set(commitTargets)
        var actions: [TransactionAction] = [.cancel(.phaseOne)]
        if commitTargets.isEmpty {
            // Every branch was read-only: nothing to make durable, nothing to send.
            status = .committed
            return actions + [.decided(.commit), .log(.end(gid: gid), forced: false), .finish(.committed)]
        }
        status = .committing
        actions.append(.log(.decision(gid: gid, .commit, targets: commitTargets), forced: true))
        actions.append(.decided(.commit))
        for target in commitTargets {
            branches[target].state = .committing
            branches[target].attempts = 1
            actions.append(.send(.commit, to: target))
        }
        return actions
    }

    /// Abort from phase one: every branch that may have prepared gets ROLLBACK.
    private mutating func abort() -> [TransactionAction] {
        status = .aborting
        let rollbackTargets = branches.filter { $0.state == .prepared || $0.state == .preparing }.map(\.id)
        targets = Set(rollbackTargets)
        var actions: [TransactionAction] = [.cancel(.phaseOne), .log(.decision(gid: gid, .abort, targets: rollbackTargets), forced: false), .decided(.abort)]
        for target in rollbackTargets {
            branches[target].state = .rollingBack
            branches[target].attempts = 1
            actions.append(.send(.rollback, to: target))
        }
        if rollbackTargets.isEmpty {
            status = .aborted
            actions += [.log(.end(gid: gid), forced: false), .finish(.aborted)]
        }
        return actions
    }

    private mutating func acknowledged(_ id: BranchID) -> [TransactionAction] {
        switch state(of: id) {
        case .committing: branches[id].state = .committed
        case .rollingBack: branches[id].state = .rolledBack
        default: return []  // duplicate or unexpected
        }
        var actions: [TransactionAction] = [.cancel(.retry(id))]
        let done = targets.allSatisfy { branches[$0].state == .committed || branches[$0].state == .rolledBack }
        if done {
            status = status == .committing ? .committed : .aborted
            actions += [.log(.end(gid: gid), forced: false), .finish(status)]
        }
        return actions
    }

    private mutating func retry(_ id: BranchID, error: String) -> [TransactionAction] {
        branches[id].lastError = error
        branches[id].attempts += 1
        return [.schedule(.retry(id), attempt: branches[id].attempts - 1)]
    }

    private mutating func recover(_ recovered: Recovered) -> [TransactionAction] {
        switch recovered {
        case .undecided:
            // Presumed abort: we cannot know who prepared, so every branch gets ROLLBACK
            // (which a participant that never prepared acknowledges as a no-op).
            for id in branches.indices { branches[id].state = .preparing }
            return abort()
        case let .decided(decision, decidedTargets):
            targets = Set(decidedTargets)
            status = decision == .commit ? .committing : .aborting
            let message: ParticipantMessage = decision == .commit ? .commit : .rollback
            var actions: [TransactionAction] = [.decided(decision)]
            for id in branches.indices {
                branches[id].state = targets.contains(id) ? (decision == .commit ? .committing : .rollingBack) : (decision == .commit ? .readOnly : .rolledBack)
            }
            for target in decidedTargets.sorted() {
                branches[target].attempts = 1
                actions.append(.send(message, to: target))
            }
            if decidedTargets.isEmpty {
                status = decision == .commit ? .committed : .aborted
                actions += [.log(.end(gid: gid), forced: false), .finish(status)]
            }
            return actions
        }
    }
}

extension TwoPhaseCommit.Recovered {
    /// What a restart tells the machine about a transaction the log left unfinished.
    public init(_ unfinished: TransactionLogReplay.Unfinished) {
        if let decision = unfinished.decision {
            self = .decided(decision, targets: unfinished.targets)
        } else {
            self = .undecided
        }
    }
}
