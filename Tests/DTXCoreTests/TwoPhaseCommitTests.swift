import DTXCore
import Testing

private let gid = try! GlobalTransactionID(validating: "tx-1")

private func machine(_ count: Int) -> TwoPhaseCommit {
    TwoPhaseCommit(gid: gid, branches: (0..<count).map { BranchSpec(participant: "p\($0)", operation: "op") })
}

/// A machine with every branch in `preparing`.
private func started(_ count: Int) -> TwoPhaseCommit {
    var m = machine(count)
    _ = m.handle(.start)
    return m
}

private func forcedWrites(_ actions: [TransactionAction]) -> Int {
    actions.filter { if case .log(_, forced: true) = $0 { return true } else { return false } }.count
}

@Suite struct TwoPhaseCommitTests {
    @Test func startLogsBeginLazilyPreparesEveryBranchAndArmsTheTimeout() {
        var m = machine(3)
        let actions = m.handle(.start)
        #expect(actions == [
            .log(.begin(gid: gid, protocol: .twoPhaseCommit, branches: m.branches.map(\.spec)), forced: false),
            .send(.prepare, to: 0), .send(.prepare, to: 1), .send(.prepare, to: 2),
            .schedule(.phaseOne, attempt: 1),
        ])
        #expect(m.status == .preparing)
        #expect(m.branches.allSatisfy { $0.state == .preparing })
    }

    @Test func allYesForcesTheCommitDecisionBeforeSendingCommit() {
        var m = started(2)
        #expect(m.handle(.voted(0, .yes)) == [])
        let actions = m.handle(.voted(1, .yes))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .commit, targets: [0, 1]), forced: true),
            .decided(.commit),
            .send(.commit, to: 0), .send(.commit, to: 1),
        ])
        #expect(m.status == .committing)
        #expect(m.handle(.acknowledged(1)) == [.cancel(.retry(1))])
        #expect(m.handle(.acknowledged(0)) == [.cancel(.retry(0)), .log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(m.status == .committed)
        #expect(m.branches.allSatisfy { $0.state == .committed })
    }

    @Test func aCommittedTransactionForcesExactlyOneWriteAndAnAbortedOneNone() {
        var commit = machine(3)
        var all = commit.handle(.start)
        for id in 0..<3 { all += commit.handle(.voted(id, .yes)) }
        for id in 0..<3 { all += commit.handle(.acknowledged(id)) }
        #expect(forcedWrites(all) == 1)

        var abort = machine(3)
        all = abort.handle(.start)
        all += abort.handle(.voted(0, .yes))
        all += abort.handle(.voted(1, .no("insufficient funds")))
        all += abort.handle(.acknowledged(0))
        all += abort.handle(.acknowledged(2))
        #expect(forcedWrites(all) == 0)
        #expect(abort.status == .aborted)
    }

    @Test func aNoVoteAbortsAndRollsBackEveryBranchThatMayHavePrepared() {
        var m = started(3)
        _ = m.handle(.voted(0, .yes))
        let actions = m.handle(.voted(1, .no("insufficient funds")))
        // Branch 2 has not answered: it may prepare later, so it gets ROLLBACK too.
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 2]), forced: false),
            .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 2),
        ])
        #expect(m.branches[1].state == .votedNo)
        #expect(m.branches[1].lastError == "insufficient funds")
        _ = m.handle(.acknowledged(2))
        #expect(m.handle(.acknowledged(0)) == [.cancel(.retry(0)), .log(.end(gid: gid), forced: false), .finish(.aborted)])
    }

    @Test func readOnlyVotersDropOutOfPhaseTwo() {
        var m = started(3)
        _ = m.handle(.voted(0, .readOnly))
        _ = m.handle(.voted(1, .yes))
        let actions = m.handle(.voted(2, .readOnly))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .commit, targets: [1]), forced: true),
            .decided(.commit),
            .send(.commit, to: 1),
        ])
        #expect(m.handle(.acknowledged(1)) == [.cancel(.retry(1)), .log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func allReadOnlyCommitsWithoutAnyForcedWriteOrPhaseTwoButLogsTheDecision() {
        var m = started(2)
        _ = m.handle(.voted(0, .readOnly))
        #expect(m.handle(.voted(1, .readOnly)) == [
            .cancel(.phaseOne), .log(.decision(gid: gid, .commit, targets: []), forced: false), .decided(.commit),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
    }

    @Test func aSingleBranchCommitsInOnePhaseAndItsCommitIsLoggedLazily() {
        var m = machine(1)
        #expect(m.lastAgent == 0)
        // No delegation record: the begin is all a restart needs. The timeout bounds only the
        // resending of a COMMIT_ONE_PHASE that never reached the participant.
        #expect(m.handle(.start) == [
            .log(.begin(gid: gid, protocol: .twoPhaseCommit, branches: m.branches.map(\.spec)), forced: false), .send(.commitOnePhase, to: 0),
            .schedule(.phaseOne, attempt: 1),
        ])
        #expect(m.handle(.timedOut(.phaseOne)) == [])
        #expect(m.handle(.abortRequested(reason: "changed my mind")) == [])
        #expect(m.rejection(of: .abortRequested(reason: "changed my mind")) != nil)
        let actions = m.handle(TwoPhaseCommit.translate(.replied(0, .commitOnePhase, .done(status: "committed", result: nil)))!)
        #expect(actions == [
            .cancel(.phaseOne), .cancel(.retry(0)), .log(.decision(gid: gid, .commit, targets: []), forced: false), .decided(.commit),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
        #expect(forcedWrites(actions) == 0 && m.branches[0].state == .committed)
    }

    @Test func aSingleBranchRefusalRollsItBackSoThatNoLateCopyCommits() {
        var m = started(1)
        #expect(m.handle(.voted(0, .no("out of stock"))) == [
            .cancel(.retry(0)), .cancel(.phaseOne), .log(.decision(gid: gid, .abort, targets: [0]), forced: false), .decided(.abort),
            .send(.rollback, to: 0),
        ])
        #expect(m.branches[0].lastError == "out of stock")
        #expect(m.handle(.acknowledged(0)) == [.cancel(.retry(0)), .log(.end(gid: gid), forced: false), .finish(.aborted)])
    }

    @Test func aSingleBranchWhoseAnswerWasLostIsAskedWithRollback() {
        var lost = started(1)
        #expect(lost.handle(.deliveryFailed(0, "connection reset")) == [.send(.rollback, to: 0)])
        #expect(lost.handle(.deliveryFailed(0, "connection refused")) == [.schedule(.retry(0), attempt: 1)])
        #expect(lost.handle(.timedOut(.retry(0))) == [.send(.rollback, to: 0)])
        // It had committed: that is the outcome, not a heuristic one.
        let actions = lost.handle(TwoPhaseCommit.translate(.replied(0, .rollback, .refused(code: "already_committed", message: "committed")))!)
        #expect(actions.contains(.decided(.commit)) && actions.last == .finish(.committed))
        #expect(!lost.heuristic)

        var never = started(1)
        _ = never.handle(.deliveryFailed(0, "connection refused"))
        let aborted = never.handle(.acknowledged(0))
        #expect(aborted.contains(.decided(.abort)) && aborted.last == .finish(.aborted))
    }

    @Test func aRestartAsksASingleBranchThatWasNeverAnswered() {
        var replay = TransactionLogReplay()
        let spec = BranchSpec(participant: "p0", operation: "op")
        replay.apply(.begin(gid: gid, protocol: .twoPhaseCommit, branches: [spec]))
        let replayed = replay.unfinished[gid]!
        #expect(replayed.lastAgent == 0)
        let recovering = TwoPhaseCommit.recovering(replayed)
        var m = recovering.0
        let event = recovering.1
        #expect(event == .recoveredDelegation(targets: []))
        #expect(m.handle(event) == [.send(.rollback, to: 0)])
        let actions = m.handle(.endedOtherwise(0, .committed, "already committed"))
        #expect(actions.contains(.decided(.commit)) && !m.heuristic)

        // Several branches without a delegation record: presumed abort, as before.
        var many = TransactionLogReplay()
        many.apply(.begin(gid: gid, protocol: .twoPhaseCommit, branches: [spec, spec]))
        #expect(many.unfinished[gid]!.lastAgent == nil)
        #expect(TwoPhaseCommit.recovering(many.unfinished[gid]!).1 == .recovered(.undecided))
    }

    @Test func anUnreachableParticipantInPhaseOneAborts() {
        var m = started(2)
        _ = m.handle(.voted(0, .yes))
        let actions = m.handle(.deliveryFailed(1, "connection refused"))
        #expect(actions.contains(.decided(.abort)))
        #expect(actions.contains(.send(.rollback, to: 0)) && actions.contains(.send(.rollback, to: 1)))
        #expect(m.branches[1].lastError == "connection refused")
    }

    @Test func thePhaseOneTimeoutAborts() {
        var m = started(2)
        _ = m.handle(.voted(0, .yes))
        let actions = m.handle(.timedOut(.phaseOne))
        #expect(actions.contains(.decided(.abort)))
        #expect(m.status == .aborting)
    }

    @Test func phaseTwoFailuresAreRetriedWithGrowingAttemptsUntilAcknowledged() {
        var m = started(2)
        _ = m.handle(.voted(0, .yes))
        _ = m.handle(.voted(1, .yes))
        #expect(m.handle(.deliveryFailed(1, "503")) == [.schedule(.retry(1), attempt: 1)])
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.commit, to: 1)])
        #expect(m.handle(.deliveryFailed(1, "503")) == [.schedule(.retry(1), attempt: 2)])
        #expect(m.branches[1].attempts == 3 && m.branches[1].lastError == "503")
        // A timeout of phase one after the decision changes nothing.
        #expect(m.handle(.timedOut(.phaseOne)) == [])
        _ = m.handle(.acknowledged(0))
        #expect(m.handle(.acknowledged(1)).last == .finish(.committed))
    }

    @Test func rollbackFailuresAreRetriedToo() {
        var m = started(2)
        _ = m.handle(.voted(0, .no("no")))
        #expect(m.handle(.deliveryFailed(1, "timeout")) == [.schedule(.retry(1), attempt: 1)])
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.rollback, to: 1)])
        #expect(m.handle(.acknowledged(1)).last == .finish(.aborted))
    }

    @Test func lateDuplicateAndOutOfOrderMessagesChangeNothing() {
        var m = started(2)
        _ = m.handle(.voted(0, .yes))
        #expect(m.handle(.voted(0, .yes)) == [])              // duplicate vote
        #expect(m.handle(.voted(0, .no("changed mind"))) == []) // a vote cannot change
        #expect(m.handle(.acknowledged(0)) .isImpossible)             // ack before any decision
        #expect(m.handle(.voted(7, .yes)) == [])              // unknown branch
        _ = m.handle(.voted(1, .yes))
        let snapshot = m
        #expect(m.handle(.voted(1, .no("late"))) == [])       // late vote after the decision
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.commit, to: 0)])
        _ = m.handle(.acknowledged(0))
        #expect(m.handle(.acknowledged(0)) == [])             // duplicate ack
        #expect(m.handle(.deliveryFailed(0, "late failure")) == [])  // failure after its ack
        #expect(m.handle(.start) .isImpossible)                        // restart of a running transaction
        #expect(m.handle(.deliveryFailed(9, "who?")) == [])    // unknown branch in phase two
        #expect(m.handle(.timedOut(.retry(9))) == [])
        #expect(m.handle(.acknowledged(-1)) == [])
        #expect(snapshot.status == .committing)

        var aborted = started(2)
        _ = aborted.handle(.voted(0, .no("no")))
        #expect(aborted.handle(.voted(1, .yes)) == [])        // late yes after abort: its rollback is already out
        _ = aborted.handle(.acknowledged(1))
        #expect(aborted.status == .aborted)
        #expect(aborted.handle(.acknowledged(1)) == [])
        #expect(aborted.handle(.timedOut(.phaseOne)) == [])
    }

    @Test func recoveryWithoutADecisionPresumesAbortAndRollsBackEveryBranch() {
        var m = machine(3)
        let actions = m.handle(.recovered(.undecided))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 1, 2]), forced: false),
            .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 1), .send(.rollback, to: 2),
        ])
        #expect(forcedWrites(actions) == 0)
    }

    @Test func recoveryAfterACommitDecisionDrivesPhaseTwoToTheLoggedTargets() {
        var m = machine(3)
        #expect(m.handle(.recovered(.decided(.commit, targets: [0, 2]))) == [.decided(.commit), .send(.commit, to: 0), .send(.commit, to: 2)])
        #expect(m.branches[1].state == .readOnly)
        #expect(m.handle(.deliveryFailed(2, "down")) == [.schedule(.retry(2), attempt: 1)])
        _ = m.handle(.acknowledged(0))
        _ = m.handle(.timedOut(.retry(2)))
        #expect(m.handle(.acknowledged(2)) == [.cancel(.retry(2)), .log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func recoveryAfterAnAbortDecisionRollsBack() {
        var m = machine(2)
        #expect(m.handle(.recovered(.decided(.abort, targets: [1]))) == [.decided(.abort), .send(.rollback, to: 1)])
        #expect(m.handle(.acknowledged(1)).last == .finish(.aborted))

        var empty = machine(2)
        #expect(empty.handle(.recovered(.decided(.commit, targets: []))) == [.decided(.commit), .log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func recoveryIsOnlyAcceptedBeforeAnythingElseHappened() {
        var m = started(2)
        #expect(m.handle(.recovered(.undecided)) .isImpossible)
    }
}

