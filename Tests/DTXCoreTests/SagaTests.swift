import DTXAPI
import DTXCore
import Testing

private let gid = try! GlobalTransactionID(validating: "saga-1")

private func step(_ operation: String, after: [BranchID]? = nil, compensatable: Bool? = nil, retry: StepRetry? = nil, timeout: Double? = nil) -> BranchSpec {
    BranchSpec(participant: "svc", operation: operation, dependsOn: after, compensatable: compensatable, retry: retry, timeout: timeout)
}

private func sequence(_ count: Int, retry: StepRetry? = nil, timeout: Double? = nil) -> [BranchSpec] {
    (0..<count).map { step("s\($0)", retry: retry, timeout: timeout) }
}

/// 0 → {1, 2} → 3
private let diamond = [step("a", after: []), step("b", after: [0]), step("c", after: [0]), step("d", after: [1, 2])]

/// Two compensatable steps, the pivot, a forward-only step after it.
private let withPivot = [step("reserve"), step("charge"), step("ship", compensatable: false), step("notify", compensatable: false)]

private func started(_ steps: [BranchSpec]) -> Saga {
    var m = Saga(gid: gid, steps: steps)
    _ = m.handle(.start)
    return m
}

private func forcedWrites(_ actions: [TransactionAction]) -> [LogEntry] {
    actions.compactMap { if case let .log(entry, forced: true) = $0 { return entry } else { return nil } }
}

private func sent(_ message: ParticipantMessage, _ actions: [TransactionAction]) -> [BranchID] {
    actions.compactMap { if case let .send(m, id) = $0, m == message { return id } else { return nil } }
}

private func error(_ code: String, _ message: String) -> JSONValue {
    .object(["error": .object(["code": .string(code), "message": .string(message)])])
}

@Suite struct SagaForwardTests {
    @Test func aSequenceRunsOneStepAtATimeAndEndsLazilyWithOnlyTheBeginForced() {
        var m = Saga(gid: gid, steps: sequence(3))
        var all = m.handle(.start)
        #expect(all == [.log(.begin(gid: gid, protocol: .saga, branches: sequence(3)), forced: true), .send(.action, to: 0)])
        #expect(m.status == .running)
        #expect(m.branches.map(\.state) == [.running, .pending, .pending])
        var actions = m.handle(.stepDone(0, result: .string("r0")))
        #expect(actions == [.send(.action, to: 1)])
        all += actions
        all += m.handle(.stepDone(1, result: nil))
        actions = m.handle(.stepDone(2, result: .number(2)))
        // The lazy decision lets the log tell a completed saga from a compensated one.
        #expect(actions == [.log(.decision(gid: gid, .commit, targets: [0, 1, 2]), forced: false), .decided(.commit), .log(.end(gid: gid), forced: false), .finish(.committed)])
        all += actions
        #expect(forcedWrites(all).count == 1)
        #expect(m.status == .committed && m.decision == .commit)
        #expect(m.branches.map(\.result) == [.string("r0"), nil, .number(2)])
        #expect(m.compensations.isEmpty && m.failure == nil)
    }

    @Test func aDAGRunsEveryStepOnceItsDependenciesAreDoneConcurrentlyOtherwise() {
        var m = Saga(gid: gid, steps: diamond)
        #expect(sent(.action, m.handle(.start)) == [0])
        #expect(m.handle(.stepDone(0, result: nil)) == [.send(.action, to: 1), .send(.action, to: 2)])
        #expect(m.handle(.stepDone(2, result: nil)) == [])  // 3 still waits for 1
        #expect(m.handle(.stepDone(1, result: nil)) == [.send(.action, to: 3)])
        #expect(m.handle(.stepDone(3, result: nil)).last == .finish(.committed))

        // Roots run at once; a step without dependsOn follows the previous one.
        var roots = Saga(gid: gid, steps: [step("a"), step("b", after: []), step("c")])
        #expect(roots.dependencies == [[], [], [1]])
        #expect(sent(.action, roots.handle(.start)) == [0, 1])
        #expect(roots.handle(.stepDone(0, result: nil)) == [])
        #expect(roots.handle(.stepDone(1, result: nil)) == [.send(.action, to: 2)])
    }

