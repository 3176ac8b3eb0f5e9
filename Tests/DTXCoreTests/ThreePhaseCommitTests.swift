import DTXAPI
import DTXCore
import Testing

private let gid = try! GlobalTransactionID(validating: "3pc-1")
private let specs = (0..<3).map { BranchSpec(participant: "p\($0)", operation: "debit", payload: .object(["n": .number(Double($0))])) }

private func machine(_ count: Int = 3) -> ThreePhaseCommit {
    ThreePhaseCommit(gid: gid, branches: Array(specs.prefix(count)))
}

/// CanCommit is out to every branch.
private func preparing(_ count: Int = 3) -> ThreePhaseCommit {
    var m = machine(count)
    _ = m.handle(.start)
    return m
}

/// Every branch voted yes: the pre-commit is logged and PreCommit is out to every branch.
private func preCommitting(_ count: Int = 3) -> ThreePhaseCommit {
    var m = preparing(count)
    for id in 0..<count { _ = m.handle(.voted(id, .yes)) }
    return m
}

/// What a restart reads back of a transaction that logged `begin`, the pre-commit and
/// then the records among `actions`.
private func replay(_ actions: [TransactionAction]) -> TransactionLogReplay.Replayed? {
    var log = TransactionLogReplay()
    log.apply(.begin(gid: gid, protocol: .threePhaseCommit, branches: specs))
    log.apply(.preCommit(gid: gid))
    for case let .log(entry, _) in actions { log.apply(entry) }
    return log.transactions[gid]
}

/// Every branch acknowledged PreCommit: the commit is logged and DoCommit is out.
private func committing(_ count: Int = 3) -> ThreePhaseCommit {
    var m = preCommitting(count)
    for id in 0..<count { _ = m.handle(.reported(id, .preCommitted)) }
    return m
}

private func forcedWrites(_ actions: [TransactionAction]) -> [LogEntry] {
    actions.compactMap { if case let .log(entry, forced: true) = $0 { return entry } else { return nil } }
}

private func sends(_ actions: [TransactionAction]) -> [TransactionAction] {
    actions.filter { if case .send = $0 { return true } else { return false } }
}

