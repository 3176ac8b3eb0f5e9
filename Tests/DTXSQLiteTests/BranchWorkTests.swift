import DTXCore
import DTXParticipant
import DTXSQLite
import Foundation
import Testing

/// What an operation may write inside a branch, and what happens when a prepared
/// branch's changes meet a database that changed behind the resource manager's back.
@Suite struct BranchWorkTests {
    private let branch = BranchRef(gid: "order-1", branch: 1)

    @Test func aTableWithoutAPrimaryKeyIsRefusedAndNothingIsWritten() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        manager.register("audited-transfer") { payload, connection in
            let result = try Bank.transfer(payload, connection)
            // The operation even swallows SQLite's error: the refusal still stands.
            _ = try? connection.execute("INSERT INTO audit (message) VALUES ('transfer')")
            return result
        }
        for phases in ["two", "one"] {
            let refusal = await businessError {
                if phases == "two" {
                    _ = try await manager.prepare(branch, operation: "audited-transfer", payload: Bank.transfer(1, 2, 30))
                } else {
                    _ = try await manager.commitOnePhase(branch, operation: "audited-transfer", payload: Bank.transfer(1, 2, 30))
                }
            }
            #expect(refusal?.code == "table_without_primary_key")
            #expect(refusal?.message.contains("table audit") == true)
            #expect(refusal?.message.contains("Add a PRIMARY KEY to audit") == true)
        }
        #expect(try await Bank.count("audit", manager) == 0)
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.count("dtx_locks", manager) == 0)
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])

        // A local write may use the table: it is committed at once, nothing is lost.
        try await manager.write { connection in try connection.execute("INSERT INTO audit (message) VALUES ('local')") }
        #expect(try await Bank.count("audit", manager) == 1)
    }

    @Test func aRowWithANullPrimaryKeyIsRefused() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        manager.register("tag") { payload, connection in
            try connection.execute("INSERT INTO tags (name, account) VALUES (?, 1)", [payload?["name"]?.stringValue.map(SQLiteValue.text) ?? .null])
            return nil
        }
        let refusal = await businessError { _ = try await manager.prepare(branch, operation: "tag", payload: .object([:])) }
        #expect(refusal?.code == "null_primary_key")
        #expect(refusal?.message.contains("NOT NULL") == true)
        #expect(try await Bank.count("tags", manager) == 0)

        // With a key, the same operation prepares and commits.
        _ = try await manager.prepare(branch, operation: "tag", payload: .object(["name": .string("vip")]))
        try await manager.commit(branch)
        #expect(try await Bank.count("tags", manager) == 1)
    }

    @Test func statementsThatWouldBreakTheTransactionAreRefused() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let operations: [(String, String, String)] = [
            ("commit", "COMMIT", "transaction_control"),
            ("release", "RELEASE dtx_branch_work", "transaction_control"),
            ("release-job", "RELEASE dtx_job", "transaction_control"),
            ("undo-job", "ROLLBACK TO dtx_job", "transaction_control"),
            ("forge-lock", "DELETE FROM dtx_locks", "reserved_table"),
            ("migrate", "CREATE TABLE extra (id INTEGER PRIMARY KEY)", "schema_change_in_branch"),
        ]
        for (name, sql, code) in operations {
            manager.register(name) { _, connection in
                try connection.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
                try connection.execute(sql)
                return nil
            }
            let refusal = await businessError { _ = try await manager.prepare(BranchRef(gid: name, branch: 1), operation: name, payload: nil) }
            #expect(refusal?.code == code, "\(sql)")
        }
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_prepared", manager) == 0)

        let readRefusal = await businessError {
            _ = try await manager.read { connection in try connection.execute("UPDATE accounts SET balance = 0") }
        }
        #expect(readRefusal?.code == "write_in_read")
        let localRefusal = await businessError {
            _ = try await manager.write { connection in try connection.execute("COMMIT") }
        }
        #expect(localRefusal?.code == "transaction_control")
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
    }

    @Test func compositeTextKeysWithoutRowIDAndAutoincrementTablesRoundTrip() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        try await manager.write { connection in
            try connection.executeScript("""
                CREATE TABLE holdings (owner TEXT NOT NULL, asset TEXT NOT NULL, units REAL NOT NULL, PRIMARY KEY (owner, asset)) WITHOUT ROWID;
                CREATE TABLE journal (id INTEGER PRIMARY KEY AUTOINCREMENT, entry BLOB NOT NULL);
                """)
        }
        manager.register("buy") { payload, connection in
            let owner = payload?["owner"]?.stringValue ?? ""
            try connection.execute("INSERT INTO holdings VALUES (?, ?, ?)", [.text(owner), .text("bond"), .real(1.5)])
            try connection.execute("INSERT INTO journal (id, entry) VALUES (?, ?)", [.integer(Int64(owner.count)), .blob([0, 1, 2])])
            return nil
        }
        let alice = BranchRef(gid: "alice", branch: 1), bob = BranchRef(gid: "bob", branch: 1), carol = BranchRef(gid: "carol", branch: 1)
        _ = try await manager.prepare(alice, operation: "buy", payload: .object(["owner": .string("alice")]))
        // Another owner is another row; the journal key 3 is taken by bob's, 5 is alice's.
        _ = try await manager.prepare(bob, operation: "buy", payload: .object(["owner": .string("bob")]))
        let refusal = await businessError { _ = try await manager.prepare(carol, operation: "buy", payload: .object(["owner": .string("carol")])) }
        #expect(refusal?.code == "row_locked")
        #expect(refusal?.message.contains("journal") == true)
        #expect(try await Bank.count("dtx_locks", manager) == 4)
        try await manager.commit(alice)
        try await manager.commit(bob)
        let rows = try await manager.read { connection in
            try connection.query("SELECT owner, units FROM holdings ORDER BY owner").map { [$0["owner"], $0["units"]] }
        }
        #expect(rows == [[.text("alice"), .real(1.5)], [.text("bob"), .real(1.5)]])
        #expect(try await Bank.count("journal", manager) == 2)
    }

    @Test func aRowChangedBehindTheManagersBackStopsTheCommitLoudly() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))

        // Another program writes the locked row directly, ignoring the locks.
        let intruder = try SQLiteConnection(path: directory.database)
        try intruder.execute("UPDATE accounts SET balance = 999 WHERE id = 1")

        do {
            try await manager.commit(branch)
            Issue.record("the commit papered over a conflict")
        } catch let error as SQLiteResourceManagerError {
            guard case .commitConflict(let failed, let reason) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(failed == branch)
            #expect(reason.contains("accounts (1)"))
            #expect(error.description.contains("heuristic hazard"))
        }
        // Nothing was applied; the branch stays prepared and its rows locked.
        #expect(try await Bank.balances(manager) == [1: 999, 2: 100, 3: 100, 4: 100])
        #expect(try await manager.inDoubt() == [branch])
        #expect(try await Bank.count("dtx_locks", manager) == 2)

        // Repaired by hand, the retried commit goes through.
        try intruder.execute("UPDATE accounts SET balance = 100 WHERE id = 1")
        try await manager.commit(branch)
        #expect(try await Bank.balances(manager) == [1: 70, 2: 130, 3: 100, 4: 100])
    }

    @Test func aTableDroppedUnderAPreparedBranchStopsTheCommit() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        manager.register("tag") { _, connection in
            try connection.execute("INSERT INTO tags (name, account) VALUES ('vip', 1)")
            return nil
        }
        _ = try await manager.prepare(branch, operation: "tag", payload: nil)
        let intruder = try SQLiteConnection(path: directory.database)
        try intruder.execute("DROP TABLE tags")
        do {
            try await manager.commit(branch)
            Issue.record("the commit silently skipped a dropped table")
        } catch let error as SQLiteResourceManagerError {
            #expect(error.description.contains("table tags no longer exists"))
        }
        #expect(try await manager.inDoubt() == [branch])
    }

    /// Locks hold the rows a branch changes, not the rows they refer to: a parent row
    /// deleted under a prepared child insert makes the commit fail, loudly.
    @Test func aForeignKeyBrokenUnderAPreparedBranchStopsTheCommit() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        try await manager.write { connection in
            try connection.execute("CREATE TABLE cards (id INTEGER PRIMARY KEY, account INTEGER NOT NULL REFERENCES accounts (id))")
        }
        manager.register("issue-card") { _, connection in
            try connection.execute("INSERT INTO cards (id, account) VALUES (1, 4)")
            return nil
        }
        _ = try await manager.prepare(branch, operation: "issue-card", payload: nil)
        try await manager.write { connection in try connection.execute("DELETE FROM accounts WHERE id = 4") }
        do {
            try await manager.commit(branch)
            Issue.record("the commit broke a foreign key")
        } catch let error as SQLiteResourceManagerError {
            #expect(error.description.contains("foreign key"))
        }
        #expect(try await manager.inDoubt() == [branch])
        #expect(try await Bank.count("cards", manager) == 0)
    }

    @Test func aBusyDatabaseIsAClearError() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database, busyTimeout: .milliseconds(200))
        let other = try SQLiteConnection(path: directory.database)
        try other.execute("BEGIN IMMEDIATE")
        do {
            _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
            Issue.record("prepared while another connection held the write lock")
        } catch let error as SQLiteError {
            #expect(error.isBusy)
            #expect(error.message.contains("database is busy: another process holds the write lock for more than 0.2 s"))
        }
        try other.execute("ROLLBACK")
        #expect(try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == .prepared(result: .object(["balance": .number(70)])))
    }
}
