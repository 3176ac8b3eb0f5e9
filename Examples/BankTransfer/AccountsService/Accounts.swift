import DTXAPI
import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXSQLite
import Logging

/// The accounts table and the branch operations, on either database.
///
/// `debit` and `credit` take `{"account": ID, "amount": CENTS}` in every protocol; a
/// debit that would take the balance below zero, or an unknown account, is a business
/// refusal (a NO vote, a refused Try, a failed saga step).
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

    /// A branch's result: the account's balance after the operation.
    func answer(balance: Int) -> JSONValue {
        .object(["account": .string(account), "balance": .number(Double(balance))])
    }

    static func insufficient(_ account: String) -> BusinessError {
        BusinessError(code: "insufficient_funds", message: "account \(account) has too little money for this debit")
    }

    static func unknown(_ account: String) -> BusinessError {
        BusinessError(code: "unknown_account", message: "no account \(account) here")
    }
}

/// The few statements every operation is made of, in one database's SQL, so that the
/// operations themselves (`registerBankOperations`) are written once for both.
struct Ledger<Connection>: Sendable {
    /// Takes the amount from the account and returns the new balance; throws
    /// `Movement.insufficient` or `Movement.unknown` (changing nothing) otherwise.
    var debit: @Sendable (Movement, Connection) throws -> Int
    /// Adds the amount to the account and returns the new balance; throws `Movement.unknown`.
    var credit: @Sendable (Movement, Connection) throws -> Int
    /// The account's balance; throws `Movement.unknown`.
    var balance: @Sendable (_ account: String, Connection) throws -> Int
    /// Adds the amount to the money held for the account's pending TCC debits (table
    /// `holds`), or with `release` takes it away.
    var hold: @Sendable (Movement, Connection) throws -> Void
    var release: @Sendable (Movement, Connection) throws -> Void
}

/// The table behind the conformance operations (`ConformanceOperation`), in one
/// database's SQL: a counter per key.
struct Counters<Connection>: Sendable {
    var ddl: String
    var add: @Sendable (_ key: String, _ amount: Int, Connection) throws -> Void
    var value: @Sendable (_ key: String, Connection) throws -> Int
}

/// A resource manager's three ways of registering operations (2PC, TCC, saga), which the
/// SQLite and PostgreSQL resource managers share but for the connection type.
protocol OperationRegistry {
    associatedtype Connection
    typealias Body = @Sendable (_ payload: JSONValue?, _ connection: Connection) throws -> JSONValue?
    func register(_ name: String, _ body: @escaping Body)
    func register(tcc name: String, try tryBody: @escaping Body, confirm: @escaping Body, cancel: @escaping Body)
    func register(saga name: String, action: @escaping Body, compensate: @escaping Body)
}

extension SQLiteResourceManager: OperationRegistry {}
extension PostgresResourceManager: OperationRegistry {}

extension OperationRegistry {
    /// Registers `debit` and `credit` for each protocol. Every closure runs in the
    /// branch's local transaction, behind the barrier for TCC and sagas (so a confirm,
    /// cancel or compensation runs once, and only after its try or action).
    ///
    /// - 2PC: the update itself, made durable by PREPARE and applied at COMMIT.
    /// - TCC: a debit's try takes the money from the balance into `holds` (refused on
    ///   insufficient funds), confirm lets the held money go, cancel gives it back. A
    ///   credit's try only checks the account; confirm credits it, cancel has nothing to
    ///   undo. So money in flight is never spendable twice nor before it has arrived.
    /// - Saga: the update is the action; its compensation is the opposite update. The
    ///   compensation of a credit is refused (and retried by dtxd) while the account
    ///   lacks the money, which can only happen when the credit is not the last step.
    func registerBankOperations(_ ledger: Ledger<Connection>) {
        let debited: Body = { payload, db in
            let move = try Movement(payload)
            return move.answer(balance: try ledger.debit(move, db))
        }
        let credited: Body = { payload, db in
            let move = try Movement(payload)
            return move.answer(balance: try ledger.credit(move, db))
        }
        register("debit", debited)
        register("credit", credited)
        register(saga: "debit", action: debited, compensate: credited)
        register(saga: "credit", action: credited, compensate: debited)
        register(
            tcc: "debit",
            try: { payload, db in
                let move = try Movement(payload)
                let balance = try ledger.debit(move, db)
                try ledger.hold(move, db)
                return move.answer(balance: balance)
            },
            confirm: { payload, db in
                let move = try Movement(payload)
                try ledger.release(move, db)
                return nil
            },
            cancel: { payload, db in
                let move = try Movement(payload)
                try ledger.release(move, db)
                return move.answer(balance: try ledger.credit(move, db))
            })
        register(
            tcc: "credit",
            try: { payload, db in
                let move = try Movement(payload)
                return move.answer(balance: try ledger.balance(move.account, db))
            },
            confirm: credited,
            cancel: { _, _ in nil })
    }
}

