import DTXAPI
import DTXCore
import Foundation

/// Where the transaction of a gid is driven: by a coordinator on this node, or by
/// another node (a cluster), to which requests about it are forwarded.
public enum Placement: Sendable {
    case here(Coordinator)
    case elsewhere(node: String, url: String)
}

/// What dtxd's API serves from: one coordinator over its own log, or a cluster node
/// holding the coordinators of the shards it owns (DTXCluster).
public protocol CoordinatorNode: Sendable {
    /// The coordinator driving `gid`, or the node that owns its shard.
    func placement(of gid: GlobalTransactionID) async throws(CoordinatorError) -> Placement
    /// A coordinator here for a submission that names no gid, and the gid it gets.
    func placeNewTransaction() async throws(CoordinatorError) -> (Coordinator, GlobalTransactionID)
    var participants: Participants { get }
    /// This node's transactions, newest first.
    /// Throws `unavailable` when the list would leave out transactions it should hold
    /// (a cluster node still loading a shard it took over).
    func list(_ query: Coordinator.ListQuery) throws(CoordinatorError) -> TransactionList
    func recoverNow(reason: String?, who: String) throws(CoordinatorError) -> RecoveryReport
    func gauges() -> Coordinator.Gauges
    /// What `/metrics` shows of the store (and, in a cluster, of leases and fencing).
    var storeMetrics: [StoreMetric] { get }
    /// The cluster's nodes and shards (`GET /v1/cluster`); a dtxd on its own log is no cluster.
    func clusterStatus() async throws(CoordinatorError) -> ClusterStatus
}

extension Coordinator: CoordinatorNode {
    public func placement(of gid: GlobalTransactionID) async throws(CoordinatorError) -> Placement {
        .here(self)
    }

    public func placeNewTransaction() async throws(CoordinatorError) -> (Coordinator, GlobalTransactionID) {
        (self, Self.newGID())
    }

    public func clusterStatus() async throws(CoordinatorError) -> ClusterStatus {
        throw CoordinatorError(.notFound, "not_a_cluster", "this dtxd keeps its transactions in its own log (--store wal): it is not a node of a cluster")
    }

    /// A fresh gid for a submission that names none.
    public static func newGID() -> GlobalTransactionID {
        // Letters, digits and '-': always valid.
        try! GlobalTransactionID(validating: "dtx-\(UUID().uuidString.lowercased())")
    }
}
