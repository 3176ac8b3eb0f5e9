import DTXAPI
import DTXCore
import Testing

private let gid = try! GlobalTransactionID(validating: "msg-1")
private let service = "orders"

private func branch(_ operation: String, after: [BranchID]? = nil, retry: StepRetry? = nil, timeout: Double? = nil) -> BranchSpec {
    BranchSpec(participant: "svc", operation: operation, dependsOn: after, retry: retry, timeout: timeout)
}

private func sequence(_ count: Int, timeout: Double? = nil) -> [BranchSpec] {
    (0..<count).map { branch("b\($0)", timeout: timeout) }
}

/// Three roots: delivered concurrently.
private let roots = [branch("a", after: []), branch("b", after: []), branch("c", after: [])]

/// 0 → {1, 2} → 3
private let diamond = [branch("a", after: []), branch("b", after: [0]), branch("c", after: [0]), branch("d", after: [1, 2])]

private func prepared(_ branches: [BranchSpec]) -> TransactionalMessage {
    var m = TransactionalMessage(gid: gid, service: service, branches: branches)
    _ = m.handle(.prepare)
    return m
}

private func submitted(_ branches: [BranchSpec]) -> TransactionalMessage {
    var m = prepared(branches)
    _ = m.handle(.submit)
    return m
}

/// What a commit outcome does before the first send: stop the timers, force `entry`, tell the waiters.
private func committing(_ entry: LogEntry) -> [TransactionAction] {
    [.cancel(.phaseOne), .cancel(.checkBack), .log(entry, forced: true), .decided(.commit)]
}

/// What the service's submit (or a check-back that hears `committed`) does before the first send.
private func submitting(_ count: Int) -> [TransactionAction] {
    committing(.decision(gid: gid, .commit, targets: Array(0..<count)))
}

/// The service's abort (or a check-back that hears `rolled_back`): nothing forced.
private let aborting: [TransactionAction] = [
    .cancel(.phaseOne), .cancel(.checkBack), .log(.decision(gid: gid, .abort, targets: []), forced: false), .decided(.abort),
    .log(.end(gid: gid), forced: false), .finish(.aborted),
]

private let ending: [TransactionAction] = [.log(.end(gid: gid), forced: false), .finish(.committed)]

private func forcedWrites(_ actions: [TransactionAction]) -> [LogEntry] {
    actions.compactMap { if case let .log(entry, forced: true) = $0 { return entry } else { return nil } }
}

private func replied(_ response: String) -> ParticipantResponse {
    .done(status: response, result: nil)
}

@Suite struct TransactionalMessagePrepareAndSubmitTests {
    @Test func thePrepareForcesTheBeginWithTheServiceThenArmsTheMessagesTimeout() {
        var m = TransactionalMessage(gid: gid, service: service, branches: sequence(2))
        #expect(m.status == .created && m.displayStatus == .prepared)
        #expect(m.handle(.prepare) == [.log(.begin(gid: gid, protocol: .msg, branches: sequence(2), service: service), forced: true), .schedule(.phaseOne, attempt: 0)])
        #expect(m.status == .prepared && m.displayStatus == .prepared)
        #expect(m.service == service)
        #expect(m.branches.map(\.state) == [.pending, .pending])
        #expect(m.waitingForAnOperator.isEmpty && !m.heuristic && m.checkBacks == 0 && m.lastCheckBack == nil)
    }

    @Test func aSubmitForcesTheCommitDecisionThenDeliversTheBranchesInSequenceAndEndsLazily() {
        var m = prepared(sequence(3))
        var all = m.handle(.submit)
        #expect(all == submitting(3) + [.send(.action, to: 0)])
        #expect(m.status == .running && m.displayStatus == .running)
        #expect(m.branches.map(\.state) == [.running, .pending, .pending])
        #expect(m.dependencies == [[], [0], [1]])
        var actions = m.handle(.delivery(.stepDone(0, result: .string("r0"))))
        #expect(actions == [.send(.action, to: 1)])
        all += actions
        actions = m.handle(.delivery(.stepDone(1, result: nil)))
        #expect(actions == [.send(.action, to: 2)])
        all += actions
        actions = m.handle(.delivery(.stepDone(2, result: .number(2))))
        // The decision is already logged: no lazy one before the end.
        #expect(actions == ending)
        all += actions
        #expect(forcedWrites(all) == [.decision(gid: gid, .commit, targets: [0, 1, 2])])
        #expect(m.status == .committed && m.displayStatus == .committed && !m.heuristic)
        #expect(m.branches.map(\.state) == [.done, .done, .done])
        #expect(m.branches.map(\.result) == [.string("r0"), nil, .number(2)])
        #expect(m.branches.map(\.attempts) == [1, 1, 1])
    }

