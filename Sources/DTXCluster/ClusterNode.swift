/// DTXCluster: dtxd nodes sharing a PostgreSQL store. Each node owns some of the shards
/// under a lease (docs/CLUSTER.md) and runs one `Coordinator` per shard it owns, over
/// that shard's records; requests about another node's shard are forwarded to it.
import DTXAPI
import DTXCoordinator
import DTXCore
import DTXLog
import Foundation
import Logging
import Synchronization

public struct ClusterConfiguration: Sendable {
    /// libpq connection string (several hosts and `target_session_attrs=read-write` for
    /// a primary with standbys).
    public var storeURL: String
    public var nodeID: String
    /// The base URL other nodes forward requests to.
    public var advertiseURL: String
    /// A node that stops renewing loses its shards this long after its last renewal, by
    /// the store's clock.
    public var leaseTTL: Duration = .seconds(5)
    /// The number of shards of a cluster being created; nil: the store's (64 for a new one).
    public var shards: Int?
    /// How long a lazy record may wait for a forced write to carry it to the store.
    public var lazyDelay: Duration = .milliseconds(5)
    /// How long a forced write may wait for others to share its commit, when others are
    /// committing too (dtxd --group-commit-delay, as for the log).
    public var groupCommitDelay: Duration = .milliseconds(1)
    /// A shard given up to balance the cluster takes no new transaction, and waits this
    /// long at most for those running to reach their decision.
    public var drainFor: Duration = .seconds(5)
    /// The part of the TTL a node acts for after sending a renewal that succeeded
    /// (docs/CLUSTER.md). Safe only below 1 (less the clocks' rate difference); the
    /// simulator raises it past 1 to show that its checks catch the result.
    package var leaseMargin = 0.9

    public init(storeURL: String, nodeID: String, advertiseURL: String) {
        self.storeURL = storeURL
        self.nodeID = nodeID
        self.advertiseURL = advertiseURL
    }

    var renewEvery: Duration { max(.milliseconds(100), leaseTTL / 5) }
}

public final class ClusterNode: CoordinatorNode {
    private enum Slot {
        /// Being acquired and loaded; the task says whether the shard is now served here.
        /// `attempt` tells this acquisition from a later one of the same shard.
        case loading(Task<Bool, Never>, attempt: Int)
        case ready(Coordinator, ShardStore, Task<Void, Never>)
        /// Its records cannot be read by this build.
        case broken(CoordinatorError)
    }

    private struct State {
        var slots: [Int: Slot] = [:]
        var view = Leases.View()
        var incarnation: String
        var registered = false
        var acquisitions = 0
        var takeovers = 0
        var fencedShards = 0
        var leaseLosses = 0
        var released = 0
        var attempts = 0
        /// Shards being released: no new transaction starts on them.
        var draining: Set<Int> = []
    }

    public let configuration: ClusterConfiguration
    public let shardMap: ShardMap
    public let participants: Participants
    private let engine: CoordinatorConfiguration
    private let transport: any Transport
    private let store: any ClusterStore
    private let environment: any EngineEnvironment
    private let writerTask = Mutex<Task<Void, Never>?>(nil)
    let writer: RecordWriter
    private let lease: NodeLease
    /// Time-ordered, so that every node's list merges into one.
    private let sequences: SequenceCounter
    private let registry: ParticipantRegistry
    private let state: Mutex<State>
    /// Participants whose heartbeats reached this node since the last tick: the tick
    /// tells the store, and so every node.
    private let heardHere = Mutex<Set<String>>([])
    private let logger: Logger

