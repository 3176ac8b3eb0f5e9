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
