import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Logging
import Synchronization
import Tracing

/// What a driver needs from the rest of the engine.
struct EngineContext: Sendable {
    var store: any CoordinatorStore
    var environment: any EngineEnvironment
    var fence: FenceSignal
    var transport: any Transport
    var registry: ParticipantRegistry
    var configuration: CoordinatorConfiguration
    var metrics: EngineMetrics
    var logger: Logger

    /// Reports a broken invariant: `configuration.invariantBroken`, else a failed assertion.
    func invariantBroken(_ why: String) {
        (configuration.invariantBroken ?? { assertionFailure("engine invariant broken: \($0)") })(why)
    }
}

enum RequestResult: Sendable, Equatable {
    case accepted(branchCount: Int)
    case rejected(String)
}

/// The coordinator's table holds drivers of any protocol through this face.
protocol TransactionDriving: AnyObject, Sendable {
    var gid: GlobalTransactionID { get }
    var sequence: UInt64 { get }
    var proto: TransactionProtocol { get }
    var createdAt: Date { get }
    /// When it last changed (for a finished one: when it finished).
    var updatedAt: Date { get }
    var spec: SubmittedSpec { get }
    var isFinished: Bool { get }
    /// False when the records the first event called for were not written (the store
    /// failed or fenced this node off): the submission must not be taken as accepted.
    func start(with event: CommonEvent, trace parent: ServiceContext?) async -> Bool
    /// The store failed (or the node was fenced off, or is stopping): nothing more is
    /// performed until a restart recovers it from the log.
    var isHalted: Bool { get }
    /// `TransactionStateMachine.operatorsOnlyForce` of its protocol.
    var operatorsOnlyForce: Bool { get }
    /// Throws `log_unavailable` when the store failed (or fenced this node off) before what
    /// the request caused was as durable as its protocol requires: nothing may be taken as done.
    func request(_ event: CommonEvent) async throws(CoordinatorError) -> RequestResult
    func waitForOutcome(decisionLimit: Duration, phaseTwoLimit: Duration) async throws(CoordinatorError)
    func view() -> TransactionView
    func summary() -> TransactionSummary
    /// Its summary when it passes the query's status and participant filters, else nil
    /// (cheap for the many that do not: the list scans the whole history).
    func summary(ifListed query: Coordinator.ListQuery) -> TransactionSummary?
    func outcome(branch: BranchID?) -> String
    /// 3PC: what a participant running termination is told (see `Coordinator.threePhaseState`).
    func threePhaseState(branch: BranchID?) -> ThreePhaseState
    func unfinishedBranches(on participant: String) -> Int
    /// Stuck (phase two keeps failing) and in doubt (branches may hold prepared work).
    func health() -> (stuck: Bool, inDoubt: Bool)
    /// Delivers every pending retry now; returns how many.
    func retryNow() -> Int
    /// Keeps an operator's action with the transaction (in its view and, lazily, in the log).
    func audit(_ entry: TransactionHistory.AuditEntry)
    func stop()
    /// Dropped from the history (`forget`): no longer listed.
    var isForgotten: Bool { get }
    func forget()
}

/// What a submission asked for, to recognise the same gid submitted again.
struct SubmittedSpec: Sendable, Equatable {
    var proto: TransactionProtocol
    var branches: [BranchSpec]
    var interactive: Bool
    /// Msg: the participant checked back with.
    var service: String? = nil
}

/// Runs one transaction: feeds its events, one at a time, to the protocol's pure state
/// machine and performs the actions that come out, in order. A forced log write
/// completes before the next action; sends and timers run as child tasks that post
/// their outcome back as events.
final class TransactionDriver<Machine: TransactionStateMachine>: TransactionDriving {
    private enum Input: Sendable {
        case own(Machine.Event)
        /// A request's answer is set once its actions are performed.
        case common(CommonEvent, OneShot<RequestResult?>?)
    }

