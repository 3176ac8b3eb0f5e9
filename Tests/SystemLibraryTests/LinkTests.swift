import CLibPQ
import CSQLite
import Testing

@Suite struct LinkTests {
    @Test func sqliteOpensAnInMemoryDatabase() throws {
        var db: OpaquePointer?
        #expect(sqlite3_open(":memory:", &db) == SQLITE_OK)
        defer { sqlite3_close(db) }
        #expect(sqlite3_exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY); INSERT INTO t VALUES (7);", nil, nil, nil) == SQLITE_OK)
        // The session extension backs the SQLite resource manager.
        var session: OpaquePointer?
        #expect(sqlite3session_create(db, "main", &session) == SQLITE_OK)
        sqlite3session_delete(session)
    }

    @Test func libpqReportsItsVersion() {
        #expect(PQlibVersion() >= 150000)
    }
}
