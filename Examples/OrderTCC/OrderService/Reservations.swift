import ArgumentParser
import DTXCore
import DTXParticipant
import ExampleSupport

/// The two sides of an order. Each keeps its own table, in its own database, with a
/// column for what a Try holds back until the transaction is confirmed or cancelled.
enum Role: String, CaseIterable, ExpressibleByArgument, Sendable {
    /// `stock`: a Try moves units from `available` to `reserved`; Confirm moves them on
    /// to `sold`, Cancel back to `available`.
    case inventory
    /// `wallets`: a Try moves money from `balance` to `frozen`; Confirm debits it (it
    /// leaves the wallet), Cancel unfreezes it back to `balance`.
    case payment

    /// The TCC operation this role serves.
    var operation: String {
        switch self {
        case .inventory: "reserve"
        case .payment: "freeze"
        }
    }

    /// Its table (also the path of its HTTP listing), the table's key and the columns.
    var table: String { self == .inventory ? "stock" : "wallets" }
    var key: String { self == .inventory ? "sku" : "account" }
    var columns: [String] { self == .inventory ? ["available", "reserved", "sold"] : ["balance", "frozen"] }

    var schema: String {
        switch self {
        case .inventory:
            """
            CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY,
                available INTEGER NOT NULL CHECK (available >= 0),
                reserved INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
                sold INTEGER NOT NULL DEFAULT 0 CHECK (sold >= 0))
            """
        case .payment:
            """
            CREATE TABLE IF NOT EXISTS wallets (account TEXT PRIMARY KEY,
                balance INTEGER NOT NULL CHECK (balance >= 0),
                frozen INTEGER NOT NULL DEFAULT 0 CHECK (frozen >= 0))
            """
        }
    }
}

/// Registers the role's TCC operation.
///
/// The handlers run inside the branch barrier, in the same local transaction as its
/// record: a repeated message does nothing twice, a Cancel whose Try never ran (or was
/// refused) does nothing, and a Try that arrives after its Cancel is refused. So each is
/// written as if every message arrived exactly once, in order, and Confirm and Cancel
/// get the Try's payload.
func registerOperation(_ role: Role, on database: Database) {
    switch role {
    case .inventory:
        // `reserve`, payload {"sku": ID, "qty": N}.
        database.register(
            tcc: "reserve",
            try: { payload, sql in
                let sku = try text(payload, "sku"), qty = try count(payload, "qty")
                let rows = try sql.query("UPDATE stock SET available = available - ?, reserved = reserved + ? WHERE sku = ? AND available >= ? RETURNING available",
                                         .int(qty), .int(qty), .text(sku), .int(qty))
                guard let available = rows.first?.int("available") else {
                    if try sql.query("SELECT sku FROM stock WHERE sku = ?", .text(sku)).isEmpty {
                        throw BusinessError(code: "unknown_sku", message: "no item \(sku) in stock here")
                    }
                    throw BusinessError(code: "out_of_stock", message: "fewer than \(qty) of \(sku) available")
                }
                return .object(["sku": .string(sku), "reserved": .number(Double(qty)), "available": .number(Double(available))])
            },
            confirm: { payload, sql in
                let sku = try text(payload, "sku"), qty = try count(payload, "qty")
                try sql.query("UPDATE stock SET reserved = reserved - ?, sold = sold + ? WHERE sku = ?", .int(qty), .int(qty), .text(sku))
                return .object(["sku": .string(sku), "sold": .number(Double(qty))])
            },
            cancel: { payload, sql in
                let sku = try text(payload, "sku"), qty = try count(payload, "qty")
                try sql.query("UPDATE stock SET reserved = reserved - ?, available = available + ? WHERE sku = ?", .int(qty), .int(qty), .text(sku))
                return .object(["sku": .string(sku), "released": .number(Double(qty))])
            })
    case .payment:
        // `freeze`, payload {"account": ID, "amount": N}.
        database.register(
            tcc: "freeze",
            try: { payload, sql in
                let account = try text(payload, "account"), amount = try count(payload, "amount")
                let rows = try sql.query("UPDATE wallets SET balance = balance - ?, frozen = frozen + ? WHERE account = ? AND balance >= ? RETURNING balance",
                                         .int(amount), .int(amount), .text(account), .int(amount))
                guard let balance = rows.first?.int("balance") else {
                    if try sql.query("SELECT account FROM wallets WHERE account = ?", .text(account)).isEmpty {
                        throw BusinessError(code: "unknown_account", message: "no wallet \(account) here")
                    }
                    throw BusinessError(code: "insufficient_funds", message: "wallet \(account) has less than \(amount)")
                }
                return .object(["account": .string(account), "frozen": .number(Double(amount)), "balance": .number(Double(balance))])
            },
            confirm: { payload, sql in
                let account = try text(payload, "account"), amount = try count(payload, "amount")
                try sql.query("UPDATE wallets SET frozen = frozen - ? WHERE account = ?", .int(amount), .text(account))
                return .object(["account": .string(account), "debited": .number(Double(amount))])
            },
            cancel: { payload, sql in
                let account = try text(payload, "account"), amount = try count(payload, "amount")
                try sql.query("UPDATE wallets SET frozen = frozen - ?, balance = balance + ? WHERE account = ?", .int(amount), .int(amount), .text(account))
                return .object(["account": .string(account), "unfrozen": .number(Double(amount))])
            })
    }
}

private func text(_ payload: JSONValue?, _ name: String) throws -> String {
    guard let value = payload?[name]?.stringValue, !value.isEmpty else {
        throw BusinessError(code: "invalid_payload", message: "the payload needs a string \"\(name)\"")
    }
    return value
}

private func count(_ payload: JSONValue?, _ name: String) throws -> Int {
    guard let value = payload?[name]?.doubleValue, value.rounded() == value, value > 0, value < 1e15 else {
        throw BusinessError(code: "invalid_payload", message: "the payload needs \"\(name)\", a whole number above 0")
    }
    return Int(value)
}