@Suite struct RetryPolicyTests {
    @Test func backoffGrowsExponentiallyUpToTheCapAndJitterOnlyShortens() {
        let policy = RetryPolicy(initialDelay: .milliseconds(100), maximumDelay: .seconds(2), multiplier: 2, jitter: 0.5)
        #expect(policy.delay(attempt: 1, unit: 0) == .milliseconds(100))
        #expect(policy.delay(attempt: 2, unit: 0) == .milliseconds(200))
        #expect(policy.delay(attempt: 4, unit: 0) == .milliseconds(800))
        #expect(policy.delay(attempt: 10, unit: 0) == .seconds(2))
        #expect(policy.delay(attempt: 10, unit: 0.999_999) > .seconds(1))
        #expect(policy.delay(attempt: 3, unit: 0.5) == .milliseconds(300))
    }
}

@Suite struct InteractiveAndOperatorTests {
    private let spec = BranchSpec(participant: "p", operation: "reserve")

    @Test func interactiveOpensLazilyEnlistsAndCommitsWithOneForcedWrite() {
        var m = TwoPhaseCommit(interactive: gid)
        #expect(m.handle(.open) == [.log(.open(gid: gid, protocol: .twoPhaseCommit), forced: false), .schedule(.phaseOne, attempt: 1)])
        #expect(m.status == .active)
        #expect(m.handle(.enlisted(spec)) == [.log(.enlist(gid: gid, branch: 0, spec: spec), forced: false)])
        #expect(m.handle(.enlisted(spec)) == [.log(.enlist(gid: gid, branch: 1, spec: spec), forced: false)])
        let actions = m.handle(.commitRequested)
        #expect(actions == [.cancel(.phaseOne), .log(.decision(gid: gid, .commit, targets: [0, 1]), forced: true), .decided(.commit), .send(.commit, to: 0), .send(.commit, to: 1)])
        #expect(m.rejection(of: .enlisted(spec)) != nil)
        #expect(m.rejection(of: .commitRequested) != nil)
    }