    @Test func aFailedDeliveryIsRetriedUpToTheStepsAttemptLimitThenTheSagaCompensates() {
        var m = started([step("a"), step("b", retry: StepRetry(maxAttempts: 3))])
        _ = m.handle(.stepDone(0, result: nil))
        #expect(m.handle(.stepFailed(1, "503")) == [.schedule(.retry(1), attempt: 1)])
        #expect(m.branches[1].attempts == 2 && m.branches[1].lastError == "503")
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.action, to: 1)])
        #expect(m.handle(.stepFailed(1, "503")) == [.schedule(.retry(1), attempt: 2)])
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.action, to: 1)])
        let actions = m.handle(.stepFailed(1, "connection refused"))
        #expect(actions == [
            .log(.decision(gid: gid, .abort, targets: [0, 1]), forced: true),
            .decided(.abort),
            .send(.compensate, to: 1),
        ])
        #expect(m.branches[1].state == .compensating)
        let message = "step 1 failed after 3 attempts: connection refused"
        #expect(m.failure == Saga.Failure(step: 1, code: "retries_exhausted", message: message))
        #expect(m.branches[1].result == error("retries_exhausted", message))
    }

    @Test func withoutARetryPolicyTheDefaultLimitAppliesAndOneAttemptMeansNoRetry() {
        var m = started(sequence(1))
        for attempt in 1..<Saga.defaultMaxAttempts {
            #expect(m.handle(.stepFailed(0, "x")) == [.schedule(.retry(0), attempt: attempt)])
            _ = m.handle(.timedOut(.retry(0)))
        }
        #expect(m.handle(.stepFailed(0, "x")).contains(.decided(.abort)))

        var once = started([step("a", retry: StepRetry(maxAttempts: 1))])
        #expect(once.handle(.stepFailed(0, "x")).contains(.send(.compensate, to: 0)))
    }

    @Test func aRetryTimerOnlyResendsAnActionThatIsWaitingForIt() {
        var m = started(sequence(2))
        #expect(m.handle(.timedOut(.retry(0))) == [])  // its attempt is still out
        #expect(m.handle(.timedOut(.retry(1))) == [])  // not started
        _ = m.handle(.stepFailed(0, "x"))
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.action, to: 0)])
        #expect(m.handle(.timedOut(.retry(0))) == [])  // a second firing (e.g. `dtx recover`) sends nothing more
        #expect(m.handle(.timedOut(.phaseOne)) .isImpossible)  // sagas have no transaction timer
    }

    @Test func lateDuplicateAndUnknownAnswersChangeNothing() {
        var m = started(sequence(3))
        #expect(m.handle(.stepDone(1, result: nil)) == [])                 // not sent yet
        #expect(m.handle(.stepRefused(2, code: "x", message: "x")) == [])
        #expect(m.handle(.stepFailed(2, "x")) == [])
        #expect(m.handle(.stepDone(7, result: nil)) == [])                 // unknown steps
        #expect(m.handle(.stepFailed(-1, "x")) == [])
        #expect(m.handle(.compensated(0)) .isImpossible)                           // nothing compensates yet
        #expect(m.handle(.compensationFailed(0, "x")) .isImpossible)
        #expect(m.handle(.start) .isImpossible)
        _ = m.handle(.stepDone(0, result: .string("first")))
        #expect(m.handle(.stepDone(0, result: .string("again"))) == [])    // duplicate
        #expect(m.handle(.stepRefused(0, code: "late", message: "late")) == [])
        #expect(m.handle(.stepFailed(0, "late")) == [])
        #expect(m.branches[0].result == .string("first"))
        _ = m.handle(.stepFailed(1, "x"))
        #expect(m.handle(.stepFailed(1, "a duplicate failure")) == [])     // one attempt fails once
        #expect(m.branches[1].attempts == 2)
        #expect(m.status == .running && m.branches.map(\.state) == [.done, .running, .pending])
    }

    @Test func participantAnswersTranslateIntoTheMachinesEvents() {
        #expect(Saga.translate(.replied(0, .action, .done(status: "done", result: .number(1)))) == .stepDone(0, result: .number(1)))
        #expect(Saga.translate(.replied(0, .action, .refused(code: "no_seat", message: "sold out"))) == .stepRefused(0, code: "no_seat", message: "sold out"))
        #expect(Saga.translate(.replied(0, .action, .failed("down"))) == .stepFailed(0, "down"))
        #expect(Saga.translate(.replied(0, .compensate, .done(status: "compensated", result: nil))) == .compensated(0))
        #expect(Saga.translate(.replied(0, .compensate, .refused(code: "c", message: "m"))) == .compensationFailed(0, "c: m"))
        #expect(Saga.translate(.replied(0, .compensate, .failed("down"))) == .compensationFailed(0, "down"))
        #expect(Saga.translate(.replied(0, .try, .done(status: "tried", result: nil))) == nil)
        #expect(Saga.translate(.replied(0, .commit, .failed("x"))) == nil)
        #expect(Saga.translate(.start) == .start)
        #expect(Saga.translate(.open) == nil)
        #expect(Saga.translate(.enlisted(step("x"))) == nil)
        #expect(Saga.translate(.commitRequested) == nil)
        #expect(Saga.translate(.abortRequested(reason: "r")) == .abortRequested(reason: "r"))
        #expect(Saga.translate(.timedOut(.step(2))) == .timedOut(.step(2)))

        let m = started(sequence(2))
        #expect(m.rejection(of: .open) != nil)
        #expect(m.rejection(of: .enlisted(step("x"))) != nil)
        #expect(m.rejection(of: .commitRequested) != nil)
        #expect(m.rejection(of: .abortRequested(reason: "r")) == nil)
        #expect(m.rejection(of: .start) == nil)
    }

    @Test func theEngineGetsEachStepsTimeoutAndBackoff() {
        let m = Saga(gid: gid, steps: [step("a", retry: StepRetry(initialDelay: 0.25, maxDelay: 4), timeout: 1.5), step("b")])
        let base = RetryPolicy()
        let policy = m.retryPolicy(for: 0, base: base)
        #expect(policy.initialDelay == .milliseconds(250) && policy.maximumDelay == .seconds(4) && policy.multiplier == base.multiplier)
        #expect(m.retryPolicy(for: 1, base: base) == base)
        #expect(m.retryPolicy(for: 9, base: base) == base)
        #expect(m.stepTimeout(0) == .milliseconds(1500))
        #expect(m.stepTimeout(1) == nil)
    }
}

