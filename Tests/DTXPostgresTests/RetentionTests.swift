import DTXCore
import DTXParticipant
import DTXPostgres
import Foundation
import Testing

/// The PostgreSQL resource manager deletes the records of finished branches older than a
/// cutoff, in bounded statements, and never one an unfinished branch needs.
@Suite(.serialized, .postgresServer())
struct PostgresRetentionTests {
    private func ref(_ gid: String) -> BranchRef { BranchRef(gid: gid, branch: 0) }

    @Test func finishedBranchesGoAndUnfinishedOnesStay() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100, 3: 100])
        defer { Task { await bank.close() } }
        let m = bank.manager
        let nothing: PostgresResourceManager.Operation = { _, _ in nil }
        m.register(tcc: "hold", try: nothing, confirm: nothing, cancel: nothing)
        m.register(saga: "step", action: nothing, compensate: nothing)
        let deposit = { (account: Int) -> JSONValue in .object(["account": .number(Double(account)), "amount": .number(1)]) }

        _ = try await m.prepare(ref("committed"), operation: "deposit", payload: deposit(1))
        try await m.commit(ref("committed"))
        try await m.rollback(ref("rolled-back"))
        _ = try await m.prepare(ref("prepared"), operation: "deposit", payload: deposit(2))
        _ = try await m.try(ref("confirmed"), operation: "hold", payload: nil)
        _ = try await m.confirm(ref("confirmed"), operation: "hold", payload: nil)
        _ = try await m.try(ref("tried"), operation: "hold", payload: nil)
        _ = try await m.action(ref("compensated"), operation: "step", payload: nil)
        _ = try await m.compensate(ref("compensated"), operation: "step", payload: nil)
        _ = try await m.action(ref("done"), operation: "step", payload: nil)

        #expect(try await m.forgetFinished(before: Date().addingTimeInterval(-60), limit: 1000) == 0)
        let later = Date().addingTimeInterval(2)
        #expect(try await m.forgetFinished(before: later, limit: 1) == 1)
        #expect(try await m.forgetFinished(before: later, limit: 1000) == 5, "an outcome row and four barrier rows")
        #expect(try await m.forgetFinished(before: later, limit: 1000) == 0)

        let left = try await bank.observer.withConnection { db in
            (try db.execute("SELECT count(*) AS n FROM dtx_branches").rows.first?.int("n"),
             try db.execute("SELECT count(*) AS n FROM dtx_rollbacks").rows.first?.int("n"),
             try db.execute("SELECT gid || ' ' || op AS row FROM dtx_barrier ORDER BY gid").rows.map { try $0.string("row") ?? "" })
        }
        #expect(left.0 == 0 && left.1 == 0)
        #expect(left.2 == ["done action", "tried try"], "\(left.2)")
        // The prepared branch is untouched, and still commits.
        #expect(try await m.inDoubt() == [ref("prepared")])
        try await m.commit(ref("prepared"))
        #expect(try await bank.balance(2) == 101)
    }
}