    @Test func anEmptyInteractiveCommitFinishesWithoutForcing() {
        var m = TwoPhaseCommit(interactive: gid)
        _ = m.handle(.open)
        // Not forced (nobody waits for it), but logged: a restart reports the commit.
        #expect(m.handle(.commitRequested) == [
            .cancel(.phaseOne), .log(.decision(gid: gid, .commit, targets: []), forced: false), .decided(.commit),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
    }

    @Test func interactiveTimeoutAndAbortRollBackEnlistedBranchesWithTheReasonLogged() {
        var timedOut = TwoPhaseCommit(interactive: gid)
        _ = timedOut.handle(.open)
        _ = timedOut.handle(.enlisted(spec))
        let actions = timedOut.handle(.timedOut(.phaseOne))
        #expect(actions.contains(.send(.rollback, to: 0)))
        #expect(actions.contains(.log(.resolution(gid: gid, .abort, targets: [0], reason: "timed out before commit", heuristic: false), forced: false)))

        var aborted = TwoPhaseCommit(interactive: gid)
        _ = aborted.handle(.open)
        _ = aborted.handle(.enlisted(spec))
        #expect(aborted.handle(.abortRequested(reason: "cancelled")).contains(.send(.rollback, to: 0)))
        #expect(aborted.status == .aborting)
    }