@Suite struct SagaTimeoutTests {
    @Test func aTimedOutAttemptCountsAsFailedAndItsLateFailureDoesNotCountAgain() {
        var m = Saga(gid: gid, steps: [step("a", retry: StepRetry(maxAttempts: 3), timeout: 2)])
        #expect(m.handle(.start) == [.log(.begin(gid: gid, protocol: .saga, branches: m.branches.map(\.spec)), forced: true), .send(.action, to: 0), .schedule(.step(0), attempt: 1)])
        #expect(m.handle(.timedOut(.step(0))) == [.schedule(.retry(0), attempt: 1)])
        #expect(m.branches[0].lastError == "attempt 1 timed out after 2.0s")
        #expect(m.handle(.stepFailed(0, "late failure of attempt 1")) == [])   // already counted
        #expect(m.branches[0].attempts == 2)
        #expect(m.handle(.timedOut(.retry(0))) == [.send(.action, to: 0), .schedule(.step(0), attempt: 2)])
        #expect(m.handle(.stepFailed(0, "503")) == [.cancel(.step(0)), .schedule(.retry(0), attempt: 2)])
        #expect(m.handle(.timedOut(.step(0))) == [])                            // that attempt has answered
        _ = m.handle(.timedOut(.retry(0)))
        #expect(m.handle(.timedOut(.step(0))).contains(.decided(.abort)))      // the third attempt: out of attempts
        #expect(m.failure?.code == "retries_exhausted")
    }

    @Test func aLateAnswerOfAnAbandonedAttemptIsTheStepsAnswer() {
        // While the backoff runs: the answer stops the retry timer.
        var waiting = Saga(gid: gid, steps: [step("a", timeout: 1), step("b")])
        _ = waiting.handle(.start)
        _ = waiting.handle(.timedOut(.step(0)))
        #expect(waiting.handle(.stepDone(0, result: .string("late"))) == [.cancel(.retry(0)), .send(.action, to: 1)])
        #expect(waiting.branches[0].result == .string("late"))
        #expect(waiting.handle(.timedOut(.retry(0))) == [])

        // While the retry is out: the answer stops the retry's own timeout.
        var resent = Saga(gid: gid, steps: [step("a", timeout: 1)])
        _ = resent.handle(.start)
        _ = resent.handle(.timedOut(.step(0)))
        _ = resent.handle(.timedOut(.retry(0)))
        #expect(resent.handle(.stepDone(0, result: nil)) == [.cancel(.step(0)), .log(.decision(gid: gid, .commit, targets: [0]), forced: false), .decided(.commit), .log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(resent.handle(.stepDone(0, result: nil)) == [])  // the retry's own answer, later

        // A late refusal is definitive too.
        var refused = Saga(gid: gid, steps: [step("a", timeout: 1)])
        _ = refused.handle(.start)
        _ = refused.handle(.timedOut(.step(0)))
        let actions = refused.handle(.stepRefused(0, code: "invalid", message: "bad card"))
        #expect(actions.first == .cancel(.retry(0)))
        #expect(actions.contains(.send(.compensate, to: 0)))
        #expect(refused.failure == Saga.Failure(step: 0, code: "invalid", message: "bad card"))
    }

    @Test func stepTimersOfStepsWithoutATimeoutOrInOtherStatesChangeNothing() {
        var m = started(sequence(2))
        #expect(m.handle(.timedOut(.step(0))) == [])   // no timeout: never armed
        #expect(m.handle(.timedOut(.step(1))) == [])
        #expect(m.handle(.timedOut(.step(5))) == [])
        var created = Saga(gid: gid, steps: sequence(1, timeout: 1))
        #expect(created.handle(.timedOut(.step(0))) .isImpossible)
        #expect(created.status == .created)
        var done = started(sequence(1, timeout: 1))
        _ = done.handle(.stepDone(0, result: nil))
        #expect(done.handle(.timedOut(.step(0))) == [] && done.handle(.timedOut(.retry(0))) == [])
    }
}

