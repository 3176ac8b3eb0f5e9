@testable import DTXSQLite
import Foundation
import Testing

/// The connection layer: parameterised statements, every value type, and errors that
/// name the statement and say what to do.
@Suite struct SQLiteConnectionTests {
    @Test func valuesOfEveryTypeRoundTrip() throws {
        let directory = try TemporaryDirectory()
        let connection = try SQLiteConnection(path: directory.database)
        try connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, value ANY) STRICT")
        let values: [SQLiteValue] = [.null, .integer(.min), .real(-0.5), .text("é'\"\u{0}x"), .text(""), .blob([]), .blob([0, 255, 7])]
        for (id, value) in values.enumerated() {
            #expect(try connection.execute("INSERT INTO t (id, value) VALUES (?, ?)", [.integer(Int64(id)), value]) == 1)
        }
        let rows = try connection.query("SELECT id, value FROM t ORDER BY id")
        #expect(rows.map { $0["value"] } == values)
        #expect(rows.first?.columns == ["id", "value"])
        #expect(try connection.execute("DELETE FROM t WHERE id > ?", [3]) == 3)
    }

    @Test func errorsNameTheStatementAndTheMistake() async throws {
        let directory = try TemporaryDirectory()
        let connection = try SQLiteConnection(path: directory.database)
        #expect {
            try connection.query("SELECT * FROM missing")
        } throws: { error in
            let error = try #require(error as? SQLiteError)
            return error.message.contains("no such table: missing") && error.sql == "SELECT * FROM missing" && error.description.contains("SELECT * FROM missing")
        }
        #expect {
            try connection.execute("SELECT ?, ?", [1])
        } throws: { error in
            (error as? SQLiteError)?.message == "the statement has 2 parameter(s) but 1 value(s) were given"
        }
        #expect {
            try connection.execute("SELECT 1; SELECT 2")
        } throws: { error in
            (error as? SQLiteError)?.message.contains("more than one statement") == true
        }
        #expect {
            try SQLiteConnection(path: directory.path + "/no/such/dir/db.sqlite")
        } throws: { error in
            (error as? SQLiteError)?.message.contains("check that its directory exists") == true
        }
        await #expect(throws: SQLiteError.self) { try await SQLiteResourceManager(path: directory.path + "/no/such/dir/db.sqlite") }
    }

    @Test func compiledStatementsAreKeptAndStillRunRightAfterErrorsAndSchemaChanges() throws {
        let directory = try TemporaryDirectory()
        let connection = try SQLiteConnection(path: directory.database)
        let other = try SQLiteConnection(path: directory.database, busyTimeout: .milliseconds(100))
        try connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        let cachedBefore = connection.cachedStatements
        for id in 1...5 { try connection.execute("INSERT INTO t (id, value) VALUES (?, ?)", [.integer(Int64(id)), .text("v\(id)")]) }
        #expect(connection.cachedStatements == cachedBefore + 1)
        // A refused run of a kept statement reports its own error, and the statement is
        // reset: the next run binds and runs (binding an un-reset statement fails).
        #expect(throws: SQLiteError.self) { try connection.execute("INSERT INTO t (id, value) VALUES (?, ?)", [.integer(1), .text("dup")]) }
        #expect(throws: SQLiteError.self) { try connection.execute("INSERT INTO t (id, value) VALUES (?, ?)", [.integer(9)]) }
        #expect(throws: SQLiteError.self) { try connection.execute("INSERT INTO t (id, value) VALUES (?, ?)", [.integer(6), .null]) }
        #expect(try connection.execute("INSERT INTO t (id, value) VALUES (?, ?)", [.integer(6), .text("v6")]) == 1)
        // Inside a transaction too: the failed statement holds nothing once it is rolled back.
        try connection.execute("BEGIN IMMEDIATE")
        #expect(throws: SQLiteError.self) { try connection.execute("INSERT INTO t (id, value) VALUES (?, ?)", [.integer(1), .text("dup")]) }
        try connection.execute("ROLLBACK")
        #expect(!connection.isInTransaction)
        try other.execute("BEGIN IMMEDIATE")
        try other.execute("ROLLBACK")
        // The same text in two Unicode forms is two statements.
        #expect(try connection.execute("INSERT INTO t (id, value) VALUES (7, 'caf\u{E9}')") == 1)
        #expect(try connection.query("SELECT id FROM t WHERE value = 'cafe\u{301}'").isEmpty)
        #expect(try connection.query("SELECT id FROM t WHERE value = 'caf\u{E9}'").first?["id"] == .integer(7))
        // A schema change recompiles a cached statement.
        #expect(try connection.query("SELECT * FROM t WHERE id = ?", [2]).first?.columns == ["id", "value"])
        try connection.execute("ALTER TABLE t ADD COLUMN extra INTEGER DEFAULT 7")
        #expect(try connection.query("SELECT * FROM t WHERE id = ?", [2]).first?["extra"] == .integer(7))
        // Beyond the limit, statements are compiled per call and still run.
        for n in 0..<(SQLiteConnection.statementCacheLimit + 10) { _ = try connection.query("SELECT \(n) AS n") }
        #expect(connection.cachedStatements == SQLiteConnection.statementCacheLimit)
        #expect(try connection.query("SELECT \(SQLiteConnection.statementCacheLimit + 99) AS n").first?["n"] == .integer(Int64(SQLiteConnection.statementCacheLimit + 99)))
    }

    @Test func theDatabaseIsInWALModeWithFullSynchronousAndForeignKeys() throws {
        let directory = try TemporaryDirectory()
        let connection = try SQLiteConnection(path: directory.database)
        #expect(try connection.query("PRAGMA journal_mode").first?.values.first == .text("wal"))
        #expect(try connection.query("PRAGMA synchronous").first?.values.first == .integer(2))
        #expect(try connection.query("PRAGMA foreign_keys").first?.values.first == .integer(1))
    }

    @Test func aDatabaseRunsEveryJobOnItsOwnThread() async throws {
        let directory = try TemporaryDirectory()
        let database = try await SQLiteDatabase(path: directory.database)
        _ = try await database.run { try $0.execute("CREATE TABLE log (id INTEGER PRIMARY KEY)") }
        let threads = try await withThrowingTaskGroup(of: (UInt, String).self) { group in
            for id in 0..<50 {
                group.addTask {
                    try await database.run { connection in
                        try connection.execute("INSERT INTO log (id) VALUES (?)", [.integer(Int64(id))])
                        return (UInt(pthread_self()), Thread.current.name ?? "")
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(Set(threads.map(\.0)).count == 1)
        // The system sees the name too.
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
        let names = tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
        #expect(names.contains("dtx-sqlite\n"))
        #expect(threads.allSatisfy { $0.1 == "dtx-sqlite" }, "\(Set(threads.map(\.1)))")
        #expect(try await database.run { try $0.query("SELECT count(*) FROM log").first?.values.first } == .integer(50))
        await database.close()
        await #expect(throws: SQLiteError.self) { try await database.run { _ in } }
    }
}