    @Test func aSubmittedTransactionRefusesEnlistmentAndCommitRequests() {
        var m = started(2)
        #expect(m.rejection(of: .enlisted(spec)) != nil)
        #expect(m.rejection(of: .commitRequested) != nil)
        #expect(m.rejection(of: .abortRequested(reason: "x")) == nil)
        #expect(m.handle(.abortRequested(reason: "x")).contains(.send(.rollback, to: 1)))
    }

    @Test func operatorsMayForceAbortOfAnUndecidedTransactionButNotCommit() {
        var m = started(2)
        #expect(m.forceRejection(.commit) != nil)
        #expect(m.forceRejection(.abort) == nil)
        let actions = m.handle(.forced(.abort, reason: "stuck prepare"))
        #expect(actions.contains(.log(.resolution(gid: gid, .abort, targets: [0, 1], reason: "stuck prepare", heuristic: false), forced: false)))
        #expect(!m.heuristic)
    }

    @Test func forcingTheOppositeOfALoggedCommitIsAHeuristicOverrideOfTheUnacknowledgedBranches() {
        var m = started(3)
        for id in 0..<3 { _ = m.handle(.voted(id, .yes)) }
        _ = m.handle(.acknowledged(0))
        #expect(m.forceRejection(.commit) != nil, "the same decision cannot be forced; phase two keeps retrying")
        let actions = m.handle(.forced(.abort, reason: "participant lost its disk"))
        #expect(actions.first == .log(.resolution(gid: gid, .abort, targets: [1, 2], reason: "participant lost its disk", heuristic: true), forced: true))
        #expect(actions.contains(.send(.rollback, to: 1)) && actions.contains(.send(.rollback, to: 2)))
        #expect(!actions.contains(.send(.rollback, to: 0)))
        #expect(m.heuristic)
        #expect(m.branches[0].state == .committed)
        _ = m.handle(.acknowledged(1))
        #expect(m.handle(.acknowledged(2)).last == .finish(.aborted))
    }

