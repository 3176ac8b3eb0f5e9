import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Synchronization

/// The cluster store as a model in memory, with the PostgreSQL store's rules
/// (`ClusterStore`; docs/CLUSTER.md) and a clock of its own: the simulator's shared store,
/// and unit tests'. Each call takes effect at one instant. The same conformance tests run
/// against this model and against PostgreSQL (DTXClusterTests), which keeps the two alike.
package final class InMemoryClusterStore: ClusterStore {
    private struct NodeRow {
        var url: String
        var incarnation: String
        var renewed: Duration
        /// nil: evicted (PostgreSQL's '-infinity').
        var expires: Duration?
    }

    private struct ShardRow {
        var owner: String?
        var epoch: Int64 = 0
        var acquired: Duration?
    }

    private struct Row {
        var lsn: UInt64
        var shard: Int
        var gid: String
        var type: UInt16
        var payload: String
    }

    private struct State {
        var shards: [ShardRow]?
        var nodes: [String: NodeRow] = [:]
        var records: [Row] = []
        var written: Set<String> = []
        var lastLSN: UInt64 = 0
        var registry: [String: RegistryRow] = [:]
        var lastVersion: UInt64 = 0
        var grants: [Grant] = []
    }

    private let now: @Sendable () -> Duration
    private let state = Mutex(State())

    /// Each acquisition: which node got which epoch of a shard, and when (by the store's
    /// clock). The simulator checks every message against it.
    package struct Grant: Sendable, Equatable {
        package var shard: Int
        package var epoch: Int64
        package var node: String
        package var at: Duration
    }

    package var grants: [Grant] { state.withLock { $0.grants } }

    /// `now`: the store's clock, by which every lease is judged.
    package init(now: @escaping @Sendable () -> Duration) {
        self.now = now
    }

    package func prepare(shards requested: Int?) async throws -> Int {
        try state.withLock { s in
            if let shards = s.shards {
                if let requested, requested != shards.count {
                    throw ClusterError("the cluster has \(shards.count) shards, fixed when it was created; --shards \(requested) does not match: leave --shards out or give \(shards.count)")
                }
                return shards.count
            }
            let count = requested ?? ShardMap.defaultCount
            s.shards = Array(repeating: ShardRow(), count: count)
            return count
        }
    }

    package func register(node: String, url: String, incarnation: String, ttl: Duration) async throws -> Bool {
        let t = now()
        return state.withLock { s in
            if let row = s.nodes[node], !Self.expired(row, at: t), row.incarnation != incarnation { return false }
            s.nodes[node] = NodeRow(url: url, incarnation: incarnation, renewed: t, expires: t + ttl)
            return true
        }
    }

    package func renew(node: String, incarnation: String, ttl: Duration) async throws -> Bool {
        let t = now()
        return state.withLock { s in
            // As in PostgreSQL: an expired row nobody evicted yet may still be renewed.
            guard let row = s.nodes[node], row.incarnation == incarnation, row.expires != nil else { return false }
            s.nodes[node]?.renewed = t
            s.nodes[node]?.expires = t + ttl
            return true
        }
    }

    package func view() async throws -> Leases.View {
        let t = now()
        return state.withLock { s in
            Leases.View(
                nodes: s.nodes.sorted { $0.key < $1.key }.map { id, row in
                    Leases.Node(id: id, url: row.url, live: !Self.expired(row, at: t), renewedAgo: (t - row.renewed).apiSeconds)
                },
                shards: (s.shards ?? []).enumerated().map { index, row in
                    Leases.Shard(shard: index, owner: row.owner, epoch: row.epoch, heldFor: row.acquired.map { (t - $0).apiSeconds })
                })
        }
    }

    package func acquire(shard: Int, node: String, incarnation: String) async throws -> Leases.Acquisition {
        let t = now()
        return try state.withLock { s in
            guard let row = s.shards?[safe: shard] else { throw ClusterError("shard \(shard) has no row in dtx_shards: the store is damaged") }
            // This node's own shard is taken only by the process that holds its row now.
            guard let mine = s.nodes[node], mine.incarnation == incarnation, !Self.expired(mine, at: t) else { return .held(by: node) }
            var previous: String?
            if let owner = row.owner, owner != node {
                previous = owner
                if let ownerRow = s.nodes[owner] {
                    if !Self.expired(ownerRow, at: t) { return .held(by: owner) }
                    s.nodes[owner]?.expires = nil  // evicted: its renewal fails from now on
                }
            }
            s.shards![shard].epoch += 1
            s.shards![shard].owner = node
            s.shards![shard].acquired = t
            s.grants.append(Grant(shard: shard, epoch: s.shards![shard].epoch, node: node, at: t))
            return .acquired(epoch: s.shards![shard].epoch, from: previous)
        }
    }

    package func release(shard: Int, node: String, epoch: Int64) async throws {
        state.withLock { s in
            guard let row = s.shards?[safe: shard], row.owner == node, row.epoch == epoch else { return }
            s.shards![shard].owner = nil
        }
    }

    package func leave(node: String, incarnation: String) async throws {
        state.withLock { s in
            if s.nodes[node]?.incarnation == incarnation { s.nodes.removeValue(forKey: node) }
        }
    }

    package func write(_ batch: [StoreRecord], node: String, writer: String) async throws -> Set<ShardEpoch> {
        state.withLock { s in
            let held = Set(batch.map { ShardEpoch(shard: $0.shard, epoch: $0.epoch) }.filter { pair in
                s.shards?[safe: pair.shard].map { $0.owner == node && $0.epoch == pair.epoch } ?? false
            })
            for record in batch.sorted(by: { $0.seq < $1.seq }) where held.contains(ShardEpoch(shard: record.shard, epoch: record.epoch)) {
                guard s.written.insert("\(writer) \(record.seq)").inserted else { continue }
                s.lastLSN += 1
                s.records.append(Row(lsn: s.lastLSN, shard: record.shard, gid: record.gid, type: record.type, payload: record.payload))
            }
            return held
        }
    }

    package func records(shard: Int) async throws -> [LogRecord] {
        state.withLock { s in
            s.records.filter { $0.shard == shard }.map { LogRecord(lsn: $0.lsn, type: $0.type, payload: Array($0.payload.utf8)) }
        }
    }

    package func delete(lsns: [UInt64], shard: Int, node: String, epoch: Int64) async throws -> Int {
        state.withLock { s in
            guard let row = s.shards?[safe: shard], row.owner == node, row.epoch == epoch else { return 0 }
            let doomed = Set(lsns)
            let before = s.records.count
            s.records.removeAll { $0.shard == shard && doomed.contains($0.lsn) }
            return before - s.records.count
        }
    }

    package func holds(shard: Int, node: String, epoch: Int64) async throws -> Bool {
        state.withLock { s in s.shards?[safe: shard].map { $0.owner == node && $0.epoch == epoch } ?? false }
    }

    package func putRegistration(name: String, type: UInt16, record: String) async throws -> UInt64 {
        state.withLock { s in
            s.lastVersion += 1
            s.registry[name] = RegistryRow(name: name, version: s.lastVersion, type: type, record: record, lastSeen: s.registry[name]?.lastSeen)
            return s.lastVersion
        }
    }

    package func registrations() async throws -> [RegistryRow] {
        state.withLock { s in s.registry.sorted { $0.key < $1.key }.map(\.value) }
    }

    package func heard(from participants: [String], at time: Date) async throws {
        state.withLock { s in
            for name in participants where s.registry[name] != nil && (s.registry[name]!.lastSeen.map { $0 < time } ?? true) {
                s.registry[name]!.lastSeen = time
            }
        }
    }

    package func unfinishedTransactions(naming participant: String) async throws -> Int {
        let needle = #""participant":""# + participant + #"""#
        let (begin, enlist, end) = (LogEntry.RecordType.begin.rawValue, LogEntry.RecordType.enlist.rawValue, LogEntry.RecordType.end.rawValue)
        return state.withLock { s in
            let ended = Set(s.records.filter { $0.type == end }.map(\.gid))
            return Set(s.records.filter { ($0.type == begin || $0.type == enlist) && $0.payload.contains(needle) && !ended.contains($0.gid) }.map(\.gid)).count
        }
    }

    package func close() async {}

    /// Expired by the store's clock (or evicted).
    private static func expired(_ row: NodeRow, at t: Duration) -> Bool {
        row.expires.map { $0 <= t } ?? true
    }
}

extension Array {
    fileprivate subscript(safe index: Int) -> Element? {
        indices.contains(index) ? self[index] : nil
    }
}