    private struct State: Sendable {
        var machine: Machine
        var timeline: [TimelineEntry] = []
        /// Set by the `decided` action: for a commit, only once it is durable (in the log,
        /// or with a last agent, in the agent's database).
        var decision: Decision?
        var decidedAt: Date?
        /// A forced decision, resolution or delegation of this transaction is durable: a
        /// restart finds its outcome (or, delegated, the branch to ask) in the log.
        var outcomeForced = false
        var updatedAt: Date
        var error: String?
        var finished = false
        /// The log failed: nothing more is performed; a restart recovers from the log.
        var halted = false
        /// When each branch's armed retry fires (what the view shows as `nextRetryAt`).
        var nextRetry: [BranchID: Date] = [:]
        /// Operators' actions, oldest first.
        var audit: [TransactionHistory.AuditEntry] = []
        /// Its spans, when the engine traces; ended when it finishes or stops here.
        var trace: TransactionTrace?
        var waiters: [UInt64: Waiter] = [:]
        var nextWaiter: UInt64 = 0

        /// The waiting callers, in the order they came (resumed in that order, so that a
        /// simulated run does not depend on hashing).
        mutating func takeWaiters() -> [Waiter] {
            defer { waiters = [:] }
            return waiters.sorted { $0.key < $1.key }.map(\.value)
        }
    }

    static var timelineLimit: Int { 64 }

    let gid: GlobalTransactionID
    let sequence: UInt64
    let proto: TransactionProtocol
    let createdAt: Date
    let spec: SubmittedSpec
    let timeout: Duration
    private let started: Date
    private let context: EngineContext
    private let onFinish: @Sendable (GlobalTransactionID) -> Void
    private let state: Mutex<State>
    private let mailbox = Mailbox<Input>()
    private let forgotten = Atomic<Bool>(false)
    private let timers: Timers<TimerID>

    var updatedAt: Date { state.withLock { $0.updatedAt } }

    init(machine: Machine, proto: TransactionProtocol, sequence: UInt64, createdAt: Date, spec: SubmittedSpec, timeout: Duration,
         context: EngineContext, onFinish: @escaping @Sendable (GlobalTransactionID) -> Void) {
        gid = machine.gid
        self.sequence = sequence
        self.proto = proto
        self.createdAt = createdAt
        self.spec = spec
        self.timeout = timeout
        self.context = context
        self.onFinish = onFinish
        started = context.environment.now()
        timers = Timers(environment: context.environment)
        state = Mutex(State(machine: machine, updatedAt: createdAt))
    }

    /// A transaction the log shows as ended (`Machine.ended`), for queries, outcome
    /// answers and idempotent resubmission. Its details are what the log holds.
    /// With its `history` record, its view is the view it had when it finished.
    convenience init(ended machine: Machine, decision: Decision, error: String?, history: TransactionHistory?, proto: TransactionProtocol,
                     sequence: UInt64, createdAt: Date, spec: SubmittedSpec, timeout: Duration, context: EngineContext) {
        self.init(machine: machine, proto: proto, sequence: sequence, createdAt: createdAt, spec: spec, timeout: timeout, context: context) { _ in }
        state.withLock { s in
            s.finished = true
            s.decision = decision
            s.outcomeForced = true
            s.error = error
            if let history {
                Self.restore(history, in: &s)
            } else {
                s.timeline = [TimelineEntry(at: createdAt, event: "read from the log at start")]
            }
        }
    }

    var isFinished: Bool { state.withLock { $0.finished } }

    var isForgotten: Bool { forgotten.load(ordering: .relaxed) }

    func forget() { forgotten.store(true, ordering: .relaxed) }

    /// Feeds the first event (`start`/`open`).
    func start(with event: CommonEvent, trace parent: ServiceContext?) async -> Bool {
        if context.configuration.tracing {
            let trace = TransactionTrace(gid: gid, proto: proto, parent: parent ?? .topLevel, recovered: false)
            state.withLock { $0.trace = trace }
        }
        note(event == .open ? "opened" : proto == .msg ? "prepared" : "submitted")
        let reply = OneShot<RequestResult?>()
        await enqueue(.common(event, reply))
        return await reply.value() != nil
    }

    var isHalted: Bool { state.withLock { $0.halted } }

    var operatorsOnlyForce: Bool { Machine.operatorsOnlyForce }