    @Test func withDependsOnTheReadyBranchesAreDeliveredConcurrently() {
        var m = prepared(roots)
        #expect(m.handle(.submit) == submitting(3) + [.send(.action, to: 0), .send(.action, to: 1), .send(.action, to: 2)])
        #expect(m.handle(.delivery(.stepDone(1, result: nil))) == [])
        #expect(m.handle(.delivery(.stepDone(0, result: nil))) == [])
        #expect(m.handle(.delivery(.stepDone(2, result: nil))) == ending)
        #expect(m.status == .committed)

        var dag = prepared(diamond)
        #expect(dag.dependencies == [[], [0], [0], [1, 2]])
        #expect(dag.handle(.submit) == submitting(4) + [.send(.action, to: 0)])
        #expect(dag.handle(.delivery(.stepDone(0, result: nil))) == [.send(.action, to: 1), .send(.action, to: 2)])
        #expect(dag.handle(.delivery(.stepDone(2, result: nil))) == [])  // 3 still waits for 1
        #expect(dag.handle(.delivery(.stepDone(1, result: nil))) == [.send(.action, to: 3)])
        #expect(dag.handle(.delivery(.stepDone(3, result: nil))) == ending)
    }

    @Test func aBranchWithATimeoutArmsItsStepTimerOnEachDelivery() {
        var m = prepared(sequence(2, timeout: 2.5))
        #expect(m.handle(.submit) == submitting(2) + [.send(.action, to: 0), .schedule(.step(0), attempt: 1)])
        #expect(m.handle(.delivery(.stepDone(0, result: nil))) == [.cancel(.step(0)), .send(.action, to: 1), .schedule(.step(1), attempt: 1)])
    }

    /// The engine asks the machine for the delay of a `step(id)` timer and for a branch's
    /// backoff: a branch's `timeout` and `retry` delays (which `validate` accepts) must reach it.
    @Test func theBranchesTimeoutAndRetryDelaysAreWhatTheEngineArms() {
        let m = prepared([branch("a", retry: StepRetry(initialDelay: 0.25, maxDelay: 4), timeout: 2.5), branch("b")])
        #expect(m.stepTimeout(0) == .milliseconds(2_500))
        #expect(m.stepTimeout(1) == nil)
        let base = RetryPolicy()
        var own = base
        own.initialDelay = .milliseconds(250)
        own.maximumDelay = .seconds(4)
        #expect(m.retryPolicy(for: 0, base: base) == own)
        #expect(m.retryPolicy(for: 1, base: base) == base)
    }

    @Test func aSubmitSentAgainChangesNothingAndTheServiceMaySubmitUntilTheEnd() {
        var m = prepared(sequence(2))
        #expect(m.rejection(of: .commitRequested) == nil)
        _ = m.handle(.submit)
        #expect(m.rejection(of: .commitRequested) == nil)
        #expect(m.handle(.submit) == [])
        #expect(m.status == .running && m.branches.map(\.state) == [.running, .pending])
        _ = m.handle(.delivery(.stepDone(0, result: nil)))
        _ = m.handle(.delivery(.stepDone(1, result: nil)))
        #expect(m.status == .committed)
        #expect(m.rejection(of: .commitRequested) != nil)
        #expect(m.handle(.submit) == [])  // late, not impossible
    }

    @Test func theServicesAbortWhilePreparedLogsNothingForcedAndEnds() {
        var m = prepared(sequence(2))
        #expect(m.rejection(of: .abortRequested(reason: "rolled back")) == nil)
        let actions = m.handle(.abortRequested(reason: "rolled back"))
        #expect(actions == aborting)
        #expect(forcedWrites(actions).isEmpty)
        #expect(m.status == .aborted && m.displayStatus == .aborted && !m.heuristic)
        #expect(m.branches.map(\.state) == [.pending, .pending])
        // Late timers and answers change nothing; further requests are refused.
        #expect(m.handle(.timedOut(.phaseOne)) == [])
        #expect(m.handle(.timedOut(.checkBack)) == [])
        #expect(m.handle(.checkedBack(replied("committed"))) == [])
        #expect(m.rejection(of: .abortRequested(reason: "again")) != nil)
        #expect(m.rejection(of: .commitRequested) != nil)
        #expect(m.rejection(of: .forced(.commit, reason: "x")) != nil)
        #expect(m.handle(.abortRequested(reason: "again")).isImpossible)
    }

    @Test func onceSubmittedTheServiceCannotAbort() {
        var m = submitted(sequence(2))
        #expect(m.rejection(of: .abortRequested(reason: "too late")) != nil)
        #expect(m.handle(.abortRequested(reason: "too late")).isImpossible)
        #expect(m.status == .running && m.branches.map(\.state) == [.running, .pending])
    }
}

@Suite struct TransactionalMessageDeliveryTests {
    @Test func aFailedBranchIsRetriedWithoutAnAttemptLimitAndNothingIsCompensated() {
        var m = submitted(sequence(2))
        for attempt in 1...10 {
            #expect(m.handle(.delivery(.stepFailed(0, "503"))) == [.schedule(.retry(0), attempt: attempt)])
            #expect(m.handle(.delivery(.timedOut(.retry(0)))) == [.send(.action, to: 0)])
        }
        #expect(m.branches[0].attempts == 11 && m.branches[0].lastError == "503")
        #expect(m.branches.map(\.state) == [.running, .pending])
        #expect(m.status == .running && m.displayStatus == .running && m.waitingForAnOperator.isEmpty)
        #expect(m.handle(.delivery(.stepDone(0, result: nil))) == [.send(.action, to: 1)])
    }

