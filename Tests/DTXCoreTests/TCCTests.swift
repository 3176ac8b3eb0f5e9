import DTXCore
import Testing

private let gid = try! GlobalTransactionID(validating: "tcc-1")
private let specs = (0..<3).map { BranchSpec(participant: "p\($0)", operation: "reserve", payload: .object(["n": .number(Double($0))])) }

private func machine(_ count: Int = 3) -> TryConfirmCancel {
    TryConfirmCancel(gid: gid, branches: Array(specs.prefix(count)))
}

/// Every branch has been sent Try.
private func trying(_ count: Int = 3) -> TryConfirmCancel {
    var m = machine(count)
    _ = m.handle(.start)
    return m
}

/// Every Try succeeded: Confirm is out to every branch.
private func confirming(_ count: Int = 3) -> TryConfirmCancel {
    var m = trying(count)
    for id in 0..<count { _ = m.handle(.tried(id, result: .number(Double(id)))) }
    return m
}

/// Branch 0 refused its Try: Cancel is out to every branch.
private func cancelling(_ count: Int = 3) -> TryConfirmCancel {
    var m = trying(count)
    _ = m.handle(.tryRefused(0, code: "insufficient_funds", message: "balance 3 < 5"))
    return m
}

private func forcedWrites(_ actions: [TransactionAction]) -> [LogEntry] {
    actions.compactMap { if case let .log(entry, forced: true) = $0 { return entry } else { return nil } }
}

private func sends(_ actions: [TransactionAction]) -> [TransactionAction] {
    actions.filter { if case .send = $0 { return true } else { return false } }
}