@Suite struct ThreePhaseCommitTests {
    @Test func startLogsBeginLazilyAsksEveryBranchCanCommitAndArmsTheTimeout() {
        var m = machine()
        #expect(m.handle(.start) == [
            .log(.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), forced: false),
            .send(.canCommit, to: 0), .send(.canCommit, to: 1), .send(.canCommit, to: 2),
            .schedule(.phaseOne, attempt: 1),
        ])
        #expect(m.status == .preparing)
        #expect(m.threePhaseState == .prepared)
        #expect(m.branches.allSatisfy { $0.state == .preparing && $0.attempts == 1 })
    }

    @Test func allYesForcesThePreCommitBeforeAnyPreCommitIsSent() {
        var m = preparing()
        #expect(m.handle(.voted(0, .yes)) == [])
        #expect(m.handle(.voted(2, .readOnly)) == [])  // no read-only optimisation: a yes
        let actions = m.handle(.voted(1, .yes))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.preCommit(gid: gid), forced: true),
            .send(.preCommit, to: 0), .send(.preCommit, to: 1), .send(.preCommit, to: 2),
            .schedule(.phaseOne, attempt: 1),
        ])
        // Not decided yet: a branch may still report that its termination aborted.
        #expect(!actions.contains(.decided(.commit)))
        #expect(m.status == .preCommitting)
        #expect(m.threePhaseState == .preCommitted)
        #expect(m.branches.allSatisfy { $0.state == .preCommitting })
    }

    @Test func allPreCommitAcknowledgementsForceTheCommitThenDoCommitThenEndLazily() {
        var m = preCommitting()
        #expect(m.handle(.reported(2, .preCommitted)) == [.cancel(.retry(2))])
        #expect(m.handle(.reported(0, .preCommitted)) == [.cancel(.retry(0))])
        #expect(m.branches[0].state == .preCommitted)
        let actions = m.handle(.reported(1, .preCommitted))
        #expect(actions == [
            .cancel(.retry(1)),
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .commit, targets: [0, 1, 2]), forced: true),
            .decided(.commit),
            .send(.doCommit, to: 0), .send(.doCommit, to: 1), .send(.doCommit, to: 2),
        ])
        #expect(m.status == .committing && m.threePhaseState == .committed)
        #expect(m.handle(.reported(1, .committed)) == [.cancel(.retry(1))])
        #expect(m.handle(.reported(0, .committed)) == [.cancel(.retry(0))])
        #expect(m.handle(.reported(2, .committed)) == [.cancel(.retry(2)), .log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(m.status == .committed && !m.heuristic)
        #expect(m.branches.allSatisfy { $0.state == .committed })
    }

    @Test func aCommitForcesExactlyThePreCommitAndTheDecisionAndAnEarlyAbortNothing() {
        var commit = machine()
        var all = commit.handle(.start)
        for id in 0..<3 { all += commit.handle(.voted(id, .yes)) }
        for id in 0..<3 { all += commit.handle(.reported(id, .preCommitted)) }
        for id in 0..<3 { all += commit.handle(.reported(id, .committed)) }
        #expect(forcedWrites(all) == [.preCommit(gid: gid), .decision(gid: gid, .commit, targets: [0, 1, 2])])

        var abort = machine()
        all = abort.handle(.start)
        all += abort.handle(.voted(0, .no("insufficient funds")))
        all += abort.handle(.reported(1, .aborted))
        all += abort.handle(.reported(2, .aborted))
        #expect(forcedWrites(all).isEmpty)
        #expect(abort.status == .aborted)
    }

    @Test func aNoVoteAbortsLazilyAndRollsBackEveryBranchThatMayHavePrepared() {
        var m = preparing()
        _ = m.handle(.voted(0, .yes))
        #expect(m.handle(.voted(1, .no("insufficient funds"))) == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 2]), forced: false),
            .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 2),
        ])
        #expect(m.branches[1].state == .votedNo && m.branches[1].lastError == "insufficient funds")
        #expect(m.threePhaseState == .aborted)
        _ = m.handle(.reported(2, .aborted))
        #expect(m.handle(.reported(0, .aborted)) == [.cancel(.retry(0)), .log(.end(gid: gid), forced: false), .finish(.aborted)])
    }

    @Test func anUndeliverableCanCommitOrThePhaseOneTimeoutAborts() {
        var undeliverable = preparing()
        let actions = undeliverable.handle(.deliveryFailed(1, .canCommit, "connection refused"))
        #expect(actions.contains(.decided(.abort)) && sends(actions).count == 3)
        #expect(undeliverable.branches[1].lastError == "connection refused")

        var late = preparing()
        _ = late.handle(.voted(0, .yes))
        #expect(late.handle(.timedOut(.phaseOne)) == [
            .cancel(.phaseOne),
            .log(.resolution(gid: gid, .abort, targets: [0, 1, 2], reason: "phase one timed out", heuristic: false), forced: false),
            .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 1), .send(.rollback, to: 2),
        ])
    }

    @Test func aBranchWhoseTerminationAbortedTurnsThePreCommitIntoAForcedAbort() {
        var m = preCommitting()
        _ = m.handle(.reported(0, .preCommitted))
        let actions = m.handle(.reported(1, .aborted))
        // Forced: after the logged pre-commit, a restart must not send PreCommit again.
        #expect(actions == [
            .cancel(.retry(1)),
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 2]), forced: true),
            .decided(.abort),
            .send(.rollback, to: 0),
            .cancel(.retry(2)), .send(.rollback, to: 2),
        ])
        #expect(m.branches[1].state == .rolledBack && !m.heuristic)
        _ = m.handle(.reported(0, .aborted))
        #expect(m.handle(.reported(2, .aborted)).last == .finish(.aborted))
        #expect(!m.heuristic)
    }

    @Test func aBranchWhoseTerminationCommittedCountsAsAcknowledgedAndGetsNoDoCommit() {
        var m = preCommitting()
        #expect(m.handle(.reported(0, .committed)) == [.cancel(.retry(0))])
        _ = m.handle(.reported(1, .preCommitted))
        let actions = m.handle(.reported(2, .preCommitted))
        #expect(forcedWrites(actions) == [.decision(gid: gid, .commit, targets: [1, 2])])
        #expect(sends(actions) == [.send(.doCommit, to: 1), .send(.doCommit, to: 2)])
        _ = m.handle(.reported(1, .committed))
        #expect(m.handle(.reported(2, .committed)).last == .finish(.committed))
        #expect(!m.heuristic)

        // Every branch already committed by termination: nothing to send, and the outcome
        // logged lazily so that the history (replayed after a restart) shows it.
        var ended = preCommitting(2)
        _ = ended.handle(.reported(0, .committed))
        let closing = ended.handle(.reported(1, .committed))
        #expect(closing == [.cancel(.retry(1)), .cancel(.phaseOne), .log(.decision(gid: gid, .commit, targets: []), forced: false), .decided(.commit),
                            .log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(replay(closing)?.decision == .commit)
    }

    @Test func branchesThatDecidedApartMakeTheTransactionHeuristicMixed() {
        var m = preCommitting()
        _ = m.handle(.reported(0, .committed))
        let actions = m.handle(.reported(1, .aborted))
        // The partition anomaly: the rest follows the commit, and the transaction is flagged.
        #expect(m.heuristic)
        #expect(actions.contains(.decided(.commit)))
        #expect(sends(actions) == [.send(.doCommit, to: 2)])
        let closing = m.handle(.reported(2, .committed))
        #expect(closing.last == .finish(.committed))
        #expect(m.branches.map(\.state) == [.committed, .rolledBack, .committed])
        // The flag and the outcome outlive a restart: a heuristic resolution precedes `end`.
        let history = replay(closing)
        #expect(history?.heuristic == true && history?.decision == .commit && history?.ended == true)
    }

    @Test func missingPreCommitAcknowledgementsCommitAtTheTimeout() {
        var m = preCommitting()
        _ = m.handle(.reported(0, .preCommitted))
        #expect(m.handle(.deliveryFailed(2, .preCommit, "connection refused")) == [.schedule(.retry(2), attempt: 1)])
        let actions = m.handle(.timedOut(.phaseOne))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .commit, targets: [0, 1, 2]), forced: true),
            .decided(.commit),
            .send(.doCommit, to: 0),
            .cancel(.retry(1)), .send(.doCommit, to: 1),
            .cancel(.retry(2)), .send(.doCommit, to: 2),
        ])
        // Branch 2 was cut off and its termination aborted: flagged, not retried forever.
        _ = m.handle(.reported(0, .committed))
        _ = m.handle(.reported(1, .committed))
        // The mixed outcome is logged with the end, so that it outlives a restart.
        #expect(m.handle(.reported(2, .aborted)) == [
            .cancel(.retry(2)),
            .log(.resolution(gid: gid, .commit, targets: [], reason: "participants decided differently (heuristic-mixed)", heuristic: true), forced: false),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
        #expect(m.heuristic)
        #expect(m.branches[2].state == .rolledBack && m.branches[2].lastError?.hasPrefix("heuristic") == true)
    }

    @Test func failuresAreRetriedWithTheMessageTheBranchStillOwesAnAnswerTo() {
        var m = preCommitting(2)
        #expect(m.handle(.deliveryFailed(1, .preCommit, "503")) == [.schedule(.retry(1), attempt: 1)])
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.preCommit, to: 1)])
        #expect(m.handle(.reported(1, .prepared)) == [.schedule(.retry(1), attempt: 2)])  // not an answer to PreCommit
        #expect(m.handle(.deliveryFailed(1, .doCommit, "stale")) == [])                   // not the message it owes
        _ = m.handle(.reported(0, .preCommitted))
        _ = m.handle(.reported(1, .preCommitted))
        #expect(m.handle(.deliveryFailed(0, .doCommit, "down")) == [.schedule(.retry(0), attempt: 1)])
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.doCommit, to: 0)])

        var aborting = preparing(2)
        _ = aborting.handle(.voted(0, .no("no")))
        #expect(aborting.handle(.deliveryFailed(1, .rollback, "timeout")) == [.schedule(.retry(1), attempt: 1)])
        #expect(aborting.handle(.timedOut(.retry(1))) == [.send(.rollback, to: 1)])
        #expect(aborting.handle(.reported(1, .aborted)).last == .finish(.aborted))
    }

    @Test func aDoCommitAnsweredAbortedOrARollbackAnsweredCommittedIsHeuristic() {
        var m = committing(2)
        _ = m.handle(.reported(0, .committed))
        #expect(m.handle(.reported(1, .aborted)).last == .finish(.committed))
        #expect(m.heuristic && m.branches[1].state == .rolledBack)

        var aborting = preparing(2)
        _ = aborting.handle(.voted(0, .no("no")))
        #expect(aborting.handle(.reported(1, .committed)).last == .finish(.aborted))
        #expect(aborting.heuristic && aborting.branches[1].state == .committed)
    }

    @Test func lateDuplicateAndOutOfOrderMessagesChangeNothing() {
        var m = preparing()
        _ = m.handle(.voted(0, .yes))
        #expect(m.handle(.voted(0, .yes)) == [])
        #expect(m.handle(.voted(0, .no("changed mind"))) == [])
        #expect(m.handle(.voted(7, .yes)) == [])
        #expect(m.handle(.reported(0, .preCommitted)) .isImpossible)  // before any PreCommit
        #expect(m.handle(.start) .isImpossible)
        _ = m.handle(.voted(1, .yes))
        _ = m.handle(.voted(2, .yes))
        _ = m.handle(.reported(0, .preCommitted))
        #expect(m.handle(.reported(0, .preCommitted)) == [])  // duplicate
        #expect(m.handle(.reported(0, .aborted)) == [])       // it already acknowledged
        #expect(m.handle(.voted(1, .no("late"))) == [])
        #expect(m.handle(.timedOut(.retry(0))) == [])
        #expect(m.handle(.reported(-1, .preCommitted)) == [])
        #expect(m.handle(.recovered(.undecided)) .isImpossible)
        #expect(m.status == .preCommitting)
    }
}

