import DTXCore
import DTXParticipant
import DTXSQLite
import Foundation
import Testing

/// The two-phase-commit duties of the SQLite resource manager, on real database files:
/// durable prepare, idempotent phase two, presumed abort, refusals that change nothing.
@Suite struct SQLiteResourceManagerTests {
    private let branch = BranchRef(gid: "order-1", branch: 1)

    @Test func prepareLeavesRowsUntouchedAndItsVoteSurvivesReopening() async throws {
        let directory = try TemporaryDirectory()
        let first = try await Bank.open(directory.database)
        let outcome = try await first.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        #expect(outcome == .prepared(result: .object(["balance": .number(70)])))
        #expect(try await Bank.balances(first) == [1: 100, 2: 100, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_prepared", first) == 1)
        #expect(try await Bank.count("dtx_locks", first) == 2)
        await first.close()

        let reopened = try await Bank.open(directory.database)
        #expect(try await reopened.inDoubt() == [branch])
        #expect(try await Bank.balances(reopened) == [1: 100, 2: 100, 3: 100, 4: 100])
        // A duplicate PREPARE answers the stored vote without running the operation again.
        #expect(try await reopened.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == outcome)

        try await reopened.commit(branch)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await reopened.inDoubt().isEmpty)
        #expect(try await Bank.count("dtx_locks", reopened) == 0)
        #expect(try await Bank.count("dtx_prepared", reopened) == 0)

        try await reopened.commit(branch)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(await businessError { try await reopened.rollback(branch) }?.code == "already_committed")
        // A PREPARE arriving after the commit repeats the vote, and changes nothing.
        #expect(try await reopened.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == outcome)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        await reopened.close()

