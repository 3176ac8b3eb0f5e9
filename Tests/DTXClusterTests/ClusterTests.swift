@testable import DTXCluster
@testable import DTXClusterPostgres
import DTXAPI
@testable import DTXCoordinator
import DTXCore
import DTXPostgresClient
import DTXTestSupport
import Foundation
import Logging
import Synchronization
import Testing

/// What every node sent to participants, in order, across the nodes of a test.
final class Wire: Sendable {
    struct Message: Sendable, Equatable {
        var node: String
        var message: ParticipantMessage
        var gid: String
        var branch: Int
        var at: ContinuousClock.Instant
    }

    private let sent = Mutex<[Message]>([])
    /// Nodes whose COMMITs participants do not answer (their transactions stay in phase two).
    let unanswered = Mutex<Set<String>>([])

    var messages: [Message] { sent.withLock { $0 } }

    func record(_ message: Message) { sent.withLock { $0.append(message) } }
}

/// Participants in process: they vote yes and acknowledge everything, except COMMITs
/// from the nodes in `wire.unanswered`. As the HTTP transport does, a message goes out
/// only while the node's `sendOnlyWhile` condition holds, checked as it is sent.
final class WireTransport: Transport {
    let node: String
    let wire: Wire
    private let gate = Mutex<StoredFunction<@Sendable () -> Bool>?>(nil)

    init(node: String, wire: Wire) {
        self.node = node
        self.wire = wire
    }

    func sendOnlyWhile(_ condition: @escaping @Sendable () -> Bool) {
        gate.withLock { $0 = StoredFunction(condition) }
    }

    func send(_ message: ParticipantMessage, protocol: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        if let gate = gate.withLock({ $0 })?.call, !gate() { return .failed("this node may no longer send") }
        wire.record(Wire.Message(node: node, message: message, gid: request.gid, branch: request.branch, at: .now))
        switch message {
        case .prepare: return .done(status: "prepared", result: nil)
        case .commit where wire.unanswered.withLock({ $0.contains(node) }): return .failed("\(endpoint.name) is down")
        case .commit: return .done(status: "committed", result: nil)
        case .rollback: return .done(status: "rolled_back", result: nil)
        default: return .done(status: "done", result: nil)
        }
    }

    func shutdown() async {}
}

/// A throwaway PostgreSQL for the suite; each test makes a database of its own.
struct ClusterStoreScope: SuiteTrait, TestScoping {
    @TaskLocal static var server: PostgresServer?

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let server = try PostgresServer()
        try await server.start()
        do {
            try await Self.$server.withValue(server) { try await function() }
        } catch {
            try? await server.stop()
            throw error
        }
        try await server.stop()
    }
}

/// One cluster store and the nodes of a test on it.
struct Cluster {
    static let logger: Logger = {
        var logger = Logger(label: "dtx.cluster.tests")
        logger.logLevel = .notice
        return logger
    }()

    let server: PostgresServer
    let database: String
    let wire = Wire()

    static func make() async throws -> Cluster {
        let server = try #require(ClusterStoreScope.server)
        let database = "c_" + UUID().uuidString.prefix(8).lowercased()
        try await server.createDatabase(database)
        return Cluster(server: server, database: database)
    }

    var storeURL: String { server.connectionString(database: database) }