@Suite struct TCCSubmittedTests {
    @Test func startForcesBeginThenTriesEveryBranchInParallelAndArmsTheTimeout() {
        var m = machine()
        let actions = m.handle(.start)
        #expect(actions == [
            .log(.begin(gid: gid, protocol: .tcc, branches: specs), forced: true),
            .send(.try, to: 0), .send(.try, to: 1), .send(.try, to: 2),
            .schedule(.phaseOne, attempt: 1),
        ])
        #expect(m.status == .trying)
        #expect(m.branches.allSatisfy { $0.state == .trying && $0.attempts == 1 })
    }

    @Test func allTriesDoneForcesTheCommitDecisionThenConfirmsEachAndEndsLazily() {
        var m = trying()
        #expect(m.handle(.tried(0, result: .string("r0"))) == [])
        #expect(m.handle(.tried(2, result: nil)) == [])
        let actions = m.handle(.tried(1, result: .string("r1")))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .commit, targets: [0, 1, 2]), forced: true),
            .decided(.commit),
            .send(.confirm, to: 0), .send(.confirm, to: 1), .send(.confirm, to: 2),
        ])
        #expect(m.status == .confirming)
        #expect(m.targets == [0, 1, 2])
        #expect(m.handle(.confirmed(2, result: nil)) == [.cancel(.retry(2))])
        #expect(m.handle(.confirmed(0, result: .string("confirmed r0"))) == [.cancel(.retry(0))])
        #expect(m.handle(.confirmed(1, result: nil)) == [.cancel(.retry(1)), .log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(m.status == .committed)
        #expect(m.branches.allSatisfy { $0.state == .confirmed })
        // A Try's result is kept; a Confirm that returns one replaces it.
        #expect(m.branches.map(\.result) == [.string("confirmed r0"), .string("r1"), nil])
    }

    @Test func bothOutcomesForceExactlyTheBeginAndTheDecision() {
        var commit = machine()
        var all = commit.handle(.start)
        for id in 0..<3 { all += commit.handle(.tried(id, result: nil)) }
        for id in 0..<3 { all += commit.handle(.confirmed(id, result: nil)) }
        #expect(forcedWrites(all).count == 2)
        #expect(commit.status == .committed)

        var cancel = machine()
        all = cancel.handle(.start)
        all += cancel.handle(.tryRefused(1, code: "no", message: "no"))
        for id in 0..<3 { all += cancel.handle(.cancelled(id)) }
        #expect(forcedWrites(all).count == 2)
        #expect(cancel.status == .aborted)
    }

    @Test func aRefusedTryCancelsEveryBranchIncludingTheRefusedAndTheUnanswered() {
        var m = trying()
        _ = m.handle(.tried(1, result: nil))
        let actions = m.handle(.tryRefused(0, code: "insufficient_funds", message: "balance 3 < 5"))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 1, 2]), forced: true),
            .decided(.abort),
            .send(.cancel, to: 0), .send(.cancel, to: 1), .send(.cancel, to: 2),
        ])
        #expect(m.status == .cancelling)
        #expect(m.branches[0].lastError == "balance 3 < 5")
        #expect(m.branches[0].result == .object(["error": .object(["code": .string("insufficient_funds"), "message": .string("balance 3 < 5")])]))
        #expect(m.handle(.cancelled(2)) == [.cancel(.retry(2))])
        #expect(m.handle(.cancelled(0)) == [.cancel(.retry(0))])
        #expect(m.handle(.cancelled(1)) == [.cancel(.retry(1)), .log(.end(gid: gid), forced: false), .finish(.aborted)])
        #expect(m.branches.allSatisfy { $0.state == .cancelled })
    }

    @Test func aTryThatCannotBeDeliveredCancelsWithoutRetrying() {
        var m = trying(2)
        let actions = m.handle(.deliveryFailed(1, .try, "connection refused"))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 1]), forced: true),
            .decided(.abort),
            .send(.cancel, to: 0), .send(.cancel, to: 1),
        ])
        #expect(m.branches[1].lastError == "connection refused")
    }

    @Test func theTransactionTimeoutBeforeEveryTryAnsweredCancelsAll() {
        var m = trying()
        _ = m.handle(.tried(0, result: nil))
        _ = m.handle(.tried(1, result: nil))
        let actions = m.handle(.timedOut(.phaseOne))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.resolution(gid: gid, .abort, targets: [0, 1, 2], reason: "Try timed out", heuristic: false), forced: true),
            .decided(.abort),
            .send(.cancel, to: 0), .send(.cancel, to: 1), .send(.cancel, to: 2),
        ])
        #expect(m.status == .cancelling)
    }

    @Test func confirmIsRetriedWithGrowingAttemptsAndNoLimitUntilDone() {
        var m = confirming()
        for attempt in 1...20 {
            #expect(m.handle(.deliveryFailed(1, .confirm, "503")) == [.schedule(.retry(1), attempt: attempt)])
            #expect(m.handle(.timedOut(.retry(1))) == [.send(.confirm, to: 1)])
        }
        #expect(m.branches[1].attempts == 21 && m.branches[1].lastError == "503")
        // A refused Confirm is retried the same way (translate makes it a failed delivery).
        let refused = TryConfirmCancel.translate(.replied(1, .confirm, .refused(code: "locked", message: "row locked")))!
        #expect(refused == .deliveryFailed(1, .confirm, "locked: row locked"))
        #expect(m.handle(refused) == [.schedule(.retry(1), attempt: 21)])
        #expect(m.status == .confirming)
        _ = m.handle(.confirmed(0, result: nil))
        _ = m.handle(.confirmed(2, result: nil))
        #expect(m.handle(.confirmed(1, result: nil)).last == .finish(.committed))
    }

    @Test func cancelIsRetriedUntilDone() {
        var m = cancelling(2)
        #expect(m.handle(.deliveryFailed(1, .cancel, "timeout")) == [.schedule(.retry(1), attempt: 1)])
        #expect(m.handle(.deliveryFailed(1, .cancel, "timeout")) == [.schedule(.retry(1), attempt: 2)])
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.cancel, to: 1)])
        _ = m.handle(.cancelled(0))
        #expect(m.handle(.cancelled(1)).last == .finish(.aborted))
    }

    @Test func timersChangeNothingWhereTheyMeanNothing() {
        var t = trying()
        #expect(t.handle(.timedOut(.step(0))) .isImpossible)    // a saga's timer
        #expect(t.status == .trying)

        var c = confirming()
        #expect(c.handle(.timedOut(.phaseOne)) == [])   // the timeout after the decision
        #expect(c.handle(.timedOut(.step(1))) .isImpossible)
        _ = c.handle(.confirmed(0, result: nil))
        #expect(c.handle(.timedOut(.retry(0))) == [])   // a retry of a confirmed branch
        #expect(c.handle(.timedOut(.retry(9))) == [])

        var x = cancelling()
        #expect(x.handle(.timedOut(.phaseOne)) == [])
        _ = x.handle(.cancelled(0))
        #expect(x.handle(.timedOut(.retry(0))) == [])
        _ = x.handle(.cancelled(1))
        _ = x.handle(.cancelled(2))
        #expect(x.status == .aborted)
        #expect(x.handle(.timedOut(.phaseOne)) == [])
        #expect(x.handle(.timedOut(.retry(1))) == [])

        var created = machine()
        #expect(created.handle(.timedOut(.phaseOne)) .isImpossible)
        #expect(created.status == .created)
    }

    @Test func lateDuplicateOutOfOrderAndUnknownMessagesChangeNothing() {
        var m = trying()
        _ = m.handle(.tried(0, result: .string("first")))
        #expect(m.handle(.tried(0, result: .string("again"))) == [])            // duplicate
        #expect(m.handle(.tryRefused(0, code: "x", message: "changed mind")) == [])  // an answered Try cannot change
        #expect(m.handle(.deliveryFailed(0, .try, "late failure")) == [])
        #expect(m.handle(.confirmed(1, result: nil)) .isImpossible)                      // Confirm before any decision
        #expect(m.handle(.cancelled(1)) .isImpossible)
        #expect(m.handle(.deliveryFailed(1, .confirm, "?")) .isImpossible)
        #expect(m.handle(.tried(7, result: nil)) == [])                          // unknown branches
        #expect(m.handle(.tried(-1, result: nil)) == [])
        #expect(m.handle(.tryRefused(9, code: "x", message: "x")) == [])
        #expect(m.handle(.deliveryFailed(9, .try, "?")) == [])
        #expect(m.handle(.start) .isImpossible)
        #expect(m.handle(.open) .isImpossible)
        #expect(m.handle(.enlisted(specs[0])) .isImpossible)
        #expect(m.status == .trying && m.branches[0].result == .string("first"))

        var c = confirming()
        #expect(c.handle(.tried(1, result: nil)) == [])                          // late duplicate Try answer
        #expect(c.handle(.deliveryFailed(1, .try, "late")) == [])                // late Try failure
        #expect(c.handle(.cancelled(1)) == [])                                   // the wrong phase's ack
        #expect(c.handle(.deliveryFailed(1, .cancel, "?")) == [])
        #expect(c.handle(.confirmed(5, result: nil)) == [])
        _ = c.handle(.confirmed(1, result: nil))
        #expect(c.handle(.confirmed(1, result: .string("dup"))) == [])           // duplicate ack
        #expect(c.handle(.deliveryFailed(1, .confirm, "after its ack")) == [])
        #expect(c.branches[1].result == .number(1))
        #expect(c.status == .confirming)

        var x = cancelling()
        // A Try that answers after the Cancel went out (or is refused `already_cancelled`
        // by the barrier) is ignored: its Cancel covers it.
        #expect(x.handle(.tried(1, result: nil)) == [])
        #expect(x.handle(.tryRefused(2, code: "already_cancelled", message: "cancelled before try")) == [])
        #expect(x.handle(.confirmed(1, result: nil)) == [])
        #expect(x.handle(.deliveryFailed(1, .confirm, "?")) == [])
        #expect(x.handle(.cancelled(-3)) == [])
        #expect(x.branches.allSatisfy { $0.state == .cancelling })
    }

    @Test func aTryThatAnswersAfterTheCancelWentOutKeepsItsResultAndChangesNothingElse() {
        var m = trying()
        _ = m.handle(.tryRefused(1, code: "no_funds", message: "too poor"))
        #expect(m.status == .cancelling)
        #expect(m.handle(.tried(0, result: .object(["reserved": .number(1)]))) == [])
        #expect(m.branches[0].result == .object(["reserved": .number(1)]))
        #expect(m.branches[0].state == .cancelling)
        #expect(m.handle(.tried(0, result: .string("again"))) == [])           // the first answer stays
        #expect(m.handle(.tried(1, result: .string("refused one"))) == [])     // a refusal is not overwritten
        #expect(m.branches[0].result == .object(["reserved": .number(1)]))
        #expect(m.branches[1].result == .refusal(code: "no_funds", message: "too poor"))
    }

    @Test func submittedTransactionsRefuseEnlistmentAndCommitButTakeAnAbortWhileTrying() {
        var m = trying()
        #expect(m.rejection(of: .enlisted(specs[0])) != nil)
        #expect(m.rejection(of: .commitRequested) != nil)
        #expect(m.rejection(of: .abortRequested(reason: "x")) == nil)
        let actions = m.handle(.abortRequested(reason: "client gave up"))
        #expect(forcedWrites(actions) == [.resolution(gid: gid, .abort, targets: [0, 1, 2], reason: "client gave up", heuristic: false)])
        #expect(sends(actions).count == 3)
        #expect(m.rejection(of: .abortRequested(reason: "again")) != nil)
        #expect(m.handle(.abortRequested(reason: "again")) .isImpossible)

        let decided = confirming()
        #expect(decided.rejection(of: .abortRequested(reason: "x"))?.contains("operator") == true)
    }

    @Test func participantAnswersTranslateIntoTheMachinesEvents() {
        #expect(TryConfirmCancel.translate(.replied(0, .try, .done(status: "tried", result: .number(1)))) == .tried(0, result: .number(1)))
        #expect(TryConfirmCancel.translate(.replied(0, .try, .refused(code: "no_stock", message: "none left"))) == .tryRefused(0, code: "no_stock", message: "none left"))
        #expect(TryConfirmCancel.translate(.replied(0, .try, .failed("down"))) == .deliveryFailed(0, .try, "down"))
        #expect(TryConfirmCancel.translate(.replied(1, .confirm, .done(status: "confirmed", result: nil))) == .confirmed(1, result: nil))
        #expect(TryConfirmCancel.translate(.replied(1, .confirm, .failed("down"))) == .deliveryFailed(1, .confirm, "down"))
        #expect(TryConfirmCancel.translate(.replied(1, .cancel, .done(status: "cancelled", result: nil))) == .cancelled(1))
        #expect(TryConfirmCancel.translate(.replied(1, .cancel, .refused(code: "c", message: "m"))) == .deliveryFailed(1, .cancel, "c: m"))
        #expect(TryConfirmCancel.translate(.replied(1, .cancel, .failed("down"))) == .deliveryFailed(1, .cancel, "down"))
        #expect(TryConfirmCancel.translate(.replied(1, .prepare, .done(status: "prepared", result: nil))) == nil)
        #expect(TryConfirmCancel.translate(.replied(1, .action, .failed("x"))) == nil)
        #expect(TryConfirmCancel.translate(.timedOut(.phaseOne)) == .timedOut(.phaseOne))
        #expect(TryConfirmCancel.translate(.forced(.abort, reason: "r")) == .forced(.abort, reason: "r"))
        #expect(TryConfirmCancel.translate(.start) == .start)
        #expect(TryConfirmCancel.translate(.open) == .open)
        #expect(TryConfirmCancel.translate(.commitRequested) == .commitRequested)
    }
}

