import DTXCore
import DTXParticipant
import Foundation
@testable import DTXSQLite
import Testing

/// The SQLite resource manager deletes the records of finished branches older than a
/// cutoff, in bounded batches, and never one an unfinished branch needs.
@Suite struct RetentionTests {
    private func manager() async throws -> (SQLiteResourceManager, String) {
        let path = NSTemporaryDirectory() + "retention-\(UUID().uuidString).db"
        let manager = try await SQLiteResourceManager(path: path)
        _ = try await manager.write { try $0.execute("CREATE TABLE counters (k TEXT PRIMARY KEY, v INTEGER NOT NULL)") }
        let add: SQLiteResourceManager.Operation = { payload, db in
            _ = try db.execute("INSERT INTO counters (k, v) VALUES (?, 1) ON CONFLICT (k) DO UPDATE SET v = v + 1", [.text(payload?["k"]?.stringValue ?? "")])
            return nil
        }
        let nothing: SQLiteResourceManager.Operation = { _, _ in nil }
        manager.register("add", add)
        manager.register(tcc: "add", try: nothing, confirm: add, cancel: nothing)
        manager.register(saga: "add", action: add, compensate: nothing)
        return (manager, path)
    }

    private func ref(_ gid: String) -> BranchRef { BranchRef(gid: gid, branch: 0) }
    /// Each branch writes its own row: a prepared branch holds its rows' locks.
    private func payload(_ gid: String) -> JSONValue { .object(["k": .string(gid)]) }

    @Test func finishedBranchesGoAndUnfinishedOnesStay() async throws {
        let (m, path) = try await manager()
        defer { try? FileManager.default.removeItem(atPath: path) }
        _ = try await m.prepare(ref("committed"), operation: "add", payload: payload("committed"))
        try await m.commit(ref("committed"))
        try await m.rollback(ref("rolled-back"))
        _ = try await m.prepare(ref("prepared"), operation: "add", payload: payload("prepared"))
        _ = try await m.try(ref("confirmed"), operation: "add", payload: payload("confirmed"))
        _ = try await m.confirm(ref("confirmed"), operation: "add", payload: payload("confirmed"))
        _ = try await m.try(ref("tried"), operation: "add", payload: payload("tried"))
        _ = try await m.action(ref("compensated"), operation: "add", payload: payload("compensated"))
        _ = try await m.compensate(ref("compensated"), operation: "add", payload: payload("compensated"))
        _ = try await m.action(ref("done"), operation: "add", payload: payload("done"))

        // Nothing is old enough yet.
        #expect(try await m.forgetFinished(before: Date().addingTimeInterval(-60), limit: 1000) == 0)
        // In batches: one record, then the rest.
        let later = Date().addingTimeInterval(1)
        #expect(try await m.forgetFinished(before: later, limit: 1) == 1)
        let rest = try await m.forgetFinished(before: later, limit: 1000)
        #expect(rest == 5, "an outcome and four barrier rows (try and confirm, action and compensate)")
        #expect(try await m.forgetFinished(before: later, limit: 1000) == 0)

        let outcomes = try await m.read { try $0.query("SELECT gid FROM dtx_outcomes").count }
        #expect(outcomes == 0)
        let barrier = try await m.read { try $0.query("SELECT gid, op FROM dtx_barrier ORDER BY gid").map { "\($0["gid"]!) \($0["op"]!)" } }
        #expect(barrier.count == 2 && barrier.allSatisfy { $0.contains("tried") || $0.contains("done") }, "\(barrier)")
        // The prepared branch is untouched, and still commits.
        #expect(try await m.inDoubt() == [ref("prepared")])
        try await m.commit(ref("prepared"))
        // The tried one is still cancelled properly (not a null cancel), the done step compensated.
        _ = try await m.cancel(ref("tried"), operation: "add", payload: payload("tried"))
        _ = try await m.compensate(ref("done"), operation: "add", payload: payload("done"))
        let markers = try await m.read { try $0.query("SELECT null_compensation FROM dtx_barrier WHERE op IN ('cancel', 'compensate')").map { $0["null_compensation"] } }
        #expect(markers.allSatisfy { $0 == .integer(0) }, "\(markers)")
        await m.close()
    }
}
