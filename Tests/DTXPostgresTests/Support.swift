import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXTestSupport
import Foundation
import Logging
import Testing

/// Runs a suite inside one throwaway PostgreSQL server, started before its first test
/// and stopped after its last; tests find it in `PostgresServerScope.current`.
struct PostgresServerScope: SuiteTrait, TestScoping {
    @TaskLocal static var current: PostgresServer?

    let options: PostgresServer.Options

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let server = try PostgresServer(options: options)
        do {
            try await server.start()
            try await Self.$current.withValue(server) { try await function() }
        } catch {
            try? await server.stop()
            throw error
        }
        try await server.stop()
    }

    static func server() throws -> PostgresServer {
        try #require(current, "the suite needs the .postgresServer() trait")
    }
}

extension Trait where Self == PostgresServerScope {
    /// One PostgreSQL server for the whole suite.
    static func postgresServer(_ options: PostgresServer.Options = .init()) -> Self {
        PostgresServerScope(options: options)
    }
}

let testLogger: Logger = {
    var logger = Logger(label: "dtx.postgres.tests")
    logger.logLevel = .notice
    return logger
}()

/// A fresh database (one per test) with an `accounts` table, a resource manager whose
/// operations move money between accounts, and an observer connection that sees only
/// committed data.
struct Bank {
    let server: PostgresServer
    let database: String
    let pool: PostgresPool
    let manager: PostgresResourceManager
    let observer: PostgresPool

    static func open(accounts: [Int: Int], prefix: String = "dtx", poolSize: Int = 4, lockTimeout: Duration = .seconds(5)) async throws -> Bank {
        let server = try PostgresServerScope.server()
        let database = "t_" + UUID().uuidString.prefix(8).lowercased()
        try await server.createDatabase(database)
        let observer = try await PostgresPool(server.connectionString(database: database), size: 1, logger: testLogger)
        try await observer.withConnection { connection in
            try connection.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))")
            for (id, balance) in accounts {
                try connection.execute("INSERT INTO accounts (id, balance) VALUES ($1, $2)", [.int(id), .int(balance)])
            }
        }
        let pool = try await PostgresPool(server.connectionString(database: database), size: poolSize, logger: testLogger)
        let manager = try await makeManager(pool: pool, prefix: prefix, lockTimeout: lockTimeout)
        return Bank(server: server, database: database, pool: pool, manager: manager, observer: observer)
    }

    /// A resource manager with the bank's operations registered.
    static func makeManager(pool: PostgresPool, prefix: String = "dtx", lockTimeout: Duration = .seconds(5)) async throws -> PostgresResourceManager {
        let manager = try await PostgresResourceManager(pool: pool, prefix: prefix, lockTimeout: lockTimeout, logger: testLogger)
        manager.register("withdraw") { payload, connection in
            let account = try field(payload, "account"), amount = try field(payload, "amount")
            let rows = try connection.execute(
                "UPDATE accounts SET balance = balance - $2 WHERE id = $1 AND balance >= $2 RETURNING balance",
                [.int(account), .int(amount)]).rows
            guard let balance = try rows.first?.int("balance") else {
                throw BusinessError(code: "insufficient_funds", message: "account \(account) cannot pay \(amount)")
            }
            return .object(["balance": .number(Double(balance))])
        }
        manager.register("deposit") { payload, connection in
            let account = try field(payload, "account"), amount = try field(payload, "amount")
            let rows = try connection.execute(
                "UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance",
                [.int(account), .int(amount)]).rows
            guard let balance = try rows.first?.int("balance") else {
                throw BusinessError(code: "unknown_account", message: "no account \(account)")
            }
            return .object(["balance": .number(Double(balance))])
        }
        // Both rows in one branch; an overdraft is stopped by the table's CHECK.
        manager.register("transfer") { payload, connection in
            let from = try field(payload, "from"), to = try field(payload, "to"), amount = try field(payload, "amount")
            // Lock in id order, so that concurrent transfers wait instead of deadlocking.
            try connection.execute("SELECT id FROM accounts WHERE id IN ($1, $2) ORDER BY id FOR UPDATE", [.int(from), .int(to)])
            try connection.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1", [.int(from), .int(amount)])
            try connection.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", [.int(to), .int(amount)])
            return nil
        }
        return manager
    }

    func close() async {
        await pool.close()
        await observer.close()
    }

    /// Committed balance of an account, as another connection sees it.
    func balance(_ account: Int) async throws -> Int? {
        try await observer.withConnection { connection in
            try connection.execute("SELECT balance FROM accounts WHERE id = $1", [.int(account)]).rows.first?.int("balance")
        }
    }

    func totalBalance() async throws -> Int {
        try await observer.withConnection { connection in
            try connection.execute("SELECT coalesce(sum(balance), 0)::bigint AS total FROM accounts").rows.first?.int("total") ?? -1
        }
    }

    /// Names of the prepared transactions in this database.
    func preparedTransactions() async throws -> [String] {
        try await observer.withConnection { connection in
            try connection.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid")
                .rows.compactMap { try $0.string("gid") }
        }
    }

    /// Sessions of this database left inside a transaction.
    func openTransactions() async throws -> Int {
        try await observer.withConnection { connection in
            try connection.execute(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
            ).rows.first?.int("n") ?? -1
        }
    }

    func count(_ table: String) async throws -> Int {
        try await observer.withConnection { connection in
            try connection.execute("SELECT count(*) AS n FROM \(table)").rows.first?.int("n") ?? -1
        }
    }
}

/// The name of a branch's prepared transaction: `prefix:gid:branch:digest`.
func preparedName(_ ref: BranchRef, _ operation: String, _ payload: JSONValue?, prefix: String = "dtx") -> String {
    "\(prefix):\(ref.gid):\(ref.branch):\(BranchDigest.of(operation: operation, payload: payload))"
}

/// An integer field of a branch payload.
func field(_ payload: JSONValue?, _ key: String) throws -> Int {
    guard let value = payload?[key]?.doubleValue, let integer = Int(exactly: value) else {
        throw BusinessError(code: "invalid_payload", message: "payload needs an integer \"\(key)\"")
    }
    return integer
}

/// The payload of `withdraw` and `deposit`.
func payload(account: Int, amount: Int) -> JSONValue {
    .object(["account": .number(Double(account)), "amount": .number(Double(amount))])
}

func transfer(from: Int, to: Int, _ amount: Int) -> JSONValue {
    .object(["from": .number(Double(from)), "to": .number(Double(to)), "amount": .number(Double(amount))])
}

/// The code of the `BusinessError` that `work` throws, or nil when it throws none.
func businessErrorCode(_ work: () async throws -> Void) async -> String? {
    do {
        try await work()
        return nil
    } catch let error as BusinessError {
        return error.code
    } catch {
        Issue.record("expected a BusinessError, got \(error)")
        return nil
    }
}

/// Runs `body` with a new pool and closes the pool afterwards, also when `body` throws.
func withPool<T>(_ connectionString: String, size: Int = 1, _ body: (PostgresPool) async throws -> T) async throws -> T {
    let pool = try await PostgresPool(connectionString, size: size, logger: testLogger)
    do {
        let value = try await body(pool)
        await pool.close()
        return value
    } catch {
        await pool.close()
        throw error
    }
}
