import DTXParticipant
import Foundation

extension SQLiteResourceManager: RecordRetaining {
    /// Deletes the outcomes of 2PC and 3PC branches decided before `cutoff` (a repeated
    /// COMMIT or ROLLBACK, or a PREPARE after a rollback, that late is not expected: the
    /// coordinator finished those transactions long ago), and every barrier row of a TCC
    /// branch confirmed or cancelled, or a saga step compensated, before `cutoff`, and the
    /// rows of messages (`dtx_messages`) written before it.
    public func forgetFinished(before cutoff: Date, limit: Int) async throws -> Int {
        let stamp = Self.stamp(cutoff)
        let limit = Int64(max(limit, 1))
        return try await database.run { connection in
            try connection.transaction(immediate: true) {
                var deleted = try connection.execute(
                    "DELETE FROM dtx_outcomes WHERE rowid IN (SELECT rowid FROM dtx_outcomes WHERE decided_at < ? LIMIT ?)",
                    [.text(stamp), .integer(limit)])
                // A branch has one finishing row (its confirm, cancel or compensate), so no
                // DISTINCT: the query then reads the finished rows' index alone.
                let finished = try connection.query(
                    "SELECT gid, branch FROM dtx_barrier WHERE op IN ('confirm', 'cancel', 'compensate') AND created_at < ? LIMIT ?",
                    [.text(stamp), .integer(limit - Int64(deleted))])
                for row in finished {
                    guard let gid = row["gid"], let branch = row["branch"] else { continue }
                    deleted += try connection.execute("DELETE FROM dtx_barrier WHERE gid = ? AND branch = ?", [gid, branch])
                }
                // dtxd checks a message back only while it is prepared: long before `cutoff`.
                deleted += try connection.execute(
                    "DELETE FROM dtx_messages WHERE rowid IN (SELECT rowid FROM dtx_messages WHERE created_at < ? LIMIT ?)",
                    [.text(stamp), .integer(max(limit - Int64(deleted), 0))])
                return deleted
            }
        }
    }

    /// `cutoff` as the tables write times (`strftime('%Y-%m-%dT%H:%M:%fZ')`), which sort as text.
    static func stamp(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second, .nanosecond], from: date)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", c.year!, c.month!, c.day!, c.hour!, c.minute!, c.second!, c.nanosecond! / 1_000_000)
    }
}