@Suite struct SagaCompensationTests {
    @Test func aRefusedStepCompensatesEveryStepThatRanInReverseOrder() {
        var m = started(sequence(4))
        _ = m.handle(.stepDone(0, result: .string("r0")))
        _ = m.handle(.stepDone(1, result: .string("r1")))
        let actions = m.handle(.stepRefused(2, code: "insufficient_funds", message: "balance 3 < 5"))
        #expect(actions == [
            .log(.decision(gid: gid, .abort, targets: [0, 1, 2]), forced: true),
            .decided(.abort),
            .send(.compensate, to: 2),
        ])
        #expect(m.status == .compensating && m.decision == .abort)
        #expect(m.failure == Saga.Failure(step: 2, code: "insufficient_funds", message: "balance 3 < 5"))
        #expect(m.branches[2].result == error("insufficient_funds", "balance 3 < 5"))
        #expect(m.handle(.compensated(2)) == [.send(.compensate, to: 1)])
        #expect(m.handle(.compensated(1)) == [.send(.compensate, to: 0)])
        #expect(m.handle(.compensated(0)) == [.log(.end(gid: gid), forced: false), .finish(.aborted)])
        #expect(m.status == .aborted)
        #expect(m.compensations == [2, 1, 0])
        #expect(m.branches.map(\.state) == [.compensated, .compensated, .compensated, .pending])
        // The results of the steps that ran stay for the caller, next to the failure.
        #expect(m.branches[0].result == .string("r0"))
    }

    @Test func inADAGNoCompensationIsSentBeforeThoseOfItsDependentsCompleted() {
        var m = started(diamond)
        _ = m.handle(.stepDone(0, result: nil))
        _ = m.handle(.stepDone(1, result: nil))
        _ = m.handle(.stepDone(2, result: nil))
        let actions = m.handle(.stepRefused(3, code: "x", message: "x"))
        #expect(sent(.compensate, actions) == [3])
        #expect(m.handle(.compensated(3)) == [.send(.compensate, to: 2), .send(.compensate, to: 1)])
        #expect(m.handle(.compensated(1)) == [])  // 0 waits for 2 too
        #expect(m.handle(.compensated(2)) == [.send(.compensate, to: 0)])
        #expect(m.handle(.compensated(0)).last == .finish(.aborted))
    }

    @Test func stepsStillRunningAreCompensatedAndTheirTimersStopped() {
        // 0 → {1 (with a timeout), 2}: 2 fails while 1 is out.
        var m = started([step("a"), step("b", after: [0], timeout: 5), step("c", after: [0], retry: StepRetry(maxAttempts: 1))])
        _ = m.handle(.stepDone(0, result: nil))
        let actions = m.handle(.stepFailed(2, "down"))
        #expect(actions == [
            .cancel(.step(1)),
            .log(.decision(gid: gid, .abort, targets: [0, 1, 2]), forced: true),
            .decided(.abort),
            .send(.compensate, to: 2), .send(.compensate, to: 1), .schedule(.step(1), attempt: 1),
        ])
        // The action's answer arriving now is ignored: the step is being compensated.
        #expect(m.handle(.stepDone(1, result: nil)) == [])
        #expect(m.handle(.stepFailed(1, "late")) == [])
        #expect(m.branches[1].state == .compensating)
        _ = m.handle(.compensated(1))
        _ = m.handle(.compensated(2))
        #expect(m.handle(.compensated(0)).last == .finish(.aborted))
        // Steps never started are not compensated.
        var never = started(sequence(3))
        #expect(never.handle(.stepRefused(0, code: "x", message: "x")) == [.log(.decision(gid: gid, .abort, targets: [0]), forced: true), .decided(.abort), .send(.compensate, to: 0)])
    }

    @Test func compensationsAreRetriedWithoutLimitAndTheirTimeoutsCount() {
        var m = started([step("a", retry: StepRetry(maxAttempts: 1), timeout: 3)])
        #expect(m.handle(.stepRefused(0, code: "x", message: "x")).suffix(2) == [.send(.compensate, to: 0), .schedule(.step(0), attempt: 1)])
        for attempt in 1...10 {
            #expect(m.handle(.compensationFailed(0, "503")) == [.cancel(.step(0)), .schedule(.retry(0), attempt: attempt)])
            #expect(m.handle(.timedOut(.retry(0))) == [.send(.compensate, to: 0), .schedule(.step(0), attempt: attempt + 1)])
        }
        #expect(m.handle(.timedOut(.step(0))) == [.schedule(.retry(0), attempt: 11)])
        #expect(m.handle(.compensationFailed(0, "late failure of the timed-out attempt")) == [])
        #expect(m.handle(.timedOut(.retry(0))).first == .send(.compensate, to: 0))
        #expect(m.status == .compensating && m.branches[0].attempts == 12)
        let refused = Saga.translate(.replied(0, .compensate, .refused(code: "locked", message: "try later")))!
        #expect(m.handle(refused) == [.cancel(.step(0)), .schedule(.retry(0), attempt: 12)])
        #expect(m.branches[0].lastError == "locked: try later")
        #expect(m.handle(.compensated(0)) == [.cancel(.retry(0)), .log(.end(gid: gid), forced: false), .finish(.aborted)])
    }

    @Test func compensationAnswersOutOfPlaceChangeNothing() {
        var m = started(sequence(3))
        _ = m.handle(.stepDone(0, result: nil))
        _ = m.handle(.stepRefused(1, code: "x", message: "x"))
        #expect(m.handle(.compensated(0)) == [])              // not sent yet: 1 first
        #expect(m.handle(.compensationFailed(0, "?")) == [])
        #expect(m.handle(.timedOut(.retry(0))) == [])
        #expect(m.handle(.compensated(2)) == [])              // never ran, not a target
        #expect(m.handle(.compensated(9)) == [])
        #expect(m.handle(.stepDone(2, result: nil)) == [])
        #expect(m.handle(.timedOut(.retry(1))) == [])         // its compensation is out
        _ = m.handle(.compensated(1))
        #expect(m.handle(.compensated(1)) == [])              // duplicate
        _ = m.handle(.compensated(0))
        #expect(m.status == .aborted)
        #expect(m.handle(.compensated(0)) == [] && m.handle(.timedOut(.step(0))) == [])
    }

    /// Random DAGs, failures, timeouts and answer orders: actions only ever follow their
    /// dependencies, compensations only ever follow their dependents', and the saga ends
    /// with every step done or every step that ran compensated.
    @Test(arguments: 0..<200) func randomRunsKeepTheOrderingAndAtomicityInvariants(_ seed: Int) {
        var rng = SplitMix(seed: UInt64(seed))
        let count = Int.random(in: 1...7, using: &rng)
        let steps: [BranchSpec] = (0..<count).map { id in
            let dependsOn: [BranchID]? = Bool.random(using: &rng) ? nil : (0..<id).filter { _ in Bool.random(using: &rng) }
            return step("s\(id)", after: dependsOn, retry: StepRetry(maxAttempts: Int.random(in: 1...3, using: &rng)),
                        timeout: Bool.random(using: &rng) ? 1 : nil)
        }
        #expect(Saga.validate(steps) == nil)
        var ancestors = Array(repeating: Set<BranchID>(), count: count)
        let dependencies = Saga.dependencies(of: steps)
        for id in 0..<count { for d in dependencies[id] { ancestors[id].insert(d); ancestors[id].formUnion(ancestors[d]) } }

        var m = Saga(gid: gid, steps: steps)
        var out: [(BranchID, ParticipantMessage)] = []
        var timers: [TimerID] = []
        var actionSent = Set<BranchID>(), actionDone = Set<BranchID>(), compensationDone = Set<BranchID>()
        func perform(_ actions: [TransactionAction]) {
            for action in actions {
                switch action {
                case let .send(.action, id):
                    #expect(dependencies[id].allSatisfy { actionDone.contains($0) }, "seed \(seed): action \(id) before its dependencies")
                    actionSent.insert(id)
                    out.append((id, .action))
                case let .send(.compensate, id):
                    #expect(actionSent.contains(id), "seed \(seed): compensation of \(id), which never ran")
                    let dependents = actionSent.filter { ancestors[$0].contains(id) }
                    #expect(dependents.isSubset(of: compensationDone), "seed \(seed): compensation of \(id) before its dependents'")
                    out.append((id, .compensate))
                case let .send(message, _):
                    Issue.record("seed \(seed): unexpected \(message)")
                case let .schedule(timer, _):
                    timers.removeAll { $0 == timer }  // the engine replaces a timer of the same name
                    timers.append(timer)
                case let .cancel(timer):
                    timers.removeAll { $0 == timer }
                default:
                    break
                }
            }
        }
        perform(m.handle(.start))
        var iterations = 0
        while m.status == .running || m.status == .compensating {
            iterations += 1
            guard iterations < 5_000 else { Issue.record("seed \(seed): no end"); return }
            let event: Saga.Event
            if !out.isEmpty, timers.isEmpty || Double.random(in: 0..<1, using: &rng) < 0.7 {
                let (id, message) = out.remove(at: Int.random(in: 0..<out.count, using: &rng))
                let roll = Double.random(in: 0..<1, using: &rng)
                let response: ParticipantResponse
                if message == .action {
                    response = roll < 0.08 ? .refused(code: "no", message: "no") : roll < 0.25 ? .failed("down") : .done(status: "done", result: .number(Double(id)))
                    if case .done = response, m.status == .running, m.branches[id].state == .running { actionDone.insert(id) }
                } else {
                    response = roll < 0.3 ? .failed("down") : .done(status: "compensated", result: nil)
                    if case .done = response, m.branches[id].state == .compensating { compensationDone.insert(id) }
                }
                event = Saga.translate(.replied(id, message, response))!
            } else if !timers.isEmpty {
                event = .timedOut(timers.remove(at: Int.random(in: 0..<timers.count, using: &rng)))
            } else {
                Issue.record("seed \(seed): stalled in \(m.status) with nothing out")
                return
            }
            perform(m.handle(event))
        }
        if m.status == .committed {
            #expect(actionDone.count == count && m.branches.allSatisfy { $0.state == .done })
        } else {
            #expect(m.status == .aborted)
            #expect(compensationDone == actionSent && m.targets == actionSent)
            #expect(m.branches.allSatisfy { actionSent.contains($0.id) ? $0.state == .compensated : $0.state == .pending })
        }
    }
}