    @Test func aBranchTimingOutIsAFailedAttemptRetriedWithoutLimitToo() {
        var m = submitted(sequence(1, timeout: 1))
        for attempt in 1...5 {
            #expect(m.handle(.delivery(.timedOut(.step(0)))) == [.schedule(.retry(0), attempt: attempt)])
            #expect(m.handle(.delivery(.timedOut(.retry(0)))) == [.send(.action, to: 0), .schedule(.step(0), attempt: attempt + 1)])
        }
        // The late failure of an abandoned attempt does not count twice.
        #expect(m.handle(.delivery(.stepFailed(0, "late"))) == [])
        #expect(m.branches[0].attempts == 6)
        #expect(m.handle(.delivery(.stepDone(0, result: nil))) == [.cancel(.step(0))] + ending)
    }

    @Test func aRefusedBranchFailsAndWaitsForAnOperatorWithNoRetryScheduled() {
        var m = submitted(sequence(3))
        _ = m.handle(.delivery(.stepDone(0, result: nil)))
        #expect(m.handle(.delivery(.stepRefused(1, code: "no_stock", message: "sold out"))) == [])
        #expect(m.branches.map(\.state) == [.done, .failed, .pending])
        #expect(m.branches[1].lastError == "sold out")
        #expect(m.branches[1].result == .refusal(code: "no_stock", message: "sold out"))
        #expect(m.status == .running && m.displayStatus == .failed)
        #expect(m.waitingForAnOperator == [1])
        #expect(!m.heuristic)
        // Its answers are no longer awaited.
        #expect(m.handle(.delivery(.stepFailed(1, "late"))) == [])
        #expect(m.handle(.delivery(.stepDone(1, result: nil))) == [])
        #expect(m.branches[1].state == .failed)

        // The operator's retry delivers it again, as a further attempt.
        #expect(m.handle(.delivery(.timedOut(.retry(1)))) == [.send(.action, to: 1)])
        #expect(m.branches[1].state == .running && m.branches[1].attempts == 2)
        #expect(m.displayStatus == .running && m.waitingForAnOperator.isEmpty)
        #expect(m.handle(.delivery(.timedOut(.retry(1)))) == [])  // its attempt is out
        #expect(m.handle(.delivery(.stepRefused(1, code: "no_stock", message: "still sold out"))) == [])
        #expect(m.waitingForAnOperator == [1] && m.displayStatus == .failed)
        #expect(m.handle(.delivery(.timedOut(.retry(1)))) == [.send(.action, to: 1)])
        #expect(m.branches[1].attempts == 3)
        #expect(m.handle(.delivery(.stepDone(1, result: .string("restocked")))) == [.send(.action, to: 2)])
        #expect(m.branches[1].result == .string("restocked"))
        #expect(m.handle(.delivery(.stepDone(2, result: nil))) == ending)
        #expect(m.status == .committed && !m.heuristic)
    }

    @Test func aRefusalCancelsTheStepTimerAndTheOperatorsRetryArmsItAgain() {
        var m = submitted(sequence(1, timeout: 3))
        #expect(m.handle(.delivery(.stepRefused(0, code: "c", message: "m"))) == [.cancel(.step(0))])
        #expect(m.handle(.delivery(.timedOut(.step(0)))) == [])  // overtaken
        #expect(m.handle(.delivery(.timedOut(.retry(0)))) == [.send(.action, to: 0), .schedule(.step(0), attempt: 2)])
    }

    @Test func aRefusalWhileOtherBranchesRunLeavesThemRunning() {
        var m = submitted(roots)
        #expect(m.handle(.delivery(.stepRefused(1, code: "c", message: "m"))) == [])
        #expect(m.handle(.delivery(.stepDone(0, result: nil))) == [])
        #expect(m.handle(.delivery(.stepDone(2, result: nil))) == [])  // not the end: branch 1 waits
        #expect(m.status == .running && m.displayStatus == .failed && m.waitingForAnOperator == [1])
    }

    @Test func participantAnswersAndTimersTranslateIntoTheMessagesEvents() {
        #expect(TransactionalMessage.translate(.start) == .prepare)
        #expect(TransactionalMessage.translate(.commitRequested) == .submit)
        #expect(TransactionalMessage.translate(.abortRequested(reason: "r")) == .abortRequested(reason: "r"))
        #expect(TransactionalMessage.translate(.forced(.commit, reason: "r")) == .forced(.commit, reason: "r"))
        #expect(TransactionalMessage.translate(.resolvedByHand(1, .commit, reason: "r")) == .resolvedByHand(1, .commit, reason: "r"))
        #expect(TransactionalMessage.translate(.checkedBack(replied("running"))) == .checkedBack(replied("running")))
        #expect(TransactionalMessage.translate(.timedOut(.phaseOne)) == .timedOut(.phaseOne))
        #expect(TransactionalMessage.translate(.timedOut(.checkBack)) == .timedOut(.checkBack))
        #expect(TransactionalMessage.translate(.timedOut(.retry(1))) == .delivery(.timedOut(.retry(1))))
        #expect(TransactionalMessage.translate(.timedOut(.step(1))) == .delivery(.timedOut(.step(1))))
        #expect(TransactionalMessage.translate(.replied(0, .action, .done(status: "done", result: .number(1)))) == .delivery(.stepDone(0, result: .number(1))))
        #expect(TransactionalMessage.translate(.replied(0, .action, .refused(code: "c", message: "m"))) == .delivery(.stepRefused(0, code: "c", message: "m")))
        #expect(TransactionalMessage.translate(.replied(0, .action, .failed("down"))) == .delivery(.stepFailed(0, "down")))
        #expect(TransactionalMessage.translate(.replied(0, .action, .undelivered("no route"))) == .delivery(.stepFailed(0, "no route")))
        #expect(TransactionalMessage.translate(.replied(0, .queryPrepared, replied("committed"))) == nil)
        #expect(TransactionalMessage.translate(.open) == nil)
        #expect(TransactionalMessage.translate(.enlisted(branch("x"))) == nil)
        let m = prepared(sequence(1))
        #expect(m.rejection(of: .open) != nil)
        #expect(m.rejection(of: .enlisted(branch("x"))) != nil)
    }
}

