-- Tables the PostgreSQL resource manager (DTXPostgres) keeps in a service's database;
-- created when the resource manager starts. Kept equal to PostgresResourceManager.schemaSQL by a test.
CREATE TABLE IF NOT EXISTS dtx_branches (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    operation TEXT NOT NULL,
    result TEXT,
    digest TEXT NOT NULL,
    PRIMARY KEY (gid, branch)
);

CREATE TABLE IF NOT EXISTS dtx_rollbacks (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    PRIMARY KEY (gid, branch)
);

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

CREATE TABLE IF NOT EXISTS dtx_3pc_state (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'pre_committed')),
    participants TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch)
);
