/// Three-phase commit, one participant's side of one branch, as a pure state machine.
///
/// States q → w → p → c, or → a (`ThreePhaseState`); each but q is made durable before
/// it is announced: w by the work's prepare (`prepare`), p by `recordPreCommit`, c and a
/// by `commit` and `rollback`. Messages: CANCOMMIT runs the work and votes; PRECOMMIT
/// moves w to p; DOCOMMIT commits (also from w: the coordinator may commit without
/// every acknowledgement); ROLLBACK aborts. Every message is answered with the state
/// the branch is in afterwards, or 409 `already_aborted` / `already_committed`.
///
/// Timeouts (one timer per transaction, `schedule` replaces the armed one): in q →
/// abort (it has not voted, so it may). In w or p → **termination**: ask the coordinator
/// (`askCoordinator`); if it answers, do what its state says (decided: follow; p: move
/// to p and wait; still collecting votes: wait). If it cannot be reached, ask the other
/// branches (`askPeers`, through `GET {base}/dtx/state`; CANCOMMIT lists them) and
/// apply `Termination.decide` to their states and this one's. "Bring the rest to p"
/// makes this branch pre-commit first, then send PRECOMMIT to the prepared peers
/// (`sendPreCommit`); their answers decide again, and peers that did not answer are
/// taken as crashed: they find p or c when they come back. A round that cannot decide
/// waits and tries again. A restart in w or p runs termination; in q it aborts.
///
/// Answering q to a peer's question is a promise never to vote yes afterwards (the
/// peer may abort on it), so a branch still in q aborts before it answers.
public struct ThreePhaseParticipant: Sendable {
    public enum Event: Sendable, Equatable {
        /// CANCOMMIT arrived: run the work and vote.
        case canCommit
        /// The work is done and durably prepared: the yes-vote may go out.
        case workPrepared
        /// The resource manager refused the work (a definitive business failure: the no-vote).
        case workRefused(code: String, message: String)
        /// The work could not be done (the resource manager or the registry failed): the
        /// branch aborts as on a refusal, but the answer is 503, not a vote.
        case workFailed(String)
        /// PRECOMMIT arrived, from the coordinator or from a peer running termination.
        case preCommit
        case doCommit
        /// ROLLBACK arrived: 3PC's abort.
        case abort
        /// A peer asks for this branch's state during its termination.
        case stateRequested
        /// The transaction's timer fired.
        case timedOut
        /// Termination: the coordinator's state, nil when it could not be reached.
        case coordinatorAnswered(ThreePhaseState?)
        /// Termination: the states of the peers that answered (unreachable ones left out).
        case peersAnswered([BranchID: ThreePhaseState])
        /// Termination: the states peers answered PRECOMMIT with (unreachable ones left out).
        case peersPreCommitted([BranchID: ThreePhaseState])
        /// A restart: the machine holds the state the participant's records hold.
        case recovered

        /// The event a 3PC message's arrival is (ROLLBACK is 3PC's abort); nil for another
        /// protocol's message.
        public init?(arrivalOf message: ParticipantMessage) {
            switch message {
            case .canCommit: self = .canCommit
            case .preCommit: self = .preCommit
            case .doCommit: self = .doCommit
            case .rollback: self = .abort
            default: return nil
            }
        }
    }

    /// The answer to the message being handled (for CANCOMMIT, once the work is done).
    public enum Reply: Sendable, Equatable {
        /// 200 with the branch's state as its status.
        case state(ThreePhaseState)
        /// 409 with an error code and message.
        case refused(code: String, message: String)
        /// 503: CANCOMMIT's work is still running; ask again later.
        case busy
        /// 503: the participant failed to do what the message asks (not a vote).
        case unavailable(String)
    }