@Suite struct TransactionalMessageCheckBackTests {
    @Test func pastItsTimeoutThePreparedMessageChecksBackWithTheServiceOnce() {
        var m = prepared(sequence(2))
        #expect(m.handle(.timedOut(.phaseOne)) == [.checkBack(service: service)])
        #expect(m.checkBacks == 1 && m.status == .prepared && m.displayStatus == .prepared)
        // While the check-back is out, nothing more is sent.
        #expect(m.handle(.timedOut(.phaseOne)) == [])
        #expect(m.handle(.timedOut(.checkBack)) == [])
        #expect(m.checkBacks == 1)
    }

    @Test func aCheckBackThatHearsCommittedDoesWhatASubmitDoes() {
        var m = prepared(sequence(2))
        _ = m.handle(.timedOut(.phaseOne))
        #expect(m.handle(.checkedBack(replied("committed"))) == submitting(2) + [.send(.action, to: 0)])
        #expect(m.status == .running && m.lastCheckBack == nil)
        // A late answer, a submit after all, a late timer: nothing.
        #expect(m.handle(.checkedBack(replied("committed"))) == [])
        #expect(m.handle(.checkedBack(replied("rolled_back"))) == [])
        #expect(m.handle(.submit) == [])
        #expect(m.handle(.timedOut(.checkBack)) == [])
        #expect(m.handle(.timedOut(.phaseOne)) == [])
        #expect(m.status == .running && m.branches.map(\.state) == [.running, .pending])
    }

    @Test func aCheckBackThatHearsRolledBackAborts() {
        var m = prepared(sequence(2))
        _ = m.handle(.timedOut(.phaseOne))
        #expect(m.handle(.checkedBack(replied("rolled_back"))) == aborting)
        #expect(m.status == .aborted && m.lastCheckBack == nil)
        #expect(m.handle(.checkedBack(replied("committed"))) == [])
    }

    @Test func noOutcomeChecksBackAgainAfterTheBackoffForAsLongAsItTakes() {
        var m = prepared(sequence(2))
        #expect(m.handle(.timedOut(.phaseOne)) == [.checkBack(service: service)])
        #expect(m.handle(.checkedBack(replied("running"))) == [.schedule(.checkBack, attempt: 1)])
        #expect(m.lastCheckBack == "the service's local transaction is still running")
        #expect(m.handle(.checkedBack(replied("committed"))) == [])  // a duplicate: no check-back is out
        #expect(m.status == .prepared)

        let noOutcome: [(ParticipantResponse, String)] = [
            (.failed("503 busy"), "503 busy"),
            (.undelivered("connection refused"), "connection refused"),
            (.refused(code: "unknown_gid", message: "never heard of it"), "the service refused the check-back: unknown_gid: never heard of it"),
            (replied("maybe"), "the service answered 'maybe'"),
            (replied("running"), "the service's local transaction is still running"),
        ]
        for (index, (response, why)) in noOutcome.enumerated() {
            let sent = index + 2
            #expect(m.handle(.timedOut(.checkBack)) == [.checkBack(service: service)])
            #expect(m.checkBacks == sent)
            #expect(m.handle(.checkedBack(response)) == [.schedule(.checkBack, attempt: sent)])
            #expect(m.lastCheckBack == why)
            #expect(m.status == .prepared && m.displayStatus == .prepared)
        }
        #expect(m.handle(.timedOut(.checkBack)) == [.checkBack(service: service)])
        #expect(m.handle(.checkedBack(replied("committed"))) == submitting(2) + [.send(.action, to: 0)])
        #expect(m.checkBacks == 7)
    }

    @Test func aSubmitOrAnAbortWhileACheckBackIsOutMakesItsAnswerLate() {
        var m = prepared(sequence(2))
        _ = m.handle(.timedOut(.phaseOne))
        #expect(m.handle(.submit) == submitting(2) + [.send(.action, to: 0)])
        #expect(m.handle(.checkedBack(replied("rolled_back"))) == [])
        #expect(m.status == .running)

        var aborted = prepared(sequence(2))
        _ = aborted.handle(.timedOut(.phaseOne))
        #expect(aborted.handle(.abortRequested(reason: "rolled back")) == aborting)
        #expect(aborted.handle(.checkedBack(replied("committed"))) == [])
        #expect(aborted.status == .aborted)
    }
}

