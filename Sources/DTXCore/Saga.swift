/// A saga — actions with compensations — as a pure state machine.
///
/// Steps are the branches. A step runs after the steps it depends on: by default the
/// previous one (a sequence), or the earlier steps its `dependsOn` lists (a DAG; steps
/// whose dependencies are done run concurrently, `dependsOn: []` makes a root).
///
/// Coordinator log writes: `begin` **forced** → ACTION to every ready step → a step done:
/// its dependents that became ready → every step done: `end` (lazy).
/// A failed delivery (also one that never reached the participant: a saga has no
/// transaction timeout to bound resending, so the step's retry policy does), or a step's
/// `timeout` expiring, is an attempt that failed: it is retried (`retry(step)`) up to the
/// step's `maxAttempts`. A refusal (409) is definitive.
/// A step that fails definitively or runs out of attempts starts **backward recovery**:
/// `decision(abort)` **forced**, whose targets are every step whose action was ever sent
/// (they may have run) → COMPENSATE to each, in reverse dependency order (a step's
/// compensation is sent once the compensations of every step that depends on it are
/// done; independent ones concurrently), retried until done → `end`.
///
/// The **pivot**: steps with `compensatable: false` cannot be undone, and `validate`
/// makes every one of them (transitively) depend on every compensatable step. Before
/// the first of them is sent, `decision(commit)` is **forced** (the point of no return;
/// its targets are the steps not yet done). From then on every step is retried with
/// backoff until it is done, with no attempt limit.
///
/// Recovery: `begin` only → run forward again from the first step (every action is
/// idempotent under the participant's barrier; results are collected again);
/// `decision(abort)` → compensate its targets; `decision(commit)` → run the steps it
/// targets forward.
public struct Saga: TransactionStateMachine {
    public enum Event: Sendable, Equatable {
        case start
        /// The application (or an operator) asks to abort: compensate, if before the pivot.
        case abortRequested(reason: String)
        /// An operator forces the outcome (see `forceRejection`).
        case forced(Decision, reason: String)
        case stepDone(BranchID, result: JSONValue?)
        /// The action was refused (409): a definitive business failure.
        case stepRefused(BranchID, code: String, message: String)
        /// The action could not be delivered or got no usable answer.
        case stepFailed(BranchID, String)
        case compensated(BranchID)
        /// A compensation was not done (undeliverable, or even refused): retried until done.
        case compensationFailed(BranchID, String)
        case timedOut(TimerID)
        /// Rebuild after a restart from what the log holds for this transaction.
        case recovered(Recovered)
    }

    /// What replaying the log found: `undecided` (run forward again) or a decision.
    public typealias Recovered = TwoPhaseCommit.Recovered

    /// The step whose failure made the saga compensate.
    public struct Failure: Sendable, Equatable {
        public var step: BranchID
        /// The participant's error code, or `retries_exhausted`.
        public var code: String
        public var message: String

        public init(step: BranchID, code: String, message: String) {
            self.step = step
            self.code = code
            self.message = message
        }
    }

    /// Deliveries of an action when its step's `retry.maxAttempts` is nil.
    public static let defaultMaxAttempts = 3

    public let gid: GlobalTransactionID
    public private(set) var status: TransactionStatus = .created
    public var displayStatus: TransactionStatus { status == .created ? .running : status }
    public private(set) var branches: [Branch]
    /// The steps each step waits for (declared, or the previous step).
    public let dependencies: [[BranchID]]
    /// `commit` once past the pivot (or every step done), `abort` once compensating.
    public private(set) var decision: Decision?
    /// Past the pivot: the steps still to run forward; compensating: the steps to compensate.
    public private(set) var targets: Set<BranchID> = []
    /// Recovered with no decision logged: sends are not logged, so any step may have run
    /// before the restart, and backward recovery compensates every step.
    private var everyStepMayHaveRun = false
    /// An operator gave up on steps that kept failing past the pivot.
    public private(set) var heuristic = false
    /// Why the saga compensates, when a step's failure made it.
    public private(set) var failure: Failure?
    /// Steps whose compensation is done, in the order they completed.
    public private(set) var compensations: [BranchID] = []