@Suite struct TCCInteractiveTests {
    private let spec = BranchSpec(participant: "stock", operation: "reserve")

    @Test func openAndEnlistAreForcedAndCommitConfirmsEveryEnlistedBranch() {
        var m = TryConfirmCancel(interactive: gid)
        #expect(m.handle(.start) .isImpossible)  // an interactive transaction opens
        #expect(m.handle(.open) == [.log(.open(gid: gid, protocol: .tcc), forced: true), .schedule(.phaseOne, attempt: 1)])
        #expect(m.status == .active)
        #expect(m.rejection(of: .enlisted(spec)) == nil)
        #expect(m.handle(.enlisted(spec)) == [.log(.enlist(gid: gid, branch: 0, spec: spec), forced: true)])
        #expect(m.handle(.enlisted(spec)) == [.log(.enlist(gid: gid, branch: 1, spec: spec), forced: true)])
        #expect(m.branches.map(\.state) == [.tried, .tried])
        #expect(m.rejection(of: .commitRequested) == nil)
        #expect(m.handle(.commitRequested) == [
            .cancel(.phaseOne), .log(.decision(gid: gid, .commit, targets: [0, 1]), forced: true), .decided(.commit),
            .send(.confirm, to: 0), .send(.confirm, to: 1),
        ])
        #expect(m.rejection(of: .enlisted(spec)) != nil)
        #expect(m.rejection(of: .commitRequested) != nil)
        #expect(m.handle(.enlisted(spec)) .isImpossible)
        _ = m.handle(.confirmed(0, result: nil))
        #expect(m.handle(.confirmed(1, result: nil)).last == .finish(.committed))
    }

    @Test func anEmptyCommitFinishesAtOnce() {
        var m = TryConfirmCancel(interactive: gid)
        _ = m.handle(.open)
        // Logged lazily, so that a restart reports the commit.
        #expect(m.handle(.commitRequested) == [
            .cancel(.phaseOne), .log(.decision(gid: gid, .commit, targets: []), forced: false), .decided(.commit),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
    }

    @Test func abortAndTimeoutCancelEveryEnlistedBranchWithTheReasonLogged() {
        var aborted = TryConfirmCancel(interactive: gid)
        _ = aborted.handle(.open)
        _ = aborted.handle(.enlisted(spec))
        #expect(aborted.handle(.abortRequested(reason: "user cancelled")) == [
            .cancel(.phaseOne),
            .log(.resolution(gid: gid, .abort, targets: [0], reason: "user cancelled", heuristic: false), forced: true),
            .decided(.abort), .send(.cancel, to: 0),
        ])
        #expect(aborted.handle(.cancelled(0)).last == .finish(.aborted))

        var timedOut = TryConfirmCancel(interactive: gid)
        _ = timedOut.handle(.open)
        _ = timedOut.handle(.enlisted(spec))
        _ = timedOut.handle(.enlisted(spec))
        let actions = timedOut.handle(.timedOut(.phaseOne))
        #expect(forcedWrites(actions) == [.resolution(gid: gid, .abort, targets: [0, 1], reason: "timed out before commit", heuristic: false)])
        #expect(sends(actions) == [.send(.cancel, to: 0), .send(.cancel, to: 1)])

        var empty = TryConfirmCancel(interactive: gid)
        _ = empty.handle(.open)
        #expect(empty.handle(.timedOut(.phaseOne)).suffix(2) == [.log(.end(gid: gid), forced: false), .finish(.aborted)])
    }
}

