import ArgumentParser
import DTXAPI
import DTXClient
import Foundation

struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Show the nodes of a cluster (dtxd --store postgres), their shards and leases.",
        discussion: """
        Asks the node at --url for the cluster as the store sees it, then every live node \
        for the unfinished transactions of the shards it owns. RENEWED is the time since \
        a node's last lease renewal and HELD the time since a shard's owner acquired it, \
        both by the store's clock; EPOCH grows by one at each acquisition of a shard.
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    func run() async throws {
        var status = try await connection.withClient { try await $0.cluster() }
        // Each live node counts the unfinished transactions of its own shards.
        for node in status.nodes where node.live && node.id != status.node {
            guard let client = try? CoordinatorClient(baseURL: node.url, token: connection.bearerToken, timeout: .seconds(10)) else { continue }
            let other = try? await client.cluster()
            try? await client.shutdown()
            guard let other else { continue }
            for shard in other.shards where shard.owner == node.id && shard.unfinished != nil {
                if let index = status.shards.firstIndex(where: { $0.shard == shard.shard && $0.owner == node.id }) {
                    status.shards[index].unfinished = shard.unfinished
                }
            }
        }
        if connection.json {
            try JSONOutput.print(status)
        } else {
            print(Self.render(status))
        }
    }

    static func render(_ status: ClusterStatus) -> String {
        var nodes = TextTable([.init("NODE"), .init("URL"), .init("LEASE"), .init("RENEWED", alignRight: true), .init("SHARDS", alignRight: true),
                               .init("UNFINISHED", alignRight: true)])
        for node in status.nodes {
            let owned = status.shards.filter { $0.owner == node.id }
            let unfinished = owned.allSatisfy { $0.unfinished != nil } ? "\(owned.reduce(0) { $0 + ($1.unfinished ?? 0) })" : "?"
            nodes.append([node.id + (node.id == status.node ? " *" : ""), node.url, node.live ? "live" : "expired",
                          Self.tenths(node.renewedAgo) + " ago", "\(node.shards)", unfinished])
        }
        var shards = TextTable([.init("SHARD", alignRight: true), .init("OWNER"), .init("EPOCH", alignRight: true), .init("HELD", alignRight: true),
                                .init("UNFINISHED", alignRight: true)])
        for shard in status.shards {
            shards.append(["\(shard.shard)", shard.owner ?? "-", "\(shard.epoch)", shard.heldFor.map(Self.tenths) ?? "-",
                           shard.unfinished.map(String.init) ?? "?"])
        }
        return nodes.render() + "\n\n" + shards.render() + "\n\nlease ttl \(Format.seconds(status.leaseTTL)); * the node asked"
    }

    /// `2.3s`.
    static func tenths(_ seconds: Double) -> String {
        String(format: "%.1fs", seconds)
    }
}