    /// A message's delivery (`TransactionalMessage`): a refused step is `failed` and waits
    /// for an operator's retry instead of being retried with backoff.
    var refusalsWaitForAnOperator = false

    /// Per step: a message of the current attempt is out and its answer awaited (false
    /// while a retry's backoff runs).
    private var awaiting: [Bool]
    /// Per step: attempts abandoned by their timeout whose answer has not come back. A
    /// later failure is put down to them, so that no attempt counts twice.
    private var abandoned: [Int]
    /// Per step: every step that depends on it, directly or not.
    private let dependents: [Set<BranchID>]

    public init(gid: GlobalTransactionID, steps: [BranchSpec]) {
        precondition(!steps.isEmpty, "a saga has at least one step")
        self.gid = gid
        self.branches = steps.enumerated().map { Branch(id: $0.offset, spec: $0.element) }
        let dependencies = Self.dependencies(of: steps)
        self.dependencies = dependencies
        var dependents = Array(repeating: Set<BranchID>(), count: steps.count)
        // Dependencies point to earlier steps, so a backward sweep sees every dependent first.
        for id in steps.indices.reversed() {
            for dependency in dependencies[id] {
                dependents[dependency].insert(id)
                dependents[dependency].formUnion(dependents[id])
            }
        }
        self.dependents = dependents
        awaiting = Array(repeating: false, count: steps.count)
        abandoned = Array(repeating: 0, count: steps.count)
    }

    /// The steps each step waits for: its `dependsOn` (only earlier steps count; `validate`
    /// refuses others), or else the step before it.
    public static func dependencies(of steps: [BranchSpec]) -> [[BranchID]] {
        steps.enumerated().map { id, step in
            guard let declared = step.dependsOn else { return id > 0 ? [id - 1] : [] }
            var seen = Set<BranchID>()
            return declared.filter { (0..<id).contains($0) && seen.insert($0).inserted }
        }
    }

    /// Why `steps` cannot run as a saga, as one line naming the step and what to change;
    /// nil when they can. The problems of single values come first (`valueProblem`).
    public static func validate(_ steps: [BranchSpec]) -> String? {
        guard !steps.isEmpty else { return "a saga needs at least one step in branches" }
        if let problem = valueProblem(steps) { return problem }
        for (id, step) in steps.enumerated() {
            let path = "branches[\(id)]"
            if let declared = step.dependsOn {
                for (index, dependency) in declared.enumerated() where !(0..<id).contains(dependency) {
                    return id == 0
                        ? "\(path).dependsOn[\(index)]: the first step cannot depend on another step; use [] or leave dependsOn out"
                        : "\(path).dependsOn[\(index)]: \(dependency) is not an earlier step; a step may only depend on steps before it (0 to \(id - 1))"
                }
            }
            if let retry = step.retry, let initialDelay = retry.initialDelay, let maxDelay = retry.maxDelay, maxDelay < initialDelay {
                return "\(path).retry.maxDelay (\(maxDelay)) must not be below retry.initialDelay (\(initialDelay))"
            }
        }
        let dependencies = dependencies(of: steps)
        var ancestors = Array(repeating: Set<BranchID>(), count: steps.count)
        for id in steps.indices {
            for dependency in dependencies[id] {
                ancestors[id].insert(dependency)
                ancestors[id].formUnion(ancestors[dependency])
            }
        }
        let compensatable = steps.indices.filter { steps[$0].compensatable ?? true }
        for id in steps.indices where !(steps[id].compensatable ?? true) {
            let missing = compensatable.filter { !ancestors[id].contains($0) }
            if !missing.isEmpty {
                let list = "step\(missing.count == 1 ? "" : "s") " + missing.map(String.init).joined(separator: ", ")
                return "branches[\(id)] is not compensatable, so it must run after every compensatable step, "
                    + "but it does not depend (directly or through other steps) on \(list); "
                    + "put the compensatable steps before it and among its dependencies, or mark \(list) compensatable: false too"
            }
        }
        return nil
    }