    /// Resumes a transaction rebuilt from the log; `outcomeDurable` when the log holds its
    /// decision (or the delegation that names the branch holding it).
    /// With its latest `history` record, its view starts as the view it had then.
    func resume(with event: Machine.Event, outcomeDurable: Bool, history: TransactionHistory?) {
        let trace = context.configuration.tracing ? TransactionTrace(gid: gid, proto: proto, parent: .topLevel, recovered: true) : nil
        state.withLock { s in
            s.outcomeForced = outcomeDurable
            s.trace = trace
            if let history { Self.restore(history, in: &s) }
        }
        note("recovered from the log")
        context.environment.spawn { await self.enqueue(.own(event)) }
    }

    func request(_ event: CommonEvent) async throws(CoordinatorError) -> RequestResult {
        let reply = OneShot<RequestResult?>()
        await enqueue(.common(event, reply))
        guard let result = await reply.value() else {
            throw CoordinatorError(.unavailable, "log_unavailable", "\(gid): the coordinator's log failed or it is shutting down; retry the request later")
        }
        return result
    }

    private func post(_ event: CommonEvent) async {
        await enqueue(.common(event, nil))
    }

    // MARK: The loop

    /// Events are processed one at a time, in arrival order (`Mailbox`).
    private func enqueue(_ input: Input) async {
        await mailbox.deliver(input) { await process($0) }
    }

    private func process(_ input: Input) async {
        let (actions, branches, rejection, halted): ([TransactionAction], [Branch], String?, Bool) = state.withLock { s in
            guard !s.halted else { return ([], [], nil, true) }
            guard !s.finished else { return ([], [], "the transaction is \(s.machine.status.rawValue)", false) }
            let event: Machine.Event
            switch input {
            case .own(let own):
                event = own
            case .common(let common, _):
                if let why = s.machine.rejection(of: common) { return ([], [], why, false) }
                if let id = common.branch, !s.machine.branches.indices.contains(id) {
                    // Answers and timers name only branches this driver sent to or armed for.
                    return ([.impossible("\(gid): \(common) names branch \(id), which does not exist")], [], nil, false)
                }
                record(common, in: &s)
                if case .timedOut(.retry(let id)) = common { s.nextRetry[id] = nil }
                guard let own = Machine.translate(common) else { return ([], [], nil, false) }
                event = own
            }
            let actions = s.machine.handle(event)
            if actions.contains(where: { if case .impossible = $0 { false } else { true } }) { s.updatedAt = context.environment.now() }
            s.trace?.status(s.machine.status)
            return (actions, s.machine.branches, nil, false)
        }
        // Answered once the actions are performed: what the request caused (an
        // enlistment, a commit decision) is then as durable as its protocol requires.
        // A driver found halted, or a record of these actions left unwritten, makes the
        // answer "unavailable" (nil); a halt after every record was written does not.
        let written = await perform(actions, branches: branches)
        if case .common(_, let reply?) = input {
            reply.set(halted || !written ? nil : rejection.map { .rejected($0) } ?? .accepted(branchCount: branches.count))
        }
    }