@Suite struct TCCOperatorTests {
    @Test func nothingCanBeForcedBeforeTheStartOrAfterTheEnd() {
        var created = machine()
        #expect(created.forceRejection(.abort) != nil && created.forceRejection(.commit) != nil)
        #expect(created.handle(.forced(.abort, reason: "r")) == [])

        var done = confirming()
        for id in 0..<3 { _ = done.handle(.confirmed(id, result: nil)) }
        #expect(done.forceRejection(.abort)?.contains("committed") == true)
        #expect(done.forceRejection(.commit) != nil)
        #expect(done.handle(.forced(.abort, reason: "r")) == [])
    }

    @Test func whileTryingOnlyCancelCanBeForcedAndItIsAnOrdinaryAbort() {
        var m = trying()
        #expect(m.forceRejection(.commit) != nil)
        #expect(m.handle(.forced(.commit, reason: "r")) == [])
        #expect(m.rejection(of: .forced(.commit, reason: "r")) != nil)
        let actions = m.handle(.forced(.abort, reason: "stuck try"))
        #expect(forcedWrites(actions) == [.resolution(gid: gid, .abort, targets: [0, 1, 2], reason: "stuck try", heuristic: false)])
        #expect(sends(actions).count == 3)
        #expect(!m.heuristic)

        var open = TryConfirmCancel(interactive: gid)
        _ = open.handle(.open)
        #expect(open.forceRejection(.commit) != nil)
        #expect(open.forceRejection(.abort) == nil)
    }

