@testable import DTXCluster
@testable import DTXClusterPostgres
import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Synchronization
import Testing

/// The in-memory model of the cluster store keeps PostgreSQL's rules: every test here
/// runs against both, the model's clock moved by hand, PostgreSQL's by waiting.
@Suite(ClusterStoreScope(), .serialized) struct ClusterStoreConformanceTests {
    enum Kind: String, CaseIterable, CustomTestStringConvertible {
        case memory, postgres
        var testDescription: String { rawValue }
    }

    /// A store under test and a way to let its clock run.
    struct Subject {
        let store: any ClusterStore
        let advance: @Sendable (Duration) async throws -> Void
    }

    final class HandClock: Sendable {
        private let value = Mutex<Duration>(.seconds(1000))
        var now: Duration { value.withLock { $0 } }
        func advance(_ by: Duration) { value.withLock { $0 += by } }
    }

    static func subject(_ kind: Kind) async throws -> Subject {
        switch kind {
        case .memory:
            let clock = HandClock()
            return Subject(store: InMemoryClusterStore(now: { clock.now }), advance: { clock.advance($0) })
        case .postgres:
            let cluster = try await Cluster.make()
            return Subject(store: try await PostgresClusterStore(url: cluster.storeURL, logger: Cluster.logger), advance: { try await Task.sleep(for: $0) })
        }
    }

    /// Long enough for a few statements on a busy machine before it expires.
    static let ttl = Duration.milliseconds(2500)

    @Test(arguments: Kind.allCases) func theNumberOfShardsIsFixedWhenTheClusterIsCreated(_ kind: Kind) async throws {
        let store = try await Self.subject(kind).store
        defer { Task { await store.close() } }
        #expect(try await store.prepare(shards: 4) == 4)
        #expect(try await store.prepare(shards: nil) == 4)
        #expect(try await store.prepare(shards: 4) == 4)
        let refusal = await #expect(throws: ClusterError.self) { try await store.prepare(shards: 8) }
        #expect(refusal?.description.contains("fixed when it was created") == true)
        #expect(try await store.view().shards.map(\.shard) == [0, 1, 2, 3])
    }

    @Test(arguments: Kind.allCases) func aNodeIdIsOneIncarnationsUntilItsLeaseExpires(_ kind: Kind) async throws {
        let subject = try await Self.subject(kind)
        let store = subject.store
        defer { Task { await store.close() } }
        _ = try await store.prepare(shards: 4)
        #expect(try await store.register(node: "a", url: "http://a", incarnation: "a1", ttl: Self.ttl))
        #expect(try await !store.register(node: "a", url: "http://a2", incarnation: "a2", ttl: Self.ttl), "another process of a live node")
        #expect(try await store.register(node: "a", url: "http://a", incarnation: "a1", ttl: Self.ttl), "the same process again")
        #expect(try await store.view().nodes.map { [$0.id, $0.url, "\($0.live)"] } == [["a", "http://a", "true"]])
        try await subject.advance(Self.ttl + .milliseconds(200))
        #expect(try await store.view().nodes.map(\.live) == [false])
        #expect(try await store.register(node: "a", url: "http://a2", incarnation: "a2", ttl: Self.ttl), "once the lease expired")
        #expect(try await !store.renew(node: "a", incarnation: "a1", ttl: Self.ttl), "the older process can no longer renew")
        #expect(try await store.renew(node: "a", incarnation: "a2", ttl: Self.ttl))
        #expect(try await store.view().nodes.map { [$0.url, "\($0.live)"] } == [["http://a2", "true"]])
        try await store.leave(node: "a", incarnation: "a1")
        #expect(try await store.view().nodes.count == 1, "only the incarnation that holds the id leaves")
        try await store.leave(node: "a", incarnation: "a2")
        #expect(try await store.view().nodes.isEmpty)
    }

    @Test(arguments: Kind.allCases) func takingAnExpiredOwnersShardEvictsItAndRaisesTheEpoch(_ kind: Kind) async throws {
        let subject = try await Self.subject(kind)
        let store = subject.store
        defer { Task { await store.close() } }
        _ = try await store.prepare(shards: 4)
        #expect(try await store.register(node: "a", url: "http://a", incarnation: "a1", ttl: Self.ttl))
        // (b's lease outlives the test, however slowly PostgreSQL answers on a busy machine.)
        #expect(try await store.register(node: "b", url: "http://b", incarnation: "b1", ttl: .seconds(60)))
        #expect(try await store.acquire(shard: 0, node: "a", incarnation: "a1") == .acquired(epoch: 1, from: nil))
        #expect(try await store.acquire(shard: 0, node: "b", incarnation: "b1") == .held(by: "a"), "a's lease is live")
        #expect(try await store.acquire(shard: 1, node: "c", incarnation: "c1") == .held(by: "c"), "a node with no live row takes nothing")
        #expect(try await store.acquire(shard: 1, node: "b", incarnation: "b9") == .held(by: "b"), "nor does another process of a node")
        // a does not renew: its lease expires.
        try await subject.advance(Self.ttl + .milliseconds(200))
        #expect(try await store.acquire(shard: 0, node: "b", incarnation: "b1") == .acquired(epoch: 2, from: "a"))
        #expect(try await !store.renew(node: "a", incarnation: "a1", ttl: Self.ttl), "a was evicted")
        let shard = try await store.view().shards[0]
        #expect(shard.owner == "b" && shard.epoch == 2 && shard.heldFor != nil)
        // A release at an old epoch changes nothing; at the owner's, the shard is free,
        // and its next acquisition raises the epoch again.
        try await store.release(shard: 0, node: "b", epoch: 1)
        #expect(try await store.view().shards[0].owner == "b")
        try await store.release(shard: 0, node: "b", epoch: 2)
        #expect(try await store.view().shards[0].owner == nil)
        #expect(try await store.acquire(shard: 0, node: "b", incarnation: "b1") == .acquired(epoch: 3, from: nil))
        #expect(try await store.acquire(shard: 0, node: "b", incarnation: "b1") == .acquired(epoch: 4, from: nil), "its own shard, again")
    }

    private func record(_ shard: Int, _ epoch: Int64, _ gid: String, _ seq: Int64, type: LogEntry.RecordType = .begin, participant: String = "p") -> StoreRecord {
        StoreRecord(shard: shard, epoch: epoch, gid: gid, type: type.rawValue, payload: #"{"gid":"\#(gid)","branches":[{"participant":"\#(participant)"}]}"#, seq: seq)
    }

    @Test(arguments: Kind.allCases) func writesAreFencedByTheEpochAndNeverDoubled(_ kind: Kind) async throws {
        let store = try await Self.subject(kind).store
        defer { Task { await store.close() } }
        _ = try await store.prepare(shards: 4)
        #expect(try await store.register(node: "a", url: "http://a", incarnation: "a1", ttl: .seconds(60)))
        #expect(try await store.acquire(shard: 0, node: "a", incarnation: "a1") == .acquired(epoch: 1, from: nil))
        #expect(try await store.acquire(shard: 1, node: "a", incarnation: "a1") == .acquired(epoch: 1, from: nil))
        let batch = [record(0, 1, "g0", 1), record(1, 1, "g1", 2), record(2, 1, "g2", 3), record(0, 1, "g0", 4, type: .end)]
        #expect(try await store.write(batch, node: "a", writer: "a/1") == [ShardEpoch(shard: 0, epoch: 1), ShardEpoch(shard: 1, epoch: 1)])
        #expect(try await store.write(batch, node: "a", writer: "a/1") == [ShardEpoch(shard: 0, epoch: 1), ShardEpoch(shard: 1, epoch: 1)], "a repeat")
        let zero = try await store.records(shard: 0)
        #expect(zero.map(\.type) == [LogEntry.RecordType.begin.rawValue, LogEntry.RecordType.end.rawValue], "each (writer, seq) once, in order")
        #expect(zero.map(\.lsn) == zero.map(\.lsn).sorted())
        #expect(try await store.records(shard: 2).isEmpty, "shard 2 is not a's")
        #expect(try await store.write([record(0, 2, "g9", 5)], node: "a", writer: "a/1").isEmpty, "an epoch a does not hold")
        #expect(try await store.write([record(0, 1, "g9", 6)], node: "b", writer: "b/1").isEmpty, "another node")
        #expect(try await store.records(shard: 0).count == 2)
    }

    @Test(arguments: Kind.allCases) func deletesAreConditionalOnHoldingTheShard(_ kind: Kind) async throws {
        let store = try await Self.subject(kind).store
        defer { Task { await store.close() } }
        _ = try await store.prepare(shards: 4)
        #expect(try await store.register(node: "a", url: "http://a", incarnation: "a1", ttl: .seconds(60)))
        #expect(try await store.acquire(shard: 0, node: "a", incarnation: "a1") == .acquired(epoch: 1, from: nil))
        _ = try await store.write([record(0, 1, "g0", 1), record(0, 1, "g1", 2), record(0, 1, "g2", 3)], node: "a", writer: "a/1")
        let lsns = try await store.records(shard: 0).map(\.lsn)
        #expect(lsns.count == 3)
        #expect(try await store.delete(lsns: Array(lsns.prefix(2)), shard: 0, node: "a", epoch: 2) == 0)
        #expect(try await !store.holds(shard: 0, node: "a", epoch: 2))
        #expect(try await store.holds(shard: 0, node: "a", epoch: 1))
        #expect(try await store.delete(lsns: Array(lsns.prefix(2)), shard: 0, node: "a", epoch: 1) == 2)
        #expect(try await store.records(shard: 0).map(\.lsn) == [lsns[2]])
    }

    @Test(arguments: Kind.allCases) func theRegistryKeepsEachParticipantsNewestRecord(_ kind: Kind) async throws {
        let store = try await Self.subject(kind).store
        defer { Task { await store.close() } }
        _ = try await store.prepare(shards: 4)
        let first = try await store.putRegistration(name: "p1", type: 16, record: "one")
        let second = try await store.putRegistration(name: "p2", type: 16, record: "two")
        let third = try await store.putRegistration(name: "p1", type: 17, record: "gone")
        #expect(first < second && second < third)
        let rows = try await store.registrations().sorted { $0.name < $1.name }
        #expect(rows.map { [$0.name, "\($0.version)", "\($0.type)", $0.record] } == [["p1", "\(third)", "17", "gone"], ["p2", "\(second)", "16", "two"]])
        // A heartbeat heard by one node is kept if later than what is kept.
        let at = Date(timeIntervalSince1970: 1_900_000_000)
        try await store.heard(from: ["p2", "nobody"], at: at)
        try await store.heard(from: ["p2"], at: at.addingTimeInterval(-60))
        let seen = try await store.registrations().first { $0.name == "p2" }?.lastSeen
        #expect(seen.map { abs($0.timeIntervalSince(at)) < 0.001 } == true, "\(String(describing: seen))")
    }

    @Test(arguments: Kind.allCases) func unfinishedTransactionsOfAParticipantAreCountedAcrossShards(_ kind: Kind) async throws {
        let store = try await Self.subject(kind).store
        defer { Task { await store.close() } }
        _ = try await store.prepare(shards: 4)
        #expect(try await store.register(node: "a", url: "http://a", incarnation: "a1", ttl: .seconds(60)))
        for shard in 0..<2 { _ = try await store.acquire(shard: shard, node: "a", incarnation: "a1") }
        _ = try await store.write([
            record(0, 1, "g1", 1), record(1, 1, "g2", 2, type: .enlist), record(1, 1, "g1", 3, type: .end),
            record(0, 1, "g3", 4, participant: "q"), record(0, 1, "g4", 5, participant: "pp"),
        ], node: "a", writer: "a/1")
        #expect(try await store.unfinishedTransactions(naming: "p") == 1, "g2 (g1 ended; pp is another participant)")
        #expect(try await store.unfinishedTransactions(naming: "q") == 1)
        _ = try await store.write([record(0, 1, "g3", 6, type: .end)], node: "a", writer: "a/1")
        #expect(try await store.unfinishedTransactions(naming: "q") == 0)
    }
}