    /// Performs `actions` in order; false when one of their log records was not written
    /// (the store failed, or a halt stopped the actions before it).
    @discardableResult
    private func perform(_ actions: [TransactionAction], branches: [Branch]) async -> Bool {
        var sent: ParticipantMessage?
        for (index, action) in actions.enumerated() {
            // Halted (the store failed or fenced this node off, or shutting down): nothing more goes out.
            if state.withLock({ $0.halted }) {
                return !actions[index...].contains { if case .log = $0 { true } else { false } }
            }
            // A lease that could have expired: another node may be taking this
            // transaction over, so nothing more is written or sent from here.
            if action.reachesOut, !context.store.mayAct {
                halt("this node's lease on the transaction's shard could have expired")
                context.fence.raise()
                return !actions[index...].contains { if case .log = $0 { true } else { false } }
            }
            switch action {
            case let .log(entry, forced):
                if case .end = entry, let busy = branches.first(where: { $0.state.awaitsAnAnswer }) {
                    context.invariantBroken("\(gid): end logged while branch \(busy.id) is \(busy.state.rawValue)")
                }
                let milestone = entry.milestone(forced: forced)
                if let milestone { context.configuration.failpoints.hit(before: milestone) }
                let (type, payload) = entry.encoded()
                do {
                    if forced, context.configuration.simulatedBugs.contains(.commitBeforeDurable), case .decision(_, .commit, _) = entry {
                        try context.store.append(type: type, payload: payload)
                        state.withLock { $0.outcomeForced = true }
                    } else if forced {
                        try await context.store.appendForced(type: type, payload: payload)
                        if entry.fixesTheOutcome { state.withLock { $0.outcomeForced = true } }
                    } else {
                        try context.store.append(type: type, payload: payload)
                    }
                } catch {
                    halt("log write failed: \(error)")
                    if case StoreError.fenced = error { context.fence.raise() }
                    return false
                }
                if forced { note("logged \(entry.timelineName) (forced)") }
                if let milestone { context.configuration.failpoints.hit(after: milestone) }
            case let .send(message, id):
                guard branches.indices.contains(id) else { continue }
                if message.confirmsTheOutcome, !state.withLock({ $0.outcomeForced }) {
                    context.invariantBroken("\(gid): \(message.rawValue) to branch \(id) before a forced record made the outcome durable")
                }
                sent = message
                note("\(message.rawValue) sent", branch: id)
                let traceparent = state.withLock { $0.trace }?.sent(message, branch: id, participant: branches[id].spec.participant)
                send(message, to: branches[id], allParticipants: branches.map(\.spec.participant), traceparent: traceparent)
            case .checkBack(let service):
                note("\(ParticipantMessage.queryPrepared.rawValue) sent", detail: service)
                checkBack(with: service)
            case let .schedule(timer, attempt):
                schedule(timer, attempt: attempt)
            case .cancel(let timer):
                timers.cancel(timer)
                if case .retry(let id) = timer { state.withLock { _ = $0.nextRetry.removeValue(forKey: id) } }
            case .decided(let decision):
                let now = context.environment.now()
                let finishing = actions.contains { if case .finish = $0 { true } else { false } }
                let (waiters, history) = state.withLock { s -> ([Waiter], TransactionHistory?) in
                    if let earlier = s.decision, earlier != decision, !s.machine.heuristic {
                        context.invariantBroken("\(gid): decided \(decision.rawValue) after \(earlier.rawValue) with no operator override")
                    }
                    s.decision = decision
                    s.decidedAt = now
                    record(TimelineEntry(at: now, event: "decided \(decision.rawValue)"), in: &s)
                    // A message's decision comes before any delivery: nothing but the
                    // prepare's timeline to keep. (Logging it made cluster seed 114 of
                    // dtx-sim run away, growing by gigabytes: not yet understood.)
                    return (s.takeWaiters(), finishing || proto == .msg ? nil : Self.history(s))
                }
                // A restart before the end finds the view as it was at the decision.
                if let history { log(history) }
                waiters.forEach { $0.resume() }
                context.metrics.phase(proto, "prepare", .seconds(now.timeIntervalSince(started)))
            case .finish(let status):
                finish(status)
            case .impossible(let why):
                context.invariantBroken(why)
            }
        }
        if let sent { context.configuration.failpoints.hit(after: sent, done: false) }
        return true
    }

    private func send(_ message: ParticipantMessage, to branch: Branch, allParticipants: [String], traceparent: String?) {
        guard let endpoint = context.registry.entry(branch.spec.participant)?.endpoint else {
            // Deregistration is refused while branches are unfinished, so this is a bug or a
            // hand-edited log, or a spec naming a participant that never registered: a
            // failed delivery (not one to resend: nothing says the name will ever register).
            let id = branch.id
            context.environment.spawn { await self.post(.replied(id, message, .failed("participant \(branch.spec.participant) is not registered"))) }
            return
        }
        let request = ParticipantRequest(gid: gid.rawValue, branch: branch.id, operation: branch.spec.operation, payload: branch.spec.payload,
                                         participants: proto.participantsKnowTheirPeers ? allParticipants : nil, traceparent: traceparent)
        let transport = context.transport
        let registry = context.registry
        let failpoints = context.configuration.failpoints
        let proto = proto.branchProtocol
        context.environment.spawn {
            let response = await transport.send(message, protocol: proto, request: request, to: endpoint)
            if response.failure == nil { registry.touch(endpoint.name) }
            if case .done = response { failpoints.hit(after: message, done: true) }
            await self.post(.replied(branch.id, message, response))
        }
    }