@Suite struct SagaPivotTests {
    @Test func theCommitDecisionIsForcedBeforeThePivotIsSent() {
        var m = started(withPivot)
        _ = m.handle(.stepDone(0, result: nil))
        #expect(m.decision == nil)
        let actions = m.handle(.stepDone(1, result: nil))
        #expect(actions == [
            .log(.decision(gid: gid, .commit, targets: [2, 3]), forced: true),
            .decided(.commit),
            .send(.action, to: 2),
        ])
        #expect(m.decision == .commit && m.targets == [2, 3] && m.status == .running)
        #expect(m.handle(.stepDone(2, result: nil)) == [.send(.action, to: 3)])
        // Past the pivot the end needs no second decision.
        #expect(m.handle(.stepDone(3, result: nil)) == [.log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func aPivotFirstDecidesAtTheStart() {
        var m = Saga(gid: gid, steps: [step("ship", compensatable: false), step("notify", compensatable: false)])
        #expect(m.handle(.start) == [
            .log(.begin(gid: gid, protocol: .saga, branches: m.branches.map(\.spec)), forced: true),
            .log(.decision(gid: gid, .commit, targets: [0, 1]), forced: true),
            .decided(.commit),
            .send(.action, to: 0),
        ])
    }

    @Test func pastThePivotEveryStepIsRetriedWithoutLimitAndARefusalLeavesItStuckNotCompensated() {
        var m = started([step("charge"), step("ship", compensatable: false, retry: StepRetry(maxAttempts: 1))])
        _ = m.handle(.stepDone(0, result: nil))
        for attempt in 1...5 {
            #expect(m.handle(.stepFailed(1, "down")) == [.schedule(.retry(1), attempt: attempt)])
            #expect(m.handle(.timedOut(.retry(1))) == [.send(.action, to: 1)])
        }
        #expect(m.handle(.stepRefused(1, code: "address_unknown", message: "no such street")) == [.schedule(.retry(1), attempt: 6)])
        #expect(m.status == .running && m.branches[1].state == .running)
        #expect(m.branches[1].lastError == "no such street" && m.branches[1].attempts == 7)
        #expect(m.branches[1].result == error("address_unknown", "no such street"))
        #expect(m.failure == nil)
        #expect(m.handle(.timedOut(.retry(1))) == [.send(.action, to: 1)])
        #expect(m.handle(.stepDone(1, result: .string("shipped"))).last == .finish(.committed))
        #expect(m.branches[1].result == .string("shipped"))
    }

    @Test func theAbortOfASagaPastItsPivotIsRefused() {
        var m = started(withPivot)
        _ = m.handle(.stepDone(0, result: nil))
        #expect(m.rejection(of: .abortRequested(reason: "r")) == nil)
        _ = m.handle(.stepDone(1, result: nil))
        #expect(m.rejection(of: .abortRequested(reason: "r"))?.contains("pivot") == true)
        #expect(m.handle(.abortRequested(reason: "r")) .isImpossible)
        #expect(m.forceRejection(.abort)?.contains("pivot") == true)
        #expect(m.handle(.forced(.abort, reason: "r")) == [])
        #expect(m.status == .running)
    }
}