    @Test func participantAnswersTranslateIntoVotesAndAcknowledgements() {
        #expect(TwoPhaseCommit.translate(.replied(0, .prepare, .done(status: "prepared", result: nil))) == .voted(0, .yes))
        #expect(TwoPhaseCommit.translate(.replied(0, .prepare, .done(status: "read_only", result: nil))) == .voted(0, .readOnly))
        #expect(TwoPhaseCommit.translate(.replied(0, .prepare, .refused(code: "voted_no", message: "no funds"))) == .voted(0, .no("no funds"), result: .refusal(code: "voted_no", message: "no funds")))
        // What the participant answered travels with the vote, for the machine to keep.
        #expect(TwoPhaseCommit.translate(.replied(0, .prepare, .done(status: "prepared", result: .number(7)))) == .voted(0, .yes, result: .number(7)))
        #expect(TwoPhaseCommit.translate(.replied(1, .commitOnePhase, .done(status: "committed", result: .number(8)))) == .acknowledged(1, result: .number(8)))
        #expect(TwoPhaseCommit.translate(.replied(1, .commit, .done(status: "committed", result: nil))) == .acknowledged(1))
        #expect(TwoPhaseCommit.translate(.replied(1, .commit, .refused(code: "unknown_branch", message: "?"))) == .deliveryFailed(1, "unknown_branch: ?"))
        #expect(TwoPhaseCommit.translate(.replied(1, .rollback, .failed("down"))) == .deliveryFailed(1, "down"))
    }

    @Test func recoveryRebuildsInteractiveTransactionsFromTheirEnlistments() {
        var replay = TransactionLogReplay()
        replay.apply(.open(gid: gid, protocol: .twoPhaseCommit))
        replay.apply(.enlist(gid: gid, branch: 0, spec: spec))
        replay.apply(.enlist(gid: gid, branch: 0, spec: spec))  // a checkpoint's copy
        let (machine, event) = TwoPhaseCommit.recovering(replay.unfinished[gid]!)
        var m = machine
        #expect(m.branches.count == 1)
        #expect(m.handle(event).contains(.send(.rollback, to: 0)))
    }
}

@Suite struct HeuristicOutcomeTests {
    @Test func aCommitAnsweredAlreadyRolledBackIsRecordedAsAHeuristicOutcomeNotRetriedForever() {
        var m = started(2)
        _ = m.handle(.voted(0, .yes))
        _ = m.handle(.voted(1, .yes))
        _ = m.handle(.acknowledged(0))
        let event = TwoPhaseCommit.translate(.replied(1, .commit, .refused(code: "already_rolled_back", message: "rolled back by hand")))
        #expect(event == .endedOtherwise(1, .rolledBack, "heuristic: the participant had already rolled back: rolled back by hand"))
        let actions = m.handle(event!)
        #expect(actions == [.cancel(.retry(1)), .log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(m.heuristic)
        #expect(m.branches.map(\.state) == [.committed, .rolledBack])
        // Any other refusal in phase two is still retried.
        var other = started(2)
        _ = other.handle(.voted(0, .yes))
        _ = other.handle(.voted(1, .yes))
        #expect(other.handle(TwoPhaseCommit.translate(.replied(1, .commit, .refused(code: "unknown_branch", message: "?")))!) == [.schedule(.retry(1), attempt: 1)])
    }
}

/// The last-agent optimisation: the last branch commits in one phase and decides.
@Suite struct LastAgentTests {
    private func delegating(_ count: Int) -> TwoPhaseCommit {
        TwoPhaseCommit(gid: gid, branches: (0..<count).map { BranchSpec(participant: "p\($0)", operation: "op") }, lastAgent: true)
    }

    /// Started, every branch but the agent voted yes, the agent sent its one-phase commit.
    private func delegated(_ count: Int) -> TwoPhaseCommit {
        var m = delegating(count)
        _ = m.handle(.start)
        for id in 0..<(count - 1) { _ = m.handle(.voted(id, .yes)) }
        return m
    }