    /// Msg: `query_prepared` to the service; its answer comes back as `checkedBack`.
    private func checkBack(with service: String) {
        guard let endpoint = context.registry.entry(service)?.endpoint else {
            context.environment.spawn { await self.post(.checkedBack(.failed("participant \(service) is not registered"))) }
            return
        }
        let transport = context.transport
        let registry = context.registry
        let request = ParticipantRequest(gid: gid.rawValue, branch: 0, operation: ParticipantMessage.queryPrepared.rawValue)
        let buggy = context.configuration.simulatedBugs.contains(.checkBackFailureAborts)
        context.environment.spawn {
            var response = await transport.send(.queryPrepared, protocol: .msg, request: request, to: endpoint)
            if buggy, response.failure != nil { response = .done(status: MessageCheckBack.rolledBack, result: nil) }
            if response.failure == nil { registry.touch(endpoint.name) }
            await self.post(.checkedBack(response))
        }
    }

    private func schedule(_ timer: TimerID, attempt: Int) {
        let delay: Duration
        switch timer {
        case .phaseOne:
            delay = timeout
        case .retry(let id):
            let policy = state.withLock { $0.machine.retryPolicy(for: id, base: context.configuration.retryPolicy) }
            delay = policy.delay(attempt: attempt, unit: context.environment.random())
            context.metrics.retry(proto)
            let at = context.environment.now().addingTimeInterval(delay.apiSeconds)
            state.withLock { $0.nextRetry[id] = at }
        case .step(let id):
            // A saga step's per-attempt timeout (the machine only arms it for steps that have one).
            guard let timeout = state.withLock({ $0.machine.stepTimeout(id) }) else { return }
            delay = timeout
        case .checkBack:
            delay = context.configuration.retryPolicy.delay(attempt: attempt, unit: context.environment.random())
        }
        let environment = context.environment
        timers.arm(timer, after: delay) { [weak self] in
            guard let self else { return }
            environment.spawn { await self.post(.timedOut(timer)) }
        }
    }

    private func finish(_ status: TransactionStatus) {
        let now = context.environment.now()
        let (waiters, decidedAt, history) = state.withLock { s in
            s.finished = true
            s.timeline.append(TimelineEntry(at: now, event: "finished \(status.rawValue)"))
            s.trace?.end(status.rawValue)
            s.trace = nil
            return (s.takeWaiters(), s.decidedAt, Self.history(s))
        }
        log(history)
        timers.close()
        waiters.forEach { $0.resume() }
        if let decidedAt { context.metrics.phase(proto, status == .committed ? "commit" : "rollback", .seconds(now.timeIntervalSince(decidedAt))) }
        context.metrics.finished(proto, status)
        onFinish(gid)
    }

    /// Lazy: lost with a crash before the next sync, the view after a restart shows only
    /// what the protocol's records (and any earlier history record) say.
    private func log(_ history: TransactionHistory) {
        let record = LogEntry.history(gid: gid, history).encoded()
        try? context.store.append(type: record.type, payload: record.payload)
    }

    private func halt(_ error: String) {
        context.logger.error("transaction halted; it resumes from the log after a restart", metadata: ["gid": "\(gid)", "error": "\(error)"])
        state.withLock { s in
            s.halted = true
            s.error = error
            s.trace?.end("halted")
            s.trace = nil
        }
        timers.close()
    }

    /// Stops timers and the loop at shutdown; what the log holds is recovered at restart.
    func stop() {
        let waiters = state.withLock { s in
            s.halted = true
            s.trace?.end("stopped")
            s.trace = nil
            return s.takeWaiters()
        }
        timers.close()
        waiters.forEach { $0.resume() }
    }

