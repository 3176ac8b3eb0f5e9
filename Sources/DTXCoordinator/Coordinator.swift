/// DTXCoordinator: the engine. It owns the table of transactions (a cache of what the
/// log says), runs each through its protocol's state machine, keeps the participant
/// registry, recovers at start and checkpoints the log.
import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Logging
import Synchronization
import Tracing

/// A request the coordinator refuses: what kind of refusal (the server maps it to an
/// HTTP status), a stable code and a message that says what was wrong and what to do.
public struct CoordinatorError: Error, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The request itself is malformed or breaks the document's rules.
        case invalid
        /// No or a wrong bearer token.
        case unauthorized
        /// No such transaction or participant.
        case notFound
        /// The request conflicts with the current state (already finished, other spec, …).
        case conflict
        /// The request is well-formed but this daemon cannot serve it (unknown
        /// participant, protocol not served, steps that do not make a saga).
        case unserviceable
        /// The store cannot be written, or fenced this node off: try again, or elsewhere.
        case unavailable
        /// The log holds what this build cannot read.
        case broken
    }

    public var kind: Kind
    public var code: String
    public var message: String

    public init(_ kind: Kind, _ code: String, _ message: String) {
        self.kind = kind
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

public struct CoordinatorConfiguration: Sendable {
    /// Phase one (or an open interactive transaction) aborts after this long, unless the submission says otherwise.
    public var defaultTimeout: Duration = .seconds(30)
    public var retryPolicy = RetryPolicy()
    public var stuckAfterAttempts = 5
    /// A transaction unfinished this long past its timeout is stuck (nil: never by age).
    public var stuckAfterAge: Duration? = .seconds(600)
    /// Finished transactions kept (in memory and through checkpoints) for queries and idempotent resubmission.
    public var historyLimit = 10_000
    /// ...and for no longer than this after they finished; the next checkpoint deletes
    /// the records of those it forgets.
    public var historyRetention: Duration = .seconds(7 * 86_400)
    public var checkpointInterval: Duration = .seconds(30)
    /// Spans for each transaction, its phases and its messages (`TransactionTrace`), made
    /// with the tracer the process bootstrapped (dtxd: with `--otlp-endpoint`).
    public var tracing = false
    /// 2PC with two branches or more: the last branch commits in one phase and decides
    /// (last-agent optimisation, see `TwoPhaseCommit`) instead of preparing.
    public var lastAgent = false
    /// How long a waiting caller waits for phase two after the decision.
    public var phaseTwoWait: Duration = .seconds(5)
    public var failpoints = DaemonFailpoints()
    /// Told when an action would break one of the engine's invariants (see
    /// `TransactionDriver.check`); nil: a failed assertion in debug builds, nothing in release.
    public var invariantBroken: (@Sendable (String) -> Void)?
    /// Simulation only: classic mistakes put back so that `dtx-sim` can show it finds
    /// them. dtxd never sets any.
    public var simulatedBugs: Set<SimulatedBug> = []

    public init() {}
}

/// Numbers transactions for the list's order and cursor, newest highest; the
/// coordinators of one node's shards share one.
///
/// A dtxd on its own log counts 1, 2, 3… in the order transactions are made or replayed.
/// Cluster nodes number them so that the lists of all nodes merge into one order: by
/// creation time in microseconds since 2020, times 1000, plus three digits of the node
/// (the node id's FNV-1a hash mod 1000), so two nodes do not give the same number (18
/// digits until 2051). A new transaction gets at least 1000 more than the one before it
/// on this node; a replayed one (a shard taken over) keeps its creation time's place.
public final class SequenceCounter: Sendable {
    private let node: UInt64?
    private let last = Mutex<UInt64>(0)

    /// 1, 2, 3…
    public init() { node = nil }

    /// Time-ordered numbers that merge with other nodes'.
    public init(clusterNode id: String) {
        node = ShardMap.hash(id) % 1000
    }

    func next(createdAt: Date, replayed: Bool) -> UInt64 {
        guard let node else { return last.withLock { $0 += 1; return $0 } }
        let micros = UInt64(max(0, (createdAt.timeIntervalSince1970 - 1_577_836_800) * 1_000_000))
        let byTime = micros * 1000 + node
        if replayed { return byTime }
        return last.withLock { last in
            last = max(last + 1000, byTime)
            return last
        }
    }
}

/// A classic coordinator mistake the simulator can switch on (`dtx-sim --bug NAME`).
public enum SimulatedBug: String, Sendable, CaseIterable {
    /// A commit decision is written lazily, so COMMIT can go out before it is durable.
    case commitBeforeDurable = "commit-before-durable"
    /// A participant asking about an undecided transaction is told `aborted`.
    case abortedWhileInFlight = "aborted-while-in-flight"
    /// A restart rebuilds decided transactions but does not resume their phase two.
    case noPhaseTwoAfterRestart = "no-phase-two-after-restart"
    /// A message's check-back that gets no answer is taken as `rolled_back`.
    case checkBackFailureAborts = "check-back-failure-aborts"
}

public final class Coordinator: Sendable {
    private struct Table: Sendable {
        var live: [GlobalTransactionID: any TransactionDriving] = [:]
        var finished: [GlobalTransactionID: any TransactionDriving] = [:]
        /// Finished gids, oldest first, from `finishedHead` on.
        var finishedOrder: [GlobalTransactionID] = []
        var finishedHead = 0
        /// Every driver of `live` and `finished` by sequence, oldest first: the list reads
        /// the newest from its end. A forgotten one lingers (the list skips it) until
        /// enough have to make compacting worth it.
        var bySequence: [any TransactionDriving] = []
        var lingering = 0

        func driver(_ gid: GlobalTransactionID) -> (any TransactionDriving)? {
            live[gid] ?? finished[gid]
        }

        /// A driver enters the table (live, or replayed as ended).
        mutating func index(_ driver: any TransactionDriving) {
            // Sequences are taken outside the lock, so a driver lands at or near the end.
            var position = bySequence.count
            while position > 0, bySequence[position - 1].sequence > driver.sequence { position -= 1 }
            bySequence.insert(driver, at: position)
        }
    }

    private let store: any CoordinatorStore
    private let transport: any Transport
    private let configuration: CoordinatorConfiguration
    private let logger: Logger
    let registry: ParticipantRegistry
    /// Registration and lookup of participants: this coordinator's own (its records in
    /// its store), or in a cluster the node's, shared by every shard's coordinator.
    public let participants: Participants
    private let table = Mutex(Table())
    private let fenced = Mutex(false)
    private let whenFencedOff = Mutex<StoredFunction<@Sendable () -> Void>?>(nil)
    /// Set while the coordinator's shard is being handed to another node.
    private let refusing = Atomic<Bool>(false)
    private let sequences: SequenceCounter
    private let context: EngineContext
    private let environment: any EngineEnvironment

    /// Rebuilds the coordinator from the log's records (registry and transactions) and
    /// resumes every unfinished transaction: undecided ones abort, decided ones drive
    /// phase two until every branch acknowledges.
    public init(store: any CoordinatorStore, transport: any Transport, configuration: CoordinatorConfiguration = .init(),
                environment: any EngineEnvironment = SystemEnvironment(), participants: Participants? = nil,
                sequences: SequenceCounter = SequenceCounter(), logger: Logger) throws {
        self.store = store
        self.sequences = sequences
        let ownsParticipants = participants == nil
        let participants = participants ?? Participants(registry: ParticipantRegistry(), persist: { try await store.appendForced(type: $0, payload: $1) },
                                                        now: { environment.now() }, logger: logger)
        self.participants = participants
        registry = participants.registry
        self.environment = environment
        self.transport = transport
        self.configuration = configuration
        self.logger = logger
        context = EngineContext(store: store, environment: environment, fence: FenceSignal(), transport: transport, registry: registry,
                                configuration: configuration, metrics: EngineMetrics(), logger: logger)
        context.fence.onFenced { [weak self] in self?.fenceOff() }

        var replay = TransactionLogReplay()
        for record in store.recordsAtStart() {
            do {
                if try registry.replay(type: record.type, payload: record.payload, lsn: record.lsn) { continue }
                replay.apply(try LogEntry(type: record.type, payload: record.payload))
            } catch {
                throw CoordinatorError(.broken, "unreadable_log", "log record \(record.lsn) cannot be read: \(error); run `dtx wal dump` on the data directory")
            }
        }
        var resumed = 0
        for gid in replay.order {
            guard let replayed = replay.transactions[gid] else { continue }
            switch replayed.protocol {
            case .twoPhaseCommit: rebuild(TwoPhaseCommit.self, replayed)
            case .tcc: rebuild(TryConfirmCancel.self, replayed)
            case .saga: rebuild(Saga.self, replayed)
            case .threePhaseCommit: rebuild(ThreePhaseCommit.self, replayed)
            case .msg: rebuild(TransactionalMessage.self, replayed)
            }
            if !replayed.ended { resumed += 1 }
        }
        if resumed > 0 { logger.notice("recovering unfinished transactions", metadata: ["count": "\(resumed)"]) }
        if ownsParticipants { participants.countUnfinishedBranches { [weak self] in self?.unfinishedBranches(on: $0) ?? 0 } }
    }

    /// Rebuilds a transaction of `Machine`'s protocol from its records: an ended one
    /// joins the history, an unfinished one resumes.
    private func rebuild<Machine: TransactionStateMachine>(_: Machine.Type, _ replayed: TransactionLogReplay.Replayed) {
        let createdAt = replayed.createdAt ?? environment.now()
        let timeout = replayed.timeout ?? configuration.defaultTimeout
        let spec = SubmittedSpec(proto: replayed.protocol, branches: replayed.branches, interactive: replayed.interactive, service: replayed.service)
        if replayed.ended {
            let driver = TransactionDriver(ended: Machine.ended(replayed), decision: replayed.endedDecision, error: replayed.reason,
                                             history: replayed.history, proto: replayed.protocol,
                                             sequence: sequences.next(createdAt: createdAt, replayed: true), createdAt: createdAt, spec: spec, timeout: timeout, context: context)
            table.withLock { t in
                t.index(driver)
                remember(driver, in: &t)
            }
            return
        }
        let (machine, event) = Machine.recovering(replayed)
        let driver = makeDriver(machine, proto: replayed.protocol, createdAt: createdAt, timeout: timeout, spec: spec, replayed: true)
        table.withLock { t in
            t.live[replayed.gid] = driver
            t.index(driver)
        }
        if replayed.decision != nil, configuration.simulatedBugs.contains(.noPhaseTwoAfterRestart) { return }
        driver.resume(with: event, outcomeDurable: replayed.decision != nil || replayed.lastAgent != nil, history: replayed.history)
    }

    private func makeDriver<M: TransactionStateMachine>(_ machine: M, proto: TransactionProtocol, createdAt: Date, timeout: Duration, spec: SubmittedSpec,
                                                        replayed: Bool = false) -> TransactionDriver<M> {
        let sequence = sequences.next(createdAt: createdAt, replayed: replayed)
        return TransactionDriver(machine: machine, proto: proto, sequence: sequence, createdAt: createdAt, spec: spec, timeout: timeout, context: context) { [weak self] gid in
            self?.moveToHistory(gid)
        }
    }

    private func moveToHistory(_ gid: GlobalTransactionID) {
        table.withLock { t in
            guard let driver = t.live.removeValue(forKey: gid) else { return }
            remember(driver, in: &t)
        }
    }

    private func remember(_ driver: any TransactionDriving, in t: inout Table) {
        t.finished[driver.gid] = driver
        t.finishedOrder.append(driver.gid)
        forgetOld(in: &t)
    }

    /// Forgets finished transactions beyond the history's size or age, oldest first;
    /// returns how many.
    @discardableResult
    private func forgetOld(in t: inout Table) -> Int {
        let cutoff = environment.now().addingTimeInterval(-configuration.historyRetention.apiSeconds)
        var forgotten = 0
        while t.finishedHead < t.finishedOrder.count {
            let oldest = t.finishedOrder[t.finishedHead]
            guard t.finishedOrder.count - t.finishedHead > configuration.historyLimit || (t.finished[oldest]?.updatedAt ?? .distantPast) < cutoff else { break }
            t.finished.removeValue(forKey: oldest)?.forget()
            t.finishedHead += 1
            forgotten += 1
        }
        if t.finishedHead > 4096, t.finishedHead * 2 > t.finishedOrder.count {
            t.finishedOrder.removeFirst(t.finishedHead)
            t.finishedHead = 0
        }
        t.lingering += forgotten
        // Compacted once they are an eighth: forgotten drivers hold their state until then.
        if t.lingering > 4096, t.lingering * 8 > t.bySequence.count {
            t.bySequence.removeAll { $0.isForgotten }
            t.lingering = 0
        }
        return forgotten
    }

    // MARK: Maintenance

    /// Checkpoints the log every `checkpointInterval` until cancelled: keeps the records of
    /// unfinished and remembered transactions and the current registrations.
    public func runMaintenance() async {
        var checkpointedAt = store.position
        while !Task.isCancelled {
            try? await environment.sleep(for: configuration.checkpointInterval)
            // Transactions that grew too old while nothing happened are forgotten too.
            let forgotten = table.withLock { forgetOld(in: &$0) }
            guard !Task.isCancelled, store.position != checkpointedAt || forgotten > 0 else { continue }
            do {
                let result = try await checkpoint()
                checkpointedAt = store.position
                logger.debug("checkpoint", metadata: ["read": "\(result.recordsRead)", "kept": "\(result.recordsKept)", "segmentsRemoved": "\(result.segmentsRemoved)"])
            } catch {
                logger.error("checkpoint failed", metadata: ["error": "\(error)"])
            }
        }
    }

    @discardableResult
    public func checkpoint() async throws -> CompactionResult {
        try await store.compact { [self] record in
            if let live = registry.isLive(type: record.type, lsn: record.lsn) { return live }
            let gid = try LogEntry.gid(type: record.type, payload: record.payload)
            return table.withLock { $0.driver(gid) != nil }
        }
    }

    /// The store refused a forced append as fenced: another node owns this one's work.
    /// Every driver stops at once (nothing more is sent for any of them) and new
    /// submissions are refused; what the store holds is the new owner's to drive.
    private func fenceOff() {
        guard fenced.withLock({ was in defer { was = true }; return !was }) else { return }
        logger.critical("the store fenced this coordinator off; every transaction stops here")
        liveDrivers().forEach { $0.stop() }
        whenFencedOff.withLock { $0 }?.call()
    }

    /// Called once, after the store fenced this coordinator off and every driver stopped
    /// (at once, if that already happened).
    public func whenFenced(_ body: @escaping @Sendable () -> Void) {
        whenFencedOff.withLock { $0 = StoredFunction(body) }
        if isFenced { body() }
    }

    /// From now on a submission of a new gid is refused (503 `shard_moving`): the
    /// transactions here are about to move to another node. Existing ones are served.
    public func refuseNewTransactions() {
        refusing.store(true, ordering: .sequentiallyConsistent)
    }

    /// Unfinished transactions with no decision yet.
    public func undecidedTransactions() -> Int {
        liveDrivers().filter { $0.outcome(branch: nil) == "pending" }.count
    }

    public var isFenced: Bool { fenced.withLock { $0 } }

    /// The unfinished transactions, oldest first (an order that does not depend on hashing).
    private func liveDrivers() -> [any TransactionDriving] {
        table.withLock { Array($0.live.values) }.sorted { ($0.sequence, $0.gid.rawValue) < ($1.sequence, $1.gid.rawValue) }
    }

    /// Stops every transaction's timers and loop. Whatever is unfinished resumes from the
    /// log at the next start; nothing is decided here.
    public func shutdown() async {
        stopDriving()
        await transport.shutdown()
    }

    /// Stops every transaction's timers and loop, deciding nothing, and leaves the
    /// transport open (in a cluster, a shard moving to another node).
    public func stopDriving() {
        liveDrivers().forEach { $0.stop() }
    }

    // MARK: Transactions

    /// Runs a submitted transaction, or opens an interactive one. `created` is false when
    /// the same gid and spec was submitted before (the existing transaction is returned).
    /// `trace`: the caller's trace context (its W3C `traceparent`), which the
    /// transaction's spans continue when the engine traces.
    public func submit(_ submission: TransactionSubmission, trace: ServiceContext? = nil) async throws(CoordinatorError) -> (TransactionView, created: Bool) {
        // What the document refuses (400) first; then what it allows but this daemon
        // cannot serve (422).
        if let (code, message) = submission.documentProblem { throw CoordinatorError(.invalid, code, message) }
        if isFenced {
            throw CoordinatorError(.unavailable, "fenced", "this coordinator's store fenced it off: another node owns its transactions now; send requests to that node")
        }
        let gid: GlobalTransactionID
        do {
            gid = try submission.gid.map { text throws(GlobalTransactionID.Problem) in try GlobalTransactionID(validating: text) } ?? Self.newGID()
        } catch {
            throw CoordinatorError(.invalid, "invalid_gid", error.description)
        }
        if refusing.load(ordering: .sequentiallyConsistent), table.withLock({ $0.driver(gid) == nil }) {
            throw CoordinatorError(.unavailable, "shard_moving", "the shard of \(gid) is moving to another node; retry")
        }
        let interactive = submission.interactive ?? false
        let branches = submission.branches ?? []
        let timeout = submission.timeout.map { Duration(apiSeconds: $0) } ?? configuration.defaultTimeout
        await participants.refresh(ifUnknown: branches.map(\.participant))
        for (index, branch) in branches.enumerated() {
            try checkServed(branch.participant, at: "branches[\(index)].participant", proto: submission.protocol.branchProtocol)
        }
        // Steps the document allows one by one, which do not make a saga (a dependency on
        // a later step, a pivot before a compensatable step).
        if submission.protocol == .saga, let problem = Saga.validate(branches) {
            throw CoordinatorError(.unserviceable, "invalid_branches", problem)
        }
        if submission.protocol == .msg, let problem = TransactionalMessage.validate(branches) {
            throw CoordinatorError(.unserviceable, "invalid_branches", problem)
        }
        if let service = submission.service {
            await participants.refresh(ifUnknown: [service])
            try checkServed(service, at: "service", proto: .msg)
        }
        let spec = SubmittedSpec(proto: submission.protocol, branches: branches, interactive: interactive, service: submission.service)
        let now = environment.now()
        let driver: any TransactionDriving
        switch submission.protocol {
        case .tcc:
            let machine = interactive ? TryConfirmCancel(interactive: gid) : TryConfirmCancel(gid: gid, branches: branches)
            driver = makeDriver(machine, proto: .tcc, createdAt: now, timeout: timeout, spec: spec)
        case .saga:
            driver = makeDriver(Saga(gid: gid, steps: branches), proto: .saga, createdAt: now, timeout: timeout, spec: spec)
        case .threePhaseCommit:
            driver = makeDriver(ThreePhaseCommit(gid: gid, branches: branches), proto: .threePhaseCommit, createdAt: now, timeout: timeout, spec: spec)
        case .twoPhaseCommit:
            let machine = interactive ? TwoPhaseCommit(interactive: gid) : TwoPhaseCommit(gid: gid, branches: branches, lastAgent: configuration.lastAgent)
            driver = makeDriver(machine, proto: .twoPhaseCommit, createdAt: now, timeout: timeout, spec: spec)
        case .msg:
            let machine = TransactionalMessage(gid: gid, service: submission.service ?? "", branches: branches)
            driver = makeDriver(machine, proto: .msg, createdAt: now, timeout: timeout, spec: spec)
        }
        let existing: (any TransactionDriving)? = table.withLock { t in
            if let existing = t.driver(gid) { return existing }
            t.live[gid] = driver
            t.index(driver)
            return nil
        }
        if let existing {
            guard existing.spec == spec else {
                throw CoordinatorError(.conflict, "gid_conflict", "transaction \(gid) already exists with a different protocol or branches; choose another gid")
            }
            if existing.isHalted, !existing.isFinished { throw Self.notWritten(gid) }
            if submission.wait == true { try await existing.waitForOutcome(decisionLimit: timeout + .seconds(30), phaseTwoLimit: configuration.phaseTwoWait) }
            return (existing.view(), false)
        }
        // What its view shows after a restart; lazy, and written before the machine's
        // first record (replay pairs them by gid).
        let submitted = LogEntry.submitted(gid: gid, at: driver.createdAt, timeout: timeout).encoded()
        try? store.append(type: submitted.type, payload: submitted.payload)
        guard await driver.start(with: interactive ? .open : .start, trace: trace) else { throw Self.notWritten(gid) }
        if submission.wait == true, !interactive { try await driver.waitForOutcome(decisionLimit: timeout + .seconds(30), phaseTwoLimit: configuration.phaseTwoWait) }
        return (driver.view(), true)
    }

    /// A transaction whose first records could not be written: a restart recovers what
    /// the log holds of it (its submission may be sent again).
    private static func notWritten(_ gid: GlobalTransactionID) -> CoordinatorError {
        CoordinatorError(.unavailable, "log_unavailable", "\(gid): the coordinator's log failed or it is shutting down before the transaction was durable; retry the submission later")
    }

    /// A participant named at `path` against this daemon (422): registered, and serving the protocol.
    private func checkServed(_ name: String, at path: String, proto: TransactionProtocol) throws(CoordinatorError) {
        guard let participant = registry.entry(name) else {
            throw CoordinatorError(.unserviceable, "unknown_participant", "\(path): no participant named '\(name)' is registered; see GET /v1/participants")
        }
        guard participant.protocols.contains(proto) else {
            throw CoordinatorError(.unserviceable, "protocol_not_served", "\(path): '\(name)' does not serve \(proto.rawValue) (it serves \(participant.protocols.map(\.rawValue).joined(separator: ", ")))")
        }
    }

    // Lookups take a validated `GlobalTransactionID`, never text: presumed abort may
    // answer only for a gid that could have existed and is truly unknown, so whoever
    // holds text (the server's path, a query) decodes and validates it first.

    private func driver(_ gid: GlobalTransactionID) throws(CoordinatorError) -> any TransactionDriving {
        guard let driver = table.withLock({ $0.driver(gid) }) else {
            throw CoordinatorError(.notFound, "unknown_transaction", "no transaction '\(gid)' is known (it may never have existed, or be older than the kept history)")
        }
        return driver
    }

    public func transaction(_ gid: GlobalTransactionID) throws(CoordinatorError) -> TransactionView {
        try driver(gid).view()
    }

    /// The outcome a participant acts on: an unknown gid is aborted (presumed abort).
    public func outcome(gid: GlobalTransactionID, branch: BranchID?) -> OutcomeAnswer {
        guard let driver = table.withLock({ $0.driver(gid) }) else { return OutcomeAnswer(gid: gid.rawValue, outcome: "aborted") }
        let outcome = driver.outcome(branch: branch)
        if outcome == "pending", configuration.simulatedBugs.contains(.abortedWhileInFlight) { return OutcomeAnswer(gid: gid.rawValue, outcome: "aborted") }
        return OutcomeAnswer(gid: gid.rawValue, outcome: outcome)
    }

    /// What a 3PC participant running termination is told: the coordinator's own state
    /// (`ThreePhaseCommit.threePhaseState`). An unknown gid is aborted: without its
    /// pre-commit record nobody can be in p (presumed abort), and an ended one is in the history.
    public func threePhaseState(gid: GlobalTransactionID, branch: BranchID?) -> ThreePhaseState {
        guard let driver = table.withLock({ $0.driver(gid) }) else { return .aborted }
        return driver.threePhaseState(branch: branch)
    }

    public func enlist(gid: GlobalTransactionID, _ request: EnlistRequest) async throws(CoordinatorError) -> EnlistAnswer {
        let driver = try driver(gid)
        let spec = BranchSpec(participant: request.participant, operation: request.operation, payload: request.payload)
        if let problem = spec.documentProblem(at: "enlistment", proto: driver.proto) { throw CoordinatorError(.invalid, "invalid_branches", problem) }
        await participants.refresh(ifUnknown: [spec.participant])
        try checkServed(spec.participant, at: "enlistment.participant", proto: driver.proto)
        switch try await driver.request(.enlisted(spec)) {
        case .accepted(let count): return EnlistAnswer(gid: gid.rawValue, branch: count - 1)
        case .rejected(let why): throw CoordinatorError(.conflict, "not_open", "cannot enlist in \(gid): \(why)")
        }
    }

    /// The application's commit of an interactive transaction, or (with a reason) an
    /// operator forcing commit. A request with a reason is kept as an audit record by `who`.
    public func commit(gid: GlobalTransactionID, reason: String?, wait: Bool, who: String = "local") async throws(CoordinatorError) -> TransactionView {
        try await resolve(gid: gid, .commit, reason: reason, wait: wait, who: who)
    }

    /// The application's abort, or (with a reason, once decided) an operator forcing abort.
    public func abort(gid: GlobalTransactionID, reason: String?, wait: Bool, who: String = "local") async throws(CoordinatorError) -> TransactionView {
        try await resolve(gid: gid, .abort, reason: reason, wait: wait, who: who)
    }

    /// An operator sends every pending delivery of `gid` now instead of at its backoff,
    /// and says why (kept as an audit record by `who`).
    public func retry(gid: GlobalTransactionID, reason: String, who: String) throws(CoordinatorError) -> TransactionView {
        try Self.check(reason: reason, for: "retrying now")
        let driver = try driver(gid)
        guard !driver.isFinished else {
            throw CoordinatorError(.conflict, "already_finished", "transaction \(gid) is already \(driver.view().status): nothing is left to retry")
        }
        let retried = driver.retryNow()
        driver.audit(TransactionHistory.AuditEntry(at: environment.now(), who: who, action: retried == 1 ? "retry now (1 delivery)" : "retry now (\(retried) deliveries)", reason: reason))
        logger.notice("operator retried a transaction now", metadata: ["gid": "\(gid)", "deliveries": "\(retried)", "who": "\(who)", "reason": "\(reason)"])
        return driver.view()
    }

    /// An operator declares how branch `branch` of `gid` ended after settling it outside
    /// dtx; it is owed nothing more, and the transaction finishes once no branch is owed
    /// anything (heuristic when the branch ended against the decision). Kept as an audit record.
    public func resolveBranch(gid: GlobalTransactionID, branch: BranchID, as outcome: Decision, reason: String, who: String) async throws(CoordinatorError) -> TransactionView {
        try Self.check(reason: reason, for: "resolving the branch by hand")
        let driver = try driver(gid)
        guard !driver.isFinished else {
            throw CoordinatorError(.conflict, "already_finished", "transaction \(gid) is already \(driver.view().status): no branch is owed anything")
        }
        if case .rejected(let why) = try await driver.request(.resolvedByHand(branch, outcome, reason: reason)) {
            throw CoordinatorError(.conflict, "cannot_resolve", "cannot resolve branch \(branch) of \(gid) by hand: \(why)")
        }
        driver.audit(TransactionHistory.AuditEntry(at: environment.now(), who: who, action: "resolve branch as \(outcome.outcome)", reason: reason, branch: branch))
        logger.warning("operator resolved a branch by hand", metadata: ["gid": "\(gid)", "branch": "\(branch)", "outcome": "\(outcome.outcome)", "who": "\(who)", "reason": "\(reason)"])
        return driver.view()
    }

    /// A reason says something: 1 to 1000 characters, not only spaces or controls (the document's pattern).
    /// An operator's reason says something: 1 to 1000 characters, not only spaces.
    public static func check(reason: String, for action: String) throws(CoordinatorError) {
        if !reason.unicodeScalars.contains(where: { $0.value > 0x20 && $0.value != 0x7F }) || reason.unicodeScalars.count > 1000 {
            throw CoordinatorError(.invalid, "invalid_reason", "reason must be 1 to 1000 characters, not only spaces: say why you are \(action)")
        }
    }

    private func resolve(gid: GlobalTransactionID, _ decision: Decision, reason: String?, wait: Bool, who: String) async throws(CoordinatorError) -> TransactionView {
        if let reason { try Self.check(reason: reason, for: "forcing the outcome") }
        let driver = try driver(gid)
        if driver.isFinished {
            let view = driver.view()
            guard view.decision == decision else {
                throw CoordinatorError(.conflict, "already_finished", "transaction \(gid) is already \(view.status); it cannot be \(decision.outcome) now")
            }
            return try await finishWaiting(driver, wait)
        }
        let plain: CommonEvent = decision == .commit ? .commitRequested : .abortRequested(reason: reason ?? "aborted on request")
        let answer: RequestResult = reason != nil && driver.operatorsOnlyForce ? .rejected("an operator's request is a forced outcome") : try await driver.request(plain)
        if case .rejected(let why) = answer {
            guard let reason else {
                if driver.view().decision == decision { return try await finishWaiting(driver, wait) }
                throw CoordinatorError(.conflict, "reason_required", "\(why). To force the outcome as an operator, give a reason.")
            }
            if case .rejected(let why) = try await driver.request(.forced(decision, reason: reason)) {
                throw CoordinatorError(.conflict, "cannot_force", "cannot force \(decision.rawValue) on \(gid): \(why)")
            }
            logger.warning("operator forced an outcome", metadata: ["gid": "\(gid)", "decision": "\(decision.rawValue)", "reason": "\(reason)", "who": "\(who)"])
            driver.audit(TransactionHistory.AuditEntry(at: environment.now(), who: who, action: "force \(decision.rawValue)", reason: reason))
        } else if let reason {
            driver.audit(TransactionHistory.AuditEntry(at: environment.now(), who: who, action: decision.rawValue, reason: reason))
        }
        return try await finishWaiting(driver, wait)
    }

    private func finishWaiting(_ driver: any TransactionDriving, _ wait: Bool) async throws(CoordinatorError) -> TransactionView {
        if wait { try await driver.waitForOutcome(decisionLimit: configuration.defaultTimeout + .seconds(30), phaseTwoLimit: configuration.phaseTwoWait) }
        return driver.view()
    }

    public struct ListQuery: Sendable {
        /// A status word, or `stuck`, or `in_doubt`.
        public var status: String?
        public var `protocol`: TransactionProtocol?
        public var participant: String?
        public var olderThan: Double?
        public var limit = 100
        public var cursor: UInt64?

        public init() {}
    }

    /// Newest first; the cursor is the sequence number of the last one returned.
    public func list(_ query: ListQuery) -> TransactionList {
        Self.list(query, in: [self])
    }

    /// One list across several coordinators (a cluster node's shards), which number
    /// their transactions from one `SequenceCounter`.
    public static func list(_ query: ListQuery, in coordinators: [Coordinator]) -> TransactionList {
        let now = coordinators.first?.environment.now() ?? Date()
        // The newest `limit + 1` of each (the page, and whether there is more), merged.
        let found = coordinators.flatMap { $0.newest(query, count: query.limit + 1, now: now) }.sorted { $0.sequence > $1.sequence }
        let page = found.prefix(query.limit)
        return TransactionList(transactions: page.map(\.summary), nextCursor: found.count > query.limit ? page.last.map { String($0.sequence) } : nil)
    }

    /// The newest `count` of this coordinator's transactions that the query lists.
    private func newest(_ query: ListQuery, count: Int, now: Date) -> [(sequence: UInt64, summary: TransactionSummary)] {
        // A copy (the scan runs without the lock; the next insert copies the array).
        let drivers = table.withLock { $0.bySequence }
        var end = drivers.count
        if let cursor = query.cursor {
            // The first at or past the cursor, by binary search: the scan starts below it.
            var low = 0
            while low < end {
                let middle = (low + end) / 2
                if drivers[middle].sequence < cursor { low = middle + 1 } else { end = middle }
            }
        }
        var found: [(sequence: UInt64, summary: TransactionSummary)] = []
        var index = end
        while index > 0, found.count < count {
            index -= 1
            let driver = drivers[index]
            if let protocolFilter = query.protocol, driver.proto != protocolFilter { continue }
            if let olderThan = query.olderThan, now.timeIntervalSince(driver.createdAt) < olderThan { continue }
            guard !driver.isForgotten, let summary = driver.summary(ifListed: query) else { continue }
            found.append((driver.sequence, summary))
        }
        return found
    }

    /// Retries every pending delivery now instead of waiting for its backoff.
    /// With an operator's reason (`dtx recover --reason`), each transaction retried keeps
    /// an audit record of it.
    public func recoverNow(reason: String? = nil, who: String = "local") throws(CoordinatorError) -> RecoveryReport {
        if let reason { try Self.check(reason: reason, for: "retrying every transaction now") }
        let drivers = liveDrivers()
        var transactions = 0
        var deliveries = 0
        for driver in drivers {
            let retried = driver.retryNow()
            if retried > 0 {
                transactions += 1
                deliveries += retried
                if let reason {
                    driver.audit(TransactionHistory.AuditEntry(at: environment.now(), who: who, action: retried == 1 ? "retry all now (1 delivery)" : "retry all now (\(retried) deliveries)", reason: reason))
                }
            }
        }
        if let reason {
            logger.notice("operator retried every transaction now", metadata: ["transactions": "\(transactions)", "deliveries": "\(deliveries)", "who": "\(who)", "reason": "\(reason)"])
        }
        return RecoveryReport(transactions: transactions, deliveries: deliveries)
    }

    public struct Gauges: Sendable {
        public var unfinished: Int
        public var inDoubt: Int
        public var stuck: Int
        public var participants: Int

        public init(unfinished: Int = 0, inDoubt: Int = 0, stuck: Int = 0, participants: Int = 0) {
            self.unfinished = unfinished
            self.inDoubt = inDoubt
            self.stuck = stuck
            self.participants = participants
        }
    }

    public func gauges() -> Gauges {
        let drivers = table.withLock { Array($0.live.values) }
        var gauges = Gauges(unfinished: drivers.count, inDoubt: 0, stuck: 0, participants: registry.count)
        for driver in drivers {
            let health = driver.health()
            if health.stuck { gauges.stuck += 1 }
            if health.inDoubt { gauges.inDoubt += 1 }
        }
        return gauges
    }

    public var storeMetrics: [StoreMetric] { store.metrics }

    /// Unfinished branches on a participant among this coordinator's transactions.
    public func unfinishedBranches(on name: String) -> Int {
        table.withLock { Array($0.live.values) }.reduce(0) { $0 + $1.unfinishedBranches(on: name) }
    }
}
