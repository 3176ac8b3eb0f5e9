import DTXCore
import DTXParticipant
import DTXPostgres
import DTXSQLite
import Logging

/// The accounts table and the two branch operations, on either database.
///
/// `debit` and `credit` take `{"account": ID, "amount": CENTS}`; a debit that would take
/// the balance below zero, or an unknown account, is a business refusal (the NO vote).
protocol AccountsStore: Sendable {
    var resourceManager: any ResourceManager { get }
    /// Opens an account with a starting balance (a plain local transaction).
    func open(_ id: String, balance: Int) async throws
    func accounts() async throws -> [(id: String, balance: Int)]
    /// A plain local debit or credit, outside any global transaction (what an application
    /// without a coordinator would call): returns the new balance.
    func move(_ movement: Movement, debit: Bool) async throws -> Int
}

/// What a branch asks: which account, how much.
struct Movement {
    var account: String
    var amount: Int

    init(_ payload: JSONValue?) throws {
        guard let account = payload?["account"]?.stringValue, !account.isEmpty,
              let amount = payload?["amount"]?.doubleValue, amount.rounded() == amount, amount > 0, amount < 1e15 else {
            throw BusinessError(code: "invalid_payload", message: "a branch payload is {\"account\": ID, \"amount\": whole number above 0}")
        }
        self.account = account
        self.amount = Int(amount)
    }

    static func insufficient(_ account: String) -> BusinessError {
        BusinessError(code: "insufficient_funds", message: "account \(account) has too little money for this debit")
    }

    static func unknown(_ account: String) -> BusinessError {
        BusinessError(code: "unknown_account", message: "no account \(account) here")
    }
}

struct SQLiteAccounts: AccountsStore {
    let manager: SQLiteResourceManager
    var resourceManager: any ResourceManager { manager }

    static let ddl = "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))"

    init(path: String) async throws {
        manager = try await SQLiteResourceManager(path: path)
        _ = try await manager.write { try $0.execute(Self.ddl) }
        manager.register("debit") { payload, db in
            let move = try Movement(payload)
            guard try db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?", [.integer(Int64(move.amount)), .text(move.account), .integer(Int64(move.amount))]) == 1 else {
                throw try db.query("SELECT 1 FROM accounts WHERE id = ?", [.text(move.account)]).isEmpty ? Movement.unknown(move.account) : Movement.insufficient(move.account)
            }
            return try Self.balance(db, move.account)
        }
        manager.register("credit") { payload, db in
            let move = try Movement(payload)
            guard try db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", [.integer(Int64(move.amount)), .text(move.account)]) == 1 else {
                throw Movement.unknown(move.account)
            }
            return try Self.balance(db, move.account)
        }
    }

    private static func balance(_ db: SQLiteConnection, _ account: String) throws -> JSONValue {
        let balance = try db.query("SELECT balance FROM accounts WHERE id = ?", [.text(account)]).first?["balance"]
        if case .integer(let value)? = balance { return .object(["account": .string(account), "balance": .number(Double(value))]) }
        return .object(["account": .string(account)])
    }

    func open(_ id: String, balance: Int) async throws {
        _ = try await manager.write { try $0.execute("INSERT INTO accounts (id, balance) VALUES (?, ?)", [.text(id), .integer(Int64(balance))]) }
    }

    func move(_ movement: Movement, debit: Bool) async throws -> Int {
        try await manager.write { db in
            let sql = debit ? "UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?" : "UPDATE accounts SET balance = balance + ? WHERE id = ?"
            let amount = SQLiteValue.integer(Int64(movement.amount))
            let parameters: [SQLiteValue] = debit ? [amount, .text(movement.account), amount] : [amount, .text(movement.account)]
            guard try db.execute(sql, parameters) == 1 else {
                throw try db.query("SELECT 1 FROM accounts WHERE id = ?", [.text(movement.account)]).isEmpty ? Movement.unknown(movement.account) : Movement.insufficient(movement.account)
            }
            guard case .integer(let balance)? = try db.query("SELECT balance FROM accounts WHERE id = ?", [.text(movement.account)]).first?["balance"] else { return 0 }
            return Int(balance)
        }
    }

    func accounts() async throws -> [(id: String, balance: Int)] {
        try await manager.read { db in
            try db.query("SELECT id, balance FROM accounts ORDER BY id").compactMap { row -> (id: String, balance: Int)? in
                guard case .text(let id)? = row["id"], case .integer(let balance)? = row["balance"] else { return nil }
                return (id, Int(balance))
            }
        }
    }
}

struct PostgresAccounts: AccountsStore {
    let pool: PostgresPool
    let manager: PostgresResourceManager
    var resourceManager: any ResourceManager { manager }

    static let ddl = "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))"

    init(pool: PostgresPool, prefix: String, logger: Logger) async throws {
        self.pool = pool
        manager = try await PostgresResourceManager(pool: pool, prefix: prefix, logger: logger)
        _ = try await pool.withConnection { try $0.execute(Self.ddl) }
        manager.register("debit") { payload, db in
            let move = try Movement(payload)
            let updated = try db.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1 RETURNING balance", [.int(move.amount), .text(move.account)])
            guard let balance = try updated.rows.first?.int("balance") else {
                throw try db.execute("SELECT 1 FROM accounts WHERE id = $1", [.text(move.account)]).rows.isEmpty ? Movement.unknown(move.account) : Movement.insufficient(move.account)
            }
            return .object(["account": .string(move.account), "balance": .number(Double(balance))])
        }
        manager.register("credit") { payload, db in
            let move = try Movement(payload)
            let updated = try db.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance", [.int(move.amount), .text(move.account)])
            guard let balance = try updated.rows.first?.int("balance") else { throw Movement.unknown(move.account) }
            return .object(["account": .string(move.account), "balance": .number(Double(balance))])
        }
    }

    func open(_ id: String, balance: Int) async throws {
        _ = try await pool.withConnection { try $0.execute("INSERT INTO accounts (id, balance) VALUES ($1, $2)", [.text(id), .int(balance)]) }
    }

    func move(_ movement: Movement, debit: Bool) async throws -> Int {
        try await pool.withConnection { db in
            let sql = debit ? "UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1 RETURNING balance" : "UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance"
            guard let balance = try db.execute(sql, [.int(movement.amount), .text(movement.account)]).rows.first?.int("balance") else {
                throw try db.execute("SELECT 1 FROM accounts WHERE id = $1", [.text(movement.account)]).rows.isEmpty ? Movement.unknown(movement.account) : Movement.insufficient(movement.account)
            }
            return balance
        }
    }

    func accounts() async throws -> [(id: String, balance: Int)] {
        try await pool.withConnection { db in
            try db.execute("SELECT id, balance FROM accounts ORDER BY id").rows.compactMap { row -> (id: String, balance: Int)? in
                guard let id = try row.string("id"), let balance = try row.int("balance") else { return nil }
                return (id, balance)
            }
        }
    }
}