    // MARK: Timeline and results

    private func note(_ event: String, branch: BranchID? = nil, detail: String? = nil) {
        let now = context.environment.now()
        state.withLock { record(TimelineEntry(at: now, event: event, branch: branch, detail: detail), in: &$0) }
    }

    private func record(_ entry: TimelineEntry, in s: inout State) {
        if s.timeline.count >= Self.timelineLimit { s.timeline.remove(at: Self.timelineLimit / 2) }
        s.timeline.append(entry)
    }

    /// Writes the timeline (what participants answered is the machine's to keep).
    private func record(_ event: CommonEvent, in s: inout State) {
        let entry: (event: String, branch: BranchID?, detail: String?)
        if case let .replied(id, message, response) = event { s.trace?.answered(message, branch: id, response) }
        switch event {
        case let .replied(id, message, .done(status, _)): entry = ("\(message.rawValue): \(status)", id, nil)
        case let .replied(id, message, .refused(code, text)): entry = ("\(message.rawValue): refused", id, "\(code): \(text)")
        case let .replied(id, message, .failed(error)): entry = ("\(message.rawValue): failed", id, error)
        case let .replied(id, message, .undelivered(error)): entry = ("\(message.rawValue): not delivered", id, error)
        case .checkedBack(let response):
            let word = ParticipantMessage.queryPrepared.rawValue
            switch response {
            case .done(let status, _): entry = ("\(word): \(status)", nil, nil)
            case let .refused(code, text): entry = ("\(word): refused", nil, "\(code): \(text)")
            case .failed(let error): entry = ("\(word): failed", nil, error)
            case .undelivered(let error): entry = ("\(word): not delivered", nil, error)
            }
        case .timedOut(.phaseOne): entry = ("timed out", nil, nil)
        case .timedOut(.step(let id)): entry = ("attempt timed out", id, nil)
        case .enlisted(let spec): entry = ("enlisted", s.machine.branches.count, "\(spec.participant) \(spec.operation)")
        case .commitRequested: entry = ("commit requested", nil, nil)
        case .abortRequested(let reason):
            s.error = s.error ?? reason
            entry = ("abort requested", nil, reason)
        case let .forced(decision, reason):
            s.error = reason
            entry = ("operator forced \(decision.rawValue)", nil, reason)
        case let .resolvedByHand(id, outcome, reason):
            entry = ("resolved by hand as \(outcome.outcome)", id, reason)
        case .timedOut(.retry), .timedOut(.checkBack), .start, .open:
            return
        }
        record(TimelineEntry(at: context.environment.now(), event: entry.event, branch: entry.branch, detail: entry.detail), in: &s)
    }

    // MARK: Views

    /// An abort's or an operator's reason, else the first refused work.
    private static func error(_ s: State) -> String? {
        s.error ?? s.machine.branches.lazy.compactMap { $0.result?.refusalMessage }.first
    }

    /// What a history record kept (the machine restores the branches' details itself).
    private static func restore(_ history: TransactionHistory, in s: inout State) {
        s.error = history.error ?? s.error
        s.updatedAt = Date(timeIntervalSince1970: history.updatedAt)
        s.timeline = history.timeline.map { TimelineEntry(at: Date(timeIntervalSince1970: $0.at), event: $0.event, branch: $0.branch, detail: $0.detail) }
        s.audit = history.audit
    }

    private static func history(_ s: State) -> TransactionHistory {
        TransactionHistory(
            branches: s.machine.branches.map { TransactionHistory.BranchDetail(attempts: $0.attempts, lastError: $0.lastError, result: $0.result) },
            timeline: s.timeline.map { TransactionHistory.Event(at: $0.at, event: $0.event, branch: $0.branch, detail: $0.detail) },
            error: error(s), updatedAt: s.updatedAt, compensations: s.machine.completedCompensations, audit: s.audit)
    }

    func audit(_ entry: TransactionHistory.AuditEntry) {
        let history = state.withLock { s in
            s.audit.append(entry)
            return Self.history(s)
        }
        log(history)
    }