@Suite struct SagaValidationTests {
    @Test func validSagasPass() {
        #expect(Saga.validate(sequence(3)) == nil)
        #expect(Saga.validate(diamond) == nil)
        #expect(Saga.validate(withPivot) == nil)
        #expect(Saga.validate([step("a", compensatable: false)]) == nil)
        #expect(Saga.validate([step("a", after: []), step("b", after: []), step("pivot", after: [0, 1], compensatable: false), step("c", after: [2], compensatable: false)]) == nil)
        #expect(Saga.validate([step("a", retry: StepRetry(maxAttempts: 1, initialDelay: 0, maxDelay: 1), timeout: 0.5)]) == nil)
    }

    @Test func mistakesAreNamedWithTheStepAndWhatToChange() {
        func problem(_ steps: [BranchSpec]) -> String { Saga.validate(steps) ?? "valid" }
        #expect(problem([]) == "a saga needs at least one step in branches")
        #expect(problem([step("a", after: [0])]).hasPrefix("branches[0].dependsOn[0]: the first step cannot depend"))
        #expect(problem([step("a"), step("b", after: [1])]) == "branches[1].dependsOn[0]: 1 is not an earlier step; a step may only depend on steps before it (0 to 0)")
        #expect(problem([step("a"), step("b"), step("c", after: [0, 5])]).hasPrefix("branches[2].dependsOn[1]: 5 is not an earlier step"))
        #expect(problem([step("a"), step("b", after: [-1])]).hasPrefix("branches[1].dependsOn[0]: -1"))
        #expect(problem([step("a"), step("b", after: [0, 0])]) == "branches[1].dependsOn lists step 0 more than once")
        #expect(problem([step("a", retry: StepRetry(maxAttempts: 0))]).hasPrefix("branches[0].retry.maxAttempts must be at least 1"))
        #expect(problem([step("a", retry: StepRetry(initialDelay: -1))]).hasPrefix("branches[0].retry.initialDelay"))
        #expect(problem([step("a", retry: StepRetry(maxDelay: .infinity))]).hasPrefix("branches[0].retry.maxDelay"))
        #expect(problem([step("a", retry: StepRetry(initialDelay: 5, maxDelay: 1))]).hasPrefix("branches[0].retry.maxDelay (1.0) must not be below"))
        #expect(problem([step("a", timeout: 0)]) == "branches[0].timeout must be a number of seconds above 0 and at most 86400")
        #expect(problem([step("a", timeout: .nan)]).hasPrefix("branches[0].timeout"))
        #expect(problem([step("a", timeout: 86_400.001)]).hasPrefix("branches[0].timeout"), "at most a day")
        #expect(problem([step("a", timeout: 86_400)]) == "valid")
        #expect(problem([step("a", retry: StepRetry(initialDelay: 1e300, maxDelay: 1e300))]).hasPrefix("branches[0].retry.initialDelay"))
    }

    /// Problems of one value (the spec's schema states them) apart from problems of how
    /// the steps fit together: dtxd answers the first 400 and the second 422.
    @Test func valueProblemsAreTheOnesASingleValueShows() {
        #expect(Saga.valueProblem([step("a"), step("b", after: [-1])]) == "branches[1].dependsOn[0]: -1 is not a step index (0 or more)")
        #expect(Saga.valueProblem([step("a"), step("b", after: [0, 0])]) == "branches[1].dependsOn lists step 0 more than once")
        #expect(Saga.valueProblem([step("a", retry: StepRetry(maxAttempts: 0))]) != nil)
        #expect(Saga.valueProblem([step("a", timeout: 0)]) != nil)
        #expect(Saga.valueProblem([step("a"), step("b", after: [1])]) == nil, "a dependency on a later step is how steps fit together")
        #expect(Saga.valueProblem([step("a", compensatable: false), step("b")]) == nil)
        #expect(Saga.valueProblem([step("a", retry: StepRetry(initialDelay: 5, maxDelay: 1))]) == nil)
        #expect(Saga.validate([step("a"), step("b", after: [1])]) != nil)
    }

    /// A backoff that starts at 0 stays 0 however many attempts (0 × 2^n was NaN past
    /// attempt 1025, and converting NaN trapped), and a long one stays at its cap.
    @Test func backoffStaysFiniteForEveryAttempt() {
        #expect(RetryPolicy(initialDelay: .zero).delay(attempt: 2000, unit: 0.5) == .zero)
        #expect(RetryPolicy(initialDelay: .seconds(1), maximumDelay: .seconds(30), jitter: 0).delay(attempt: 5000, unit: 0) == .seconds(30))
    }

