-- Tables the SQLite resource manager (DTXSQLite) keeps in a service's database file,
-- next to its business tables; created when the resource manager opens the file.
-- Kept equal to SQLiteParticipantSchema.ddl by a test (which skips lines that start with --).
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
-- dtx_prepared: one row per prepared branch (2PC PREPARE, or 3PC CANCOMMIT): its work as
-- a changeset, not yet applied, its result, and the digest of its work, against which a
-- repeated PREPARE, COMMIT_ONE_PHASE or CANCOMMIT is compared. Always set by the
-- resource manager (a NULL here reads as a damaged record).
CREATE TABLE IF NOT EXISTS dtx_prepared (
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    operation TEXT NOT NULL,
    changeset BLOB NOT NULL,
    result TEXT,
    prepared_at TEXT NOT NULL,
    digest TEXT,
    PRIMARY KEY (gid, branch)
);
-- dtx_locks: one row per business row a prepared branch changes; other writes to it wait.
CREATE TABLE IF NOT EXISTS dtx_locks (
    tbl TEXT NOT NULL,
    pk BLOB NOT NULL,
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    PRIMARY KEY (tbl, pk)
);
CREATE INDEX IF NOT EXISTS dtx_locks_by_branch ON dtx_locks (gid, branch);
-- dtx_outcomes: every committed or rolled-back branch, so that a retried COMMIT or
-- ROLLBACK is recognised and a late PREPARE refused. digest: for a committed branch, the
-- digest of the committed work (a repeated COMMIT_ONE_PHASE or PREPARE is compared with
-- it); for a branch rolled back after it prepared, the digest it was prepared with (kept,
-- not read); NULL for a rollback of a branch that never prepared here (presumed abort).
CREATE TABLE IF NOT EXISTS dtx_outcomes (
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
    result TEXT,
    decided_at TEXT NOT NULL,
    digest TEXT,
    PRIMARY KEY (gid, branch)
);
-- dtx_3pc: one row per 3PC branch in w (prepared) or p (pre_committed), with every
-- branch's participant and base URL (JSON), whom termination asks; deleted with the
-- dtx_prepared row when the branch commits or rolls back (dtx_outcomes answers then).
CREATE TABLE IF NOT EXISTS dtx_3pc (
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'pre_committed')),
    participants TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (gid, branch)
);
-- dtx_barrier: the TCC and saga branch barrier, one row per phase a branch has done,
-- written in the phase's own local transaction with its result. digest: of the message
-- that wrote the row; a repeat of that phase, and a confirm or cancel (compensate) of a
-- recorded try (action), is compared with it. A cancel or compensate whose try or action
-- never ran writes a marker (null_compensation = 1, the cancel's own digest) that
-- refuses the late try or action.
CREATE TABLE IF NOT EXISTS dtx_barrier (
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('try', 'confirm', 'cancel', 'action', 'compensate')),
    operation TEXT NOT NULL,
    digest TEXT NOT NULL,
    null_compensation INTEGER NOT NULL DEFAULT 0 CHECK (null_compensation IN (0, 1)),
    result TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (gid, branch, op)
);
-- dtx_messages: msg, one row per message the service sent: 'committed', written by the
-- message's local transaction, or 'rolled_back', the marker of dtxd's check-back
-- (query_prepared) that found none; the first written settles the message. The
-- local transaction holds the write lock (BEGIN IMMEDIATE), so a check-back sees its
-- row only once it has committed.
CREATE TABLE IF NOT EXISTS dtx_messages (
    gid TEXT PRIMARY KEY,
    outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dtx_messages_created_at ON dtx_messages (created_at);
-- The retention finds finished rows older than the retention by these, without reading
-- the tables: outcomes by decision time; barrier rows by the time their branch was
-- confirmed, cancelled or compensated (the row that finished it).
CREATE INDEX IF NOT EXISTS dtx_outcomes_decided_at ON dtx_outcomes (decided_at);
CREATE INDEX IF NOT EXISTS dtx_barrier_finished_at ON dtx_barrier (created_at) WHERE op IN ('confirm', 'cancel', 'compensate');