    func view() -> TransactionView {
        state.withLock { s in
            let error = Self.error(s)
            let stuck = stuckReason(s)
            return TransactionView(
                gid: gid.rawValue, protocol: proto, status: s.machine.displayStatus.rawValue, decision: s.decision,
                interactive: spec.interactive, heuristic: s.machine.heuristic, stuck: stuck != nil, stuckReason: stuck,
                createdAt: createdAt, updatedAt: s.updatedAt, timeout: timeout.apiSeconds, error: error,
                branches: s.machine.branches.map {
                    BranchView(id: $0.id, participant: $0.spec.participant, operation: $0.spec.operation, state: $0.state.rawValue,
                               attempts: $0.attempts, lastError: $0.lastError, nextRetryAt: s.nextRetry[$0.id], result: $0.result)
                },
                timeline: s.timeline,
                compensations: s.machine.completedCompensations,
                audit: s.audit.isEmpty ? nil : s.audit.map {
                    AuditRecord(at: Date(timeIntervalSince1970: $0.at), who: $0.who, action: $0.action, reason: $0.reason, branch: $0.branch)
                },
                service: spec.service
            )
        }
    }

    func summary() -> TransactionSummary {
        state.withLock { summary($0) }
    }

    func summary(ifListed query: Coordinator.ListQuery) -> TransactionSummary? {
        state.withLock { s in
            switch query.status {
            case nil: break
            case "stuck": guard isStuck(s) else { return nil }
            case "in_doubt": guard Self.inDoubt(s) else { return nil }
            case let status?: guard s.machine.displayStatus.rawValue == status else { return nil }
            }
            if let participant = query.participant, !s.machine.branches.contains(where: { $0.spec.participant == participant }) { return nil }
            return summary(s)
        }
    }

    private func summary(_ s: State) -> TransactionSummary {
        var seen = Set<String>()
        let participants = s.machine.branches.map(\.spec.participant).filter { seen.insert($0).inserted }
        return TransactionSummary(gid: gid.rawValue, protocol: proto, status: s.machine.displayStatus.rawValue, stuck: isStuck(s),
                                  heuristic: s.machine.heuristic, createdAt: createdAt, participants: participants, cursor: String(sequence))
    }

    /// Unfinished, and its participants may hold prepared or tried work awaiting the outcome.
    private static func inDoubt(_ s: State) -> Bool {
        !s.finished && (s.decision != nil || s.machine.branches.contains { $0.state.holdsResources })
    }


    private func isStuck(_ s: State) -> Bool {
        stuckReason(s) != nil
    }

    /// Why the transaction needs an operator's attention, or nil: its log failed; a branch
    /// has had `stuckAfterAttempts` deliveries of its current message; or it is unfinished
    /// `stuckAfterAge` past its timeout.
    private func stuckReason(_ s: State) -> String? {
        guard !s.finished else { return nil }
        if s.halted { return "the log could not be written: nothing more is done until dtxd restarts and recovers it" }
        if let id = s.machine.waitingForAnOperator.first {
            let branch = s.machine.branches[id]
            return "branch \(id) (\(branch.spec.participant)) refused its delivery for good" + (branch.lastError.map { ": \($0)" } ?? "")
                + "; fix the cause and run `dtx retry`, resolve the branch by hand, or force commit to give up on it"
        }
        let limit = context.configuration.stuckAfterAttempts
        if let branch = s.machine.branches.filter({ $0.attempts >= limit }).max(by: { $0.attempts < $1.attempts }) {
            return "branch \(branch.id) (\(branch.spec.participant), \(branch.state.rawValue)) has had \(branch.attempts) attempts"
                + (branch.lastError.map { "; last error: \($0)" } ?? "")
        }
        let age = context.environment.now().timeIntervalSince(createdAt)
        if let allowed = context.configuration.stuckAfterAge, age > timeout.apiSeconds + allowed.apiSeconds {
            return "unfinished \(Int(age)) s after it began, past its \(Self.seconds(timeout)) timeout by more than \(Self.seconds(allowed))"
        }
        return nil
    }

    private static func seconds(_ duration: Duration) -> String {
        let value = duration.apiSeconds
        return value.rounded() == value ? "\(Int(value)) s" : "\(value) s"
    }