    /// A saga step value out of its range, or a `dependsOn` that lists a step twice: the
    /// problems one value shows on its own (the transaction spec's schema states them
    /// too), apart from how the steps fit together.
    public static func valueProblem(_ steps: [BranchSpec]) -> String? {
        for (id, step) in steps.enumerated() {
            let path = "branches[\(id)]"
            if let declared = step.dependsOn {
                if let index = declared.firstIndex(where: { !(0...Int(Int32.max)).contains($0) }) {
                    return "\(path).dependsOn[\(index)]: \(declared[index]) is not a step index (0 or more)"
                }
                var seen = Set<BranchID>()
                if let twice = declared.first(where: { !seen.insert($0).inserted }) {
                    return "\(path).dependsOn lists step \(twice) more than once"
                }
            }
            if let retry = step.retry {
                if let maxAttempts = retry.maxAttempts, maxAttempts < 1 {
                    return "\(path).retry.maxAttempts must be at least 1 (1 means the action is not retried)"
                }
                if let initialDelay = retry.initialDelay, !(initialDelay.isFinite && initialDelay >= 0 && initialDelay <= Duration.longestStepSeconds) {
                    return "\(path).retry.initialDelay must be a number of seconds from 0 to \(Int(Duration.longestStepSeconds))"
                }
                if let maxDelay = retry.maxDelay, !(maxDelay.isFinite && maxDelay > 0 && maxDelay <= Duration.longestStepSeconds) {
                    return "\(path).retry.maxDelay must be a number of seconds above 0 and at most \(Int(Duration.longestStepSeconds))"
                }
            }
            if let timeout = step.timeout, !(timeout.isFinite && timeout > 0 && timeout <= Duration.longestStepSeconds) {
                return "\(path).timeout must be a number of seconds above 0 and at most \(Int(Duration.longestStepSeconds))"
            }
        }
        return nil
    }

    /// The backoff for a step's retries: its `retry` delays over the engine's `base` policy.
    public func retryPolicy(for id: BranchID, base: RetryPolicy) -> RetryPolicy {
        guard branches.indices.contains(id), let retry = branches[id].spec.retry else { return base }
        var policy = base
        if let initialDelay = retry.initialDelay { policy.initialDelay = Duration(apiSeconds: initialDelay) }
        if let maxDelay = retry.maxDelay { policy.maximumDelay = Duration(apiSeconds: maxDelay) }
        return policy
    }

    /// The delay of a step's `step(id)` timer (only scheduled for steps with a timeout).
    public func stepTimeout(_ id: BranchID) -> Duration? {
        guard branches.indices.contains(id), let seconds = branches[id].spec.timeout else { return nil }
        return Duration(apiSeconds: seconds)
    }

    /// Why an operator may not force `decision` now, or nil when it may.
    public func forceRejection(_ decision: Decision) -> String? {
        switch (status, decision, self.decision) {
        case (.created, _, _):
            return "the saga has not started"
        case (.committed, _, _), (.aborted, _, _):
            return "the saga is already \(status.rawValue)"
        case (.running, .abort, nil):
            return nil
        case (.running, .commit, nil):
            return "the saga has not reached its pivot: a commit cannot be forced while steps may still be compensated "
                + "(it would skip steps that never ran); force abort to compensate the steps that ran"
        case (.running, .commit, _):
            // Past the pivot: the operator gives up on the steps that keep failing.
            return nil
        case (.running, .abort, _):
            return "the saga is past its pivot (a step that cannot be compensated may have run); it can only go forward — "
                + "force commit to give up on the steps still failing, once they are settled by hand"
        case (.compensating, .abort, _):
            return "the saga is already compensating; compensations are retried until each is done — bring the participant back, or run `dtx recover` to retry now"
        case (.compensating, .commit, _):
            return "the saga is compensating: the steps that ran are being undone, so it cannot be forced to commit"
        default:
            return "the saga is \(status.rawValue)"
        }
    }