@Suite struct TransactionalMessageOperatorTests {
    /// The operator decides in the service's place: heuristic, since the service's local
    /// transaction may have ended the other way.
    @Test func aForcedCommitWhilePreparedForcesAHeuristicResolutionThenDelivers() {
        var m = prepared(sequence(2))
        _ = m.handle(.timedOut(.phaseOne))
        #expect(m.rejection(of: .forced(.commit, reason: "in the books")) == nil)
        let actions = m.handle(.forced(.commit, reason: "in the books"))
        #expect(actions == committing(.resolution(gid: gid, .commit, targets: [0, 1], reason: "in the books", heuristic: true)) + [.send(.action, to: 0)])
        #expect(m.status == .running && m.heuristic)
        #expect(m.handle(.checkedBack(replied("rolled_back"))) == [])  // late
        _ = m.handle(.delivery(.stepDone(0, result: nil)))
        #expect(m.handle(.delivery(.stepDone(1, result: nil))) == ending)
        #expect(m.status == .committed && m.heuristic)
    }

    @Test func aForcedAbortWhilePreparedForcesAHeuristicResolutionAndEnds() {
        var m = prepared(sequence(2))
        _ = m.handle(.timedOut(.phaseOne))
        #expect(m.rejection(of: .forced(.abort, reason: "never committed")) == nil)
        #expect(m.handle(.forced(.abort, reason: "never committed")) == [
            .cancel(.phaseOne), .cancel(.checkBack),
            .log(.resolution(gid: gid, .abort, targets: [], reason: "never committed", heuristic: true), forced: true),
            .decided(.abort), .log(.end(gid: gid), forced: false), .finish(.aborted),
        ])
        #expect(m.status == .aborted && m.heuristic)
        #expect(m.handle(.checkedBack(replied("committed"))) == [])
        #expect(m.rejection(of: .forced(.abort, reason: "again")) != nil)
    }

    @Test func nothingIsForcedBeforeThePrepare() {
        let m = TransactionalMessage(gid: gid, service: service, branches: sequence(1))
        #expect(m.rejection(of: .forced(.commit, reason: "x")) != nil)
        #expect(m.rejection(of: .forced(.abort, reason: "x")) != nil)
        #expect(m.rejection(of: .abortRequested(reason: "x")) != nil)
    }

    @Test func aForcedCommitWhileRunningGivesUpOnWhatWasNotDelivered() {
        var m = submitted(sequence(3))
        _ = m.handle(.delivery(.stepDone(0, result: nil)))
        _ = m.handle(.delivery(.stepRefused(1, code: "no_stock", message: "sold out")))
        #expect(m.rejection(of: .forced(.abort, reason: "undo")) != nil)
        #expect(m.handle(.forced(.abort, reason: "undo")).isImpossible)
        #expect(m.rejection(of: .forced(.commit, reason: "refunded")) == nil)
        #expect(m.handle(.forced(.commit, reason: "refunded")) == [
            .log(.resolution(gid: gid, .commit, targets: [], reason: "refunded", heuristic: true), forced: true),
        ] + ending)
        #expect(m.status == .committed && m.displayStatus == .committed && m.heuristic)
        #expect(m.branches.map(\.state) == [.done, .failed, .failed])
        #expect(m.branches[2].lastError == "given up by an operator: refunded")
        #expect(m.waitingForAnOperator.isEmpty)
        #expect(m.handle(.delivery(.stepDone(1, result: nil))) == [])  // late
        #expect(m.rejection(of: .forced(.commit, reason: "again")) != nil)
    }

    @Test func aForcedCommitStopsTheTimersOfTheBranchesStillRunning() {
        var m = submitted(roots)
        _ = m.handle(.delivery(.stepRefused(0, code: "c", message: "m")))
        _ = m.handle(.delivery(.stepFailed(1, "503")))  // backing off; 2 is out
        #expect(m.handle(.forced(.commit, reason: "done by hand")) == [
            .cancel(.retry(1)),
            .log(.resolution(gid: gid, .commit, targets: [], reason: "done by hand", heuristic: true), forced: true),
        ] + ending)
        #expect(m.branches.map(\.state) == [.failed, .failed, .failed] && m.heuristic)
    }

    @Test func aRefusedBranchResolvedByHandIsDoneAndItsDependentsRun() {
        var m = submitted(sequence(3))
        _ = m.handle(.delivery(.stepDone(0, result: nil)))
        _ = m.handle(.delivery(.stepRefused(1, code: "no_stock", message: "sold out")))
        #expect(m.rejection(of: .resolvedByHand(1, .abort, reason: "undone")) != nil)
        #expect(m.handle(.resolvedByHand(1, .abort, reason: "undone")).isImpossible)
        #expect(m.rejection(of: .resolvedByHand(0, .commit, reason: "x")) != nil)  // already done
        #expect(m.rejection(of: .resolvedByHand(1, .commit, reason: "shipped by hand")) == nil)
        #expect(m.handle(.resolvedByHand(1, .commit, reason: "shipped by hand")) == [
            .log(.resolution(gid: gid, .commit, targets: [2], reason: "branch 1 resolved by hand as committed: shipped by hand", heuristic: false), forced: true),
            .send(.action, to: 2),
        ])
        #expect(m.branches.map(\.state) == [.done, .done, .running])
        #expect(m.waitingForAnOperator.isEmpty && m.displayStatus == .running)
        #expect(m.rejection(of: .resolvedByHand(1, .commit, reason: "again")) != nil)
        #expect(m.handle(.delivery(.stepDone(2, result: nil))) == ending)
        #expect(m.status == .committed && !m.heuristic)
    }

    @Test func theLastBranchResolvedByHandEndsTheMessage() {
        var m = submitted(roots)
        _ = m.handle(.delivery(.stepDone(0, result: nil)))
        _ = m.handle(.delivery(.stepDone(2, result: nil)))
        _ = m.handle(.delivery(.stepRefused(1, code: "c", message: "m")))
        #expect(m.handle(.resolvedByHand(1, .commit, reason: "by hand")) == [
            .log(.resolution(gid: gid, .commit, targets: [], reason: "branch 1 resolved by hand as committed: by hand", heuristic: false), forced: true),
        ] + ending)
        #expect(m.status == .committed && m.branches.map(\.state) == [.done, .done, .done])
    }

    @Test func aBranchStillBeingDeliveredMayBeResolvedByHandToo() {
        var m = submitted(sequence(3))
        _ = m.handle(.delivery(.stepFailed(0, "503")))  // backing off
        #expect(m.handle(.resolvedByHand(0, .commit, reason: "by hand")) == [
            .log(.resolution(gid: gid, .commit, targets: [1, 2], reason: "branch 0 resolved by hand as committed: by hand", heuristic: false), forced: true),
            .cancel(.retry(0)), .send(.action, to: 1),
        ])
        #expect(m.handle(.resolvedByHand(1, .commit, reason: "by hand")) == [  // its attempt was out
            .log(.resolution(gid: gid, .commit, targets: [2], reason: "branch 1 resolved by hand as committed: by hand", heuristic: false), forced: true),
            .send(.action, to: 2),
        ])
        #expect(m.handle(.delivery(.stepDone(1, result: nil))) == [])  // its late answer
        #expect(m.branches.map(\.state) == [.done, .done, .running])
    }

    @Test func nothingIsResolvedByHandBeforeTheSubmit() {
        var m = prepared(sequence(2))
        #expect(m.rejection(of: .resolvedByHand(0, .commit, reason: "x")) != nil)
        #expect(m.handle(.resolvedByHand(0, .commit, reason: "x")).isImpossible)
        #expect(m.status == .prepared)
    }
}

