-- Tables the PostgreSQL resource manager (DTXPostgres) keeps in a service's database;
-- created when the resource manager starts. Kept equal to PostgresResourceManager.schemaSQL by a test
-- (which skips lines that start with --).
--
-- digest (every table that has one): the fingerprint of the work a row was written
-- for, its operation and payload (BranchDigest: 16 lowercase hex digits of 64-bit FNV-1a
-- over the operation as a JSON string, a comma, and the payload as canonical JSON,
-- keys sorted, `null` when absent). Every message of a branch carries its operation and
-- payload, so a repeated message is compared with the stored digest: equal, it is a
-- repeat and gets the stored answer; different, it names other work under the same
-- (gid, branch) -- the gid was reused, e.g. after dtxd lost its lazily written begin --
-- and is refused with 409 branch_mismatch, nothing done. See "Repeats and digests" in
-- participant-api.yaml.
--
-- written_at (dtx_branches, dtx_rollbacks): when the row was written; the participant kit
-- deletes rows older than its retention (default 7 days).
--
-- dtx_branches: one row per committed branch, written inside the branch's own
-- transaction (so it exists exactly when the branch committed), with its result and the
-- digest of its work, against which a repeated PREPARE or COMMIT_ONE_PHASE is compared.
-- While the branch is prepared its row is invisible inside the prepared transaction, so
-- the digest is also the last part of the prepared transaction's name,
-- prefix:gid:branch:digest, where a repeated PREPARE reads it.
CREATE TABLE IF NOT EXISTS dtx_branches (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    operation TEXT NOT NULL,
    result TEXT,
    digest TEXT NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch)
);

-- dtx_rollbacks: one row per rolled-back branch, also one that never prepared (presumed
-- abort), so that a late PREPARE or COMMIT_ONE_PHASE is refused. No digest: a rolled-back
-- branch refuses any work.
CREATE TABLE IF NOT EXISTS dtx_rollbacks (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch)
);

-- dtx_barrier: the TCC and saga branch barrier, one row per phase a branch has done,
-- written in the phase's own transaction with its result. digest: of the message that
-- wrote the row; a repeat of that phase, and a confirm or cancel (compensate) of a
-- recorded try (action), is compared with it. A cancel or compensate whose try or action
-- never ran writes a marker (null_compensation = true, the cancel's own digest) that
-- refuses the late try or action.
CREATE TABLE IF NOT EXISTS dtx_barrier (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('try', 'confirm', 'cancel', 'action', 'compensate')),
    operation TEXT NOT NULL,
    digest TEXT NOT NULL,
    null_compensation BOOLEAN NOT NULL DEFAULT false,
    result TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch, op)
);

-- dtx_3pc_state: one row per 3PC branch that reached CANCOMMIT: prepared or
-- pre_committed, with every branch's participant and base URL (JSON), whom termination
-- asks. It counts only while the branch's prepared transaction exists.
CREATE TABLE IF NOT EXISTS dtx_3pc_state (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'pre_committed')),
    participants TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch)
);

-- dtx_messages: msg, one row per message the service sent: 'committed', written by the
-- message's local transaction, or 'rolled_back', the marker of dtxd's check-back
-- (query_prepared) that found none; the first written settles the message. The
-- check-back's insert waits for a local transaction that inserted the same gid.
CREATE TABLE IF NOT EXISTS dtx_messages (
    gid TEXT PRIMARY KEY,
    outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The retention finds old rows by these: BRIN indexes on the time columns, a few pages
-- each and cheap to keep, since rows are written in time order. The resource manager
-- creates only a missing one (CREATE INDEX locks its table even when the index exists).
CREATE INDEX IF NOT EXISTS dtx_branches_written_at ON dtx_branches USING brin (written_at);
CREATE INDEX IF NOT EXISTS dtx_rollbacks_written_at ON dtx_rollbacks USING brin (written_at);
CREATE INDEX IF NOT EXISTS dtx_barrier_created_at ON dtx_barrier USING brin (created_at);
CREATE INDEX IF NOT EXISTS dtx_3pc_state_updated_at ON dtx_3pc_state USING brin (updated_at);
CREATE INDEX IF NOT EXISTS dtx_messages_created_at ON dtx_messages USING brin (created_at);