    /// Joins the cluster over `store` (PostgreSQL's: DTXClusterPostgres) in `environment`
    /// (time, timers, tasks), and reads the participant registry. `engine` is every
    /// shard's coordinator's configuration (its history limit is shared out among the
    /// shards).
    package init(configuration: ClusterConfiguration, store: any ClusterStore, transport: any Transport, engine: CoordinatorConfiguration,
                 environment: any EngineEnvironment, logger: Logger) async throws {
        self.configuration = configuration
        self.transport = transport
        self.logger = logger
        self.store = store
        self.environment = environment
        lease = NodeLease(clock: { environment.monotonicNow() }, margin: configuration.leaseMargin)
        sequences = SequenceCounter(clusterNode: configuration.nodeID)
        let shards = try await store.prepare(shards: configuration.shards)
        shardMap = ShardMap(count: shards)
        var engine = engine
        engine.historyLimit = (engine.historyLimit + shards - 1) / shards
        self.engine = engine
        let initial = State(incarnation: environment.uniqueName())
        let incarnation = initial.incarnation
        state = Mutex(initial)
        let lease = lease
        let fencedOff = Mutex<StoredFunction<@Sendable (Set<ShardEpoch>) -> Void>?>(nil)
        writer = RecordWriter(store: store, environment: environment, node: configuration.nodeID, writer: "\(configuration.nodeID)/\(incarnation)", lease: lease,
                              lazyDelay: configuration.lazyDelay, groupDelay: configuration.groupCommitDelay, onFenced: { refused in fencedOff.withLock { $0 }?.call(refused) }, logger: logger)
        registry = ParticipantRegistry()
        participants = Participants(registry: registry, persist: { type, payload in try await Self.persistRegistration(store, type: type, payload: payload) },
                                    now: { environment.now() }, logger: logger)
        fencedOff.withLock { $0 = StoredFunction { [weak self] refused in self?.fenced(refused) } }
        participants.refreshWith { [weak self] in try? await self?.pollRegistry() }
        participants.whenHeard { [weak self] name in _ = self?.heardHere.withLock { $0.insert(name) } }
        participants.countUnfinishedElsewhere { name in try await store.unfinishedTransactions(naming: name) }
        transport.sendOnlyWhile { [lease] in lease.isValid }
        participants.countUnfinishedBranches { [weak self] name in
            self?.readyCoordinators().reduce(0) { $0 + $1.unfinishedBranches(on: name) } ?? 0
        }
        let writer = writer
        writerTask.withLock { $0 = environment.task { await writer.run() } }
        // A restart of this node right after a crash finds its previous process's lease
        // still live: wait it out (it is then evicted as any expired owner).
        let deadline = environment.monotonicNow() + configuration.leaseTTL + .seconds(1)
        while try await !join() {
            guard environment.monotonicNow() < deadline else {
                throw ClusterError("another process runs as node '\(configuration.nodeID)' (its lease is live): stop it, or give this one another --node-id")
            }
            try await environment.sleep(for: .milliseconds(200))
        }
        try await pollRegistry()
        logger.notice("joined the cluster", metadata: ["node": "\(configuration.nodeID)", "shards": "\(shards)", "url": "\(configuration.advertiseURL)"])
    }

    // MARK: Running