@Suite struct TransactionalMessageImpossibleEventTests {
    @Test func eventsThatCannotComeAreImpossibleAndChangeNothing() {
        var created = TransactionalMessage(gid: gid, service: service, branches: sequence(2))
        #expect(created.handle(.submit).isImpossible)
        #expect(created.handle(.checkedBack(replied("committed"))).isImpossible)
        #expect(created.handle(.timedOut(.phaseOne)).isImpossible)
        #expect(created.handle(.delivery(.stepDone(0, result: nil))).isImpossible)
        #expect(created.status == .created)

        var m = prepared(sequence(2))
        #expect(m.handle(.prepare).isImpossible)
        #expect(m.handle(.recovered(.undecided)).isImpossible)
        #expect(m.handle(.delivery(.stepDone(0, result: nil))).isImpossible)
        #expect(m.handle(.delivery(.stepFailed(0, "x"))).isImpossible)
        #expect(m.handle(.delivery(.stepRefused(0, code: "c", message: "m"))).isImpossible)
        #expect(m.handle(.delivery(.timedOut(.retry(0)))).isImpossible)
        #expect(m.handle(.delivery(.timedOut(.step(0)))).isImpossible)
        #expect(m.status == .prepared && m.branches.map(\.state) == [.pending, .pending])

        var running = submitted(sequence(2))
        #expect(running.handle(.prepare).isImpossible)
        #expect(running.handle(.recovered(.decided(.commit, targets: [0, 1]))).isImpossible)
        #expect(running.handle(.delivery(.compensated(0))).isImpossible)
        #expect(running.status == .running && running.branches.map(\.state) == [.running, .pending])
    }

    @Test func afterTheEndLateDeliveryEventsChangeNothing() {
        var m = submitted(sequence(1))
        _ = m.handle(.delivery(.stepDone(0, result: .number(1))))
        #expect(m.handle(.delivery(.stepDone(0, result: .number(2)))) == [])
        #expect(m.handle(.delivery(.stepFailed(0, "late"))) == [])
        #expect(m.handle(.delivery(.timedOut(.retry(0)))) == [])
        #expect(m.handle(.checkedBack(replied("committed"))) == [])
        #expect(m.handle(.prepare).isImpossible)
        #expect(m.status == .committed && m.branches[0].result == .number(1))
    }
}