extension OperationRegistry {
    /// Registers the conformance operations (Schemas/participant-api.yaml, "Conformance
    /// run") over `counters`, so that `dtx conformance` can check this service: an add is
    /// the branch's work (applied by 2PC's commit, TCC's confirm, a saga's action and
    /// undone by its compensation); a read answers `{"value": V}`; a refusal does nothing.
    func registerConformanceOperations(_ counters: Counters<Connection>) {
        typealias Operation = ConformanceOperation
        let add: Body = { payload, db in
            try counters.add(try conformanceKey(payload), conformanceAmount(payload), db)
            return nil
        }
        let subtract: Body = { payload, db in
            try counters.add(try conformanceKey(payload), -conformanceAmount(payload), db)
            return nil
        }
        let read: Body = { payload, db in .object(["value": .number(Double(try counters.value(try conformanceKey(payload), db)))]) }
        let refuse: Body = { _, _ in throw BusinessError(code: "refused", message: "the conformance run asked for a refusal (\(Operation.refuse))") }
        let nothing: Body = { _, _ in nil }
        register(Operation.add, add)
        register(Operation.read, read)
        register(Operation.refuse, refuse)
        register(tcc: Operation.add, try: nothing, confirm: add, cancel: nothing)
        register(tcc: Operation.read, try: read, confirm: nothing, cancel: nothing)
        register(tcc: Operation.refuse, try: refuse, confirm: nothing, cancel: nothing)
        register(saga: Operation.add, action: add, compensate: subtract)
        register(saga: Operation.read, action: read, compensate: nothing)
        register(saga: Operation.refuse, action: refuse, compensate: nothing)
    }

}

private func conformanceKey(_ payload: JSONValue?) throws -> String {
    guard let key = payload?["key"]?.stringValue, !key.isEmpty else {
        throw BusinessError(code: "invalid_payload", message: "a conformance operation's payload is {\"key\": string, \"amount\"?: whole number}")
    }
    return key
}

private func conformanceAmount(_ payload: JSONValue?) -> Int {
    Int(payload?["amount"]?.doubleValue ?? 0)
}

struct SQLiteAccounts: AccountsStore {
    let manager: SQLiteResourceManager
    var resourceManager: any ResourceManager { manager }

    static let ddl = [
        "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))",
        "CREATE TABLE IF NOT EXISTS holds (account TEXT PRIMARY KEY, amount INTEGER NOT NULL CHECK (amount >= 0))",
    ]