    public mutating func handle(_ event: Event) -> [TransactionAction] {
        switch (status, event) {
        case (.created, .start):
            status = .running
            return [.log(.begin(gid: gid, protocol: .saga, branches: branches.map(\.spec)), forced: true)] + runReadySteps()
        case (.created, .recovered(let recovered)):
            return recover(recovered)
        case (.running, .abortRequested(let reason)) where decision == nil:
            return compensate(reason: reason)
        case (_, .forced(let forced, let reason)):
            guard forceRejection(forced) == nil else { return [] }
            return forced == .abort ? compensate(reason: reason) : giveUp(reason: reason)
        case let (.running, .stepDone(id, result)):
            guard state(of: id) == .running else { return [] }  // late, duplicate or unknown
            let actions = answered(id)
            branches[id].state = .done
            branches[id].result = result
            return actions + runReadySteps()
        case let (.running, .stepRefused(id, code, message)):
            guard state(of: id) == .running else { return [] }
            var actions = answered(id)
            branches[id].lastError = message
            branches[id].result = .refusal(code: code, message: message)
            if decision == .commit, refusalsWaitForAnOperator {
                // A message's delivery: refused for good, the step waits for an operator.
                branches[id].state = .failed
                return actions
            }
            if decision == .commit {
                // Past the pivot nothing can be compensated, so a refusal cannot end the
                // saga: the step is retried with backoff until the participant does it,
                // and the saga shows as stuck (attempts grow, lastError says why) until
                // it does or an operator forces commit to give up on the step.
                branches[id].attempts += 1
                actions.append(.schedule(.retry(id), attempt: branches[id].attempts - 1))
                return actions
            }
            branches[id].state = .failed
            failure = Failure(step: id, code: code, message: message)
            return actions + compensate(reason: nil)
        case let (.running, .stepFailed(id, error)), let (.compensating, .compensationFailed(id, error)):
            let expected: BranchState = status == .running ? .running : .compensating
            guard state(of: id) == expected else { return [] }
            if abandoned[id] > 0 {
                // The answer of an attempt that its timeout already counted as failed.
                abandoned[id] -= 1
                return []
            }
            guard awaiting[id] else { return [] }  // a duplicate
            let actions = answered(id)
            return actions + attemptFailed(id, error: error)
        case (.running, .timedOut(.step(let id))), (.compensating, .timedOut(.step(let id))):
            let expected: BranchState = status == .running ? .running : .compensating
            guard state(of: id) == expected, awaiting[id], branches[id].spec.timeout != nil else { return [] }
            awaiting[id] = false
            abandoned[id] += 1
            let seconds = branches[id].spec.timeout.map { " after \($0)s" } ?? ""
            return attemptFailed(id, error: "attempt \(branches[id].attempts) timed out\(seconds)")
        case (.running, .timedOut(.retry(let id))) where refusalsWaitForAnOperator && state(of: id) == .failed:
            // An operator's retry of a step refused for good.
            branches[id].state = .running
            branches[id].attempts += 1
            return deliver(.action, to: id)
        case (.running, .timedOut(.retry(let id))):
            guard state(of: id) == .running, !awaiting[id] else { return [] }
            return deliver(.action, to: id)
        case (.compensating, .timedOut(.retry(let id))):
            guard state(of: id) == .compensating, !awaiting[id] else { return [] }
            return deliver(.compensate, to: id)
        case (.compensating, .compensated(let id)):
            guard state(of: id) == .compensating else { return [] }
            let actions = answered(id)
            branches[id].state = .compensated
            compensations.append(id)
            return actions + runReadyCompensations()
        default:
            return ignored(event)
        }
    }