@Suite struct TransactionalMessageRecoveryTests {
    @Test func everyLoggableStateRecoversThroughTheReplay() {
        let ids = (0..<6).map { try! GlobalTransactionID(validating: "m\($0)") }
        let branches = sequence(3)
        var replay = TransactionLogReplay()
        for entry: LogEntry in [
            .begin(gid: ids[0], protocol: .msg, branches: branches, service: service),                       // prepared
            .begin(gid: ids[1], protocol: .msg, branches: branches, service: service),
            .decision(gid: ids[1], .commit, targets: [0, 1, 2]),                                              // submitted
            .begin(gid: ids[2], protocol: .msg, branches: branches, service: service),
            .decision(gid: ids[2], .abort, targets: []),                                                      // aborted, end lost
            .begin(gid: ids[3], protocol: .msg, branches: branches, service: service),
            .resolution(gid: ids[3], .commit, targets: [0, 1, 2], reason: "in the books", heuristic: true),   // forced commit
            .begin(gid: ids[4], protocol: .msg, branches: branches, service: service),
            .resolution(gid: ids[4], .abort, targets: [], reason: "never committed", heuristic: true),        // forced abort, end lost
            .begin(gid: ids[5], protocol: .msg, branches: branches, service: service),
            .decision(gid: ids[5], .commit, targets: [0, 1, 2]),
            .resolution(gid: ids[5], .commit, targets: [], reason: "refunded", heuristic: true),              // given up, end lost
        ] {
            // Through the log's codec, as a restart reads them.
            let (type, payload) = entry.encoded()
            replay.apply(try! LogEntry(type: type, payload: payload))
        }
        func resumed(_ id: GlobalTransactionID) -> (TransactionalMessage, [TransactionAction]) {
            let (recovered, event) = TransactionalMessage.recovering(replay.unfinished[id]!)
            var machine = recovered
            let actions = machine.handle(event)
            return (machine, actions)
        }

        let (preparedAgain, armed) = resumed(ids[0])
        #expect(armed == [.schedule(.phaseOne, attempt: 0)])
        #expect(preparedAgain.status == .prepared && preparedAgain.service == service)
        #expect(preparedAgain.branches.map(\.spec) == branches)
        var checking = preparedAgain
        #expect(checking.handle(.timedOut(.phaseOne)) == [.checkBack(service: service)])

        let (delivering, sends) = resumed(ids[1])
        #expect(sends == [.decided(.commit), .send(.action, to: 0)])
        #expect(delivering.status == .running && !delivering.heuristic)
        var m = delivering
        #expect(m.handle(.delivery(.stepDone(0, result: nil))) == [.send(.action, to: 1)])
        #expect(m.handle(.submit) == [])  // the service's submit, sent again after the restart

        let (aborted, ends) = resumed(ids[2])
        #expect(ends == [.decided(.abort), .log(.end(gid: ids[2]), forced: false), .finish(.aborted)])
        #expect(aborted.status == .aborted)

        let (forcedCommit, forcedSends) = resumed(ids[3])
        #expect(forcedSends == [.decided(.commit), .send(.action, to: 0)])
        #expect(forcedCommit.status == .running && forcedCommit.heuristic)

        let (forcedAbort, forcedEnds) = resumed(ids[4])
        #expect(forcedEnds == [.decided(.abort), .log(.end(gid: ids[4]), forced: false), .finish(.aborted)])
        #expect(forcedAbort.status == .aborted)
        #expect(forcedAbort.heuristic, "the forced abort's heuristic flag was lost in recovery")

        let (gaveUp, gaveUpEnds) = resumed(ids[5])
        #expect(gaveUpEnds == [.decided(.commit), .log(.end(gid: ids[5]), forced: false), .finish(.committed)])
        #expect(gaveUp.status == .committed && gaveUp.heuristic)
    }

    /// An operator's word that a refused branch was applied by hand must survive a
    /// restart, as a forced commit's does: the branch is owed nothing more.
    @Test func aBranchResolvedByHandIsNotDeliveredAgainAfterARestart() {
        var m = TransactionalMessage(gid: gid, service: service, branches: sequence(3))
        var actions = m.handle(.prepare)
        actions += m.handle(.submit)
        actions += m.handle(.delivery(.stepDone(0, result: nil)))
        actions += m.handle(.delivery(.stepRefused(1, code: "no_stock", message: "sold out")))
        actions += m.handle(.resolvedByHand(1, .commit, reason: "shipped by hand"))
        #expect(m.branches.map(\.state) == [.done, .done, .running])

        // Every record written, lazy ones too, reaches the disk; then dtxd restarts.
        var replay = TransactionLogReplay()
        for case let .log(entry, _) in actions { replay.apply(entry) }
        let (recovered, event) = TransactionalMessage.recovering(replay.unfinished[gid]!)
        var restarted = recovered
        func sends(_ actions: [TransactionAction]) -> [BranchID] {
            actions.compactMap { if case let .send(.action, id) = $0 { return id } else { return nil } }
        }
        // Deliver whatever the restarted message sends (idempotent resends of done branches are fine).
        var delivered: [BranchID] = []
        var queue = sends(restarted.handle(event))
        while let id = queue.first, delivered.count < 10 {
            queue.removeFirst()
            delivered.append(id)
            queue += sends(restarted.handle(.delivery(.stepDone(id, result: nil))))
        }
        #expect(!delivered.contains(1), "branch 1, resolved by hand, was delivered again after the restart: \(delivered)")
        #expect(delivered.contains(2))
        #expect(restarted.status == .committed)
    }