    @Test func theLastBranchIsNotPreparedButCommitsInOnePhaseAfterAForcedDelegation() {
        var m = delegating(3)
        #expect(m.lastAgent == 2)
        #expect(m.handle(.start) == [
            .log(.begin(gid: gid, protocol: .twoPhaseCommit, branches: m.branches.map(\.spec)), forced: false),
            .send(.prepare, to: 0), .send(.prepare, to: 1),
            .schedule(.phaseOne, attempt: 1),
        ])
        #expect(m.branches[2].state == .pending)
        #expect(m.handle(.voted(0, .yes)) == [])
        #expect(m.handle(.voted(1, .yes)) == [
            .log(.delegation(gid: gid, agent: 2, targets: [0, 1]), forced: true),
            .send(.commitOnePhase, to: 2),
        ])
        #expect(m.status == .preparing && m.delegated)
        // The agent committed: the decision is lazy (the agent's own record holds it).
        #expect(m.handle(.acknowledged(2)) == [
            .cancel(.phaseOne), .cancel(.retry(2)),
            .log(.decision(gid: gid, .commit, targets: [0, 1]), forced: false),
            .decided(.commit),
            .send(.commit, to: 0), .send(.commit, to: 1),
        ])
        #expect(m.branches[2].state == .committed)
        _ = m.handle(.acknowledged(0))
        #expect(m.handle(.acknowledged(1)) == [.cancel(.retry(1)), .log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func aCommittedTransactionStillForcesExactlyOneWrite() {
        var m = delegating(2)
        var all = m.handle(.start)
        all += m.handle(.voted(0, .yes))
        all += m.handle(.acknowledged(1))
        all += m.handle(.acknowledged(0))
        #expect(forcedWrites(all) == 1)
        #expect(m.status == .committed)
    }

    @Test func theAgentsRefusalAbortsAndRollsBackTheOthersAndTheAgentWithoutAForcedWrite() {
        var m = delegated(3)
        let actions = m.handle(.voted(2, .no("insufficient funds")))
        #expect(actions == [
            .cancel(.retry(2)),
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 1, 2]), forced: false),
            .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 1), .send(.rollback, to: 2),
        ])
        #expect(m.branches[2].lastError == "insufficient funds")
        #expect(forcedWrites(actions) == 0)
    }

    @Test func aNoVoteBeforeTheDelegationAbortsWithoutTouchingTheAgent() {
        var m = delegating(3)
        _ = m.handle(.start)
        _ = m.handle(.voted(0, .yes))
        let actions = m.handle(.voted(1, .no("refused")))
        #expect(actions.contains(.send(.rollback, to: 0)))
        #expect(!actions.contains(.send(.rollback, to: 2)) && !actions.contains(.send(.commitOnePhase, to: 2)))
        #expect(!actions.contains { if case .log(.delegation, _) = $0 { return true } else { return false } })
        // The phase-one timeout before the delegation aborts as usual.
        var late = delegating(2)
        _ = late.handle(.start)
        #expect(late.handle(.timedOut(.phaseOne)).contains(.decided(.abort)))
    }

    @Test func aLostAnswerIsLearntByAskingTheAgentWithRollback() {
        // Rolled back: abort.
        var m = delegated(2)
        #expect(m.handle(.deliveryFailed(1, "timed out")) == [.send(.rollback, to: 1)])
        #expect(m.askingTheAgent)
        #expect(m.handle(.deliveryFailed(1, "connection refused")) == [.schedule(.retry(1), attempt: 1)])
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.rollback, to: 1)])
        let aborted = m.handle(.acknowledged(1))
        #expect(aborted.contains(.decided(.abort)) && aborted.contains(.send(.rollback, to: 0)) && !aborted.contains(.send(.rollback, to: 1)))
        #expect(m.branches[1].state == .rolledBack)

        // Already committed: commit, and no heuristic.
        var c = delegated(2)
        _ = c.handle(.deliveryFailed(1, "timed out"))
        let committed = c.handle(.endedOtherwise(1, .committed, "heuristic: the participant had already committed"))
        #expect(committed.contains(.decided(.commit)) && committed.contains(.send(.commit, to: 0)))
        #expect(!c.heuristic && c.branches[1].state == .committed)
    }

    @Test func onceDelegatedNeitherTimeoutNorAbortRequestNorOperatorCanEndIt() {
        var m = delegated(2)
        #expect(m.handle(.timedOut(.phaseOne)) == [])
        #expect(m.rejection(of: .abortRequested(reason: "changed my mind")) != nil)
        #expect(m.handle(.abortRequested(reason: "changed my mind")) == [])
        #expect(m.forceRejection(.abort) != nil && m.forceRejection(.commit) != nil)
        #expect(m.handle(.forced(.abort, reason: "operator")) == [])
        // Late and duplicate votes of the others change nothing either.
        #expect(m.handle(.voted(0, .yes)) == [])
        #expect(m.status == .preparing)
    }

    @Test func onceTheAgentAnsweredAnOperatorMayOverrideAsUsual() {
        var m = delegated(2)
        _ = m.handle(.acknowledged(1))
        #expect(m.status == .committing)
        #expect(m.forceRejection(.abort) == nil)
        let actions = m.handle(.forced(.abort, reason: "operator"))
        #expect(actions.contains(.decided(.abort)) && m.heuristic)
    }

    @Test func aOnePhaseAnswerIsCommittedOrReadOnlyAndAnythingElseIsNotUnderstood() {
        #expect(TwoPhaseCommit.translate(.replied(1, .commitOnePhase, .done(status: "committed", result: nil))) == .acknowledged(1))
        #expect(TwoPhaseCommit.translate(.replied(1, .commitOnePhase, .done(status: "read_only", result: nil))) == .voted(1, .readOnly))
        #expect(TwoPhaseCommit.translate(.replied(1, .commitOnePhase, .done(status: "prepared", result: nil)))
            == .deliveryFailed(1, "commit_one_phase answered 'prepared', neither committed nor read_only"))
    }

    @Test func readOnlyVotersAndAReadOnlyAgentDropOut() {
        var m = delegating(3)
        _ = m.handle(.start)
        _ = m.handle(.voted(0, .readOnly))
        #expect(m.handle(.voted(1, .yes)).contains(.log(.delegation(gid: gid, agent: 2, targets: [1]), forced: true)))
        // A read-only agent keeps no record that a restart could ask: the decision is forced.
        #expect(m.handle(.voted(2, .readOnly)) == [
            .cancel(.phaseOne), .cancel(.retry(2)),
            .log(.decision(gid: gid, .commit, targets: [1]), forced: true),
            .decided(.commit),
            .send(.commit, to: 1),
        ])

        // A single read-only branch: nothing to tell anyone, so nothing is forced.
        var alone = started(1)
        let actions = alone.handle(TwoPhaseCommit.translate(.replied(0, .commitOnePhase, .done(status: "read_only", result: nil)))!)
        #expect(actions == [
            .cancel(.phaseOne), .cancel(.retry(0)), .log(.decision(gid: gid, .commit, targets: []), forced: false), .decided(.commit),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
        #expect(alone.branches[0].state == .readOnly)
    }

    @Test func recoveryOfADelegationAsksTheAgentAndFollowsItsAnswer() {
        var m = delegating(3)
        #expect(m.handle(.recoveredDelegation(targets: [0])) == [.send(.rollback, to: 2)])
        #expect(m.branches.map(\.state) == [.prepared, .readOnly, .preparing])
        let actions = m.handle(.endedOtherwise(2, .committed, "already committed"))
        #expect(actions == [
            .cancel(.phaseOne), .cancel(.retry(2)),
            .log(.decision(gid: gid, .commit, targets: [0]), forced: false),
            .decided(.commit),
            .send(.commit, to: 0),
        ])

        // After the decision was logged, the agent shows as committed.
        var decided = delegating(2)
        #expect(decided.handle(.recovered(.decided(.commit, targets: [0]))) == [.decided(.commit), .send(.commit, to: 0)])
        #expect(decided.branches[1].state == .committed)
    }

    @Test func aSingleBranchIsAlwaysItsAgentAndInteractiveTransactionsHaveNone() {
        #expect(delegating(1).lastAgent == 0 && machine(1).lastAgent == 0)
        #expect(TwoPhaseCommit(interactive: gid).lastAgent == nil)
        #expect(machine(2).lastAgent == nil)
    }
}