    static let ledger = Ledger<SQLiteConnection>(
        debit: { move, db in
            let amount = SQLiteValue.integer(Int64(move.amount))
            guard try db.execute("UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?", [amount, .text(move.account), amount]) == 1 else {
                throw try db.query("SELECT 1 FROM accounts WHERE id = ?", [.text(move.account)]).isEmpty ? Movement.unknown(move.account) : Movement.insufficient(move.account)
            }
            return try Self.balance(move.account, db)
        },
        credit: { move, db in
            guard try db.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", [.integer(Int64(move.amount)), .text(move.account)]) == 1 else {
                throw Movement.unknown(move.account)
            }
            return try Self.balance(move.account, db)
        },
        balance: { try Self.balance($0, $1) },
        hold: { move, db in
            _ = try db.execute("INSERT INTO holds (account, amount) VALUES (?, ?) ON CONFLICT (account) DO UPDATE SET amount = amount + excluded.amount",
                               [.text(move.account), .integer(Int64(move.amount))])
        },
        release: { move, db in
            _ = try db.execute("UPDATE holds SET amount = amount - ? WHERE account = ?", [.integer(Int64(move.amount)), .text(move.account)])
        })

    private static func balance(_ account: String, _ db: SQLiteConnection) throws -> Int {
        guard let balance = try db.query("SELECT balance FROM accounts WHERE id = ?", [.text(account)]).first?["balance"]?.integerValue else {
            throw Movement.unknown(account)
        }
        return Int(balance)
    }

    static let counters = Counters<SQLiteConnection>(
        ddl: "CREATE TABLE IF NOT EXISTS conformance_counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        add: { key, amount, db in
            _ = try db.execute("INSERT INTO conformance_counters (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = conformance_counters.value + excluded.value",
                               [.text(key), .integer(Int64(amount))])
        },
        value: { key, db in
            Int(try db.query("SELECT value FROM conformance_counters WHERE key = ?", [.text(key)]).first?["value"]?.integerValue ?? 0)
        })

    /// `conformance`: also serve the conformance operations.
    init(path: String, conformance: Bool) async throws {
        manager = try await SQLiteResourceManager(path: path)
        let ddl = Self.ddl + (conformance ? [Self.counters.ddl] : [])
        _ = try await manager.write { db in try ddl.forEach { _ = try db.execute($0) } }
        manager.registerBankOperations(Self.ledger)
        if conformance { manager.registerConformanceOperations(Self.counters) }
    }

    func open(_ id: String, balance: Int) async throws {
        _ = try await manager.write { try $0.execute("INSERT INTO accounts (id, balance) VALUES (?, ?)", [.text(id), .integer(Int64(balance))]) }
    }

    func move(_ movement: Movement, debit: Bool) async throws -> Int {
        try await manager.write { try (debit ? Self.ledger.debit : Self.ledger.credit)(movement, $0) }
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

    static let ddl = [
        "CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))",
        "CREATE TABLE IF NOT EXISTS holds (account TEXT PRIMARY KEY, amount BIGINT NOT NULL CHECK (amount >= 0))",
    ]

    static let ledger = Ledger<PostgresConnection>(
        debit: { move, db in
            let updated = try db.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2 AND balance >= $1 RETURNING balance", [.int(move.amount), .text(move.account)])
            guard let balance = try updated.rows.first?.int("balance") else {
                throw try db.execute("SELECT 1 FROM accounts WHERE id = $1", [.text(move.account)]).rows.isEmpty ? Movement.unknown(move.account) : Movement.insufficient(move.account)
            }
            return balance
        },
        credit: { move, db in
            let updated = try db.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance", [.int(move.amount), .text(move.account)])
            guard let balance = try updated.rows.first?.int("balance") else { throw Movement.unknown(move.account) }
            return balance
        },
        balance: { account, db in
            guard let balance = try db.execute("SELECT balance FROM accounts WHERE id = $1", [.text(account)]).rows.first?.int("balance") else {
                throw Movement.unknown(account)
            }
            return balance
        },
        hold: { move, db in
            _ = try db.execute("INSERT INTO holds (account, amount) VALUES ($1, $2) ON CONFLICT (account) DO UPDATE SET amount = holds.amount + excluded.amount",
                               [.text(move.account), .int(move.amount)])
        },
        release: { move, db in
            _ = try db.execute("UPDATE holds SET amount = amount - $1 WHERE account = $2", [.int(move.amount), .text(move.account)])
        })

    static let counters = Counters<PostgresConnection>(
        ddl: "CREATE TABLE IF NOT EXISTS conformance_counters (key TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        add: { key, amount, db in
            _ = try db.execute("INSERT INTO conformance_counters (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = conformance_counters.value + excluded.value",
                               [.text(key), .int(amount)])
        },
        value: { key, db in
            try db.execute("SELECT value FROM conformance_counters WHERE key = $1", [.text(key)]).rows.first?.int("value") ?? 0
        })

    /// `conformance`: also serve the conformance operations.
    init(pool: PostgresPool, prefix: String, conformance: Bool, logger: Logger) async throws {
        self.pool = pool
        manager = try await PostgresResourceManager(pool: pool, prefix: prefix, logger: logger)
        let ddl = Self.ddl + (conformance ? [Self.counters.ddl] : [])
        _ = try await pool.withConnection { db in try ddl.forEach { _ = try db.execute($0) } }
        manager.registerBankOperations(Self.ledger)
        if conformance { manager.registerConformanceOperations(Self.counters) }
    }

    func open(_ id: String, balance: Int) async throws {
        _ = try await pool.withConnection { try $0.execute("INSERT INTO accounts (id, balance) VALUES ($1, $2)", [.text(id), .int(balance)]) }
    }

    func move(_ movement: Movement, debit: Bool) async throws -> Int {
        try await pool.withConnection { try (debit ? Self.ledger.debit : Self.ledger.credit)(movement, $0) }
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