    /// API durations keep the millisecond and round up: a positive value never becomes zero.
    @Test func apiSecondsRoundUpToTheMillisecond() {
        #expect(Duration(apiSeconds: 0.0001) == .milliseconds(1))
        #expect(Duration(apiSeconds: 0.0015) == .milliseconds(2))
        #expect(Duration(apiSeconds: 2) == .seconds(2))
        #expect(Duration(apiSeconds: 0) == .zero)
        #expect(Duration(apiSeconds: Duration.longestStepSeconds) == .seconds(86_400))
        #expect(Duration(apiSeconds: 1e300) == .seconds(1_000_000_000), "out of bounds is clamped, never a trap")
        #expect(Duration(apiSeconds: .nan) == .zero)
    }

    @Test func everyNonCompensatableStepMustFollowEveryCompensatableOne() {
        // A compensatable step after the pivot (sequence: 2 does not precede 1).
        let after = Saga.validate([step("a"), step("pivot", compensatable: false), step("b")])
        #expect(after == "branches[1] is not compensatable, so it must run after every compensatable step, but it does not depend (directly or through other steps) on step 2; put the compensatable steps before it and among its dependencies, or mark step 2 compensatable: false too")
        // A pivot in parallel with compensatable steps.
        let parallel = Saga.validate([step("a", after: []), step("b", after: []), step("pivot", after: [], compensatable: false)])
        #expect(parallel?.hasPrefix("branches[2] is not compensatable") == true)
        #expect(parallel?.contains("on steps 0, 1; ") == true)
        // Transitive dependencies count.
        #expect(Saga.validate([step("a"), step("b"), step("c", after: [1], compensatable: false)]) == nil)
    }
}

@Suite struct SagaOperatorTests {
    @Test func nothingCanBeForcedBeforeTheStartOrAfterTheEnd() {
        var created = Saga(gid: gid, steps: sequence(2))
        #expect(created.forceRejection(.abort) == "the saga has not started")
        #expect(created.handle(.forced(.abort, reason: "r")) == [])
        var done = started(sequence(1))
        _ = done.handle(.stepDone(0, result: nil))
        #expect(done.forceRejection(.abort) == "the saga is already committed")
        #expect(done.forceRejection(.commit) != nil)
        #expect(done.handle(.forced(.commit, reason: "r")) == [])
    }

    @Test func beforeThePivotAbortCompensatesAndCommitIsRefused() {
        var m = started(withPivot)
        _ = m.handle(.stepDone(0, result: nil))
        #expect(m.forceRejection(.commit)?.contains("not reached its pivot") == true)
        #expect(m.rejection(of: .forced(.commit, reason: "r")) == m.forceRejection(.commit))
        #expect(m.handle(.forced(.commit, reason: "r")) == [])
        let actions = m.handle(.forced(.abort, reason: "customer called"))
        #expect(actions == [
            .log(.resolution(gid: gid, .abort, targets: [0, 1], reason: "customer called", heuristic: false), forced: true),
            .decided(.abort),
            .send(.compensate, to: 1),
        ])
        #expect(!m.heuristic && m.failure == nil)
        // The application's abort works the same way.
        var app = started(sequence(2))
        #expect(app.handle(.abortRequested(reason: "cancelled")).first == .log(.resolution(gid: gid, .abort, targets: [0], reason: "cancelled", heuristic: false), forced: true))
    }

    @Test func whileCompensatingNeitherOutcomeCanBeForced() {
        var m = started(sequence(2))
        _ = m.handle(.stepRefused(0, code: "x", message: "x"))
        #expect(m.forceRejection(.abort)?.contains("already compensating") == true)
        #expect(m.forceRejection(.commit)?.contains("compensating") == true)
        #expect(m.rejection(of: .abortRequested(reason: "r")) != nil)
        #expect(m.handle(.forced(.abort, reason: "r")) == [] && m.handle(.forced(.commit, reason: "r")) == [])
        #expect(m.handle(.abortRequested(reason: "r")) .isImpossible)
    }

    @Test func pastThePivotAnOperatorMayForceCommitToGiveUpOnAStuckStep() {
        var m = started(withPivot + [step("archive", compensatable: false)])
        _ = m.handle(.stepDone(0, result: nil))
        _ = m.handle(.stepDone(1, result: nil))
        _ = m.handle(.stepDone(2, result: nil))
        _ = m.handle(.stepRefused(3, code: "x", message: "mail server refuses"))
        #expect(m.forceRejection(.commit) == nil)
        let actions = m.handle(.forced(.commit, reason: "notified by hand"))
        #expect(actions == [
            .cancel(.retry(3)),
            .log(.resolution(gid: gid, .commit, targets: [], reason: "notified by hand", heuristic: true), forced: true),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ])
        #expect(m.heuristic && m.status == .committed)
        #expect(m.branches.map(\.state) == [.done, .done, .done, .failed, .failed])
        #expect(m.branches[3].lastError == "given up by an operator: notified by hand")
        #expect(m.handle(.stepDone(3, result: nil)) == [])
    }
}

@Suite struct SagaRecoveryTests {
    @Test func aBeginWithoutDecisionRunsForwardAgainFromTheStart() {
        var m = Saga(gid: gid, steps: diamond)
        #expect(m.handle(.recovered(.undecided)) == [.send(.action, to: 0)])
        #expect(m.status == .running)
        _ = m.handle(.stepDone(0, result: .string("again")))
        _ = m.handle(.stepDone(1, result: nil))
        _ = m.handle(.stepDone(2, result: nil))
        #expect(m.handle(.stepDone(3, result: nil)) == [.log(.decision(gid: gid, .commit, targets: [0, 1, 2, 3]), forced: false), .decided(.commit), .log(.end(gid: gid), forced: false), .finish(.committed)])
        #expect(m.branches[0].result == .string("again"))

        // Forward again to the pivot: the decision is forced then, as the first time.
        var p = Saga(gid: gid, steps: withPivot)
        _ = p.handle(.recovered(.undecided))
        _ = p.handle(.stepDone(0, result: nil))
        #expect(forcedWrites(p.handle(.stepDone(1, result: nil))) == [.decision(gid: gid, .commit, targets: [2, 3])])
    }

