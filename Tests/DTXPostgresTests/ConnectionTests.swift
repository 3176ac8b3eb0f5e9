import DTXPostgres
@testable import DTXPostgresClient
import DTXTestSupport
import Foundation
import Testing

@Suite struct UnreachableServerTests {
    @Test func connectingToAClosedPortNamesHostPortAndLibpqsReason() async throws {
        let error = try await #require(throws: PostgresError.self) {
            try await PostgresPool("host=127.0.0.1 port=1 user=dtx dbname=dtx connect_timeout=5", size: 2, logger: testLogger)
        }
        #expect(error.code == .connectionFailed)
        #expect(error.message.contains("127.0.0.1:1"))
        #expect(error.message.contains("Connection refused"))
        #expect(error.message.contains("Check that the server is running"))
    }
}

/// A server that asks for a password and cannot prepare transactions: both kinds of
/// misconfiguration a participant must explain, plus the connection layer itself.
@Suite(.serialized, .postgresServer(.init(maxPreparedTransactions: 0, password: "s3cret")))
struct ConnectionTests {
    @Test func aWrongPasswordIsReportedAsAnAuthenticationFailure() async throws {
        let server = try PostgresServerScope.server()
        let wrong = "host=127.0.0.1 port=\(server.port) user=dtx dbname=dtx password=wrong"
        let error = try await #require(throws: PostgresError.self) {
            try await PostgresPool(wrong, size: 1, logger: testLogger)
        }
        #expect(error.code == .authenticationFailed)
        #expect(error.message.contains("rejected the credentials"))
        #expect(error.message.contains("127.0.0.1:\(server.port)"))

