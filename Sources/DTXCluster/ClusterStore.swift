import DTXCore
import DTXLog
import Foundation

/// What a cluster node needs of the store the nodes share, each call one atomic step
/// judged by the store's clock alone (the rules: docs/CLUSTER.md). PostgreSQL in
/// production (`PostgresClusterStore`); the simulator and unit tests can give a model.
package protocol ClusterStore: Sendable {
    /// Creates the tables on first use; the cluster's number of shards (`requested`, or the
    /// store's; refused when they differ).
    func prepare(shards requested: Int?) async throws -> Int
    /// Registers this process under the node's id: false while another incarnation holds
    /// the id under a live lease. Sets the lease to now + `ttl`.
    func register(node: String, url: String, incarnation: String, ttl: Duration) async throws -> Bool
    /// Sets the lease to now + `ttl`; false when the node was evicted or another
    /// incarnation registered under its id since.
    func renew(node: String, incarnation: String, ttl: Duration) async throws -> Bool
    func view() async throws -> Leases.View
    /// Takes a shard nobody owns, this node's own, or one whose owner's lease expired (the
    /// owner evicted in the same step); the shard's epoch grows by one.
    func acquire(shard: Int, node: String, incarnation: String) async throws -> Leases.Acquisition
    /// Gives a shard up, if this node still owns it at `epoch`.
    func release(shard: Int, node: String, epoch: Int64) async throws
    func leave(node: String, incarnation: String) async throws
    /// Inserts the records of the (shard, epoch) pairs `node` still owns, each (writer,
    /// seq) once however often the batch is sent; returns the pairs it owns. Throws
    /// `ClusterStoreError.unreachable` when the store could not be reached (the batch
    /// may or may not have been written).
    func write(_ batch: [StoreRecord], node: String, writer: String) async throws -> Set<ShardEpoch>
    /// A shard's records, in the order written.
    func records(shard: Int) async throws -> [LogRecord]
    /// Deletes these records of the shard if `node` still owns it at `epoch`; how many.
    func delete(lsns: [UInt64], shard: Int, node: String, epoch: Int64) async throws -> Int
    func holds(shard: Int, node: String, epoch: Int64) async throws -> Bool
    /// Keeps a participant's newest registry record; returns its version (growing).
    func putRegistration(name: String, type: UInt16, record: String) async throws -> UInt64
    func registrations() async throws -> [RegistryRow]
    /// These participants were heard from at `time` (kept where later than before).
    func heard(from participants: [String], at time: Date) async throws
    /// Transactions of any shard with a branch on the participant and no end.
    func unfinishedTransactions(naming participant: String) async throws -> Int
    func close() async
}

/// A transaction record on its way to the store: its shard, the epoch at which the
/// writing node holds that shard, and the writer's sequence number.
package struct StoreRecord: Sendable, Equatable {
    package var shard: Int
    package var epoch: Int64
    package var gid: String
    package var type: UInt16
    package var payload: String
    package var seq: Int64

    package init(shard: Int, epoch: Int64, gid: String, type: UInt16, payload: String, seq: Int64) {
        self.shard = shard
        self.epoch = epoch
        self.gid = gid
        self.type = type
        self.payload = payload
        self.seq = seq
    }
}

package struct ShardEpoch: Hashable, Sendable {
    package var shard: Int
    package var epoch: Int64

    package init(shard: Int, epoch: Int64) {
        self.shard = shard
        self.epoch = epoch
    }
}

package enum ClusterStoreError: Error, Equatable {
    /// The store could not be reached, or the connection broke before the answer.
    case unreachable(String)
}

/// A participant's row in the shared registry.
package struct RegistryRow: Sendable, Equatable {
    package var name: String
    package var version: UInt64
    package var type: UInt16
    package var record: String
    /// When any node last heard from the participant.
    package var lastSeen: Date?

    package init(name: String, version: UInt64, type: UInt16, record: String, lastSeen: Date?) {
        self.name = name
        self.version = version
        self.type = type
        self.record = record
        self.lastSeen = lastSeen
    }
}