    @Test func theRecoveryEventIsTheReplayedDecision() {
        var replay = TransactionLogReplay()
        replay.apply(.begin(gid: gid, protocol: .msg, branches: roots, service: service))
        #expect(TransactionalMessage.recovering(replay.unfinished[gid]!).1 == .recovered(.undecided))
        replay.apply(.decision(gid: gid, .commit, targets: [0, 1, 2]))
        let (machine, event) = TransactionalMessage.recovering(replay.unfinished[gid]!)
        #expect(event == .recovered(.decided(.commit, targets: [0, 1, 2])))
        var m = machine
        #expect(m.handle(event) == [.decided(.commit), .send(.action, to: 0), .send(.action, to: 1), .send(.action, to: 2)])
    }

    @Test func anEndedMessageShowsWhereItsBranchesEnded() {
        func ended(_ entries: [LogEntry]) -> TransactionalMessage {
            var replay = TransactionLogReplay()
            entries.forEach { replay.apply($0) }
            return TransactionalMessage.ended(replay.transactions[gid]!)
        }
        let begin = LogEntry.begin(gid: gid, protocol: .msg, branches: sequence(2), service: service)

        let committed = ended([begin, .decision(gid: gid, .commit, targets: [0, 1]), .end(gid: gid)])
        #expect(committed.status == .committed && committed.displayStatus == .committed && !committed.heuristic)
        #expect(committed.branches.map(\.state) == [.done, .done])
        #expect(committed.service == service)
        #expect(committed.waitingForAnOperator.isEmpty)
        #expect(committed.rejection(of: .commitRequested) != nil)

        let aborted = ended([begin, .decision(gid: gid, .abort, targets: []), .end(gid: gid)])
        #expect(aborted.status == .aborted && aborted.displayStatus == .aborted && !aborted.heuristic)
        #expect(aborted.branches.map(\.state) == [.pending, .pending])

        let gaveUp = ended([begin, .decision(gid: gid, .commit, targets: [0, 1]), .resolution(gid: gid, .commit, targets: [], reason: "refunded", heuristic: true), .end(gid: gid)])
        #expect(gaveUp.status == .committed && gaveUp.heuristic)

        let forcedAbort = ended([begin, .resolution(gid: gid, .abort, targets: [], reason: "never committed", heuristic: true), .end(gid: gid)])
        #expect(forcedAbort.status == .aborted && forcedAbort.heuristic)
        #expect(forcedAbort.branches.map(\.state) == [.pending, .pending])
    }
}

@Suite struct TransactionalMessageValidationTests {
    @Test func aMessagesBranchesAreNeverCompensatedNorLimitedInAttempts() {
        #expect(TransactionalMessage.validate([]) == "a message needs at least one branch to deliver")
        let compensatable = [branch("a"), BranchSpec(participant: "svc", operation: "b", compensatable: false)]
        #expect(TransactionalMessage.validate(compensatable) == "branches[1].compensatable: a message's branches are never compensated; remove it")
        #expect(TransactionalMessage.valueProblem(compensatable) == TransactionalMessage.validate(compensatable))
        #expect(TransactionalMessage.validate([BranchSpec(participant: "svc", operation: "a", compensatable: true)]) != nil)
        let limited = [branch("a", retry: StepRetry(maxAttempts: 5))]
        #expect(TransactionalMessage.validate(limited)
            == "branches[0].retry.maxAttempts: a message's branches are retried until they are done; remove it (initialDelay and maxDelay set the backoff)")
        #expect(TransactionalMessage.valueProblem(limited) == TransactionalMessage.validate(limited))
        // A message's own problem comes before the saga's (maxAttempts 0 is out of a saga's range too).
        #expect(TransactionalMessage.validate([branch("a", retry: StepRetry(maxAttempts: 0))])?.hasPrefix("branches[0].retry.maxAttempts: a message's") == true)
    }

    @Test func dependsOnTimeoutsAndRetryDelaysAreAccepted() {
        let branches = [
            branch("a", after: [], retry: StepRetry(initialDelay: 0.5, maxDelay: 10), timeout: 2.5),
            branch("b", after: []),
            branch("c", after: [0, 1], timeout: 30),
            branch("d", retry: StepRetry(initialDelay: 0)),
        ]
        #expect(TransactionalMessage.validate(branches) == nil)
        #expect(TransactionalMessage.valueProblem(branches) == nil)
        #expect(TransactionalMessage.validate(diamond) == nil && TransactionalMessage.validate(sequence(3)) == nil)
    }

    @Test func theSagasRulesForStepsStillApply() {
        #expect(TransactionalMessage.validate([branch("a", after: [1]), branch("b")]) != nil)  // a later branch
        #expect(TransactionalMessage.validate([branch("a", retry: StepRetry(initialDelay: 5, maxDelay: 1))]) != nil)
        #expect(TransactionalMessage.valueProblem([branch("a", timeout: 0)]) != nil)
        #expect(TransactionalMessage.valueProblem([branch("a"), branch("b", after: [0, 0])]) != nil)
    }
}