    @Test func forcingTheOppositeOfAConfirmDecisionCancelsTheUnacknowledgedBranchesHeuristically() {
        var m = confirming()
        _ = m.handle(.confirmed(0, result: nil))
        #expect(m.forceRejection(.commit) != nil, "the decision taken cannot be forced again")
        let actions = m.handle(.forced(.abort, reason: "participant lost its data"))
        #expect(actions == [
            .log(.resolution(gid: gid, .abort, targets: [1, 2], reason: "participant lost its data", heuristic: true), forced: true),
            .decided(.abort),
            .cancel(.retry(1)), .send(.cancel, to: 1),
            .cancel(.retry(2)), .send(.cancel, to: 2),
        ])
        #expect(m.heuristic)
        #expect(m.status == .cancelling)
        #expect(m.branches[0].state == .confirmed)
        _ = m.handle(.cancelled(1))
        #expect(m.handle(.cancelled(2)).last == .finish(.aborted))
    }

    @Test func forcingConfirmOfACancellingTransactionIsHeuristicToo() {
        var m = cancelling()
        #expect(m.forceRejection(.abort) != nil)
        _ = m.handle(.cancelled(2))
        let actions = m.handle(.forced(.commit, reason: "the refusal was a bug, fixed by hand"))
        #expect(forcedWrites(actions) == [.resolution(gid: gid, .commit, targets: [0, 1], reason: "the refusal was a bug, fixed by hand", heuristic: true)])
        #expect(sends(actions) == [.send(.confirm, to: 0), .send(.confirm, to: 1)])
        _ = m.handle(.confirmed(0, result: nil))
        #expect(m.handle(.confirmed(1, result: nil)).last == .finish(.committed))
        #expect(m.heuristic)
    }

    @Test func theEngineSeesTheSameRejectionsAsTheOperatorInEveryState() {
        var open = TryConfirmCancel(interactive: gid)
        _ = open.handle(.open)
        let machines = [machine(), trying(), confirming(), cancelling(), open]
        for m in machines {
            for decision in [Decision.commit, .abort] {
                #expect(m.rejection(of: .forced(decision, reason: "r")) == m.forceRejection(decision))
            }
        }
        #expect(machines.map { $0.forceRejection(.abort) == nil } == [false, true, true, false, true])
        #expect(machines.map { $0.forceRejection(.commit) == nil } == [false, false, false, true, false])
    }
}

