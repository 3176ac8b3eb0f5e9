import DTXAPI
import DTXCluster
import DTXCoordinator
import DTXCore
import DTXLog
import Foundation

/// A mistake in cluster mode the simulator must catch when it is switched on.
public enum ClusterBug: String, Sendable, CaseIterable {
    /// A node acts for 1.6 lease TTLs after sending a renewal, past the moment the store
    /// may give its shards to another node.
    case leaseBeyondTTL = "lease-beyond-ttl"
}

/// One dtxd node of a simulated cluster: its process (a `ClusterNode` driven by the
/// world), and what the run does to it.
final class SimNode: @unchecked Sendable {
    let id: String
    var node: ClusterNode?
    var running: Task<Void, Never>?
    var transport: SimTransport?
    var starting = false
    var incarnation = 0
    /// Stopped (SIGSTOP): it issues nothing; what it had in flight at the store completes
    /// there, and it learns of it when it goes on.
    var paused = false
    private var waiting: [CheckedContinuation<Void, Never>] = []
    /// Cut off from the store until then.
    var cutOffUntil: Duration = .zero

    init(id: String) {
        self.id = id
    }

    var up: Bool { node != nil && !paused }

    func untilRunning() async {
        guard paused else { return }
        await withCheckedContinuation { waiting.append($0) }
    }

    func goOn() {
        paused = false
        let resumed = waiting
        waiting = []
        resumed.forEach { $0.resume() }
    }
}

/// One node's way to the shared store: a little latency each way, nothing while the node
/// is stopped (a call already at the store completes there), an error while it is cut off.
final class SimStoreFace: ClusterStore, @unchecked Sendable {
    private let shared: InMemoryClusterStore
    private unowned let sim: Simulation
    private let node: SimNode

    init(shared: InMemoryClusterStore, sim: Simulation, node: SimNode) {
        self.shared = shared
        self.sim = sim
        self.node = node
    }

    private func call<T>(_ body: () async throws -> T) async throws -> T {
        await node.untilRunning()
        await sim.world.sleep(sim.world.rng.milliseconds(0...3))
        guard sim.world.time >= node.cutOffUntil else {
            await sim.world.sleep(sim.world.rng.milliseconds(0...20))
            throw ClusterStoreError.unreachable("simulated: \(node.id) is cut off from the store")
        }
        let result = try await body()
        await sim.world.sleep(sim.world.rng.milliseconds(0...3))
        await node.untilRunning()
        return result
    }

    func prepare(shards requested: Int?) async throws -> Int { try await call { try await shared.prepare(shards: requested) } }
    func register(node id: String, url: String, incarnation: String, ttl: Duration) async throws -> Bool {
        try await call { try await shared.register(node: id, url: url, incarnation: incarnation, ttl: ttl) }
    }
    func renew(node id: String, incarnation: String, ttl: Duration) async throws -> Bool {
        try await call { try await shared.renew(node: id, incarnation: incarnation, ttl: ttl) }
    }
    func view() async throws -> Leases.View { try await call { try await shared.view() } }
    func acquire(shard: Int, node id: String, incarnation: String) async throws -> Leases.Acquisition {
        try await call { try await shared.acquire(shard: shard, node: id, incarnation: incarnation) }
    }
    func release(shard: Int, node id: String, epoch: Int64) async throws { try await call { try await shared.release(shard: shard, node: id, epoch: epoch) } }
    func leave(node id: String, incarnation: String) async throws { try await call { try await shared.leave(node: id, incarnation: incarnation) } }
    func write(_ batch: [StoreRecord], node id: String, writer: String) async throws -> Set<ShardEpoch> {
        try await call { try await shared.write(batch, node: id, writer: writer) }
    }
    func records(shard: Int) async throws -> [LogRecord] { try await call { try await shared.records(shard: shard) } }
    func delete(lsns: [UInt64], shard: Int, node id: String, epoch: Int64) async throws -> Int {
        try await call { try await shared.delete(lsns: lsns, shard: shard, node: id, epoch: epoch) }
    }
    func holds(shard: Int, node id: String, epoch: Int64) async throws -> Bool { try await call { try await shared.holds(shard: shard, node: id, epoch: epoch) } }
    func putRegistration(name: String, type: UInt16, record: String) async throws -> UInt64 {
        try await call { try await shared.putRegistration(name: name, type: type, record: record) }
    }
    func registrations() async throws -> [RegistryRow] { try await call { try await shared.registrations() } }
    func heard(from participants: [String], at time: Date) async throws { try await call { try await shared.heard(from: participants, at: time) } }
    func unfinishedTransactions(naming participant: String) async throws -> Int {
        try await call { try await shared.unfinishedTransactions(naming: participant) }
    }
    func close() async {}
}

/// What a shard's coordinator on a node sends: marked with the node and the epoch at
/// which the node holds the shard, and recorded for the checks.
final class ScopedSimTransport: Transport, @unchecked Sendable {
    private let base: SimTransport
    let shard: Int
    let epoch: Int64

    init(base: SimTransport, shard: Int, epoch: Int64) {
        self.base = base
        self.shard = shard
        self.epoch = epoch
    }

    func send(_ message: ParticipantMessage, protocol proto: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        await base.send(message, protocol: proto, request: request, to: endpoint, scope: (shard, epoch))
    }

    func sendOnlyWhile(_ condition: @escaping @Sendable () -> Bool) { base.sendOnlyWhile(condition) }

    func shutdown() async {}
}

/// A message a node sent, for the cluster checks.
struct SentMessage {
    var gid: String
    var branch: Int
    var message: ParticipantMessage
    var node: String
    var incarnation: Int
    var shard: Int
    var epoch: Int64
    var at: Duration
}

extension Simulation {
    /// Cluster checks, after the others: every message a node sent came from a
    /// coordinator of a shard the store had given that node at that epoch, and went out
    /// before the store gave the next epoch of that shard to a node (so no fenced node
    /// sent anything after its fencing); and, for each transaction and epoch, the
    /// messages of phase two came from one node.
    func checkCluster(grants: [InMemoryClusterStore.Grant]) {
        var granted: [String: InMemoryClusterStore.Grant] = [:]
        for grant in grants { granted["\(grant.shard)/\(grant.epoch)"] = grant }
        var phaseTwo: [String: Set<String>] = [:]
        for sent in sentMessages {
            guard let grant = granted["\(sent.shard)/\(sent.epoch)"], grant.node == sent.node else {
                violation(sent.gid, "cluster: \(sent.node) sent \(sent.message.rawValue) for shard \(sent.shard) at epoch \(sent.epoch), which the store never gave it")
                continue
            }
            if let next = granted["\(sent.shard)/\(sent.epoch + 1)"], sent.at > next.at {
                violation(sent.gid, "cluster: \(sent.node) sent \(sent.message.rawValue) to branch \(sent.branch) at \(sent.at), after the store gave shard \(sent.shard) to \(next.node) at epoch \(next.epoch) (\(next.at))")
            }
            if sent.message.finishesABranch || sent.message == .preCommit {
                phaseTwo["\(sent.gid) epoch \(sent.epoch)", default: []].insert("\(sent.node)#\(sent.incarnation)")
            }
        }
        for (key, senders) in phaseTwo.sorted(by: { $0.key < $1.key }) where senders.count > 1 {
            violation(String(key.prefix { $0 != " " }), "cluster: phase two of \(key) came from \(senders.sorted())")
        }
    }
}