/// A work message that never reached its participant (no connection was made) is not a
/// NO: it is sent again with backoff until the transaction's timeout.
@Suite struct UndeliveredWorkTests {
    @Test func aPrepareNeverDeliveredIsSentAgainAndTheTransactionCommits() {
        var m = started(2)
        let refused = TwoPhaseCommit.translate(.replied(0, .prepare, .undelivered("connection refused")))!
        #expect(refused == .notDelivered(0, "connection refused"))
        #expect(m.handle(refused) == [.schedule(.retry(0), attempt: 1)])
        #expect(m.status == .preparing && m.branches[0].attempts == 2 && m.branches[0].lastError == "connection refused")
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.prepare, to: 0)])
        #expect(m.handle(.notDelivered(0, "connection refused")) == [.schedule(.retry(0), attempt: 2)])
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.prepare, to: 0)])
        _ = m.handle(.voted(1, .yes))
        #expect(m.handle(.voted(0, .yes)).contains(.decided(.commit)))
    }

    @Test func theTimeoutEndsTheResendingAndAborts() {
        var m = started(2)
        _ = m.handle(.notDelivered(1, "connection refused"))
        let actions = m.handle(.timedOut(.phaseOne))
        // The resend is stopped and ROLLBACK goes to both (a null rollback where nothing arrived).
        #expect(actions == [
            .cancel(.phaseOne), .cancel(.retry(1)),
            .log(.resolution(gid: gid, .abort, targets: [0, 1], reason: "phase one timed out", heuristic: false), forced: false), .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 1),
        ])
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.rollback, to: 1)])  // a timer already firing: a harmless repeat
    }

    @Test func anAnswerThatMayHaveArrivedStillAborts() {
        var m = started(2)
        let failed = TwoPhaseCommit.translate(.replied(0, .prepare, .failed("no answer within the request timeout")))!
        #expect(m.handle(failed).contains(.decided(.abort)))
    }

    @Test func aCommitOnePhaseNeverDeliveredIsSentAgainThenAskedAfterTheTimeout() {
        var m = started(1)
        #expect(m.handle(TwoPhaseCommit.translate(.replied(0, .commitOnePhase, .undelivered("refused")))!) == [.schedule(.retry(0), attempt: 1)])
        #expect(m.agentBackingOff)
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.commitOnePhase, to: 0)])
        #expect(m.handle(.notDelivered(0, "refused")) == [.schedule(.retry(0), attempt: 2)])
        // The timeout while it waits to be sent again: it is not; ROLLBACK asks instead.
        #expect(m.handle(.timedOut(.phaseOne)) == [.cancel(.retry(0)), .send(.rollback, to: 0)])
        #expect(m.askingTheAgent && !m.agentBackingOff)
        #expect(m.handle(.acknowledged(0)).contains(.decided(.abort)))
        #expect(m.status == .aborted)
    }

    @Test func aCommitOnePhaseOutWhenTheTimeoutPassesDecidesByItsAnswer() {
        var committed = started(1)
        _ = committed.handle(.notDelivered(0, "refused"))
        _ = committed.handle(.timedOut(.retry(0)))
        #expect(committed.handle(.timedOut(.phaseOne)) == [])  // the resend is out
        #expect(committed.handle(.acknowledged(0, result: nil)).contains(.decided(.commit)))

        var unreached = started(1)
        _ = unreached.handle(.timedOut(.phaseOne))
        #expect(unreached.handle(.notDelivered(0, "refused")) == [.send(.rollback, to: 0)])
        #expect(unreached.handle(.endedOtherwise(0, .committed, "already committed")).contains(.decided(.commit)))
    }
}