    /// Renews the lease every `renewEvery` on a task and a connection of its own, and
    /// balances shards and reads registry changes as often on another, until cancelled.
    public func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    await self.renewal()
                    try? await self.environment.sleep(for: self.configuration.renewEvery)
                }
            }
            while !Task.isCancelled {
                await tick()
                try? await environment.sleep(for: configuration.renewEvery)
            }
        }
    }

    /// Leaves the cluster: stops every shard's transactions (they resume on the nodes
    /// that take the shards), writes what is queued, gives the shards up and deletes
    /// this node's row, so others take over at once instead of after the lease.
    public func shutdown() async {
        // Nothing more is sent from here.
        lease.lapse()
        let slots = state.withLock { s in
            defer { s.slots = [:] }
            return s.slots
        }
        var held: [(Int, Int64)] = []
        for (shard, slot) in slots.sorted(by: { $0.key < $1.key }) {
            if case let .ready(coordinator, store, maintenance) = slot {
                maintenance.cancel()
                coordinator.stopDriving()
                try? await store.sync()
                store.drop()
                held.append((shard, store.epoch))
            }
        }
        let (node, incarnation) = (configuration.nodeID, state.withLock { $0.incarnation })
        do {
            for (shard, epoch) in held { try await store.release(shard: shard, node: node, epoch: epoch) }
            try await store.leave(node: node, incarnation: incarnation)
        } catch {
            logger.warning("could not give the shards up; others take them when the lease expires", metadata: ["error": "\(error)"])
        }
        writer.close()
        await writerTask.withLock { $0 }?.value
        await transport.shutdown()
        await store.close()
    }

    /// Tests and the simulator: this node's process dies. Every shard stops here, what
    /// was queued for the store is lost, and nothing is said to the store; the lease runs
    /// out by itself (stop calling `run`).
    package func crash() {
        loseAll("crashed (a test)")
        writer.abandon()
    }

    /// The coordinator serving `gid` here, if this node holds its shard under a valid
    /// lease (what a request reaching this node would be served by, without forwarding).
    package func serving(_ gid: GlobalTransactionID) -> Coordinator? {
        guard lease.isValid, case let .ready(coordinator, _, _)? = state.withLock({ $0.slots[shardMap.shard(of: gid)] }) else { return nil }
        return coordinator
    }

    /// The epoch at which this node holds a shard, if it does.
    func epoch(of shard: Int) -> Int64? {
        guard case let .ready(_, store, _)? = state.withLock({ $0.slots[shard] }) else { return nil }
        return store.epoch
    }

    /// The shards this node serves.
    package var heldShards: Set<Int> {
        state.withLock { s in Set(s.slots.compactMap { if case .ready = $0.value { $0.key } else { nil } }) }
    }

    /// Balances the shards and reads registry changes.
    private func tick() async {
        guard state.withLock({ $0.registered }) else { return }
        do {
            let view = try await store.view()
            state.withLock { $0.view = view }
            await balance(view)
            let heard = heardHere.withLock { names in
                defer { names = [] }
                return names.sorted()
            }
            if !heard.isEmpty { try await store.heard(from: heard, at: environment.now()) }
            try await pollRegistry()
        } catch {
            logger.warning("cannot reach the cluster store", metadata: ["error": "\(error)"])
        }
    }

    /// Renews the lease (joins again after losing it); a lease that could have expired
    /// meanwhile stops every shard here.
    private func renewal() async {
        do {
            try await renewOrJoin()
        } catch {
            logger.warning("cannot renew the lease", metadata: ["error": "\(error)"])
        }
        if !lease.isValid, state.withLock({ !$0.slots.isEmpty }) {
            loseAll("its lease could have expired while the store was unreachable")
        }
    }

    /// Registers this process under the node's id; false while another process holds the
    /// id under a live lease.
    @discardableResult
    private func join() async throws -> Bool {
        let (node, url, ttl) = (configuration.nodeID, configuration.advertiseURL, configuration.leaseTTL)
        let incarnation = state.withLock { $0.incarnation }
        let sent = environment.monotonicNow()
        guard try await store.register(node: node, url: url, incarnation: incarnation, ttl: ttl) else {
            return false
        }
        lease.renewed(sentAt: sent, ttl: ttl)
        state.withLock { $0.registered = true }
        return true
    }

    private func renewOrJoin() async throws {
        guard state.withLock({ $0.registered }) else {
            if try await !join() {
                logger.warning("another process holds this node's id under a live lease; waiting for it to expire", metadata: ["node": "\(configuration.nodeID)"])
            }
            return
        }
        let (node, ttl) = (configuration.nodeID, configuration.leaseTTL)
        let incarnation = state.withLock { $0.incarnation }
        let sent = environment.monotonicNow()
        if try await store.renew(node: node, incarnation: incarnation, ttl: ttl) {
            lease.renewed(sentAt: sent, ttl: ttl)
        } else {
            loseAll("another node evicted it after its lease expired, or another process took its id")
            state.withLock { s in
                s.registered = false
                s.incarnation = environment.uniqueName()
            }
            try await join()
        }
    }

    /// Live nodes share the shards evenly: a node holding more than its share gives the
    /// surplus up, one holding less takes shards nobody owns or whose owner's lease
    /// expired.
    private func balance(_ view: Leases.View) async {
        guard lease.isValid else { return }
        let live = Set(view.liveNodes.map(\.id))
        let share = (shardMap.count + max(1, live.count) - 1) / max(1, live.count)
        // Shards the store says are this node's but no coordinator here serves (taken by
        // an earlier process of this node, or before this node lost its lease) are taken
        // back whatever the share: other nodes see a live owner and leave them alone, so
        // they would wait for ever. A surplus is then given up as any other.
        let served = state.withLock { Set($0.slots.keys) }
        for entry in view.shards where entry.owner == configuration.nodeID && !served.contains(entry.shard) {
            await take(entry.shard)
        }
        let held = state.withLock { Set($0.slots.keys) }
        if held.count > share {
            for shard in held.sorted().suffix(held.count - share) { await release(shard) }
            return
        }
        let wanted = share - held.count
        guard wanted > 0 else { return }
        let free = view.shards.filter { entry in
            !held.contains(entry.shard) && (entry.owner == nil || entry.owner == configuration.nodeID || !live.contains(entry.owner!))
        }
        for entry in free.prefix(wanted) {
            await take(entry.shard)
        }
    }

    // MARK: Shards

    /// Acquires a shard and loads its transactions; false when another node holds it (or
    /// the store cannot be reached). Concurrent calls for one shard share one attempt.
    @discardableResult
    private func take(_ shard: Int) async -> Bool {
        let task: Task<Bool, Never>? = state.withLock { s in
            switch s.slots[shard] {
            case .loading(let task, _)?:
                return task
            case .ready?, .broken?:
                return nil
            case nil:
                s.attempts += 1
                let attempt = s.attempts
                let task = environment.task { await self.acquireAndLoad(shard, attempt: attempt) }
                s.slots[shard] = .loading(task, attempt: attempt)
                return task
            }
        }
        guard let task else { return true }
        return await task.value
    }

    private func acquireAndLoad(_ shard: Int, attempt: Int) async -> Bool {
        let node = configuration.nodeID
        /// Installs the outcome unless the attempt was abandoned meanwhile (the lease was lost).
        func settle(_ slot: Slot?) -> Bool {
            state.withLock { s in
                guard case .loading(_, attempt)? = s.slots[shard] else { return false }
                s.slots[shard] = slot
                return true
            }
        }
        do {
            let incarnation = state.withLock { $0.incarnation }
            guard lease.isValid, case let .acquired(epoch, from) = try await store.acquire(shard: shard, node: node, incarnation: incarnation) else {
                _ = settle(nil)
                return false
            }
            state.withLock { s in
                s.acquisitions += 1
                if from != nil { s.takeovers += 1 }
            }
            if let from { logger.notice("took a shard over", metadata: ["shard": "\(shard)", "epoch": "\(epoch)", "from": "\(from)"]) }
            let records = try await self.store.records(shard: shard)
            let store = ShardStore(shard: shard, epoch: epoch, records: records, writer: writer, store: self.store, node: node, lease: lease)
            var shardLogger = logger
            shardLogger[metadataKey: "shard"] = "\(shard)"
            let coordinator: Coordinator
            do {
                coordinator = try Coordinator(store: store, transport: transport.scoped(shard: shard, epoch: epoch), configuration: engine, environment: environment, participants: participants,
                                              sequences: sequences, logger: shardLogger)
            } catch {
                logger.critical("a shard's records cannot be read", metadata: ["shard": "\(shard)", "error": "\(error)"])
                store.drop()
                _ = settle(.broken(error as? CoordinatorError ?? CoordinatorError(.broken, "unreadable_log", "\(error)")))
                return false
            }
            coordinator.whenFenced { [weak self] in self?.drop(shard, epoch: epoch, why: "a write was fenced or the lease lapsed") }
            let maintenance = environment.task { await coordinator.runMaintenance() }
            guard settle(.ready(coordinator, store, maintenance)) else {
                store.drop()
                maintenance.cancel()
                coordinator.stopDriving()
                return false
            }
            return true
        } catch {
            logger.warning("could not take a shard", metadata: ["shard": "\(shard)", "error": "\(error)"])
            _ = settle(nil)
            return false
        }
    }

    /// Gives a shard up to balance the cluster: its transactions stop here, what is
    /// queued for it is written, and the shard is released for another node.
    private func release(_ shard: Int) async {
        guard let slot = state.withLock({ $0.slots[shard] }), case let .ready(coordinator, store, maintenance) = slot else { return }
        // Drained first: no new transaction starts here, and those already running get up
        // to `drainFor` to reach their decision (the next owner aborts undecided ones).
        state.withLock { _ = $0.draining.insert(shard) }
        coordinator.refuseNewTransactions()
        let deadline = environment.monotonicNow() + configuration.drainFor
        while coordinator.undecidedTransactions() > 0, environment.monotonicNow() < deadline, lease.isValid {
            try? await environment.sleep(for: .milliseconds(50))
        }
        let still = state.withLock { s -> Bool in
            s.draining.remove(shard)
            guard case let .ready(current, _, _)? = s.slots[shard], current === coordinator else { return false }
            s.slots.removeValue(forKey: shard)
            s.released += 1
            return true
        }
        guard still else { return }
        maintenance.cancel()
        coordinator.stopDriving()
        try? await store.sync()
        store.drop()
        let (node, epoch) = (configuration.nodeID, store.epoch)
        do {
            try await self.store.release(shard: shard, node: node, epoch: epoch)
            logger.debug("released a shard", metadata: ["shard": "\(shard)", "epoch": "\(epoch)"])
        } catch {
            logger.warning("could not release a shard; it is taken when this node's lease expires", metadata: ["shard": "\(shard)", "error": "\(error)"])
        }
    }

    /// The writer found these shards fenced: another node owns them now.
    private func fenced(_ refused: Set<ShardEpoch>) {
        for pair in refused.sorted(by: { $0.shard < $1.shard }) { drop(pair.shard, epoch: pair.epoch, why: "a write was fenced: another node owns the shard now") }
    }

    /// Stops a shard's transactions at once; nothing more is written or sent for them.
    private func drop(_ shard: Int, epoch: Int64, why: String) {
        let slot: Slot? = state.withLock { s in
            guard case let .ready(_, store, _)? = s.slots[shard], store.epoch == epoch else { return nil }
            s.fencedShards += 1
            return s.slots.removeValue(forKey: shard)
        }
        guard case let .ready(coordinator, store, maintenance)? = slot else { return }
        store.drop()
        maintenance.cancel()
        coordinator.stopDriving()
        logger.error("dropped a shard", metadata: ["shard": "\(shard)", "epoch": "\(epoch)", "why": "\(why)"])
    }

    /// The lease is gone: every shard stops here.
    private func loseAll(_ why: String) {
        lease.lapse()
        let slots = state.withLock { s in
            s.leaseLosses += 1
            defer { s.slots = [:] }
            return s.slots
        }
        for (_, slot) in slots.sorted(by: { $0.key < $1.key }) {
            switch slot {
            case let .ready(coordinator, store, maintenance):
                store.drop()
                maintenance.cancel()
                coordinator.stopDriving()
            case .loading, .broken:
                break
            }
        }
        logger.error("this node lost its lease; every shard stops here", metadata: ["why": "\(why)", "shards": "\(slots.count)"])
    }

    /// By shard: an order that does not depend on hashing.
    private func readyCoordinators() -> [Coordinator] {
        state.withLock { s in
            s.slots.sorted { $0.key < $1.key }.compactMap { if case let .ready(coordinator, _, _) = $0.value { coordinator } else { nil } }
        }
    }

    // MARK: Registry

    /// Keeps a registry record as the participant's row; returns its version.
    private static func persistRegistration(_ store: any ClusterStore, type: UInt16, payload: [UInt8]) async throws -> UInt64 {
        guard case .object(let members) = try JSONValue(parsingStrictly: payload), case .string(let name)? = members["name"] else {
            throw ClusterError("a registry record without a name")
        }
        return try await store.putRegistration(name: name, type: type, record: String(decoding: payload, as: UTF8.self))
    }

    /// Reads the registry table (one row per participant: a few) and applies what changed
    /// since this node last looked, by any node. All of it, each time: row versions come
    /// from a sequence, and two registrations may commit in the other order than their
    /// versions, so a newer version seen does not mean every older one was.
    private func pollRegistry() async throws {
        for row in try await store.registrations() {
            _ = try registry.replay(type: row.type, payload: Array(row.record.utf8), lsn: row.version)
            if let seen = row.lastSeen { registry.heardElsewhere(row.name, at: seen) }
        }
    }

    // MARK: CoordinatorNode

    public func placement(of gid: GlobalTransactionID) async throws(CoordinatorError) -> Placement {
        let shard = shardMap.shard(of: gid)
        var fresh = false
        for _ in 0..<4 {
            guard lease.isValid else {
                throw CoordinatorError(.unavailable, "no_lease", "this node has no valid lease on the cluster store right now; retry, or send the request to another node")
            }
            switch state.withLock({ $0.slots[shard] }) {
            case let .ready(coordinator, _, _)?:
                return .here(coordinator)
            case .loading(let task, _)?:
                _ = await task.value
                continue
            case .broken(let error)?:
                throw error
            case nil:
                break
            }
            let view = state.withLock { $0.view }
            let owner = view.owner(of: shard)
            if let owner, owner != configuration.nodeID, let node = view.node(owner), node.live {
                return .elsewhere(node: owner, url: node.url)
            }
            // The cached view may be a tick old: decide on a fresh one.
            if !fresh {
                do {
                    let latest = try await store.view()
                    state.withLock { $0.view = latest }
                    fresh = true
                } catch {
                    throw CoordinatorError(.unavailable, "store_unavailable", "the cluster store cannot be reached to find shard \(shard)'s owner: \(error); retry")
                }
                continue
            }
            // A shard nobody owns is being handed from one node to another (balancing
            // gives it out); one whose owner's lease expired, or this node's own from
            // before it lost its lease, is taken over first.
            guard owner != nil else { break }
            if await take(shard) { continue }
            fresh = false
        }
        throw CoordinatorError(.unavailable, "shard_moving", "shard \(shard), which holds \(gid), is moving between nodes; retry")
    }

    public func placeNewTransaction() async throws(CoordinatorError) -> (Coordinator, GlobalTransactionID) {
        let ready = state.withLock { s in
            s.slots.filter { !s.draining.contains($0.key) }.compactMapValues { if case let .ready(coordinator, _, _) = $0 { coordinator } else { nil } }
        }
        guard lease.isValid, !ready.isEmpty else {
            throw CoordinatorError(.unavailable, "no_shard", "this node owns no shard right now (it is joining the cluster, or lost its lease); retry, or send the submission to another node")
        }
        // A gid falls in a shard of this node about once in (shards / owned) draws.
        while true {
            let gid = Coordinator.newGID()
            if let coordinator = ready[shardMap.shard(of: gid)] { return (coordinator, gid) }
        }
    }

    /// The transactions of the shards this node serves. A shard it holds but is still
    /// loading (a takeover replaying its records) would be left out: 503 instead.
    public func list(_ query: Coordinator.ListQuery) throws(CoordinatorError) -> TransactionList {
        let loading = state.withLock { s in s.slots.filter { if case .loading = $0.value { true } else { false } }.keys.min() }
        if let loading {
            throw CoordinatorError(.unavailable, "shard_loading", "this node is still loading shard \(loading), which it took over; its transactions are listed once it serves them: retry in a moment")
        }
        return Coordinator.list(query, in: readyCoordinators())
    }

    public func recoverNow(reason: String?, who: String) throws(CoordinatorError) -> RecoveryReport {
        if let reason { try Coordinator.check(reason: reason, for: "retrying every transaction now") }
        var total = RecoveryReport(transactions: 0, deliveries: 0)
        for coordinator in readyCoordinators() {
            let report = try coordinator.recoverNow(reason: reason, who: who)
            total = RecoveryReport(transactions: total.transactions + report.transactions, deliveries: total.deliveries + report.deliveries)
        }
        return total
    }

    public func gauges() -> Coordinator.Gauges {
        var total = Coordinator.Gauges(participants: participants.count)
        for coordinator in readyCoordinators() {
            let gauges = coordinator.gauges()
            total.unfinished += gauges.unfinished
            total.inDoubt += gauges.inDoubt
            total.stuck += gauges.stuck
        }
        return total
    }

    public func clusterStatus() async throws(CoordinatorError) -> ClusterStatus {
        let view: Leases.View
        do {
            view = try await store.view()
        } catch {
            throw CoordinatorError(.unavailable, "store_unavailable", "the cluster store cannot be read: \(error); retry")
        }
        let mine = state.withLock { s in
            s.slots.compactMapValues { if case let .ready(coordinator, _, _) = $0 { coordinator } else { nil } }
        }
        let counts = Dictionary(grouping: view.shards.compactMap(\.owner), by: { $0 }).mapValues(\.count)
        return ClusterStatus(
            node: configuration.nodeID, leaseTTL: configuration.leaseTTL.apiSeconds,
            nodes: view.nodes.map { ClusterStatus.Node(id: $0.id, url: $0.url, live: $0.live, renewedAgo: $0.renewedAgo, shards: counts[$0.id] ?? 0) },
            shards: view.shards.map { entry in
                ClusterStatus.Shard(shard: entry.shard, owner: entry.owner, epoch: Int(entry.epoch), heldFor: entry.heldFor,
                                    unfinished: entry.owner == configuration.nodeID ? mine[entry.shard]?.gauges().unfinished : nil)
            })
    }

    /// The Timer (swift-metrics) of store commit times, and buckets that suit them.
    public static let commitDurationMetric = RecordWriter.commitTimerLabel
    public static let commitDurationBuckets: [Duration] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5].map { .microseconds(Int64($0 * 1_000_000)) }

    public var storeMetrics: [StoreMetric] {
        let s = state.withLock { $0 }
        let w = writer.statistics
        let held = s.slots.values.filter { if case .ready = $0 { true } else { false } }.count
        return [
            StoreMetric(name: "dtx_cluster_shards_held", help: "Shards this node owns and serves", value: Double(held)),
            StoreMetric(name: "dtx_cluster_acquisitions", help: "Shards acquired by this node since start", value: Double(s.acquisitions)),
            StoreMetric(name: "dtx_cluster_takeovers", help: "Shards taken over from another node since start", value: Double(s.takeovers)),
            StoreMetric(name: "dtx_cluster_shards_released", help: "Shards given up to balance the cluster since start", value: Double(s.released)),
            StoreMetric(name: "dtx_cluster_fenced_shards", help: "Shards dropped because a write was fenced or the lease lapsed", value: Double(s.fencedShards)),
            StoreMetric(name: "dtx_cluster_lease_losses", help: "Times this node lost its lease and every shard", value: Double(s.leaseLosses)),
            StoreMetric(name: "dtx_store_commits", help: "PostgreSQL commits of record batches since start", value: Double(w.commits)),
            StoreMetric(name: "dtx_store_records", help: "Records written to PostgreSQL since start", value: Double(w.records)),
            StoreMetric(name: "dtx_store_forced_waits", help: "Forced writes and syncs waited for since start", value: Double(w.forcedWaits)),
            StoreMetric(name: "dtx_store_fenced_batches", help: "Batches with records refused because their shard moved on", value: Double(w.fencedBatches)),
        ]
    }
}
