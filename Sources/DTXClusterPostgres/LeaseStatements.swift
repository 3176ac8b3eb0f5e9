import DTXCluster
import DTXPostgresClient
import Foundation

/// The statements of the lease rules (docs/CLUSTER.md), each judged by PostgreSQL's clock.
extension Leases {
    /// Registers this process under the node's id: false while another process (another
    /// incarnation) holds that id under a live lease, so that two processes never own the
    /// node's shards at once.
    static func register(_ connection: PostgresConnection, node: String, url: String, incarnation: String, ttl: Duration) throws -> Bool {
        try connection.execute("""
            INSERT INTO dtx_nodes (node_id, url, incarnation, started_at, renewed_at, lease_expires)
            VALUES ($1, $2, $3, now(), now(), now() + $4::bigint * interval '1 millisecond')
            ON CONFLICT (node_id) DO UPDATE SET url = excluded.url, incarnation = excluded.incarnation,
                started_at = excluded.started_at, renewed_at = excluded.renewed_at, lease_expires = excluded.lease_expires
            WHERE dtx_nodes.lease_expires <= now() OR dtx_nodes.incarnation = excluded.incarnation
            """, [.text(node), .text(url), .text(incarnation), .int(ttl.milliseconds)]).affectedRows == 1
    }

    /// False when the node was evicted (another node took its shards over) or another
    /// process registered under its id since: it owns nothing any more.
    static func renew(_ connection: PostgresConnection, node: String, incarnation: String, ttl: Duration) throws -> Bool {
        try connection.execute("""
            UPDATE dtx_nodes SET renewed_at = now(), lease_expires = now() + $3::bigint * interval '1 millisecond'
            WHERE node_id = $1 AND incarnation = $2 AND lease_expires <> '-infinity'
            """, [.text(node), .text(incarnation), .int(ttl.milliseconds)]).affectedRows == 1
    }

    static func view(_ connection: PostgresConnection) throws -> View {
        let results = try connection.executeInOneRoundTrip([
            ("SELECT node_id, url, lease_expires > now() AS live, extract(epoch FROM now() - renewed_at)::float8 AS renewed_ago FROM dtx_nodes ORDER BY node_id", []),
            ("SELECT shard, owner, epoch, extract(epoch FROM now() - acquired_at)::float8 AS held_for FROM dtx_shards ORDER BY shard", []),
        ])
        var view = View()
        for row in results[0].rows {
            view.nodes.append(Node(id: try row.string("node_id") ?? "", url: try row.string("url") ?? "", live: try row.bool("live") ?? false,
                                   renewedAgo: try row.double("renewed_ago") ?? 0))
        }
        for row in results[1].rows {
            view.shards.append(Shard(shard: try row.int("shard") ?? 0, owner: try row.string("owner"), epoch: Int64(try row.int("epoch") ?? 0),
                                     heldFor: try row.double("held_for")))
        }
        return view
    }

    /// Takes a shard that nobody owns, that this node owned before (a restart, a lapsed
    /// lease), or whose owner's lease expired; in the last case the owner is evicted
    /// first, in the same transaction, so that its renewal fails from now on. The
    /// shard's row stays locked until the commit: a write of the old owner still in
    /// flight completes before, and one after finds the new epoch.
    static func acquire(_ connection: PostgresConnection, shard: Int, node: String, incarnation: String) throws -> Acquisition {
        try connection.execute("BEGIN")
        do {
            // A row held for long (a stalled writer, a node cut off mid-acquisition) makes
            // this attempt give up rather than hang; and if this node is cut off in the
            // middle of it, the server ends the transaction, so its row locks do not keep
            // other nodes from the shard for as long as the connection looks alive.
            try connection.execute("SET LOCAL lock_timeout = '2s'")
            try connection.execute("SET LOCAL idle_in_transaction_session_timeout = '2s'")
            // The shard's row alone: a lock that waits for another acquisition re-reads
            // the row it locked, but would not re-read a row joined to it.
            guard let row = try connection.execute("SELECT owner FROM dtx_shards WHERE shard = $1 FOR UPDATE", [.int(shard)]).rows.first else {
                throw ClusterError("shard \(shard) has no row in dtx_shards: the store is damaged")
            }
            let owner = try row.string("owner")
            var previous: String?
            // This node's own shard (from before a restart or a lapsed lease) is taken only
            // by the process that holds the node's row now.
            let mine = try connection.execute("SELECT 1 FROM dtx_nodes WHERE node_id = $1 AND incarnation = $2 AND lease_expires > now()",
                                              [.text(node), .text(incarnation)]).rows.count == 1
            guard mine else {
                try connection.execute("ROLLBACK")
                return .held(by: node)
            }
            if let owner, owner != node {
                previous = owner
                let live = try connection.execute("SELECT lease_expires > now() AS live FROM dtx_nodes WHERE node_id = $1", [.text(owner)]).rows.first?.bool("live")
                if live == true {
                    try connection.execute("ROLLBACK")
                    return .held(by: owner)
                }
                // Evicted in this transaction, so that its renewal fails from now on; a
                // renewal that got in first makes this update find nothing.
                if live == false,
                   try connection.execute("UPDATE dtx_nodes SET lease_expires = '-infinity' WHERE node_id = $1 AND lease_expires <= now()", [.text(owner)]).affectedRows == 0 {
                    try connection.execute("ROLLBACK")
                    return .held(by: owner)
                }
            }
            guard let epoch = try connection.execute("UPDATE dtx_shards SET owner = $2, epoch = epoch + 1, acquired_at = now() WHERE shard = $1 RETURNING epoch",
                                                     [.int(shard), .text(node)]).rows.first?.int("epoch") else {
                throw ClusterError("shard \(shard) vanished while being acquired")
            }
            try connection.execute("COMMIT")
            return .acquired(epoch: Int64(epoch), from: previous)
        } catch {
            connection.rollbackIfInTransaction()
            throw error
        }
    }

    /// Gives a shard up (balancing, shutdown) once nothing more is written for it here.
    static func release(_ connection: PostgresConnection, shard: Int, node: String, epoch: Int64) throws {
        try connection.execute("UPDATE dtx_shards SET owner = NULL WHERE shard = $1 AND owner = $2 AND epoch = $3", [.int(shard), .text(node), .int(Int(epoch))])
    }

    static func leave(_ connection: PostgresConnection, node: String, incarnation: String) throws {
        try connection.execute("DELETE FROM dtx_nodes WHERE node_id = $1 AND incarnation = $2", [.text(node), .text(incarnation)])
    }
}

extension Duration {
    var milliseconds: Int { Int(components.seconds) * 1000 + Int(components.attoseconds / 1_000_000_000_000_000) }
}