/// An operator declares how a branch still owed the decision ended, after settling it
/// outside dtx: it is owed nothing more, and the transaction finishes without it.
@Suite struct ResolvedByHandTests {
    /// Committing, branch 0 acknowledged, branch 1 still being sent COMMIT.
    private func committing() -> TwoPhaseCommit {
        var m = started(2)
        _ = m.handle(.voted(0, .yes))
        _ = m.handle(.voted(1, .yes))
        _ = m.handle(.acknowledged(0))
        _ = m.handle(.deliveryFailed(1, "connection refused"))
        return m
    }

    @Test func aBranchResolvedAsTheDecisionFinishesTheTransaction() {
        var m = committing()
        #expect(m.rejection(of: .resolvedByHand(1, .commit, reason: "fixed")) == nil)
        let actions = m.handle(TwoPhaseCommit.translate(.resolvedByHand(1, .commit, reason: "applied by hand"))!)
        #expect(actions == [
            .cancel(.retry(1)),
            .log(.resolution(gid: gid, .commit, targets: [], reason: "branch 1 resolved by hand as committed: applied by hand", heuristic: false), forced: true),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
        #expect(m.branches[1].state == .committed && !m.heuristic)
    }

    @Test func aBranchResolvedAgainstTheDecisionIsHeuristic() {
        var m = committing()
        let actions = m.handle(.resolvedByHand(1, .abort, reason: "restored from a backup without it"))
        #expect(actions.contains(.finish(.committed)))
        #expect(m.branches[1].state == .rolledBack && m.heuristic)
    }

    @Test func onlyABranchStillOwedTheDecisionCanBeResolved() {
        let m = committing()
        #expect(m.rejection(of: .resolvedByHand(0, .commit, reason: "x"))?.contains("branch 0 is committed: it is owed nothing") == true)
        #expect(m.rejection(of: .resolvedByHand(7, .commit, reason: "x")) == "the transaction has no branch 7")
        let undecided = started(2)
        #expect(undecided.rejection(of: .resolvedByHand(0, .abort, reason: "x"))?.contains("force its outcome") == true)
        let saga = Saga(gid: gid, steps: [BranchSpec(participant: "p0", operation: "op")])
        #expect(saga.rejection(of: .resolvedByHand(0, .abort, reason: "x"))?.contains("force the saga's outcome") == true)
    }
}
