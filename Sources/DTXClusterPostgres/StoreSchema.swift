import DTXCluster
import DTXCore
import DTXPostgresClient

/// The tables of the coordinator's store on PostgreSQL: Schemas/coordinator-store-postgres.sql,
/// word for word (a test compares them).
enum StoreSchema {
    static let version = 1

    static let script = #"""
-- The coordinator's store on PostgreSQL (dtxd --store postgres), schema version 1.
--
-- dtxd creates these tables on its first start against an empty database, in one
-- transaction under an advisory lock (several nodes may start at once), and records the
-- version and the number of shards in dtx_store. A node refuses to start against a
-- store whose version is newer than the one it knows, or whose number of shards differs
-- from the one it was told (--shards). Rules: docs/CLUSTER.md.

-- One row: what this store is.
CREATE TABLE dtx_store (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    schema_version integer NOT NULL,
    -- Fixed when the cluster is created: a gid belongs to shard
    -- fnv1a64(gid) mod shard_count for ever (DTXCore.ShardMap).
    shard_count integer NOT NULL CHECK (shard_count BETWEEN 1 AND 4096),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The nodes, each under a lease judged by this server's clock alone: a node is live
-- while lease_expires > now(). A node renews its own row; another node taking over an
-- expired node's shards first marks the row evicted (lease_expires = '-infinity'), which
-- its renewal then refuses, so an old owner learns it lost its shards.
CREATE TABLE dtx_nodes (
    node_id text PRIMARY KEY,
    -- Where other nodes forward requests about this node's shards.
    url text NOT NULL,
    -- Changes at each start of the node's process: a paused older process of the same
    -- node can no longer renew.
    incarnation text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    lease_expires timestamptz NOT NULL
);

-- Who owns each shard, and since which acquisition: epoch grows by one at every
-- acquisition and is the fencing token every write checks.
CREATE TABLE dtx_shards (
    shard integer PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    acquired_at timestamptz
);

-- The transactions' records (the same records the embedded write-ahead log holds), by
-- shard. A write of records inserts them only if the writer still owns their shard at
-- the epoch it acquired (in the same statement, the shard's row locked FOR SHARE).
-- (writer, seq) names each record once, so a batch repeated after a lost connection
-- inserts nothing twice.
CREATE TABLE dtx_records (
    lsn bigserial PRIMARY KEY,
    shard integer NOT NULL,
    gid text NOT NULL,
    type integer NOT NULL,
    payload text NOT NULL,
    writer text NOT NULL,
    seq bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (writer, seq)
);
CREATE INDEX dtx_records_by_shard ON dtx_records (shard, lsn);

-- The participant registry every node reads: one row per participant, its newest
-- registry record (type 16 registered, 17 deregistered). version grows with every
-- change, so a node reads only what changed since it last looked.
CREATE SEQUENCE dtx_participant_versions;
CREATE TABLE dtx_participants (
    name text PRIMARY KEY,
    version bigint NOT NULL,
    type integer NOT NULL,
    record text NOT NULL,
    last_seen timestamptz
);
"""#

    /// Creates the tables when the database has none (under an advisory lock: several
    /// nodes may start at once) and returns the number of shards, `requested` or the
    /// store's. Refuses a store of a newer schema version, or of another number of shards
    /// than `requested`.
    static func prepare(_ connection: PostgresConnection, shards requested: Int?) throws -> Int {
        try connection.execute("BEGIN")
        do {
            try connection.execute("SELECT pg_advisory_xact_lock(7366870)")
            let exists = try connection.execute("SELECT to_regclass('dtx_store') IS NOT NULL AS present").rows.first?.bool("present") ?? false
            let shards: Int
            if exists {
                guard let row = try connection.execute("SELECT schema_version, shard_count FROM dtx_store").rows.first,
                      let version = try row.int("schema_version"), let count = try row.int("shard_count")
                else {
                    throw ClusterError("the store's dtx_store table is empty: the database holds a broken dtx store; point --store-url at an empty database or restore this one")
                }
                guard version <= Self.version else {
                    throw ClusterError("the store's schema is version \(version), newer than this dtxd knows (\(Self.version)): run a newer dtxd")
                }
                if let requested, requested != count {
                    throw ClusterError("the cluster has \(count) shards, fixed when it was created; --shards \(requested) does not match: leave --shards out or give \(count)")
                }
                shards = count
            } else {
                shards = requested ?? ShardMap.defaultCount
                try connection.executeScript(script)
                try connection.execute("INSERT INTO dtx_store (schema_version, shard_count) VALUES ($1, $2)", [.int(Self.version), .int(shards)])
                try connection.execute("INSERT INTO dtx_shards (shard) SELECT generate_series(0, $1::integer - 1)", [.int(shards)])
            }
            try connection.execute("COMMIT")
            return shards
        } catch {
            connection.rollbackIfInTransaction()
            throw error
        }
    }
}
