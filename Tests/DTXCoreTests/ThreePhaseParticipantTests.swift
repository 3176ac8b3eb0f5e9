import DTXCore
import Testing

private let gid = try! GlobalTransactionID(validating: "3pc-1")

/// Branch `branch` of a three-branch transaction, in `state`.
private func participant(_ state: ThreePhaseState = .initial, branch: BranchID = 0) -> ThreePhaseParticipant {
    ThreePhaseParticipant(gid: gid, branch: branch, branchCount: 3, state: state)
}

/// Branch 0 timed out in `state` and found the coordinator unreachable: its peers are asked.
private func askingPeers(_ state: ThreePhaseState) -> ThreePhaseParticipant {
    var p = participant(state)
    _ = p.handle(.timedOut)
    _ = p.handle(.coordinatorAnswered(nil))
    return p
}

private let alreadyAborted = ThreePhaseParticipant.Reply.refused(code: "already_aborted", message: "the branch has already aborted")

private let messages: [ThreePhaseParticipant.Event] = [.canCommit, .preCommit, .doCommit, .abort, .stateRequested]

@Suite struct ThreePhaseParticipantTests {
    @Test func votesPreCommitsAndCommitsMakingEachStateDurableBeforeAnswering() {
        var p = participant()
        #expect(p.peers == [1, 2])
        #expect(p.handle(.canCommit) == [.prepare, .schedule(attempt: 1)])
        #expect(p.state == .initial && p.preparing)
        #expect(p.handle(.workPrepared) == [.reply(.state(.prepared)), .schedule(attempt: 1)])
        #expect(p.state == .prepared)
        #expect(p.handle(.preCommit) == [.recordPreCommit, .reply(.state(.preCommitted)), .schedule(attempt: 1)])
        #expect(p.state == .preCommitted)
        #expect(p.handle(.doCommit) == [.cancelTimer, .commit, .reply(.state(.committed))])
        #expect(p.state == .committed)
    }