@Suite struct ThreePhaseCommitEngineTests {
    @Test(arguments: [
        (ParticipantMessage.canCommit, ParticipantResponse.done(status: "prepared", result: .number(1)), ThreePhaseCommit.Event.voted(1, .yes, result: .number(1))),
        (.canCommit, .refused(code: "insufficient_funds", message: "balance 3"), .voted(1, .no("balance 3"), result: .refusal(code: "insufficient_funds", message: "balance 3"))),
        (.canCommit, .failed("unreachable"), .deliveryFailed(1, .canCommit, "unreachable")),
        (.preCommit, .done(status: "pre_committed", result: nil), .reported(1, .preCommitted)),
        (.preCommit, .done(status: "committed", result: nil), .reported(1, .committed)),
        (.preCommit, .refused(code: "already_aborted", message: "m"), .reported(1, .aborted)),
        (.preCommit, .done(status: "rolled_back", result: nil), .deliveryFailed(1, .preCommit, "unexpected status 'rolled_back'")),
        (.doCommit, .done(status: "committed", result: nil), .reported(1, .committed)),
        (.doCommit, .refused(code: "already_aborted", message: "m"), .reported(1, .aborted)),
        (.doCommit, .refused(code: "busy", message: "m"), .deliveryFailed(1, .doCommit, "busy: m")),
        (.doCommit, .failed("503"), .deliveryFailed(1, .doCommit, "503")),
        (.rollback, .done(status: "aborted", result: nil), .reported(1, .aborted)),
        (.rollback, .refused(code: "already_committed", message: "m"), .reported(1, .committed)),
    ] as [(ParticipantMessage, ParticipantResponse, ThreePhaseCommit.Event)])
    func repliesTranslateToTheParticipantsState(_ message: ParticipantMessage, _ response: ParticipantResponse, _ expected: ThreePhaseCommit.Event) {
        #expect(ThreePhaseCommit.translate(.replied(1, message, response)) == expected)
    }