    /// Late and duplicate answers and timers change nothing: an action's answer once
    /// compensating (its step is compensated anyway) or after the end, a compensation's
    /// answer repeated, a retry or step timer overtaken. Impossible: a second start or
    /// recovery, an abort request `rejection(of:)` refuses, an answer or timer before the
    /// start, a compensation's answer while running forward, `phaseOne` (never armed).
    private func ignored(_ event: Event) -> [TransactionAction] {
        switch event {
        case .start, .recovered, .abortRequested, .timedOut(.phaseOne), .timedOut(.checkBack):
            return ignoring(event, impossible: true)
        case .forced:
            return []  // taken above in every state
        case .stepDone, .stepRefused, .stepFailed, .timedOut:
            return ignoring(event, impossible: status == .created)
        case .compensated, .compensationFailed:
            return ignoring(event, impossible: status == .created || status == .running)
        }
    }

    /// nil for an id no step has (a confused or hostile message).
    private func state(of id: BranchID) -> BranchState? {
        branches.indices.contains(id) ? branches[id].state : nil
    }

    private func isCompensatable(_ id: BranchID) -> Bool {
        branches[id].spec.compensatable ?? true
    }

    /// Sends `message` for the step's current attempt and arms its timeout.
    private mutating func deliver(_ message: ParticipantMessage, to id: BranchID) -> [TransactionAction] {
        awaiting[id] = true
        var actions: [TransactionAction] = [.send(message, to: id)]
        if branches[id].spec.timeout != nil { actions.append(.schedule(.step(id), attempt: branches[id].attempts)) }
        return actions
    }

    /// An answer came for the step: stop the timer that was running for it (the attempt's
    /// timeout, or the backoff when the answer is a late one of an earlier attempt).
    private mutating func answered(_ id: BranchID) -> [TransactionAction] {
        defer {
            awaiting[id] = false
            abandoned[id] = 0
        }
        if awaiting[id] { return branches[id].spec.timeout != nil ? [.cancel(.step(id))] : [] }
        return [.cancel(.retry(id))]
    }

    /// Starts every pending step whose dependencies are done, forcing the commit decision
    /// first when one of them is the pivot.
    private mutating func runReadySteps() -> [TransactionAction] {
        let ready = branches.indices.filter { id in
            branches[id].state == .pending && dependencies[id].allSatisfy { branches[$0].state == .done }
        }
        var actions: [TransactionAction] = []
        if decision == nil, ready.contains(where: { !isCompensatable($0) }) {
            decision = .commit
            let forward = branches.indices.filter { branches[$0].state != .done }
            targets = Set(forward)
            actions += [.log(.decision(gid: gid, .commit, targets: forward), forced: true), .decided(.commit)]
        }
        for id in ready {
            branches[id].state = .running
            branches[id].attempts = 1
            actions += deliver(.action, to: id)
        }
        if ready.isEmpty, branches.allSatisfy({ $0.state == .done }) { actions += complete() }
        return actions
    }

    private mutating func complete() -> [TransactionAction] {
        // Without a pivot nothing was decided before: a lazy decision record lets the log
        // tell a completed saga from a compensated one (if it is lost with `end`, recovery
        // re-runs the idempotent actions).
        var actions: [TransactionAction] = decision == nil
            ? [.log(.decision(gid: gid, .commit, targets: branches.map(\.id)), forced: false), .decided(.commit)] : []
        decision = .commit
        status = .committed
        actions += [.log(.end(gid: gid), forced: false), .finish(.committed)]
        return actions
    }

    /// The current attempt of step `id` failed (undeliverable, or timed out).
    private mutating func attemptFailed(_ id: BranchID, error: String) -> [TransactionAction] {
        branches[id].lastError = error
        let limited = status == .running && decision == nil && isCompensatable(id)
        let limit = branches[id].spec.retry?.maxAttempts ?? Self.defaultMaxAttempts
        if limited, branches[id].attempts >= limit {
            branches[id].state = .failed
            let message = "step \(id) failed after \(branches[id].attempts) attempt\(branches[id].attempts == 1 ? "" : "s"): \(error)"
            branches[id].result = .refusal(code: "retries_exhausted", message: message)
            failure = Failure(step: id, code: "retries_exhausted", message: message)
            return compensate(reason: nil)
        }
        branches[id].attempts += 1
        return [.schedule(.retry(id), attempt: branches[id].attempts - 1)]
    }