@Suite struct TCCRecoveryTests {
    @Test func undecidedPresumesCancelAndCancelsEveryBranch() {
        var m = machine()
        let actions = m.handle(.recovered(.undecided))
        #expect(actions == [
            .cancel(.phaseOne),
            .log(.decision(gid: gid, .abort, targets: [0, 1, 2]), forced: true),
            .decided(.abort),
            .send(.cancel, to: 0), .send(.cancel, to: 1), .send(.cancel, to: 2),
        ])
        for id in 0..<3 { _ = m.handle(.cancelled(id)) }
        #expect(m.status == .aborted)
    }

    @Test func aLoggedConfirmDecisionResumesConfirmOnItsTargets() {
        var m = machine()
        #expect(m.handle(.recovered(.decided(.commit, targets: [0, 1, 2]))) == [.decided(.commit), .send(.confirm, to: 0), .send(.confirm, to: 1), .send(.confirm, to: 2)])
        #expect(m.status == .confirming)
        #expect(m.handle(.deliveryFailed(2, .confirm, "down")) == [.schedule(.retry(2), attempt: 1)])
        _ = m.handle(.confirmed(0, result: nil))
        _ = m.handle(.confirmed(1, result: nil))
        _ = m.handle(.timedOut(.retry(2)))
        #expect(m.handle(.confirmed(2, result: nil)) == [.cancel(.retry(2)), .log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func aLoggedCancelDecisionResumesCancel() {
        var m = machine(2)
        #expect(m.handle(.recovered(.decided(.abort, targets: [0, 1]))) == [.decided(.abort), .send(.cancel, to: 0), .send(.cancel, to: 1)])
        _ = m.handle(.cancelled(0))
        #expect(m.handle(.cancelled(1)).last == .finish(.aborted))
    }

    @Test func aHeuristicResolutionResumesOnItsTargetsAndLeavesTheOthersSettledTheOtherWay() {
        var m = machine()
        #expect(m.handle(.recovered(.decided(.abort, targets: [2], heuristic: true))) == [.decided(.abort), .send(.cancel, to: 2)])
        #expect(m.heuristic)
        #expect(m.branches.map(\.state) == [.confirmed, .confirmed, .cancelling])
        #expect(m.handle(.cancelled(2)).last == .finish(.aborted))

        var empty = machine()
        #expect(empty.handle(.recovered(.decided(.commit, targets: []))) == [.decided(.commit), .log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func recoveryIsOnlyAcceptedBeforeAnythingElseHappened() {
        var m = trying()
        #expect(m.handle(.recovered(.undecided)) .isImpossible)
        #expect(m.status == .trying)
    }

    @Test func everyLoggableStateRecoversThroughTheReplay() {
        let a = try! GlobalTransactionID(validating: "a")
        let b = try! GlobalTransactionID(validating: "b")
        let c = try! GlobalTransactionID(validating: "c")
        let d = try! GlobalTransactionID(validating: "d")
        let e = try! GlobalTransactionID(validating: "e")
        let spec = BranchSpec(participant: "p", operation: "o")
        var replay = TransactionLogReplay()
        for entry: LogEntry in [
            .begin(gid: a, protocol: .tcc, branches: [spec, spec]),                 // begin only
            .begin(gid: b, protocol: .tcc, branches: [spec, spec]),
            .decision(gid: b, .commit, targets: [0, 1]),                               // decided commit
            .begin(gid: c, protocol: .tcc, branches: [spec, spec]),
            .decision(gid: c, .abort, targets: [0, 1]),                                // decided abort
            .begin(gid: d, protocol: .tcc, branches: [spec, spec]),
            .decision(gid: d, .commit, targets: [0, 1]),
            .resolution(gid: d, .abort, targets: [1], reason: "op", heuristic: true),  // heuristic resolution
            .open(gid: e, protocol: .tcc),                                             // interactive, undecided
            .enlist(gid: e, branch: 0, spec: spec),
        ] {
            replay.apply(entry)
        }
        func resumed(_ gid: GlobalTransactionID) -> (TryConfirmCancel, [TransactionAction]) {
            let (recovered, event) = TryConfirmCancel.recovering(replay.unfinished[gid]!)
            var machine = recovered
            let actions = machine.handle(event)
            return (machine, actions)
        }
        #expect(sends(resumed(a).1) == [.send(.cancel, to: 0), .send(.cancel, to: 1)])
        #expect(sends(resumed(b).1) == [.send(.confirm, to: 0), .send(.confirm, to: 1)])
        #expect(sends(resumed(c).1) == [.send(.cancel, to: 0), .send(.cancel, to: 1)])
        let (heuristic, actions) = resumed(d)
        #expect(sends(actions) == [.send(.cancel, to: 1)] && heuristic.heuristic)
        let (interactive, interactiveActions) = resumed(e)
        #expect(interactive.interactive && interactive.branches.count == 1)
        #expect(sends(interactiveActions) == [.send(.cancel, to: 0)])
    }
}

