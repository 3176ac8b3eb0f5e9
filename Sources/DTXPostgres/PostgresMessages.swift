import DTXAPI
import DTXParticipant
import DTXPostgresClient

/// Msg on PostgreSQL: a message's row in `dtx_messages` is written by its local
/// transaction (`committed`) or by the check-back (`rolled_back`), whichever comes first.
/// The check-back's `INSERT … ON CONFLICT DO NOTHING` waits for a local transaction that
/// has inserted the same gid and not yet ended (PostgreSQL's rule for a conflicting
/// uncommitted key), then sees its row if it committed, or inserts the marker if it
/// rolled back; it waits at most the resource manager's lock timeout, then answers
/// `running` and dtxd asks again.
extension PostgresResourceManager: MessageResourceManager {
    public typealias Connection = PostgresConnection

    /// One row per message this service sent: `committed` or `rolled_back`.
    public static let messagesTableDDL = """
        CREATE TABLE IF NOT EXISTS dtx_messages (
            gid TEXT PRIMARY KEY,
            outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """

    /// Runs `body` in a transaction that first inserts message `gid`'s committed row,
    /// and commits both together.
    /// - Throws: `MessageRolledBack` when the check-back came first; `BusinessError`
    ///   (`message_exists`) when a local transaction of `gid` already committed; what
    ///   `body` throws (a SQL error of class 22 or 23 as a `BusinessError`).
    public func write<T: Sendable>(message gid: String, _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await pool.withConnection { connection in
            try connection.execute("BEGIN")
            do {
                let inserted = try connection.execute(
                    "INSERT INTO dtx_messages (gid, outcome) VALUES ($1, 'committed') ON CONFLICT (gid) DO NOTHING", [.text(gid)]).affectedRows
                if inserted == 0 {
                    let outcome = try connection.execute("SELECT outcome FROM dtx_messages WHERE gid = $1", [.text(gid)]).rows.first?[0]
                    throw outcome == MessageCheckBack.committed
                        ? BusinessError(code: "message_exists", message: "message \(gid) was already sent (its local transaction committed); use a new gid")
                        : MessageRolledBack(gid: gid)
                }
                let value: T
                do {
                    value = try body(connection)
                } catch let error as PostgresError where error.sqlStateClass == "22" || error.sqlStateClass == "23" {
                    throw BusinessError(code: error.sqlStateClass == "23" ? "constraint_violation" : "invalid_data",
                                        message: "the local transaction of message \(gid) failed: \(error.message)")
                }
                try connection.execute("COMMIT")
                return value
            } catch {
                connection.rollbackIfInTransaction()
                throw error
            }
        }
    }

    public func queryPrepared(gid: String) async throws -> String {
        let lockTimeout = lockTimeout
        return try await pool.withConnection { connection in
            try connection.execute("BEGIN")
            do {
                try connection.execute("SET LOCAL lock_timeout = '\(lockTimeout)'")
                try connection.execute("INSERT INTO dtx_messages (gid, outcome) VALUES ($1, 'rolled_back') ON CONFLICT (gid) DO NOTHING", [.text(gid)])
                let outcome = try connection.execute("SELECT outcome FROM dtx_messages WHERE gid = $1", [.text(gid)]).rows.first?[0]
                try connection.execute("COMMIT")
                return outcome ?? MessageCheckBack.rolledBack
            } catch let error as PostgresError where error.sqlState == "55P03" {
                // lock_not_available: the local transaction still runs.
                connection.rollbackIfInTransaction()
                return MessageCheckBack.running
            } catch {
                connection.rollbackIfInTransaction()
                throw error
            }
        }
    }
}
