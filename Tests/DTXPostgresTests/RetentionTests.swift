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
        // 3PC: a branch committed (its state row is a finished branch's) and one still
        // pre-committed (its state row counts while its transaction is prepared).
        let peers = [ThreePhasePeer(name: "accounts-a", url: "http://127.0.0.1:1")]
        _ = try await m.canCommit(ref("3pc-committed"), operation: "deposit", payload: deposit(3), participants: peers)
        try await m.preCommit(ref("3pc-committed"))
        try await m.commit(ref("3pc-committed"))
        _ = try await m.canCommit(ref("3pc-pre-committed"), operation: "deposit", payload: deposit(3), participants: peers)
        try await m.preCommit(ref("3pc-pre-committed"))

        #expect(try await m.forgetFinished(before: Date().addingTimeInterval(-60), limit: 1000) == 0)
        let later = Date().addingTimeInterval(2)
        #expect(try await m.forgetFinished(before: later, limit: 1) == 1)
        #expect(try await m.forgetFinished(before: later, limit: 1000) == 7, "two outcome rows, a 3PC state row and four barrier rows")
        #expect(try await m.forgetFinished(before: later, limit: 1000) == 0)

        let left = try await bank.observer.withConnection { db in
            (try db.execute("SELECT count(*) AS n FROM dtx_branches").rows.first?.int("n"),
             try db.execute("SELECT count(*) AS n FROM dtx_rollbacks").rows.first?.int("n"),
             try db.execute("SELECT gid || ' ' || op AS row FROM dtx_barrier ORDER BY gid").rows.map { try $0.string("row") ?? "" })
        }
        #expect(left.0 == 0 && left.1 == 0)
        #expect(left.2 == ["done action", "tried try"], "\(left.2)")
        let threePhase = try await bank.observer.withConnection { db in
            try db.execute("SELECT gid || ' ' || state AS row FROM dtx_3pc_state ORDER BY gid").rows.map { try $0.string("row") ?? "" }
        }
        #expect(threePhase == ["3pc-pre-committed pre_committed"], "\(threePhase)")
        // The prepared branches are untouched, and still commit.
        #expect(try await m.inDoubt() == [ref("prepared")])
        try await m.commit(ref("prepared"))
        #expect(try await bank.balance(2) == 101)
        #expect(try await m.threePhaseBranch(ref("3pc-pre-committed"))?.state == .preCommitted)
        try await m.commit(ref("3pc-pre-committed"))
        #expect(try await bank.balance(3) == 102)
    }

    /// A start with prepared branches does not wait for them to create a missing
    /// retention index (CREATE INDEX would wait for them, and only this service's
    /// recovery, after start, finishes them): it goes on without, and the next start
    /// creates it.
    @Test func aMissingRetentionIndexDoesNotHoldUpAStartWithPreparedBranches() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        defer { Task { await bank.close() } }
        let indexes = { () async throws -> Set<String> in
            try await bank.observer.withConnection { db in
                try Set(db.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'dtx_%_at'").rows.compactMap { try $0.string("indexname") })
            }
        }
        #expect(try await indexes() == Set(PostgresResourceManager.retentionIndexes.map(\.name)))
        _ = try await bank.observer.withConnection { db in try db.execute("DROP INDEX dtx_branches_written_at") }
        _ = try await bank.manager.prepare(ref("held"), operation: "deposit", payload: .object(["account": .number(1), "amount": .number(1)]))

        let started = ContinuousClock.now
        let restarted = try await Bank.makeManager(pool: bank.pool)
        #expect(ContinuousClock.now - started < .seconds(10), "the start waited for the prepared branch")
        #expect(try await !indexes().contains("dtx_branches_written_at"))
        try await restarted.commit(ref("held"))
        _ = try await Bank.makeManager(pool: bank.pool)
        #expect(try await indexes().contains("dtx_branches_written_at"))
    }
}