    /// Backward recovery: every step whose action was ever sent may have run, and is
    /// compensated. `reason` (an application's or operator's) is logged with the decision.
    private mutating func compensate(reason: String?) -> [TransactionAction] {
        var actions: [TransactionAction] = []
        for id in branches.indices where branches[id].state == .running {
            // Abandon the attempts still out or waiting: their answers are ignored from now.
            actions += answered(id)
        }
        status = .compensating
        decision = .abort
        // After a restart with no decision logged, any step may have run before it.
        let sent = everyStepMayHaveRun ? Array(branches.indices) : branches.indices.filter { branches[$0].state != .pending }
        targets = Set(sent)
        let entry: LogEntry = reason.map { .resolution(gid: gid, .abort, targets: sent, reason: $0, heuristic: false) }
            ?? .decision(gid: gid, .abort, targets: sent)
        actions += [.log(entry, forced: true), .decided(.abort)]
        return actions + runReadyCompensations()
    }

    /// Sends the compensations whose dependents are all compensated; finishes when every
    /// target is.
    private mutating func runReadyCompensations() -> [TransactionAction] {
        var actions: [TransactionAction] = []
        for id in targets.sorted(by: >) {
            let state = branches[id].state
            guard state != .compensating, state != .compensated else { continue }
            guard dependents[id].allSatisfy({ !targets.contains($0) || branches[$0].state == .compensated }) else { continue }
            branches[id].state = .compensating
            branches[id].attempts = 1
            abandoned[id] = 0  // abandoned actions answer as actions, not as compensations
            actions += deliver(.compensate, to: id)
        }
        if targets.allSatisfy({ branches[$0].state == .compensated }) {
            status = .aborted
            actions += [.log(.end(gid: gid), forced: false), .finish(.aborted)]
        }
        return actions
    }

    /// Past the pivot an operator declares the saga committed, giving up on the steps
    /// that have not completed (settled by hand): a heuristic outcome.
    private mutating func giveUp(reason: String) -> [TransactionAction] {
        var actions: [TransactionAction] = []
        for id in branches.indices where branches[id].state != .done {
            if branches[id].state == .running { actions += answered(id) }
            branches[id].state = .failed
            branches[id].lastError = "given up by an operator: \(reason)"
        }
        heuristic = true
        targets = []
        status = .committed
        return actions + [
            .log(.resolution(gid: gid, .commit, targets: [], reason: reason, heuristic: true), forced: true),
            .log(.end(gid: gid), forced: false), .finish(.committed),
        ]
    }

    /// A message's delivery, once its outcome is commit: every step runs forward, each
    /// retried until it is done (the saga as if past its pivot, with nothing logged).
    mutating func deliverForward() -> [TransactionAction] {
        status = .running
        decision = .commit
        targets = Set(branches.indices)
        return runReadySteps()
    }

    /// A message's step settled by an operator outside dtx (its effect applied by hand):
    /// done, and the steps waiting for it run.
    mutating func settledByHand(_ id: BranchID) -> [TransactionAction] {
        guard status == .running, decision == .commit, branches.indices.contains(id), branches[id].state != .done else { return [] }
        var actions: [TransactionAction] = []
        if branches[id].state == .running { actions += answered(id) }
        branches[id].state = .done
        return actions + runReadySteps()
    }

    /// The steps refused for good that wait for an operator (a message's delivery).
    var refusedSteps: [BranchID] {
        status == .running ? branches.indices.filter { branches[$0].state == .failed } : []
    }