        let third = try await Bank.open(directory.database)
        try await third.commit(branch)
        #expect(try await Bank.balances(third) == [1: 70, 2: 130, 3: 100, 4: 100])
    }

    @Test func rollbackDiscardsTheChangesetAndFreesTheLocks() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        try await manager.rollback(branch)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_locks", manager) == 0)
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await manager.inDoubt().isEmpty)

        try await manager.rollback(branch)
        #expect(await businessError { try await manager.commit(branch) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) }?.code == "already_rolled_back")

        // The rows are free: another branch prepares on them and commits.
        let next = BranchRef(gid: "order-2", branch: 1)
        _ = try await manager.prepare(next, operation: "transfer", payload: Bank.transfer(1, 2, 40))
        try await manager.commit(next)
        #expect(try await Bank.balances(manager) == [1: 60, 2: 140, 3: 100, 4: 100])
    }

    @Test func rollbackOfAnUnknownBranchSucceedsAndRefusesALatePrepare() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        try await manager.rollback(branch)
        await manager.close()

        // Remembered durably: a PREPARE overtaken by its ROLLBACK never prepares.
        let reopened = try await Bank.open(directory.database)
        let refusal = await businessError { _ = try await reopened.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) }
        #expect(refusal?.code == "already_rolled_back")
        #expect(refusal?.message.contains("order-1/1") == true)
        #expect(try await Bank.count("dtx_prepared", reopened) == 0)
        #expect(try await Bank.balances(reopened) == [1: 100, 2: 100, 3: 100, 4: 100])
    }

    @Test func commitOfABranchNeverPreparedIsRefused() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let refusal = await businessError { try await manager.commit(branch) }
        #expect(refusal?.code == "unknown_branch")
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)
    }

    @Test func aReadOnlyOperationVotesReadOnlyAndRecordsNothing() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let outcome = try await manager.prepare(branch, operation: "balance", payload: .object(["account": .number(3)]))
        #expect(outcome == .readOnly(result: .number(100)))
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.count("dtx_locks", manager) == 0)
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)
        #expect(try await manager.inDoubt().isEmpty)
    }

    @Test func aBusinessRefusalRecordsNothingAndLocksNothing() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let refusal = await businessError { _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 500)) }
        #expect(refusal?.code == "insufficient_funds")
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.count("dtx_locks", manager) == 0)
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])

        // Not remembered as a decision: the coordinator aborts the transaction, and the
        // same rows serve the next one.
        let next = BranchRef(gid: "order-2", branch: 1)
        _ = try await manager.prepare(next, operation: "transfer", payload: Bank.transfer(1, 2, 100))
        try await manager.commit(next)
        #expect(try await Bank.balances(manager) == [1: 0, 2: 200, 3: 100, 4: 100])
    }

    @Test func aBrokenConstraintAndAnUnknownOperationAreBusinessRefusals() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        manager.register("overdraw") { _, connection in
            try connection.execute("UPDATE accounts SET balance = balance - 1000 WHERE id = 1")
            return nil
        }
        let constraint = await businessError { _ = try await manager.prepare(branch, operation: "overdraw", payload: nil) }
        #expect(constraint?.code == "constraint_violation")
        #expect(constraint?.message.contains("CHECK constraint failed") == true)

        let unknown = await businessError { _ = try await manager.prepare(branch, operation: "teleport", payload: nil) }
        #expect(unknown?.code == "unknown_operation")
        #expect(unknown?.message.contains("teleport") == true)
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
    }

    @Test func commitOnePhaseAppliesOnceAndRepeatsItsResult() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let result = try await manager.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        #expect(result == .object(["balance": .number(70)]))
        #expect(try await Bank.balances(manager) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.count("dtx_locks", manager) == 0)
        await manager.close()

        let reopened = try await Bank.open(directory.database)
        #expect(try await reopened.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == result)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        try await reopened.commit(branch)
        #expect(await businessError { try await reopened.rollback(branch) }?.code == "already_committed")

        // A refused one-phase commit changes nothing and is not remembered.
        let poor = BranchRef(gid: "order-2", branch: 1)
        #expect(await businessError { _ = try await reopened.commitOnePhase(poor, operation: "transfer", payload: Bank.transfer(1, 2, 500)) }?.code == "insufficient_funds")
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_outcomes", reopened) == 1)
    }

    @Test func commitOnePhaseOfAPreparedBranchCommitsItsChangeset() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        let result = try await manager.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        #expect(result == .object(["balance": .number(70)]))
        #expect(try await Bank.balances(manager) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await manager.inDoubt().isEmpty)
    }

    @Test func aCrashBetweenPrepareAndCommitLeavesTheBranchInDoubt() async throws {
        let directory = try TemporaryDirectory()
        // The manager is dropped without closing or deciding: only the file remains.
        do {
            let manager = try await Bank.open(directory.database)
            _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
            _ = try await manager.prepare(BranchRef(gid: "order-2", branch: 7), operation: "transfer", payload: Bank.transfer(3, 4, 5))
        }
        let reopened = try await Bank.open(directory.database)
        #expect(Set(try await reopened.inDoubt()) == [branch, BranchRef(gid: "order-2", branch: 7)])
        // Its rows are still locked until the coordinator answers.
        let refusal = await businessError { _ = try await reopened.prepare(BranchRef(gid: "order-3", branch: 1), operation: "transfer", payload: Bank.transfer(2, 3, 1)) }
        #expect(refusal?.code == "row_locked")
        try await reopened.commit(branch)
        try await reopened.rollback(BranchRef(gid: "order-2", branch: 7))
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await reopened.inDoubt().isEmpty)
    }

    @Test func theTablesDDLIsPublishedAndCreated() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let tables = try await manager.read { connection in
            try connection.query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'dtx\\_%' ESCAPE '\\' ORDER BY name").compactMap { $0["name"]?.textValue }
        }
        #expect(tables == ["dtx_3pc", "dtx_barrier", "dtx_locks", "dtx_messages", "dtx_outcomes", "dtx_prepared"])
        for table in tables { #expect(SQLiteParticipantSchema.ddl.contains("CREATE TABLE IF NOT EXISTS \(table)")) }
        let mode = try await manager.read { connection in try connection.query("PRAGMA journal_mode").first?.values.first }
        #expect(mode == .text("wal"))
    }
}
