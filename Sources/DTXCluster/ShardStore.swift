import DTXAPI
import DTXCoordinator
import DTXCore
import DTXLog
import Foundation
import Synchronization

/// How long this node may act on what it owns: until the instant its last successful
/// renewal was sent plus the lease's time to live (less a margin). PostgreSQL sets the
/// expiry from its own clock when the renewal arrives, which is later, so no other node
/// can take a shard over before this instant passes here; only the rates of the clocks
/// need agree, never their readings.
final class NodeLease: Sendable {
    /// The node's monotonic clock (`EngineEnvironment.monotonicNow`).
    private let clock: @Sendable () -> Duration
    private let margin: Double
    private let validUntil = Mutex<Duration?>(nil)

    /// `margin`: the part of the TTL the node may act for (below 1).
    init(clock: @escaping @Sendable () -> Duration, margin: Double) {
        self.clock = clock
        self.margin = margin
    }

    var isValid: Bool {
        let now = clock()
        return validUntil.withLock { $0.map { now < $0 } ?? false }
    }

    /// A renewal sent at `sent` (by `clock`) succeeded.
    func renewed(sentAt sent: Duration, ttl: Duration) {
        let until = sent + ttl * margin
        validUntil.withLock { $0 = max($0 ?? until, until) }
    }

    /// The lease is gone (evicted, or this node stops): nothing may act any more.
    func lapse() {
        validUntil.withLock { $0 = nil }
    }
}

/// One shard's records in the cluster store, as the shard's coordinator sees them: it
/// reads what the shard held when this node acquired it, and writes through the node's
/// `RecordWriter` at the epoch of that acquisition.
final class ShardStore: CoordinatorStore {
    let shard: Int
    let epoch: Int64
    private let writer: RecordWriter
    private let store: any ClusterStore
    private let node: String
    private let lease: NodeLease
    private let loaded: Mutex<[LogRecord]>
    private let appended = Atomic<UInt64>(0)
    /// Set when the shard leaves this node (released, fenced, lease lapsed).
    private let dropped = Atomic<Bool>(false)

    init(shard: Int, epoch: Int64, records: [LogRecord], writer: RecordWriter, store: any ClusterStore, node: String, lease: NodeLease) {
        self.shard = shard
        self.epoch = epoch
        self.writer = writer
        self.store = store
        self.node = node
        self.lease = lease
        loaded = Mutex(records)
    }

    func drop() {
        dropped.store(true, ordering: .sequentiallyConsistent)
    }

    var mayAct: Bool { !dropped.load(ordering: .sequentiallyConsistent) && lease.isValid }

    func recordsAtStart() -> [LogRecord] {
        loaded.withLock { records in
            defer { records = [] }
            return records
        }
    }

    func append(type: UInt16, payload: [UInt8]) throws {
        _ = try queue(type: type, payload: payload)
    }

    @discardableResult
    func appendForced(type: UInt16, payload: [UInt8]) async throws -> UInt64 {
        let seq = try queue(type: type, payload: payload)
        try await writer.flush(shard: shard, epoch: epoch)
        return UInt64(seq)
    }

    func sync() async throws {
        guard !dropped.load(ordering: .sequentiallyConsistent) else { throw fenced }
        try await writer.flush(shard: shard, epoch: epoch)
    }

    private func queue(type: UInt16, payload: [UInt8]) throws -> Int64 {
        guard !dropped.load(ordering: .sequentiallyConsistent) else { throw fenced }
        // Only transactions' records come here (the registry has a table of its own);
        // each starts with its gid.
        let gid = try LogEntry.gid(type: type, payload: payload)
        appended.add(1, ordering: .relaxed)
        return writer.append(shard: shard, epoch: epoch, gid: gid.rawValue, type: type, payload: String(decoding: payload, as: UTF8.self))
    }

    private var fenced: StoreError { .fenced("shard \(shard) (epoch \(epoch)) is no longer this node's") }

    /// Reads the shard's records and deletes those `keep` refuses, in batches, each
    /// delete conditional on this node still owning the shard at its epoch.
    func compact(keep: @escaping @Sendable (LogRecord) throws -> Bool) async throws -> CompactionResult {
        try await sync()
        let (shard, epoch, node) = (shard, epoch, node)
        let records = try await store.records(shard: shard)
        var obsolete: [UInt64] = []
        for record in records {
            if try !keep(record) { obsolete.append(record.lsn) }
        }
        var start = 0
        while start < obsolete.count {
            let slice = Array(obsolete[start..<min(start + 1000, obsolete.count)])
            start += slice.count
            let deleted = try await store.delete(lsns: slice, shard: shard, node: node, epoch: epoch)
            if deleted == 0, !slice.isEmpty, try await !store.holds(shard: shard, node: node, epoch: epoch) { throw fenced }
        }
        return CompactionResult(recordsRead: records.count, recordsKept: records.count - obsolete.count, segmentsRemoved: 0)
    }

    var position: UInt64 { appended.load(ordering: .relaxed) }

    var metrics: [StoreMetric] { [] }
}

/// A cluster store problem, said so that an operator knows what to do.
public struct ClusterError: Error, CustomStringConvertible {
    public var description: String

    package init(_ description: String) {
        self.description = description
    }
}
