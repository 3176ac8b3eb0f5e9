import Foundation

/// What the lease rules (docs/CLUSTER.md) answer: the cluster as the store sees it, and
/// the outcome of an acquisition. (PostgreSQL's statements: DTXClusterPostgres.)
package enum Leases {
    package struct Node: Sendable, Equatable {
        package var id: String
        package var url: String
        package var live: Bool
        package var renewedAgo: Double

        package init(id: String, url: String, live: Bool, renewedAgo: Double) {
            self.id = id
            self.url = url
            self.live = live
            self.renewedAgo = renewedAgo
        }
    }

    package struct Shard: Sendable, Equatable {
        package var shard: Int
        package var owner: String?
        package var epoch: Int64
        package var heldFor: Double?

        package init(shard: Int, owner: String?, epoch: Int64, heldFor: Double?) {
            self.shard = shard
            self.owner = owner
            self.epoch = epoch
            self.heldFor = heldFor
        }
    }

    /// The cluster as the store sees it now: nodes by id, shards by number.
    package struct View: Sendable, Equatable {
        package var nodes: [Node] = []
        package var shards: [Shard] = []

        package init(nodes: [Node] = [], shards: [Shard] = []) {
            self.nodes = nodes
            self.shards = shards
        }

        var liveNodes: [Node] { nodes.filter(\.live) }

        func node(_ id: String) -> Node? { nodes.first { $0.id == id } }

        func owner(of shard: Int) -> String? {
            shards.indices.contains(shard) ? shards[shard].owner : nil
        }
    }

    package enum Acquisition: Sendable, Equatable {
        /// Ours now, at this epoch; `from` the node that had it (nil: nobody, or this node before).
        case acquired(epoch: Int64, from: String?)
        /// Another node holds it under a live lease.
        case held(by: String)
    }
}
