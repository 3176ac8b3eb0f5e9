import DTXCore
import DTXParticipant
import DTXSQLite
import Foundation
import Testing

/// A repeated PREPARE or one-phase commit of a (gid, branch) is a duplicate only when it
/// asks for the same work: a gid the coordinator lost and reused with another spec must
/// not get the old branch's work committed under it.
@Suite struct BranchDigestTests {
    private let branch = BranchRef(gid: "order-1", branch: 1)

    @Test func aRepeatedPrepareForOtherWorkIsRefusedAndTheFirstWorkCommits() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let outcome = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        #expect(try await Self.digests("dtx_prepared", manager) == [BranchDigest.of(operation: "transfer", payload: Bank.transfer(1, 2, 30))])

        // The same work again: a duplicate.
        #expect(try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == outcome)
        // Another payload, another operation: refused.
        let otherAmount = await businessError { _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 40)) }
        #expect(otherAmount?.code == "branch_mismatch")
        #expect(otherAmount?.message.contains("order-1/1") == true)
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "deposit", payload: Bank.transfer(1, 2, 30)) }?.code == "branch_mismatch")
        // A one-phase commit asking for other work does not commit the prepared branch.
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(3, 4, 30)) }?.code == "branch_mismatch")

        // Nothing changed: still prepared, its locks and changeset kept, rows untouched.
        #expect(try await manager.inDoubt() == [branch])
        #expect(try await Bank.count("dtx_prepared", manager) == 1)
        #expect(try await Bank.count("dtx_locks", manager) == 2)
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
        await manager.close()

        // The digest is durable; committing applies the FIRST work.
        let reopened = try await Bank.open(directory.database)
        #expect(await businessError { _ = try await reopened.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 40)) }?.code == "branch_mismatch")
        try await reopened.commit(branch)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await Self.digests("dtx_outcomes", reopened) == [BranchDigest.of(operation: "transfer", payload: Bank.transfer(1, 2, 30))])
    }

    @Test func aCommittedBranchRefusesARepeatAskingForOtherWork() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let outcome = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        try await manager.commit(branch)

        // The same work: answered as before (the vote, the result), nothing done again.
        #expect(try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == outcome)
        #expect(try await manager.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == .object(["balance": .number(70)]))
        // Other work: refused.
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 40)) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "deposit", payload: .object(["account": .number(1), "amount": .number(5)])) }?.code == "branch_mismatch")
        #expect(try await Bank.balances(manager) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_outcomes", manager) == 1)
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.count("dtx_locks", manager) == 0)

        // A one-phase commit stores its digest too.
        let single = BranchRef(gid: "order-2", branch: 1)
        let result = try await manager.commitOnePhase(single, operation: "transfer", payload: Bank.transfer(3, 4, 10))
        #expect(result == .object(["balance": .number(90)]))
        await manager.close()
        let reopened = try await Bank.open(directory.database)
        #expect(try await reopened.commitOnePhase(single, operation: "transfer", payload: Bank.transfer(3, 4, 10)) == result)
        #expect(await businessError { _ = try await reopened.commitOnePhase(single, operation: "transfer", payload: Bank.transfer(3, 4, 20)) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await reopened.prepare(single, operation: "transfer", payload: Bank.transfer(3, 4, 20)) }?.code == "branch_mismatch")
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 90, 4: 110])

        // A rolled-back branch refuses as before, whatever the work.
        let rolledBack = BranchRef(gid: "order-3", branch: 1)
        _ = try await reopened.prepare(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 5))
        try await reopened.rollback(rolledBack)
        #expect(await businessError { _ = try await reopened.prepare(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 5)) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await reopened.prepare(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 6)) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await reopened.commitOnePhase(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 6)) }?.code == "already_rolled_back")
    }

    /// The resource manager's tables as they were created before digests were kept.
    private static let ddlWithoutDigests = """
        CREATE TABLE IF NOT EXISTS dtx_prepared (
            gid TEXT NOT NULL,
            branch INTEGER NOT NULL,
            operation TEXT NOT NULL,
            changeset BLOB NOT NULL,
            result TEXT,
            prepared_at TEXT NOT NULL,
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
            PRIMARY KEY (gid, branch)
        );
        """

    @Test func aFileCreatedBeforeDigestsGainsTheColumnAndAcceptsRepeatsAsBefore() async throws {
        // A prepared branch's changeset and locks, taken from a scratch database with the
        // same accounts.
        let scratch = try TemporaryDirectory()
        let source = try await Bank.open(scratch.database)
        _ = try await source.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        let changeset = try await source.read { connection in try connection.query("SELECT changeset FROM dtx_prepared").first?.values[0] }
        let locks = try await source.read { connection in try connection.query("SELECT tbl, pk FROM dtx_locks").map(\.values) }
        await source.close()

        // The old file: the tables without digests, one branch prepared, one committed,
        // one rolled back.
        let directory = try TemporaryDirectory()
        do {
            let old = try SQLiteConnection(path: directory.database)
            try old.executeScript(Self.ddlWithoutDigests + Bank.schema)
            for id in 1...4 { try old.execute("INSERT INTO accounts (id, balance) VALUES (?, 100)", [.integer(Int64(id))]) }
            try old.execute(
                "INSERT INTO dtx_prepared (gid, branch, operation, changeset, result, prepared_at) VALUES ('order-1', 1, 'transfer', ?, '{\"balance\":70}', '2024-01-01T00:00:00.000Z')",
                [try #require(changeset)])
            for lock in locks {
                try old.execute("INSERT INTO dtx_locks (tbl, pk, gid, branch) VALUES (?, ?, 'order-1', 1)", lock)
            }
            try old.execute("INSERT INTO dtx_outcomes (gid, branch, outcome, result, decided_at) VALUES ('old-committed', 1, 'committed', '{\"balance\":50}', '2024-01-01T00:00:00.000Z')")
            try old.execute("INSERT INTO dtx_outcomes (gid, branch, outcome, result, decided_at) VALUES ('old-rolled-back', 1, 'rolled_back', NULL, '2024-01-01T00:00:00.000Z')")
        }

        let manager = try await Bank.open(directory.database)
        #expect(try await Self.columns("dtx_prepared", manager).last == "digest")
        #expect(try await Self.columns("dtx_outcomes", manager).last == "digest")
        #expect(try await Self.digests("dtx_prepared", manager) == [nil])
        #expect(try await manager.inDoubt() == [branch])

        // Records without a digest accept a repeat as a duplicate, as before.
        #expect(try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 40)) == .prepared(result: .object(["balance": .number(70)])))
        let committed = BranchRef(gid: "old-committed", branch: 1)
        #expect(try await manager.prepare(committed, operation: "transfer", payload: Bank.transfer(3, 4, 1)) == .prepared(result: .object(["balance": .number(50)])))
        #expect(try await manager.commitOnePhase(committed, operation: "deposit", payload: nil) == .object(["balance": .number(50)]))
        #expect(await businessError { _ = try await manager.prepare(BranchRef(gid: "old-rolled-back", branch: 1), operation: "transfer", payload: Bank.transfer(1, 2, 1)) }?.code == "already_rolled_back")

        // The old prepared branch commits its changeset (its locks held until then).
        #expect(await businessError { _ = try await manager.prepare(BranchRef(gid: "order-9", branch: 1), operation: "transfer", payload: Bank.transfer(2, 3, 1)) }?.code == "row_locked")
        try await manager.commit(branch)
        #expect(try await Bank.balances(manager) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_locks", manager) == 0)

        // New branches get digests, and a second open finds the columns already there.
        let fresh = BranchRef(gid: "order-10", branch: 1)
        _ = try await manager.prepare(fresh, operation: "transfer", payload: Bank.transfer(3, 4, 10))
        await manager.close()
        let reopened = try await Bank.open(directory.database)
        #expect(try await Self.columns("dtx_prepared", reopened).filter { $0 == "digest" }.count == 1)
        #expect(await businessError { _ = try await reopened.prepare(fresh, operation: "transfer", payload: Bank.transfer(3, 4, 11)) }?.code == "branch_mismatch")
        try await reopened.commit(fresh)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 90, 4: 110])
    }

    /// The `digest` column of every row of `table`.
    private static func digests(_ table: String, _ manager: SQLiteResourceManager) async throws -> [String?] {
        try await manager.read { connection in
            try connection.query("SELECT digest FROM \(table) ORDER BY gid, branch").map { $0.values[0].textValue }
        }
    }

    /// The columns of `table`, in order.
    private static func columns(_ table: String, _ manager: SQLiteResourceManager) async throws -> [String] {
        try await manager.read { connection in
            try connection.query("SELECT name FROM pragma_table_info(?) ORDER BY cid", [.text(table)]).compactMap { $0.values[0].textValue }
        }
    }
}