    @Test func aRefusedWorkIsTheNoVoteAndTheBranchStaysAborted() {
        var p = participant()
        _ = p.handle(.canCommit)
        #expect(p.handle(.workRefused(code: "insufficient_funds", message: "balance 3 < 5")) == [
            .cancelTimer, .rollback, .reply(.refused(code: "insufficient_funds", message: "balance 3 < 5")),
        ])
        #expect(p.state == .aborted && !p.preparing)
        #expect(p.handle(.canCommit) == [.reply(alreadyAborted)])
    }

    @Test func aDuplicateCanCommitWhileTheWorkRunsIsToldToRetry() {
        var p = participant()
        _ = p.handle(.canCommit)
        #expect(p.handle(.canCommit) == [.reply(.busy)])
    }

    @Test func theTimeoutInQAbortsAndWorkFinishingLaterIsUndone() {
        var p = participant()
        _ = p.handle(.canCommit)
        #expect(p.handle(.timedOut) == [.cancelTimer, .rollback])
        #expect(p.state == .aborted)
        // The prepare finished after the abort: undo it and vote no.
        #expect(p.handle(.workPrepared) == [.rollback, .reply(alreadyAborted)])
        #expect(p.handle(.workPrepared) == [])

        var refused = participant()
        _ = refused.handle(.canCommit)
        _ = refused.handle(.abort)
        #expect(refused.handle(.workRefused(code: "x", message: "y")) == [.reply(alreadyAborted)])
    }

    @Test func aBranchInQAbortsBeforeItAnswersAPeerSoItNeverVotesYesAfterwards() {
        var p = participant()
        #expect(p.handle(.stateRequested) == [.cancelTimer, .rollback, .reply(.state(.aborted))])
        #expect(p.handle(.canCommit) == [.reply(alreadyAborted)])
    }

    /// Every state against every message: the answer, and where the branch ends up.
    @Test(arguments: [
        (ThreePhaseState.initial, ThreePhaseParticipant.Event.preCommit, ThreePhaseParticipant.Reply.refused(code: "already_aborted", message: "the branch has already aborted"), ThreePhaseState.aborted),
        (.initial, .doCommit, .refused(code: "already_aborted", message: "the branch has already aborted"), .aborted),
        (.initial, .abort, .state(.aborted), .aborted),
        (.initial, .stateRequested, .state(.aborted), .aborted),
        (.prepared, .canCommit, .state(.prepared), .prepared),
        (.prepared, .preCommit, .state(.preCommitted), .preCommitted),
        (.prepared, .doCommit, .state(.committed), .committed),  // the coordinator committed without its PreCommit ack
        (.prepared, .abort, .state(.aborted), .aborted),
        (.prepared, .stateRequested, .state(.prepared), .prepared),
        (.preCommitted, .canCommit, .state(.preCommitted), .preCommitted),
        (.preCommitted, .preCommit, .state(.preCommitted), .preCommitted),
        (.preCommitted, .doCommit, .state(.committed), .committed),
        (.preCommitted, .abort, .state(.aborted), .aborted),  // the coordinator aborted: a branch had
        (.preCommitted, .stateRequested, .state(.preCommitted), .preCommitted),
        (.committed, .canCommit, .state(.committed), .committed),
        (.committed, .preCommit, .state(.committed), .committed),
        (.committed, .doCommit, .state(.committed), .committed),
        (.committed, .abort, .refused(code: "already_committed", message: "branch 0 of 3pc-1 has already committed"), .committed),
        (.committed, .stateRequested, .state(.committed), .committed),
        (.aborted, .canCommit, .refused(code: "already_aborted", message: "the branch has already aborted"), .aborted),
        (.aborted, .preCommit, .refused(code: "already_aborted", message: "the branch has already aborted"), .aborted),
        (.aborted, .doCommit, .refused(code: "already_aborted", message: "the branch has already aborted"), .aborted),
        (.aborted, .abort, .state(.aborted), .aborted),
        (.aborted, .stateRequested, .state(.aborted), .aborted),
    ] as [(ThreePhaseState, ThreePhaseParticipant.Event, ThreePhaseParticipant.Reply, ThreePhaseState)])
    func everyMessageInEveryState(_ from: ThreePhaseState, _ message: ThreePhaseParticipant.Event, _ reply: ThreePhaseParticipant.Reply, _ to: ThreePhaseState) {
        var p = participant(from)
        let actions = p.handle(message)
        #expect(actions.filter { if case .reply = $0 { return true } else { return false } } == [.reply(reply)])
        #expect(p.state == to)
    }

    /// The invariants of every transition: a final state never changes; each state is
    /// made durable by its own action before anything is answered; c is reached only
    /// from w or p; every message gets exactly one answer (CANCOMMIT in q once its work is done).
    @Test(arguments: ThreePhaseState.allCases)
    func transitionsKeepTheInvariants(_ from: ThreePhaseState) {
        let durableActions: [ThreePhaseParticipant.Action] = [.commit, .rollback, .recordPreCommit]
        let events: [ThreePhaseParticipant.Event] = messages + [
            .workPrepared, .workRefused(code: "c", message: "m"), .timedOut, .recovered,
            .coordinatorAnswered(nil), .coordinatorAnswered(.committed), .peersAnswered([1: .aborted]), .peersPreCommitted([1: .committed]),
        ]
        for event in events {
            var p = participant(from)
            let actions = p.handle(event)
            let to = p.state
            if from == .committed || from == .aborted { #expect(to == from, "\(from) left by \(event)") }
            if to == .committed && from != .committed {
                #expect(from == .prepared || from == .preCommitted, "\(from) committed on \(event)")
                #expect(actions.contains(.commit))
            }
            if to == .aborted && from != .aborted { #expect(actions.contains(.rollback)) }
            if to == .preCommitted && from != .preCommitted { #expect(actions.first == .recordPreCommit) }
            let replies = actions.filter { if case .reply = $0 { return true } else { return false } }
            if messages.contains(event) && !(from == .initial && event == .canCommit) {
                #expect(replies.count == 1, "\(from) answers \(event) once")
            }
            if let reply = actions.firstIndex(where: { if case .reply = $0 { return true } else { return false } }),
               let durable = actions.firstIndex(where: durableActions.contains) {
                #expect(durable < reply, "\(from) on \(event): durable before the answer")
            }
        }
    }
}

@Suite struct ThreePhaseParticipantTerminationTests {
    @Test(arguments: [ThreePhaseState.prepared, .preCommitted])
    func aTimeoutInWOrPAsksTheCoordinatorFirst(_ state: ThreePhaseState) {
        var p = participant(state)
        #expect(p.handle(.timedOut) == [.askCoordinator])
        #expect(p.termination == .askingCoordinator)
        #expect(p.handle(.timedOut) == [])  // one round at a time
    }

    @Test(arguments: [
        (ThreePhaseState.prepared, ThreePhaseState?.some(.committed), [ThreePhaseParticipant.Action.cancelTimer, .commit], ThreePhaseState.committed),
        (.preCommitted, .committed, [.cancelTimer, .commit], .committed),
        (.prepared, .aborted, [.cancelTimer, .rollback], .aborted),  // also presumed abort: an unknown gid
        (.preCommitted, .aborted, [.cancelTimer, .rollback], .aborted),
        (.prepared, .preCommitted, [.recordPreCommit, .schedule(attempt: 1)], .preCommitted),
        (.preCommitted, .preCommitted, [.schedule(attempt: 1)], .preCommitted),
        (.prepared, .prepared, [.schedule(attempt: 1)], .prepared),  // still collecting votes: wait
        (.prepared, nil, [.askPeers([1, 2])], .prepared),
        (.preCommitted, nil, [.askPeers([1, 2])], .preCommitted),
    ] as [(ThreePhaseState, ThreePhaseState?, [ThreePhaseParticipant.Action], ThreePhaseState)])
    func theCoordinatorsAnswerDecides(_ state: ThreePhaseState, _ answer: ThreePhaseState?, _ expected: [ThreePhaseParticipant.Action], _ after: ThreePhaseState) {
        var p = participant(state)
        _ = p.handle(.timedOut)
        #expect(p.handle(.coordinatorAnswered(answer)) == expected)
        #expect(p.state == after)
        #expect(p.termination == (answer == nil ? .askingPeers : nil))
    }

    @Test(arguments: [
        // self, peers that answered → actions, state after
        (ThreePhaseState.prepared, [1: ThreePhaseState.committed], [ThreePhaseParticipant.Action.cancelTimer, .commit], ThreePhaseState.committed),
        (.preCommitted, [1: .aborted, 2: .preCommitted], [.cancelTimer, .rollback], .aborted),
        (.prepared, [1: .prepared, 2: .prepared], [.cancelTimer, .rollback], .aborted),
        (.prepared, [:], [.cancelTimer, .rollback], .aborted),
        (.prepared, [1: .initial], [.cancelTimer, .rollback], .aborted),
        (.preCommitted, [1: .preCommitted], [.cancelTimer, .commit], .committed),
        (.preCommitted, [:], [.cancelTimer, .commit], .committed),  // alone in p: everyone voted yes
        (.prepared, [2: .preCommitted], [.recordPreCommit, .cancelTimer, .commit], .committed),
        (.preCommitted, [1: .prepared, 2: .preCommitted], [.sendPreCommit(to: [1])], .preCommitted),
        (.prepared, [1: .prepared, 2: .preCommitted], [.recordPreCommit, .sendPreCommit(to: [1])], .preCommitted),
        (.preCommitted, [1: .committed, 2: .aborted], [.schedule(attempt: 2)], .preCommitted),
        (.preCommitted, [1: .initial], [.schedule(attempt: 2)], .preCommitted),
    ] as [(ThreePhaseState, [BranchID: ThreePhaseState], [ThreePhaseParticipant.Action], ThreePhaseState)])
    func withoutTheCoordinatorThePeersStatesDecide(_ state: ThreePhaseState, _ answers: [BranchID: ThreePhaseState], _ expected: [ThreePhaseParticipant.Action], _ after: ThreePhaseState) {
        var p = askingPeers(state)
        #expect(p.handle(.peersAnswered(answers)) == expected)
        #expect(p.state == after)
    }

    @Test func bringingPeersToPThenCommitsWithWhoeverAnswered() {
        for (answers, expected, after) in [
            ([1: ThreePhaseState.preCommitted], [ThreePhaseParticipant.Action.cancelTimer, .commit], ThreePhaseState.committed),
            ([:], [.cancelTimer, .commit], .committed),  // the peer vanished: taken as crashed
            ([1: .aborted], [.cancelTimer, .rollback], .aborted),  // it had aborted meanwhile
            ([1: .prepared], [.schedule(attempt: 2)], .preCommitted),  // it did not move: try later
        ] as [([BranchID: ThreePhaseState], [ThreePhaseParticipant.Action], ThreePhaseState)] {
            var p = askingPeers(.prepared)
            _ = p.handle(.peersAnswered([1: .prepared, 2: .preCommitted]))
            #expect(p.termination == .preCommittingPeers)
            #expect(p.handle(.peersPreCommitted(answers)) == expected)
            #expect(p.state == after)
        }
    }

    @Test func aRoundThatCannotDecideBacksOffAndTheNextOneAsksTheCoordinatorAgain() {
        var p = askingPeers(.preCommitted)
        #expect(p.handle(.peersAnswered([1: .committed, 2: .aborted])) == [.schedule(attempt: 2)])
        #expect(p.inconclusiveRounds == 1 && p.lastProblem?.contains("committed") == true)
        #expect(p.handle(.timedOut) == [.askCoordinator])
        #expect(p.handle(.coordinatorAnswered(nil)) == [.askPeers([1, 2])])
        #expect(p.handle(.peersAnswered([1: .initial])) == [.schedule(attempt: 3)])
        _ = p.handle(.timedOut)
        #expect(p.handle(.coordinatorAnswered(.committed)) == [.cancelTimer, .commit])
    }

    @Test func staleAnswersAreIgnoredAndMessagesWinOverARunningRound() {
        var p = participant(.prepared)
        #expect(p.handle(.coordinatorAnswered(.aborted)) == [])  // nobody asked
        #expect(p.handle(.peersAnswered([1: .aborted])) == [])
        _ = p.handle(.timedOut)
        #expect(p.handle(.peersAnswered([1: .aborted])) == [])   // the coordinator was asked, not the peers
        // The coordinator's PreCommit arrives while the question is out: it is alive.
        #expect(p.handle(.preCommit) == [.recordPreCommit, .reply(.state(.preCommitted)), .schedule(attempt: 1)])
        #expect(p.termination == nil)
        #expect(p.handle(.coordinatorAnswered(nil)) == [])

        var q = askingPeers(.preCommitted)
        #expect(q.handle(.doCommit) == [.cancelTimer, .commit, .reply(.state(.committed))])
        #expect(q.handle(.peersAnswered([1: .aborted])) == [])
        #expect(q.state == .committed)

        var peer = participant(.prepared, branch: 1)
        #expect(peer.handle(.peersAnswered([0: .committed])) == [])
        _ = peer.handle(.timedOut)
        _ = peer.handle(.coordinatorAnswered(nil))
        // Answers about itself or unknown branches are not evidence.
        #expect(peer.handle(.peersAnswered([1: .committed, 9: .committed])) == [.cancelTimer, .rollback])
    }

    @Test func aSingleBranchDecidesOnItsOwnStateWhenTheCoordinatorIsGone() {
        var w = ThreePhaseParticipant(gid: gid, branch: 0, branchCount: 1, state: .prepared)
        _ = w.handle(.timedOut)
        #expect(w.handle(.coordinatorAnswered(nil)) == [.cancelTimer, .rollback])
        var p = ThreePhaseParticipant(gid: gid, branch: 0, branchCount: 1, state: .preCommitted)
        _ = p.handle(.timedOut)
        #expect(p.handle(.coordinatorAnswered(nil)) == [.cancelTimer, .commit])
    }

    /// Recovery from every state the participant's records can hold (q: none, the work
    /// had not prepared).
    @Test(arguments: [
        (ThreePhaseState.initial, [ThreePhaseParticipant.Action.cancelTimer, .rollback], ThreePhaseState.aborted),
        (.prepared, [.askCoordinator], .prepared),
        (.preCommitted, [.askCoordinator], .preCommitted),
        (.committed, [], .committed),
        (.aborted, [], .aborted),
    ] as [(ThreePhaseState, [ThreePhaseParticipant.Action], ThreePhaseState)])
    func restartRunsTerminationInWOrPAndAbortsInQ(_ state: ThreePhaseState, _ expected: [ThreePhaseParticipant.Action], _ after: ThreePhaseState) {
        let (recovered, event) = ThreePhaseParticipant.recovering(gid: gid, branch: 0, branchCount: 3, state: state)
        var p = recovered
        #expect(event == .recovered)
        #expect(p.handle(event) == expected)
        #expect(p.state == after)
        #expect(p.termination == (expected == [.askCoordinator] ? .askingCoordinator : nil))
    }
}

/// The participants' machines together, with the coordinator crashed at each point of
/// the protocol: every branch times out, finds the coordinator unreachable and runs
/// termination with its peers, one after the other. They all reach the same outcome —
/// the one the protocol allows at that point — without the coordinator: non-blocking.
@Suite struct ThreePhaseTerminationTogetherTests {
    private func terminate(_ states: [ThreePhaseState]) -> [ThreePhaseState] {
        var branches = states.indices.map { ThreePhaseParticipant(gid: gid, branch: $0, branchCount: states.count, state: states[$0]) }
        /// A peer's answer is the state it is in after the question (or the PreCommit).
        func answer(_ id: BranchID, _ event: ThreePhaseParticipant.Event) -> ThreePhaseState {
            _ = branches[id].handle(event)
            return branches[id].state
        }
        for id in branches.indices where [.prepared, .preCommitted].contains(branches[id].state) {
            #expect(branches[id].handle(.timedOut) == [.askCoordinator])
            guard case .askPeers(let peers)? = branches[id].handle(.coordinatorAnswered(nil)).last else { continue }
            var answers: [BranchID: ThreePhaseState] = [:]
            for peer in peers { answers[peer] = answer(peer, .stateRequested) }
            guard case .sendPreCommit(let behind)? = branches[id].handle(.peersAnswered(answers)).last else { continue }
            var acknowledged: [BranchID: ThreePhaseState] = [:]
            for peer in behind { acknowledged[peer] = answer(peer, .preCommit) }
            _ = branches[id].handle(.peersPreCommitted(acknowledged))
        }
        return branches.map(\.state)
    }

    @Test(arguments: [
        // where the coordinator crashed → the branches' states then → the outcome
        ("sending CanCommit (branch 2 never got it)", [ThreePhaseState.prepared, .prepared, .initial], ThreePhaseState.aborted),
        ("collecting votes", [.prepared, .prepared, .prepared], .aborted),
        ("sending the abort", [.aborted, .prepared, .prepared], .aborted),
        ("sending PreCommit (one delivered)", [.prepared, .preCommitted, .prepared], .committed),
        ("sending PreCommit (two delivered)", [.preCommitted, .prepared, .preCommitted], .committed),
        ("collecting PreCommit acknowledgements", [.preCommitted, .preCommitted, .preCommitted], .committed),
        ("sending DoCommit", [.preCommitted, .committed, .preCommitted], .committed),
    ] as [(String, [ThreePhaseState], ThreePhaseState)])
    func everyBranchReachesTheSameOutcome(_ when: String, _ states: [ThreePhaseState], _ outcome: ThreePhaseState) {
        #expect(terminate(states) == Array(repeating: outcome, count: states.count), "coordinator crashed while \(when)")
    }
}