        let unknownUser = "host=127.0.0.1 port=\(server.port) user=nobody dbname=dtx password=s3cret"
        let userError = try await #require(throws: PostgresError.self) {
            try await PostgresPool(unknownUser, size: 1, logger: testLogger)
        }
        #expect(userError.code == .authenticationFailed)
    }

    @Test func aMissingPasswordSaysToAddOne() async throws {
        let server = try PostgresServerScope.server()
        let error = try await #require(throws: PostgresError.self) {
            try await PostgresPool("host=127.0.0.1 port=\(server.port) user=dtx dbname=dtx", size: 1, logger: testLogger)
        }
        #expect(error.code == .authenticationFailed)
        #expect(error.message.contains("add password="))
    }

    @Test func aServerWithoutPreparedTransactionsIsRefusedWithTheSettingToChange() async throws {
        let server = try PostgresServerScope.server()
        try await withPool(server.connectionString(), size: 1) { pool in
            let error = try await #require(throws: PostgresError.self) {
                try await PostgresResourceManager(pool: pool, logger: testLogger)
            }
            #expect(error.code == .preparedTransactionsDisabled)
            #expect(error.message.contains("max_prepared_transactions = 0"))
            #expect(error.message.contains("ALTER SYSTEM SET max_prepared_transactions = 64"))
            #expect(error.message.contains("-c max_prepared_transactions=64"))
            // Nothing was created.
            let tables = try await server.psql("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'dtx_%'")
            #expect(tables == "0")
        }
    }

    @Test func parametersAndResultsRoundTripWithTheirTypes() async throws {
        let server = try PostgresServerScope.server()
        try await withPool(server.connectionString(), size: 1) { pool in
            let row = try await pool.withConnection { connection in
                try connection.execute(
                    "SELECT $1::int8 AS i, $2::float8 AS d, $3::text AS t, $4::bool AS b, $5::text AS n, 'it''s'::text AS q",
                    [.int(-42), .double(2.5), .text("héllo \"quoted\""), .bool(true), nil]
                ).rows.first
            }
            let values = try #require(row)
            #expect(try values.int("i") == -42)
            #expect(try values.double("d") == 2.5)
            #expect(try values.string("t") == "héllo \"quoted\"")
            #expect(try values.bool("b") == true)
            #expect(try values.string("n") == nil)
            #expect(try values.int("n") == nil)
            #expect(try values.string("q") == "it's")
            #expect(throws: PostgresError.self) { try values.int("t") }
            #expect(throws: PostgresError.self) { try values.int("missing") }

            let affected = try await pool.withConnection { connection in
                try connection.execute("CREATE TEMPORARY TABLE t (x int)")
                return try connection.execute("INSERT INTO t SELECT generate_series(1, 3)").affectedRows
            }
            #expect(affected == 3)
        }
    }

    @Test func serverErrorsCarryTheSQLStateAndTheStatement() async throws {
        let server = try PostgresServerScope.server()
        try await withPool(server.connectionString(), size: 1) { pool in
            let error = try await #require(throws: PostgresError.self) {
                try await pool.withConnection { connection in try connection.execute("SELECT * FROM no_such_table") }
            }
            #expect(error.code == .server)
            #expect(error.sqlState == "42P01")
            #expect(error.message.contains("no_such_table"))
            #expect(error.sql == "SELECT * FROM no_such_table")

            let nul = try await #require(throws: PostgresError.self) {
                try await pool.withConnection { connection in try connection.execute("SELECT $1::text", [.text("a\u{0}b")]) }
            }
            #expect(nul.code == .invalidValue)
        }
    }

    @Test func statementsInOneRoundTripRunInOrderAndStopAtTheFirstFailure() async throws {
        let server = try PostgresServerScope.server()
        try await server.createDatabase("pipeline")
        try await withPool(server.connectionString(database: "pipeline"), size: 1) { pool in
            try await pool.withConnection { connection in
                try connection.execute("CREATE TABLE t (id INT PRIMARY KEY)")
                // In order: the insert is visible to the select after it.
                let results = try connection.executeInOneRoundTrip([
                    ("BEGIN", []), ("INSERT INTO t VALUES ($1)", [.int(1)]), ("SELECT count(*) AS n FROM t", []),
                ])
                #expect(try results[2].rows.first?.int("n") == 1)
                try connection.execute("COMMIT")

                // The duplicate key fails; the statement after it is skipped, and the
                // error is the failing statement's.
                let error = try #require(throws: PostgresError.self) {
                    try connection.executeInOneRoundTrip([
                        ("INSERT INTO t VALUES ($1)", [.int(2)]), ("INSERT INTO t VALUES ($1)", [.int(1)]), ("INSERT INTO t VALUES ($1)", [.int(3)]),
                    ])
                }
                #expect(error.sqlState == "23505")
                #expect(error.sql == "INSERT INTO t VALUES ($1)")
                // Outside a transaction block they were one implicit transaction: nothing
                // of it stayed, and the connection serves the next statement.
                #expect(try connection.execute("SELECT array_agg(id ORDER BY id)::text AS ids FROM t").rows.first?.string("ids") == "{1}")
            }
        }
    }

    /// Statements are prepared once per connection and reused; a statement the server
    /// refuses still reports its own error, and utility statements run unprepared.
    @Test func statementsArePreparedOnceAndStillReportTheirOwnErrors() async throws {
        #expect(PostgresConnection.isPreparable("  select 1"))
        #expect(PostgresConnection.isPreparable("WITH x AS (SELECT 1) SELECT * FROM x"))
        #expect(PostgresConnection.isPreparable("\nINSERT INTO t VALUES (1)"))
        #expect(!PostgresConnection.isPreparable("BEGIN"))
        #expect(!PostgresConnection.isPreparable("PREPARE TRANSACTION 'x'"))
        #expect(!PostgresConnection.isPreparable("COMMIT PREPARED 'x'"))
        let server = try PostgresServerScope.server()
        try await server.createDatabase("prepared")
        try await withPool(server.connectionString(database: "prepared"), size: 1) { pool in
            try await pool.withConnection { connection in
                try connection.execute("CREATE TABLE t (id INT PRIMARY KEY, v TEXT)")
                // A prepared SELECT * after its table changed fails once (the server's
                // own rule), then is prepared afresh; so after DEALLOCATE ALL.
                #expect(try connection.execute("SELECT * FROM t").rows.isEmpty)
                try connection.execute("ALTER TABLE t ADD COLUMN w INT")
                #expect(throws: PostgresError.self) { try connection.execute("SELECT * FROM t") }
                #expect(try connection.execute("SELECT * FROM t").rows.isEmpty)
                try connection.execute("ALTER TABLE t DROP COLUMN w")
                try connection.execute("DEALLOCATE ALL")
                let gone = try #require(throws: PostgresError.self) { try connection.execute("SELECT * FROM t") }
                #expect(gone.sqlState == "26000")
                #expect(try connection.execute("SELECT * FROM t").rows.isEmpty)
                for id in 0..<300 { try connection.execute("INSERT INTO t VALUES ($1, $2)", [.int(id), .text("v\(id)")]) }
                // More distinct statements than are kept prepared: the rest run unprepared.
                for id in 0..<300 { #expect(try connection.execute("SELECT v FROM t WHERE id = \(id)").rows.first?.string("v") == "v\(id)") }
                let prepared = try connection.execute("SELECT count(*) AS n FROM pg_prepared_statements").rows.first?.int("n")
                #expect(prepared == 256)
                // The same statement twice in one round trip, the first time it runs.
                let results = try connection.executeInOneRoundTrip([
                    ("BEGIN", []), ("UPDATE t SET v = $1 WHERE id = $2", [.text("a"), .int(1)]), ("UPDATE t SET v = $1 WHERE id = $2", [.text("b"), .int(2)]),
                    ("SELECT string_agg(v, ',' ORDER BY id) AS vs FROM t WHERE id < $1", [.int(3)]),
                ])
                #expect(try results[3].rows.first?.string("vs") == "v0,a,b")
                try connection.execute("ROLLBACK")
                // A refused statement inside a transaction is reported as such (not as an
                // aborted transaction), and the connection serves on after the rollback.
                try connection.execute("BEGIN")
                let error = try #require(throws: PostgresError.self) { try connection.execute("SELECT v FROM no_such_table") }
                #expect(error.sqlState == "42P01")
                try connection.execute("ROLLBACK")
                #expect(try connection.execute("SELECT v FROM t WHERE id = $1", [.int(7)]).rows.first?.string("v") == "v7")
            }
        }
    }

    @Test func aTransactionLeftOpenIsRolledBackBeforeTheNextUse() async throws {
        let server = try PostgresServerScope.server()
        try await server.createDatabase("leftopen")
        try await withPool(server.connectionString(database: "leftopen"), size: 1) { pool in
            try await pool.withConnection { connection in
                try connection.execute("CREATE TABLE t (x int)")
                try connection.execute("BEGIN")
                try connection.execute("INSERT INTO t VALUES (1)")
            }
            let rows = try await pool.withConnection { connection in
                try connection.execute("SELECT count(*) AS n FROM t").rows.first?.int("n")
            }
            #expect(rows == 0)
        }
    }

    @Test func aTerminatedConnectionIsReestablishedBeforeTheNextUse() async throws {
        let server = try PostgresServerScope.server()
        try await withPool(server.connectionString(), size: 1) { pool in
            let pid = try await pool.withConnection { connection in
                try connection.execute("SELECT pg_backend_pid() AS pid").rows.first?.int("pid")
            }
            let backend = try #require(pid)
            #expect(try await server.psql("SELECT pg_terminate_backend(\(backend), 5000)") == "t")
            let newPID = try await pool.withConnection { connection in
                try connection.execute("SELECT pg_backend_pid() AS pid").rows.first?.int("pid")
            }
            #expect(newPID != nil && newPID != backend)
        }
    }

    @Test func aClosedPoolRefusesWork() async throws {
        let server = try PostgresServerScope.server()
        let pool = try await PostgresPool(server.connectionString(), size: 2, logger: testLogger)
        await pool.close()
        let error = try await #require(throws: PostgresError.self) {
            try await pool.withConnection { connection in try connection.execute("SELECT 1") }
        }
        #expect(error.code == .poolClosed)
    }

    /// Finishing a prepared transaction never waits behind a branch's work: one
    /// connection is kept for it, and it goes before queued work.
    @Test func finishingWorkHasAConnectionWhileOtherWorkWaitsForRows() async throws {
        let server = try PostgresServerScope.server()
        try await withPool(server.connectionString(), size: 2) { pool in
            let clock = ContinuousClock()
            let start = clock.now
            // Work that waits (as a PREPARE waits for a locked row) holds one connection...
            async let waiting: Duration = pool.withConnection { connection in
                try connection.execute("SELECT pg_sleep(1.5)")
                return clock.now - start
            }
            try await Task.sleep(for: .milliseconds(200))
            // ...so more work waits for it, while finishing work gets the other connection.
            async let queued: Duration = pool.withConnection { _ in clock.now - start }
            try await Task.sleep(for: .milliseconds(100))
            let finished = try await pool.withConnection(for: .finish) { _ in clock.now - start }
            let (waited, ran) = try await (waiting, queued)
            // The order, not a time: the finishing work ran while the waiting work still held
            // its connection, and the queued work only after that connection came back.
            #expect(finished < waited)
            #expect(ran >= waited)
        }
    }

    @Test func badPoolAndPrefixConfigurationIsRefused() async throws {
        let server = try PostgresServerScope.server()
        let size = try await #require(throws: PostgresError.self) {
            try await PostgresPool(server.connectionString(), size: 0, logger: testLogger)
        }
        #expect(size.code == .invalidConfiguration)

        try await withPool(server.connectionString(), size: 1) { pool in
            for prefix in ["", "has:colon", "with space", "x'y", String(repeating: "a", count: 17)] {
                let error = try await #require(throws: PostgresError.self) {
                    try await PostgresResourceManager(pool: pool, prefix: prefix, logger: testLogger)
                }
                #expect(error.code == .invalidConfiguration)
            }
        }
    }
}