    private mutating func recover(_ recovered: Recovered) -> [TransactionAction] {
        switch recovered {
        case .undecided:
            // No decision: nothing past the pivot ran. Run forward again from the start.
            // Sends are not logged, so any step may have run before the restart: should
            // the saga compensate, it compensates every step (a step that never ran gets
            // a null compensation from its participant's barrier).
            status = .running
            everyStepMayHaveRun = true
            return runReadySteps()
        case let .decided(.commit, forward, wasHeuristic):
            // Past the pivot: the steps before it are done; run the rest forward.
            status = .running
            decision = .commit
            heuristic = wasHeuristic
            targets = Set(forward.filter { branches.indices.contains($0) })
            for id in branches.indices where !targets.contains(id) { branches[id].state = .done }
            return [.decided(.commit)] + runReadySteps()
        case let .decided(.abort, sent, wasHeuristic):
            status = .compensating
            decision = .abort
            heuristic = wasHeuristic
            targets = Set(sent.filter { branches.indices.contains($0) })
            // Their actions may have run; each waits for its dependents' compensations.
            for id in targets { branches[id].state = .done }
            return [.decided(.abort)] + runReadyCompensations()
        }
    }
}

extension Saga {
    public static func translate(_ event: CommonEvent) -> Event? {
        switch event {
        case .start: return .start
        case .abortRequested(let reason): return .abortRequested(reason: reason)
        case let .forced(decision, reason): return .forced(decision, reason: reason)
        case .resolvedByHand: return nil  // refused by `rejection(of:)`
        case .timedOut(let timer): return .timedOut(timer)
        case .open, .enlisted, .commitRequested: return nil  // refused by `rejection(of:)`
        case .checkedBack: return nil  // a message's
        case let .replied(id, message, response):
            switch (message, response) {
            case (.action, .done(_, let result)): return .stepDone(id, result: result)
            case let (.action, .refused(code, text)): return .stepRefused(id, code: code, message: text)
            case let (.action, .failed(error)), let (.action, .undelivered(error)): return .stepFailed(id, error)
            case (.compensate, .done): return .compensated(id)
            case let (.compensate, .refused(code, text)): return .compensationFailed(id, "\(code): \(text)")
            case let (.compensate, .failed(error)), let (.compensate, .undelivered(error)): return .compensationFailed(id, error)
            default: return nil  // another protocol's message
            }
        }
    }

    public func rejection(of event: CommonEvent) -> String? {
        switch event {
        case .open:
            return "a saga is submitted whole, with its steps; it cannot be opened interactively"
        case .enlisted, .commitRequested:
            return "a saga is submitted whole; it takes no enlistments or commit requests (it commits when its last step is done)"
        case .abortRequested:
            switch (status, decision) {
            case (.running, nil): return nil
            case (.running, _): return "the saga is past its pivot (a step that cannot be compensated may have run); it can no longer be aborted"
            default: return "the saga is \(status.rawValue)"
            }
        case .forced(let decision, _):
            return forceRejection(decision)
        case .resolvedByHand:
            return "a saga's steps are not resolved by hand: force the saga's outcome instead (dtx abort --reason compensates what ran, before the pivot; dtx commit --reason gives up on a step past it)"
        default:
            return nil
        }
    }

    public var completedCompensations: [BranchID]? { compensations.isEmpty ? nil : compensations }

    /// A completed saga ran every step; a compensated one compensated those that may have
    /// run (in an order the log does not keep).
    public static func ended(_ replayed: TransactionLogReplay.Replayed) -> Saga {
        var machine = recovering(replayed).0
        let compensated = Set(replayed.targets)
        machine.branches = replayed.endedBranches(machine.branches) { id, decision in
            decision == .commit ? .done : compensated.contains(id) ? .compensated : .pending
        }
        machine.status = replayed.endedStatus
        machine.decision = replayed.endedDecision
        machine.heuristic = replayed.heuristic
        machine.compensations = replayed.history?.compensations ?? []
        return machine
    }

    public static func recovering(_ replayed: TransactionLogReplay.Replayed) -> (Saga, Event) {
        var machine = Saga(gid: replayed.gid, steps: replayed.branches)
        machine.branches = replayed.withDetails(machine.branches)
        return (machine, .recovered(Recovered(replayed)))
    }
}