    /// (A lease of 3 s: with 1 s, a node lost its lease in a full test run, its renewals
    /// unanswered for 0.9 s on the busy machine; with 2 s it still did, in 2 full runs of
    /// 8, once the suite had grown.)
    func node(_ id: String, ttl: Duration = .seconds(3), shards: Int? = 8) async throws -> ClusterNode {
        var configuration = ClusterConfiguration(storeURL: storeURL, nodeID: id, advertiseURL: "http://127.0.0.1:9/\(id)")
        configuration.leaseTTL = ttl
        configuration.shards = shards
        var engine = CoordinatorConfiguration()
        engine.retryPolicy = RetryPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100), multiplier: 2, jitter: 0)
        return try await ClusterNode(configuration: configuration, transport: WireTransport(node: id, wire: wire), engine: engine, logger: Self.logger)
    }

    func psql(_ sql: String) async throws -> String {
        try await server.psql(sql, database: database).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

/// Polls `condition` every 20 ms for up to `seconds`.
func eventually(_ seconds: Double = 10, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// A gid whose shard `node` holds.
func gid(on node: ClusterNode, _ prefix: String) throws -> GlobalTransactionID {
    let held = node.heldShards
    for index in 0..<10_000 {
        let gid = try GlobalTransactionID(validating: "\(prefix)-\(index)")
        if held.contains(node.shardMap.shard(of: gid)) { return gid }
    }
    throw ClusterError("no gid found on the node's shards")
}

func coordinator(_ node: ClusterNode, _ gid: GlobalTransactionID) async throws -> Coordinator {
    guard case .here(let coordinator) = try await node.placement(of: gid) else { throw ClusterError("\(gid) is not on \(node.configuration.nodeID)") }
    return coordinator
}

let twoBranches = [BranchSpec(participant: "p1", operation: "debit"), BranchSpec(participant: "p2", operation: "credit")]

@Suite(ClusterStoreScope(), .serialized) struct ClusterTests {
    /// dtxd creates the store from Schemas/coordinator-store-postgres.sql: the script it
    /// runs is that file, word for word.
    @Test func theStoreIsCreatedFromTheSchemaFile() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let file = try String(contentsOf: root.appendingPathComponent("Schemas/coordinator-store-postgres.sql"), encoding: .utf8)
        // (A Swift string literal ends before the file's last line break.)
        #expect(file == StoreSchema.script + "\n")
    }

    /// A store of a newer schema version, or with another number of shards than asked
    /// for, is refused with an error that says what to do; nothing is changed.
    @Test func aNewerSchemaOrAnotherShardCountIsRefused() async throws {
        let cluster = try await Cluster.make()
        let first = try await cluster.node("a", shards: 8)
        await first.shutdown()
        let mismatch = await #expect(throws: ClusterError.self) { _ = try await cluster.node("b", shards: 16) }
        #expect(mismatch?.description.contains("the cluster has 8 shards") == true)
        _ = try await cluster.psql("UPDATE dtx_store SET schema_version = 99")
        let newer = await #expect(throws: ClusterError.self) { _ = try await cluster.node("b", shards: nil) }
        #expect(newer?.description.contains("version 99, newer than this dtxd knows") == true)
        #expect(try await cluster.psql("SELECT count(*) FROM dtx_nodes") == "0")
    }

    /// Live nodes share the shards: a second node gets half of them from the first,
    /// each at a new epoch.
    @Test func nodesShareTheShards() async throws {
        let cluster = try await Cluster.make()
        let a = try await cluster.node("a")
        let runA = Task { await a.run() }
        #expect(await eventually { a.heldShards.count == 8 })
        let b = try await cluster.node("b")
        let runB = Task { await b.run() }
        #expect(await eventually { a.heldShards.count == 4 && b.heldShards.count == 4 })
        #expect(a.heldShards.isDisjoint(with: b.heldShards))
        for shard in b.heldShards { #expect(b.epoch(of: shard) == 2) }
        runA.cancel(); runB.cancel()
        await a.shutdown(); await b.shutdown()
    }

    /// A node dies after its commit decision (phase two unfinished) and with an
    /// undecided transaction open: once its lease expires another node takes its shards
    /// over, commits the first everywhere and aborts the second; the dead node sends
    /// nothing after its death.
    @Test func anotherNodeFinishesADeadNodesTransactions() async throws {
        let cluster = try await Cluster.make()
        let (a, b) = (try await cluster.node("a"), try await cluster.node("b"))
        let (runA, runB) = (Task { await a.run() }, Task { await b.run() })
        #expect(await eventually { a.heldShards.count == 4 && b.heldShards.count == 4 })
        for name in ["p1", "p2"] { _ = try await a.participants.register(ParticipantRegistration(name: name, url: "http://127.0.0.1:9")) }

        cluster.wire.unanswered.withLock { _ = $0.insert("a") }
        let decided = try gid(on: a, "decided")
        _ = try await coordinator(a, decided).submit(TransactionSubmission(gid: decided.rawValue, branches: twoBranches))
        #expect(try await eventually { try await coordinator(a, decided).transaction(decided).status == "committing" })
        let open = try gid(on: a, "open")
        _ = try await coordinator(a, open).submit(TransactionSubmission(gid: open.rawValue, timeout: 600, interactive: true))
        _ = try await coordinator(a, open).enlist(gid: open, EnlistRequest(participant: "p1", operation: "reserve"))
        // The kept records are in the store before the crash (the enlistment is forced;
        // lazy records go within a few milliseconds).
        try await Task.sleep(for: .milliseconds(100))

        runA.cancel()
        a.crash()
        let died = ContinuousClock.now
        #expect(await eventually(10) { b.heldShards.count == 8 })
        #expect(try await eventually { try await coordinator(b, decided).transaction(decided).status == "committed" })
        #expect(try await eventually { try await coordinator(b, open).transaction(open).status == "aborted" })
        #expect(try await coordinator(b, open).outcome(gid: open, branch: 0).outcome == "aborted")
        let afterDeath = cluster.wire.messages.filter { $0.at > died }
        #expect(!afterDeath.contains { $0.node == "a" }, "\(afterDeath.filter { $0.node == "a" })")
        #expect(Set(afterDeath.filter { $0.node == "b" && $0.gid == decided.rawValue && $0.message == .commit }.map(\.branch)) == [0, 1])
        #expect(b.storeMetrics.first { $0.name == "dtx_cluster_takeovers" }?.value == 4)
        runB.cancel()
        await b.shutdown()
    }

    /// A paused node (a zombie) cannot act once its lease could have expired: requests
    /// are refused, and a write it still makes at its old epoch after another node took
    /// the shard over is fenced; the record never reaches the store.
    @Test func aZombiesWritesAreFenced() async throws {
        let cluster = try await Cluster.make()
        let (a, b) = (try await cluster.node("a"), try await cluster.node("b"))
        let (runA, runB) = (Task { await a.run() }, Task { await b.run() })
        #expect(await eventually { a.heldShards.count == 4 && b.heldShards.count == 4 })
        let zombieGID = try gid(on: a, "zombie")
        let shard = a.shardMap.shard(of: zombieGID)
        let oldEpoch = try #require(a.epoch(of: shard))

        // Paused: no more renewals; the rest of the node does not know.
        runA.cancel()
        #expect(await eventually(10) { b.heldShards.contains(shard) })
        #expect(b.epoch(of: shard) == oldEpoch + 1)
        let refused = await #expect(throws: CoordinatorError.self) { _ = try await a.placement(of: zombieGID) }
        #expect(refused?.code == "no_lease")

        let record = LogEntry.submitted(gid: zombieGID, at: Date(), timeout: .seconds(30)).encoded()
        _ = a.writer.append(shard: shard, epoch: oldEpoch, gid: zombieGID.rawValue, type: record.type, payload: String(decoding: record.payload, as: UTF8.self))
        let fenced = await #expect(throws: StoreError.self) { try await a.writer.flush(shard: shard, epoch: oldEpoch) }
        #expect(fenced.map { if case .fenced = $0 { true } else { false } } == true)
        #expect(try await cluster.psql("SELECT count(*) FROM dtx_records WHERE gid = '\(zombieGID.rawValue)'") == "0")
        #expect(a.writer.statistics.fencedBatches == 1)
        runB.cancel()
        await a.shutdown(); await b.shutdown()
    }

    /// A request about a gid goes to the node that owns its shard; an unknown gid is
    /// answered "aborted" (presumed abort) only by that node.
    @Test func requestsGoToTheShardsOwner() async throws {
        let cluster = try await Cluster.make()
        let (a, b) = (try await cluster.node("a"), try await cluster.node("b"))
        let (runA, runB) = (Task { await a.run() }, Task { await b.run() })
        #expect(await eventually { a.heldShards.count == 4 && b.heldShards.count == 4 })
        let unknown = try gid(on: a, "unknown")
        guard case let .elsewhere(owner, url) = try await b.placement(of: unknown) else {
            Issue.record("b would answer for a gid of a's shard")
            return
        }
        #expect(owner == "a" && url == "http://127.0.0.1:9/a")
        #expect(try await coordinator(a, unknown).outcome(gid: unknown, branch: nil).outcome == "aborted")
        runA.cancel(); runB.cancel()
        await a.shutdown(); await b.shutdown()
    }

    /// Two processes never run as one node: a second process with the id of a live node
    /// waits for its lease, then gives up with an error that says what to do; the first
    /// keeps its shards.
    @Test func aSecondProcessOfALiveNodeIsRefused() async throws {
        let cluster = try await Cluster.make()
        let a = try await cluster.node("a")
        let runA = Task { await a.run() }
        #expect(await eventually { a.heldShards.count == 8 })
        let refused = await #expect(throws: ClusterError.self) { _ = try await cluster.node("a") }
        #expect(refused?.description.contains("another process runs as node 'a'") == true, "\(String(describing: refused))")
        #expect(a.heldShards.count == 8)
        runA.cancel()
        await a.shutdown()
    }
}

@Suite struct RegistryOrderTests {
    /// A cluster node reads the registry table while it writes it: a change older than
    /// one already applied to the same name (a read that started before the write) is
    /// ignored, a deregistration included.
    @Test func anOlderChangeOfANameChangesNothing() throws {
        let registry = ParticipantRegistry()
        func registration(_ url: String) -> [UInt8] {
            Array(#"{"batch":false,"name":"svc","protocols":["2pc"],"registeredAt":"2026-12-05T08:00:00Z","url":"\#(url)"}"#.utf8)
        }
        let registered = ParticipantRegistry.RecordType.registered.rawValue, deregistered = ParticipantRegistry.RecordType.deregistered.rawValue
        _ = try registry.replay(type: registered, payload: registration("http://new:1"), lsn: 7)
        _ = try registry.replay(type: registered, payload: registration("http://old:1"), lsn: 5)
        #expect(registry.entry("svc")?.url == "http://new:1")
        _ = try registry.replay(type: deregistered, payload: Array(#"{"name":"svc"}"#.utf8), lsn: 9)
        _ = try registry.replay(type: registered, payload: registration("http://new:1"), lsn: 7)
        #expect(registry.entry("svc") == nil)
    }
}