    func health() -> (stuck: Bool, inDoubt: Bool) {
        state.withLock { s in (isStuck(s), Self.inDoubt(s)) }
    }

    func outcome(branch: BranchID?) -> String {
        state.withLock { s in s.machine.answer(about: branch, decided: s.decision).map(\.outcome) ?? "pending" }
    }

    func threePhaseState(branch: BranchID?) -> ThreePhaseState {
        state.withLock { s in s.machine.threePhaseAnswer(about: branch, decided: s.decision) }
    }

    func unfinishedBranches(on participant: String) -> Int {
        state.withLock { s in
            s.finished ? 0 : s.machine.branches.filter { $0.spec.participant == participant }.count
        }
    }

    func retryNow() -> Int {
        let waiting = state.withLock { $0.machine.waitingForAnOperator }
        let due = (timers.take { if case .retry = $0 { true } else { false } }
            .compactMap { timer -> BranchID? in if case .retry(let id) = timer { id } else { nil } } + waiting).sorted().map(TimerID.retry)
        for timer in due { context.environment.spawn { await self.post(.timedOut(timer)) } }
        return due.count
    }

    /// Waits for the outcome: until the decision (at most `decisionLimit`), then until
    /// every branch has acknowledged it (at most `phaseTwoLimit` more). A participant that
    /// is down in phase two does not hold the caller: the view then shows `committing`.
    /// Returns once the transaction has finished, or at the limits. An outcome it returns
    /// to is durable: one that no forced decision covers (an abort under presumed abort, a
    /// one-phase commit, a saga completed without a pivot) is synced first, so that a
    /// restart never forgets or reverses what a waiting caller was told. Throws
    /// `log_unavailable` (503) when that sync fails.
    func waitForOutcome(decisionLimit: Duration, phaseTwoLimit: Duration) async throws(CoordinatorError) {
        let environment = context.environment
        let decisionDeadline = environment.now().addingTimeInterval(decisionLimit.apiSeconds)
        var finishDeadline: Date?
        while true {
            let (finished, decided) = state.withLock { ($0.finished || $0.halted, $0.decision != nil) }
            if finished { break }
            if decided, finishDeadline == nil { finishDeadline = environment.now().addingTimeInterval(phaseTwoLimit.apiSeconds) }
            let deadline = finishDeadline ?? decisionDeadline
            guard environment.now() < deadline else { break }
            await waitForChange(until: deadline)
        }
        let (decided, covered) = state.withLock { ($0.decision != nil, $0.outcomeForced) }
        guard decided else { return }
        if !covered {
            do {
                try await context.store.sync()
            } catch {
                halt("log sync failed: \(error)")
                if case StoreError.fenced = error { context.fence.raise() }
                throw CoordinatorError(.unavailable, "log_unavailable", "the coordinator's log cannot be written (\(error)): transaction \(gid) is decided, but its outcome is not durable; it resumes from the log after a restart")
            }
        }
        context.configuration.failpoints.hit(.beforeOutcomeAnswer)
    }

    /// Returns at the next decision or finish, or at `deadline`.
    private func waitForChange(until deadline: Date) async {
        let environment = context.environment
        let id = state.withLock { s -> UInt64 in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { s -> Bool in
                    if s.finished || s.halted || Task.isCancelled { return true }
                    let remaining = Duration.seconds(max(deadline.timeIntervalSince(environment.now()), 0))
                    let timer = environment.schedule(after: remaining) { [weak self] in
                        self?.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
                    }
                    s.waiters[id] = Waiter(continuation: continuation, deadline: timer)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            self.state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}

/// A caller waiting for the outcome, and the timer that ends its wait.
private struct Waiter {
    var continuation: CheckedContinuation<Void, Never>
    var deadline: ScheduledCall

    func resume() {
        deadline.cancel()
        continuation.resume()
    }
}

extension TransactionAction {
    /// Writes to the store or sends to a participant.
    fileprivate var reachesOut: Bool {
        switch self {
        case .log, .send: true
        default: false
        }
    }
}
