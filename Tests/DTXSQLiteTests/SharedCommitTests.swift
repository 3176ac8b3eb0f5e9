import DTXCore
import DTXParticipant
@testable import DTXSQLite
import Foundation
import Synchronization
import Testing

/// Prepares, commits and rollbacks queued together share one COMMIT on the database's
/// thread; each caller must still get its own outcome, and only once its work is
/// committed.
@Suite struct SharedCommitTests {
    @Test func concurrentBranchesEachGetTheirOwnOutcomeAndOnlyTheSuccessfulOnesAreKept() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database, accounts: 64, balance: 10)
        // Branch i moves money out of account i+1 (to account 64 - i); every third asks
        // for more than the account holds and must vote no without disturbing the others.
        let outcomes = try await withThrowingTaskGroup(of: (Int, Bool).self) { group in
            for i in 0..<32 {
                group.addTask {
                    let amount = i % 3 == 0 ? 11 : 4
                    do {
                        _ = try await manager.prepare(BranchRef(gid: "g\(i)", branch: 1), operation: "transfer", payload: Bank.transfer(i + 1, 64 - i, amount))
                        return (i, true)
                    } catch let error as BusinessError where error.code == "insufficient_funds" {
                        return (i, false)
                    }
                }
            }
            return try await group.reduce(into: [Int: Bool]()) { $0[$1.0] = $1.1 }
        }
        let prepared = Set(outcomes.filter(\.value).map(\.key))
        #expect(prepared == Set((0..<32).filter { $0 % 3 != 0 }))
        #expect(try await Bank.count("dtx_prepared", manager) == Int64(prepared.count))
        #expect(try await Bank.count("dtx_locks", manager) == Int64(2 * prepared.count))
        await manager.close()

        // What the callers were told is what is on disk.
        let reopened = try await Bank.open(directory.database, accounts: 64, balance: 10)
        #expect(Set(try await reopened.inDoubt().map(\.gid)) == Set(prepared.map { "g\($0)" }))
        // Phase two, half committed and half rolled back, all at once.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in prepared {
                group.addTask {
                    let branch = BranchRef(gid: "g\(i)", branch: 1)
                    if i % 2 == 0 { try await reopened.commit(branch) } else { try await reopened.rollback(branch) }
                }
            }
            try await group.waitForAll()
        }
        let balances = try await Bank.balances(reopened)
        for i in 0..<32 {
            let moved = prepared.contains(i) && i % 2 == 0 ? 4 : 0
            #expect(balances[Int64(i + 1)] == 10 - Int64(moved), "account \(i + 1)")
            #expect(balances[Int64(64 - i)] == 10 + Int64(moved), "account \(64 - i)")
        }
        #expect(try await Bank.count("dtx_prepared", reopened) == 0)
        #expect(try await Bank.count("dtx_locks", reopened) == 0)
        await reopened.close()
    }

    @Test func anUnresolvedDeferredForeignKeyFailsItsOwnBranchAndNoOther() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await SQLiteResourceManager(path: directory.database)
        try await manager.write { connection in
            try connection.executeScript("""
                CREATE TABLE parents (id INTEGER PRIMARY KEY);
                CREATE TABLE children (id INTEGER PRIMARY KEY,
                    parent INTEGER REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED);
                INSERT INTO parents VALUES (1);
                """)
        }
        manager.register("adopt") { payload, connection in
            let id = Int64(payload?["id"]?.doubleValue ?? 0), parent = Int64(payload?["parent"]?.doubleValue ?? 0)
            try connection.execute("INSERT INTO children VALUES (?, ?)", [.integer(id), .integer(parent)])
            return nil
        }
        // Child 5 names a parent that does not exist: only its own one-phase commit fails.
        let failed = try await withThrowingTaskGroup(of: Int?.self) { group in
            for id in 1...10 {
                group.addTask {
                    do {
                        _ = try await manager.commitOnePhase(BranchRef(gid: "c\(id)", branch: 1), operation: "adopt",
                                                             payload: .object(["id": .number(Double(id)), "parent": .number(id == 5 ? 9 : 1)]))
                        return nil
                    } catch {
                        return id
                    }
                }
            }
            return try await group.reduce(into: [Int]()) { if let id = $1 { $0.append(id) } }
        }
        #expect(failed == [5])
        let children = try await manager.read { connection in
            try connection.query("SELECT id FROM children ORDER BY id").compactMap { $0["id"]?.integerValue }
        }
        #expect(children == [1, 2, 3, 4, 6, 7, 8, 9, 10])
        await manager.close()
    }

    /// What a job of the group saw may be another job's uncommitted work (a ROLLBACK
    /// that found a one-phase commit's outcome record answers `already_committed`): when
    /// the shared COMMIT fails, the job that threw gets the COMMIT's failure too.
    @Test func whenTheSharedCommitFailsEveryJobGetsItsFailureEvenOneThatThrew() async throws {
        struct Refused: Error {}
        let directory = try TemporaryDirectory()
        let database = try await SQLiteDatabase(path: directory.database)
        _ = try await database.run { connection in
            try connection.executeScript("""
                CREATE TABLE parents (id INTEGER PRIMARY KEY);
                CREATE TABLE children (id INTEGER PRIMARY KEY,
                    parent INTEGER REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED);
                """)
        }
        // Hold the thread until both jobs are queued, so that they run as one group.
        let running = Mutex(false)
        let release = DispatchSemaphore(value: 0)
        let holding = Task { try await database.run { _ in running.withLock { $0 = true }; release.wait() } }
        let deadline = ContinuousClock.now + .seconds(20)
        while !running.withLock({ $0 }), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let threw = Task { try await database.run(sharingCommit: true) { _ in throw Refused() } }
        // Outside any job transaction: a deferred foreign key that fails the group's COMMIT.
        let breaks = Task { try await database.run(sharingCommit: true) { try $0.execute("INSERT INTO children VALUES (1, 9)") } }
        while database.queuedJobs < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(database.queuedJobs == 2, "both jobs must be queued behind the holder")
        release.signal()
        try await holding.value
        await #expect { try await threw.value } throws: { ($0 as? SQLiteError)?.message.contains("FOREIGN KEY") == true }
        await #expect(throws: SQLiteError.self) { try await breaks.value }
        #expect(try await database.run { try $0.query("SELECT id FROM children") }.isEmpty)
        await database.close()
    }
}