    @Test func otherProtocolsMessagesAndInteractiveRequestsMeanNothingHere() {
        #expect(ThreePhaseCommit.translate(.replied(0, .prepare, .done(status: "prepared", result: nil))) == nil)
        #expect(ThreePhaseCommit.translate(.replied(0, .try, .failed("x"))) == nil)
        #expect(ThreePhaseCommit.translate(.open) == nil)
        let m = preparing()
        #expect(m.rejection(of: .open) != nil)
        #expect(m.rejection(of: .enlisted(specs[0])) != nil)
        #expect(m.rejection(of: .commitRequested) != nil)
        #expect(m.rejection(of: .abortRequested(reason: "user")) == nil)
        #expect(preCommitting().rejection(of: .abortRequested(reason: "user")) != nil)
        #expect(m.rejection(of: .start) == nil)
    }

    @Test func theApplicationMayAbortOnlyBeforeThePreCommit() {
        var m = preparing(2)
        #expect(m.handle(.abortRequested(reason: "user cancelled")) == [
            .cancel(.phaseOne),
            .log(.resolution(gid: gid, .abort, targets: [0, 1], reason: "user cancelled", heuristic: false), forced: false),
            .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 1),
        ])
        var late = preCommitting(2)
        #expect(late.handle(.abortRequested(reason: "too late")) .isImpossible)
    }

    @Test func operatorForce() {
        #expect(machine().forceRejection(.abort) != nil)
        #expect(preparing().forceRejection(.commit) != nil)
        #expect(preparing().forceRejection(.abort) == nil)
        #expect(preCommitting().forceRejection(.commit) == nil)
        #expect(preCommitting().forceRejection(.abort) == nil)
        #expect(committing().forceRejection(.commit) != nil)

        // During the PreCommit round the operator ends the wait; logged forced, not heuristic.
        var waiting = preCommitting(2)
        _ = waiting.handle(.reported(0, .preCommitted))
        let actions = waiting.handle(.forced(.commit, reason: "participant 1 is gone for good"))
        #expect(forcedWrites(actions) == [.resolution(gid: gid, .commit, targets: [0, 1], reason: "participant 1 is gone for good", heuristic: false)])
        #expect(sends(actions) == [.send(.doCommit, to: 0), .send(.doCommit, to: 1)])
        #expect(!waiting.heuristic)

        // Against a logged decision: a heuristic override to the unacknowledged branches.
        var decided = committing(2)
        _ = decided.handle(.reported(0, .committed))
        let override = decided.handle(.forced(.abort, reason: "disk lost"))
        #expect(override == [
            .log(.resolution(gid: gid, .abort, targets: [1], reason: "disk lost", heuristic: true), forced: true),
            .decided(.abort),
            .cancel(.retry(1)), .send(.rollback, to: 1),
        ])
        #expect(decided.heuristic)
        #expect(decided.handle(.forced(.abort, reason: "again")) == [])
        #expect(decided.handle(.reported(1, .aborted)).last == .finish(.aborted))
    }
}

