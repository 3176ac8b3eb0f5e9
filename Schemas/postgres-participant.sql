-- Tables the PostgreSQL resource manager (DTXPostgres) keeps in a service's database;
-- created when the resource manager starts. Kept equal to PostgresResourceManager.schemaSQL by a test.
CREATE TABLE IF NOT EXISTS dtx_branches (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    operation TEXT NOT NULL,
    result TEXT,
    digest TEXT,
    PRIMARY KEY (gid, branch)
);

CREATE TABLE IF NOT EXISTS dtx_rollbacks (
    gid TEXT NOT NULL,
    branch BIGINT NOT NULL,
    PRIMARY KEY (gid, branch)
);