    /// What the participant kit must do, in order; each durable action completes before
    /// the next action runs.
    public enum Action: Sendable, Equatable {
        /// Run the branch's work and prepare it durably (w); answer with `workPrepared`
        /// or `workRefused`.
        case prepare
        /// Record the pre-commit durably (p).
        case recordPreCommit
        /// Commit the prepared work durably (c).
        case commit
        /// Roll back whatever the work left and record the abort durably (a), so that a
        /// repeated or late CANCOMMIT is refused.
        case rollback
        case reply(Reply)
        /// Arm the transaction's timer; `attempt` numbers the wait (later ones may back off).
        case schedule(attempt: Int)
        case cancelTimer
        /// Ask the coordinator for its state; answer with `coordinatorAnswered`.
        case askCoordinator
        /// Ask these branches for their state; answer with `peersAnswered`.
        case askPeers([BranchID])
        /// Send PRECOMMIT to these branches; answer with `peersPreCommitted`.
        case sendPreCommit(to: [BranchID])
    }

    /// Which question of a termination round is out.
    public enum TerminationStep: Sendable, Equatable {
        case askingCoordinator
        case askingPeers
        case preCommittingPeers
    }

    public let gid: GlobalTransactionID
    public let branch: BranchID
    /// The transaction's other branches, which termination asks.
    public let peers: [BranchID]
    public private(set) var state: ThreePhaseState
    /// CANCOMMIT's work is running (the machine is in q, or aborted meanwhile).
    public private(set) var preparing = false
    /// The termination round in progress, if any; answers to another step are stale.
    public private(set) var termination: TerminationStep?
    /// Termination rounds in a row that could not decide.
    public private(set) var inconclusiveRounds = 0
    /// Why the last termination round could not decide.
    public private(set) var lastProblem: String?

    /// `branchCount` is the number of participants CANCOMMIT lists, one per branch.
    public init(gid: GlobalTransactionID, branch: BranchID, branchCount: Int, state: ThreePhaseState = .initial) {
        self.gid = gid
        self.branch = branch
        self.peers = (0..<max(branchCount, 0)).filter { $0 != branch }
        self.state = state
    }

    /// The machine a restart rebuilds from the participant's records, and the event that resumes it.
    public static func recovering(gid: GlobalTransactionID, branch: BranchID, branchCount: Int, state: ThreePhaseState) -> (ThreePhaseParticipant, Event) {
        (ThreePhaseParticipant(gid: gid, branch: branch, branchCount: branchCount, state: state), .recovered)
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch (state, event) {
        case (.initial, .canCommit):
            guard !preparing else { return [.reply(.busy)] }
            preparing = true
            return [.prepare, .schedule(attempt: 1)]
        case (.initial, .workPrepared) where preparing:
            preparing = false
            state = .prepared
            return [.reply(.state(.prepared)), .schedule(attempt: 1)]
        case (.aborted, .workPrepared) where preparing:
            // Aborted while the work ran: undo what it prepared; the vote is no.
            preparing = false
            return [.rollback, .reply(Self.alreadyAborted)]
        case let (.initial, .workRefused(code, message)) where preparing:
            preparing = false
            return abortHere(reply: .refused(code: code, message: message))
        case let (.initial, .workFailed(message)) where preparing:
            preparing = false
            return abortHere(reply: .unavailable(message))
        case (.aborted, .workRefused) where preparing, (.aborted, .workFailed) where preparing:
            preparing = false
            return [.reply(Self.alreadyAborted)]
        case (.initial, .preCommit), (.initial, .doCommit):
            // No coordinator can mean this before the yes-vote; q may abort alone.
            return abortHere(reply: Self.alreadyAborted)
        case (.initial, .abort):
            return abortHere(reply: .state(.aborted))
        case (.initial, .stateRequested):
            // Answering q would let the peer abort on it: keep that promise durably.
            return abortHere(reply: .state(.aborted))
        case (.prepared, .preCommit):
            state = .preCommitted
            termination = nil
            inconclusiveRounds = 0
            return [.recordPreCommit, .reply(.state(.preCommitted)), .schedule(attempt: 1)]
        case (.prepared, .doCommit), (.preCommitted, .doCommit):
            return commitHere(reply: .state(.committed))
        case (.prepared, .abort), (.preCommitted, .abort):
            return abortHere(reply: .state(.aborted))
        case (.committed, .abort):
            return [.reply(.refused(code: "already_committed", message: "branch \(branch) of \(gid) has already committed"))]
        case (.aborted, .canCommit), (.aborted, .preCommit), (.aborted, .doCommit):
            return [.reply(Self.alreadyAborted)]
        case (_, .canCommit), (_, .preCommit), (_, .doCommit), (_, .abort), (_, .stateRequested):
            // Repeated messages and questions: the state as it is.
            return [.reply(.state(state))]
        case (.initial, .timedOut):
            return abortHere(reply: nil)
        case (.prepared, .timedOut), (.preCommitted, .timedOut):
            guard termination == nil else { return [] }
            termination = .askingCoordinator
            return [.askCoordinator]
        case (.prepared, .coordinatorAnswered(let answer)), (.preCommitted, .coordinatorAnswered(let answer)):
            guard termination == .askingCoordinator else { return [] }
            termination = nil
            return coordinatorAnswered(answer)
        case (.prepared, .peersAnswered(let answers)), (.preCommitted, .peersAnswered(let answers)):
            guard termination == .askingPeers else { return [] }
            termination = nil
            return conclude(Termination.decide(reachable(answers)))
        case (.preCommitted, .peersPreCommitted(let answers)):
            guard termination == .preCommittingPeers else { return [] }
            termination = nil
            let outcome = Termination.decide(reachable(answers))
            if case .preCommitFirst(let behind) = outcome {
                // A peer still prepared after PRECOMMIT: do not loop at once, try again later.
                return conclude(.undecidable("branches \(behind) did not move to pre-committed"))
            }
            return conclude(outcome)
        case (.initial, .recovered):
            return abortHere(reply: nil)
        case (.prepared, .recovered), (.preCommitted, .recovered):
            termination = .askingCoordinator
            return [.askCoordinator]
        default:
            // Stale termination answers, timers after the end, work results nobody awaits.
            return []
        }
    }