@Suite struct ThreePhaseCommitRecoveryTests {
    @Test func undecidedRecoveryPresumesAbort() {
        var m = machine()
        #expect(m.handle(.recovered(.undecided)) == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 1, 2]), forced: false),
            .decided(.abort),
            .send(.rollback, to: 0), .send(.rollback, to: 1), .send(.rollback, to: 2),
        ])
    }

    @Test func aLoggedPreCommitIsSentAgainAndTheAnswersSayWhatTerminationDid() {
        var m = machine()
        #expect(m.handle(.recovered(.preCommitted)) == [
            .send(.preCommit, to: 0), .send(.preCommit, to: 1), .send(.preCommit, to: 2),
            .schedule(.phaseOne, attempt: 1),
        ])
        #expect(m.status == .preCommitting)
        // While the coordinator was down, the participants terminated: they committed.
        _ = m.handle(.reported(0, .committed))
        _ = m.handle(.reported(1, .committed))
        #expect(m.handle(.reported(2, .committed)).suffix(2) == [.log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(!m.heuristic)
    }

    /// Every state the coordinator's log can hold for an unfinished 3PC transaction,
    /// through the replay and `recovering(_:)`, as the engine restarts it.
    @Test(arguments: [
        ("begin only", [LogEntry.begin(gid: gid, protocol: .threePhaseCommit, branches: specs)],
         TransactionStatus.aborting, [TransactionAction.send(.rollback, to: 0), .send(.rollback, to: 1), .send(.rollback, to: 2)]),
        ("pre-committed", [.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), .preCommit(gid: gid)],
         .preCommitting, [.send(.preCommit, to: 0), .send(.preCommit, to: 1), .send(.preCommit, to: 2)]),
        ("aborted before the pre-commit", [.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), .decision(gid: gid, .abort, targets: [0, 2])],
         .aborting, [.send(.rollback, to: 0), .send(.rollback, to: 2)]),
        ("committed", [.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), .preCommit(gid: gid), .decision(gid: gid, .commit, targets: [1, 2])],
         .committing, [.send(.doCommit, to: 1), .send(.doCommit, to: 2)]),
        ("aborted after the pre-commit", [.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), .preCommit(gid: gid), .decision(gid: gid, .abort, targets: [0, 1])],
         .aborting, [.send(.rollback, to: 0), .send(.rollback, to: 1)]),
        ("overridden", [.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), .preCommit(gid: gid), .decision(gid: gid, .commit, targets: [0, 1, 2]),
                        .resolution(gid: gid, .abort, targets: [2], reason: "op", heuristic: true)],
         .aborting, [.send(.rollback, to: 2)]),
        ("decided with every branch ended", [.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), .preCommit(gid: gid), .decision(gid: gid, .commit, targets: [])],
         .committed, []),
    ] as [(String, [LogEntry], TransactionStatus, [TransactionAction])])
    func everyLoggableStateRecoversThroughTheReplay(_ name: String, _ entries: [LogEntry], _ status: TransactionStatus, _ expectedSends: [TransactionAction]) throws {
        var replay = TransactionLogReplay()
        for entry in entries {
            // Through the records, as a restart reads them.
            let (type, payload) = entry.encoded()
            replay.apply(try LogEntry(type: type, payload: payload))
        }
        let replayed = try #require(replay.unfinished[gid], "\(name)")
        let (recovered, event) = ThreePhaseCommit.recovering(replayed)
        var m = recovered
        let actions = m.handle(event)
        #expect(m.status == status, "\(name)")
        #expect(sends(actions) == expectedSends, "\(name)")
        #expect(forcedWrites(actions).isEmpty, "\(name): recovery re-forces nothing the log already holds")
        #expect(m.heuristic == entries.contains { if case .resolution(_, _, _, _, true) = $0 { return true } else { return false } }, "\(name)")
    }

    @Test func anEndedTransactionIsNotRecovered() {
        var replay = TransactionLogReplay()
        for entry: LogEntry in [.begin(gid: gid, protocol: .threePhaseCommit, branches: specs), .preCommit(gid: gid),
                                .decision(gid: gid, .commit, targets: [0, 1, 2]), .end(gid: gid), .preCommit(gid: gid)] {
            replay.apply(entry)
        }
        #expect(replay.unfinished.isEmpty)
        #expect(replay.transactions[gid]?.decision == .commit)
    }
}

@Suite struct ThreePhaseUndeliveredTests {
    @Test func aCanCommitNeverDeliveredIsSentAgainUntilTheTimeout() {
        var m = preparing(2)
        #expect(m.handle(ThreePhaseCommit.translate(.replied(0, .canCommit, .undelivered("refused")))!) == [.schedule(.retry(0), attempt: 1)])
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.canCommit, to: 0)])
        _ = m.handle(.voted(1, .yes))
        #expect(m.handle(.voted(0, .yes)).contains(.log(.preCommit(gid: gid), forced: true)))

        var late = preparing(2)
        _ = late.handle(.notDelivered(1, "refused"))
        #expect(late.handle(.timedOut(.phaseOne)).prefix(2) == [.cancel(.phaseOne), .cancel(.retry(1))])
        #expect(late.status == .aborting)
    }

    @Test func phaseTwoMessagesNeverDeliveredAreRetriedAsAnyFailure() {
        #expect(ThreePhaseCommit.translate(.replied(0, .doCommit, .undelivered("refused"))) == .deliveryFailed(0, .doCommit, "refused"))
    }
}
