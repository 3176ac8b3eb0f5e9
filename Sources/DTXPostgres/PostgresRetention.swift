import DTXParticipant
import Foundation

extension PostgresResourceManager: RecordRetaining {
    /// Deletes the outcome rows (`dtx_branches`, `dtx_rollbacks`) written before
    /// `cutoff`, the 3PC state rows last changed before `cutoff` of branches no longer
    /// prepared, and every barrier row of a TCC branch confirmed or cancelled, or a saga
    /// step compensated, before `cutoff`; at most `limit` branches per statement. A
    /// prepared branch's row is inside its prepared transaction, where no statement sees
    /// it, so it is never deleted.
    public func forgetFinished(before cutoff: Date, limit: Int) async throws -> Int {
        let stamp = ISO8601DateFormatter().string(from: cutoff)
        let limit = max(limit, 1)
        return try await pool.withConnection { db in
            var deleted = 0
            for table in ["dtx_branches", "dtx_rollbacks"] where deleted < limit {
                deleted += try db.execute(
                    "DELETE FROM \(table) t USING (SELECT gid, branch FROM \(table) WHERE written_at < $1::timestamptz LIMIT $2) d WHERE t.gid = d.gid AND t.branch = d.branch",
                    [.text(stamp), .int(limit - deleted)]).affectedRows
            }
            // A 3PC branch's state row counts only while its prepared transaction exists:
            // an old row without one is a finished branch's (or a CANCOMMIT that never
            // prepared). The table may be shared by services of other prefixes, so any
            // prepared transaction named `…:gid:branch:…` keeps the row.
            if deleted < limit {
                deleted += try db.execute(
                    """
                    DELETE FROM dtx_3pc_state t USING (SELECT s.gid, s.branch FROM dtx_3pc_state s
                        WHERE s.updated_at < $1::timestamptz AND NOT EXISTS (
                            SELECT 1 FROM pg_prepared_xacts p WHERE p.database = current_database()
                            AND position(':' || s.gid || ':' || s.branch || ':' in p.gid) > 0)
                        LIMIT $2) d
                    WHERE t.gid = d.gid AND t.branch = d.branch
                    """,
                    [.text(stamp), .int(limit - deleted)]).affectedRows
            }
            if deleted < limit {
                deleted += try db.execute(
                    """
                    DELETE FROM dtx_barrier t USING (SELECT DISTINCT gid, branch FROM dtx_barrier
                        WHERE op IN ('confirm', 'cancel', 'compensate') AND created_at < $1::timestamptz LIMIT $2) d
                    WHERE t.gid = d.gid AND t.branch = d.branch
                    """,
                    [.text(stamp), .int(limit - deleted)]).affectedRows
            }
            // dtxd checks a message back only while it is prepared: long before `cutoff`.
            if deleted < limit {
                deleted += try db.execute(
                    "DELETE FROM dtx_messages t USING (SELECT gid FROM dtx_messages WHERE created_at < $1::timestamptz LIMIT $2) d WHERE t.gid = d.gid",
                    [.text(stamp), .int(limit - deleted)]).affectedRows
            }
            return deleted
        }
    }
}
