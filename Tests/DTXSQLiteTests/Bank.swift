import DTXCore
import DTXParticipant
import DTXSQLite
import Foundation
import Testing

/// A fresh temporary directory, removed when the test is done with it.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        var template = Array((FileManager.default.temporaryDirectory.path + "/dtx-sqlite-XXXXXX").utf8CString)
        guard let created = mkdtemp(&template) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "mkdtemp failed: errno \(errno)"])
        }
        path = String(cString: created)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    var database: String { path + "/service.sqlite" }
}

/// The test service: accounts with balances that may not go negative, and the operations
/// a bank's participant registers.
enum Bank {
    static let schema = """
        CREATE TABLE IF NOT EXISTS accounts (
            id INTEGER PRIMARY KEY,
            balance INTEGER NOT NULL CHECK (balance >= 0)
        );
        CREATE TABLE IF NOT EXISTS audit (message TEXT);
        CREATE TABLE IF NOT EXISTS tags (name TEXT PRIMARY KEY, account INTEGER);
        """

    /// Opens the resource manager on `path` with the bank's schema and operations, and
    /// `accounts` accounts (ids 1…accounts) of `balance` each unless they exist.
    static func open(_ path: String, accounts: Int = 4, balance: Int64 = 100, busyTimeout: Duration = .seconds(5), lockWaitTimeout: Duration = .seconds(2)) async throws -> SQLiteResourceManager {
        let manager = try await SQLiteResourceManager(path: path, busyTimeout: busyTimeout, lockWaitTimeout: lockWaitTimeout)
        try await manager.write { connection in
            try connection.executeScript(schema)
            for id in 1...Int64(accounts) {
                try connection.execute("INSERT OR IGNORE INTO accounts (id, balance) VALUES (?, ?)", [.integer(id), .integer(balance)])
            }
        }
        manager.register("transfer", transfer)
        manager.register("balance") { payload, connection in
            .number(Double(try Bank.balance(of: account(payload, "account"), connection)))
        }
        manager.register("deposit") { payload, connection in
            try connection.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", [.integer(amount(payload)), .integer(account(payload, "account"))])
            return nil
        }
        return manager
    }

    /// Moves `amount` from account `from` to account `to`; refuses with
    /// `insufficient_funds`. Its result is the payer's new balance.
    static let transfer: SQLiteResourceManager.Operation = { payload, connection in
        let from = try account(payload, "from"), to = try account(payload, "to"), sum = try amount(payload)
        let balance = try balance(of: from, connection)
        guard balance >= sum else {
            throw BusinessError(code: "insufficient_funds", message: "account \(from) holds \(balance), less than \(sum)")
        }
        try connection.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", [.integer(sum), .integer(from)])
        try connection.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", [.integer(sum), .integer(to)])
        return .object(["balance": .number(Double(balance - sum))])
    }

    static func transfer(_ from: Int, _ to: Int, _ amount: Int) -> JSONValue {
        .object(["from": .number(Double(from)), "to": .number(Double(to)), "amount": .number(Double(amount))])
    }

    /// Every account's balance, by id.
    static func balances(_ manager: SQLiteResourceManager) async throws -> [Int64: Int64] {
        try await manager.read { connection in
            var balances: [Int64: Int64] = [:]
            for row in try connection.query("SELECT id, balance FROM accounts") {
                if let id = row["id"]?.integerValue { balances[id] = row["balance"]?.integerValue }
            }
            return balances
        }
    }

    /// The number of rows in `table` (a resource manager's table, or a business one).
    static func count(_ table: String, _ manager: SQLiteResourceManager) async throws -> Int64 {
        try await manager.read { connection in
            try connection.query("SELECT count(*) AS n FROM \(table)").first?["n"]?.integerValue ?? -1
        }
    }

    private static func account(_ payload: JSONValue?, _ field: String) throws -> Int64 {
        guard let id = payload?[field]?.doubleValue else { throw BusinessError(code: "bad_payload", message: "\(field) is missing") }
        return Int64(id)
    }

    private static func amount(_ payload: JSONValue?) throws -> Int64 {
        guard let amount = payload?["amount"]?.doubleValue, amount > 0 else { throw BusinessError(code: "bad_payload", message: "amount must be positive") }
        return Int64(amount)
    }

    private static func balance(of id: Int64, _ connection: SQLiteConnection) throws -> Int64 {
        guard let balance = try connection.query("SELECT balance FROM accounts WHERE id = ?", [.integer(id)]).first?["balance"]?.integerValue else {
            throw BusinessError(code: "no_such_account", message: "no account \(id)")
        }
        return balance
    }
}

/// The `BusinessError` `work` throws; records an issue if it throws something else or
/// nothing.
func businessError(_ work: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> BusinessError? {
    do {
        try await work()
        Issue.record("expected a BusinessError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as BusinessError {
        return error
    } catch {
        Issue.record("expected a BusinessError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}
