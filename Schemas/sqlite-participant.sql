-- Tables the SQLite resource manager (DTXSQLite) keeps in a service's database file,
-- next to its business tables; created when the resource manager opens the file.
-- Kept equal to SQLiteParticipantSchema.ddl by a test.
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
CREATE TABLE IF NOT EXISTS dtx_locks (
    tbl TEXT NOT NULL,
    pk BLOB NOT NULL,
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    PRIMARY KEY (tbl, pk)
);
CREATE INDEX IF NOT EXISTS dtx_locks_by_branch ON dtx_locks (gid, branch);
CREATE TABLE IF NOT EXISTS dtx_outcomes (
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
    result TEXT,
    decided_at TEXT NOT NULL,
    digest TEXT,
    PRIMARY KEY (gid, branch)
);
CREATE TABLE IF NOT EXISTS dtx_3pc (
    gid TEXT NOT NULL,
    branch INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'pre_committed')),
    participants TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (gid, branch)
);
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