    private static let alreadyAborted = Reply.refused(code: "already_aborted", message: "the branch has already aborted")

    private mutating func commitHere(reply: Reply?) -> [Action] {
        state = .committed
        termination = nil
        return [.cancelTimer, .commit] + (reply.map { [.reply($0)] } ?? [])
    }

    private mutating func abortHere(reply: Reply?) -> [Action] {
        state = .aborted
        termination = nil
        return [.cancelTimer, .rollback] + (reply.map { [.reply($0)] } ?? [])
    }

    /// This branch's state with the peers' answers (answers about unknown branches ignored).
    private func reachable(_ answers: [BranchID: ThreePhaseState]) -> [BranchID: ThreePhaseState] {
        var reachable = answers.filter { peers.contains($0.key) }
        reachable[branch] = state
        return reachable
    }

    private mutating func coordinatorAnswered(_ answer: ThreePhaseState?) -> [Action] {
        switch answer {
        case .committed:
            return commitHere(reply: nil)
        case .aborted:
            return abortHere(reply: nil)
        case .preCommitted:
            // The coordinator has pre-committed: this branch may take p too, and waits for DoCommit.
            inconclusiveRounds = 0
            guard state == .prepared else { return [.schedule(attempt: 1)] }
            state = .preCommitted
            return [.recordPreCommit, .schedule(attempt: 1)]
        case .prepared, .initial:
            // Alive and still collecting votes: it will decide (its own timeout aborts).
            inconclusiveRounds = 0
            return [.schedule(attempt: 1)]
        case nil:
            guard !peers.isEmpty else { return conclude(Termination.decide([branch: state])) }
            termination = .askingPeers
            return [.askPeers(peers)]
        }
    }

    private mutating func conclude(_ outcome: TerminationOutcome) -> [Action] {
        switch outcome {
        case .decided(.commit):
            return commitHere(reply: nil)
        case .decided(.abort):
            return abortHere(reply: nil)
        case .preCommitFirst(let behind):
            var actions: [Action] = []
            if state == .prepared {
                state = .preCommitted
                actions.append(.recordPreCommit)
            }
            let others = behind.filter { $0 != branch }
            guard !others.isEmpty else { return actions + commitHere(reply: nil) }
            termination = .preCommittingPeers
            return actions + [.sendPreCommit(to: others)]
        case .undecidable(let why):
            lastProblem = why
            inconclusiveRounds += 1
            return [.schedule(attempt: inconclusiveRounds + 1)]
        }
    }
}