    /// Found by dtx-sim (seed 246): a step that ran before the restart, and is not re-sent
    /// before another step fails, was never compensated.
    @Test func aFailureAfterARestartWithoutDecisionCompensatesEveryStep() {
        var m = Saga(gid: gid, steps: sequence(4))
        _ = m.handle(.recovered(.undecided))
        // Steps 1-3 may have run before the restart; the re-sent first action is refused.
        let actions = m.handle(.stepRefused(0, code: "no_seat", message: "sold out"))
        #expect(forcedWrites(actions) == [.decision(gid: gid, .abort, targets: [0, 1, 2, 3])])
        #expect(sent(.compensate, actions) == [3])
    }

    @Test func aCommitDecisionRunsTheStepsPastThePivotForward() {
        var m = Saga(gid: gid, steps: withPivot)
        #expect(m.handle(.recovered(.decided(.commit, targets: [2, 3]))) == [.decided(.commit), .send(.action, to: 2)])
        #expect(m.branches.map(\.state) == [.done, .done, .running, .pending])
        #expect(m.handle(.stepFailed(2, "down")) == [.schedule(.retry(2), attempt: 1)])
        _ = m.handle(.timedOut(.retry(2)))
        #expect(m.handle(.stepDone(2, result: nil)) == [.send(.action, to: 3)])
        #expect(m.handle(.stepDone(3, result: nil)) == [.log(.end(gid: gid), forced: false), .finish(.committed)])
    }

    @Test func anAbortDecisionCompensatesItsTargetsInReverseOrder() {
        var m = Saga(gid: gid, steps: diamond)
        #expect(m.handle(.recovered(.decided(.abort, targets: [0, 1, 2]))) == [.decided(.abort), .send(.compensate, to: 2), .send(.compensate, to: 1)])
        #expect(m.status == .compensating)
        #expect(m.handle(.compensated(2)) == [])
        #expect(m.handle(.compensated(1)) == [.send(.compensate, to: 0)])
        #expect(m.handle(.compensated(0)).last == .finish(.aborted))
        #expect(m.branches[3].state == .pending)

        var nothing = Saga(gid: gid, steps: sequence(2))
        #expect(nothing.handle(.recovered(.decided(.abort, targets: []))) == [.decided(.abort), .log(.end(gid: gid), forced: false), .finish(.aborted)])
    }

    @Test func everyLoggableStateRecoversThroughTheReplay() {
        let ids = (0..<5).map { try! GlobalTransactionID(validating: "g\($0)") }
        var replay = TransactionLogReplay()
        for entry: LogEntry in [
            .begin(gid: ids[0], protocol: .saga, branches: withPivot),                                      // begin only
            .begin(gid: ids[1], protocol: .saga, branches: withPivot),
            .decision(gid: ids[1], .commit, targets: [2, 3]),                                                 // past the pivot
            .begin(gid: ids[2], protocol: .saga, branches: withPivot),
            .decision(gid: ids[2], .abort, targets: [0, 1]),                                                  // compensating
            .begin(gid: ids[3], protocol: .saga, branches: withPivot),
            .resolution(gid: ids[3], .abort, targets: [0], reason: "customer called", heuristic: false),      // an abort's resolution
            .begin(gid: ids[4], protocol: .saga, branches: withPivot),
            .decision(gid: ids[4], .commit, targets: [2, 3]),
            .resolution(gid: ids[4], .commit, targets: [], reason: "done by hand", heuristic: true),          // given up past the pivot
        ] {
            // Through the log's codec, as a restart reads them.
            let (type, payload) = entry.encoded()
            replay.apply(try! LogEntry(type: type, payload: payload))
        }
        func resumed(_ gid: GlobalTransactionID) -> (Saga, [TransactionAction]) {
            let (recovered, event) = Saga.recovering(replay.unfinished[gid]!)
            var machine = recovered
            let actions = machine.handle(event)
            return (machine, actions)
        }
        #expect(resumed(ids[0]).1 == [.send(.action, to: 0)])
        #expect(resumed(ids[1]).1 == [.decided(.commit), .send(.action, to: 2)])
        #expect(resumed(ids[2]).1 == [.decided(.abort), .send(.compensate, to: 1)])
        #expect(resumed(ids[3]).1 == [.decided(.abort), .send(.compensate, to: 0)])
        let (gaveUp, actions) = resumed(ids[4])
        #expect(actions == [.decided(.commit), .log(.end(gid: ids[4]), forced: false), .finish(.committed)])
        #expect(gaveUp.heuristic)
        // The saga fields of the steps came through the log.
        #expect(resumed(ids[0]).0.branches.map(\.spec) == withPivot)
    }

    @Test func recoveryIsOnlyAcceptedBeforeAnythingElseHappened() {
        var m = started(sequence(2))
        #expect(m.handle(.recovered(.undecided)) .isImpossible)
        #expect(m.handle(.recovered(.decided(.abort, targets: [0]))) .isImpossible)
        #expect(m.status == .running)
    }
}

/// SplitMix64, so that a failing seed replays.
private struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