@Suite struct TCCUndeliveredTryTests {
    @Test func aTryNeverDeliveredIsSentAgainUntilTheTimeout() {
        var t = trying(2)
        let refused = TryConfirmCancel.translate(.replied(1, .try, .undelivered("connection refused")))!
        #expect(t.handle(refused) == [.schedule(.retry(1), attempt: 1)])
        #expect(t.handle(.timedOut(.retry(1))) == [.send(.try, to: 1)])
        _ = t.handle(.tried(0, result: nil))
        #expect(t.handle(.tried(1, result: nil)).contains(.decided(.commit)))

        var late = trying(2)
        _ = late.handle(.notDelivered(0, "connection refused"))
        let actions = late.handle(.timedOut(.phaseOne))
        #expect(actions.prefix(2) == [.cancel(.phaseOne), .cancel(.retry(0))])
        #expect(actions.contains(.send(.cancel, to: 0)) && actions.contains(.send(.cancel, to: 1)))
    }

    @Test func confirmAndCancelNeverDeliveredAreRetriedAsAnyFailure() {
        #expect(TryConfirmCancel.translate(.replied(0, .confirm, .undelivered("refused"))) == .deliveryFailed(0, .confirm, "refused"))
        #expect(TryConfirmCancel.translate(.replied(0, .cancel, .undelivered("refused"))) == .deliveryFailed(0, .cancel, "refused"))
    }
}
