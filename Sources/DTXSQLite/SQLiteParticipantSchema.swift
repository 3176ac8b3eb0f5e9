/// The tables `SQLiteResourceManager` keeps in the service's own database file, next to
/// the business tables (created if missing when the resource manager opens the file).
public enum SQLiteParticipantSchema {
    /// The DDL of the resource manager's tables, as an SQL script.
    ///
    /// - `dtx_prepared`: one row per prepared (in-doubt) branch: its changeset (the
    ///   branch's work, not yet applied to the business tables), its result and its
    ///   digest (`BranchDigest` of its operation and payload).
    /// - `dtx_locks`: one row per business row a prepared branch changes (table and
    ///   canonical primary-key bytes). Any other write to such a row is refused until the
    ///   branch commits or rolls back.
    /// - `dtx_outcomes`: the decision for every committed or rolled-back branch, so that
    ///   a retried COMMIT or ROLLBACK is recognised and a late PREPARE refused; with the
    ///   digest of the branch's work, so that a repeat asking for other work is refused.
    ///
    /// - `dtx_3pc`: one row per 3PC branch in w or p: its state (`prepared`, written with
    ///   the branch's `dtx_prepared` row, or `pre_committed`) and the transaction's
    ///   participants as JSON (`ThreePhasePeer`s, by branch id), whom termination asks after
    ///   a restart. Deleted with the `dtx_prepared` row when the branch commits or rolls
    ///   back (`dtx_outcomes` then answers).
    ///
    /// Two indexes let the retention (`SQLiteRetention.swift`) find old finished rows
    /// without reading the tables: by decision time, and by the time a TCC branch was
    /// confirmed or cancelled or a saga step compensated.
    ///
    /// - `dtx_barrier`: the branch barrier of TCC and sagas (`BranchBarrier`): one row
    ///   per phase (`op`: try, confirm, cancel, action, compensate) a branch has done,
    ///   written in the same local transaction as the phase's business work, with the
    ///   phase's result and the digest of its operation and payload. A cancel or
    ///   compensate whose try or action never ran writes a marker row
    ///   (`null_compensation` = 1) that refuses the late try or action.
    ///
    /// - `dtx_messages`: msg (`MessageResourceManager`): one row per message this service
    ///   sent, `committed` by the message's local transaction, or `rolled_back`, the marker
    ///   of a check-back that found none; the first written settles the message.
    ///
    /// `digest` is NULL only in `dtx_outcomes` rows of branches rolled back without
    /// having prepared (presumed abort); it is not read for rolled-back branches.
    public static let ddl = """
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
        CREATE TABLE IF NOT EXISTS dtx_messages (
            gid TEXT PRIMARY KEY,
            outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
            created_at TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS dtx_messages_created_at ON dtx_messages (created_at);
        CREATE INDEX IF NOT EXISTS dtx_outcomes_decided_at ON dtx_outcomes (decided_at);
        CREATE INDEX IF NOT EXISTS dtx_barrier_finished_at ON dtx_barrier (created_at) WHERE op IN ('confirm', 'cancel', 'compensate');
        """
}
