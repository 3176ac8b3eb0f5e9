/// A statement parameter, sent to the server as text (the server parses it into the
/// type the statement needs). `nil` in a parameter list is SQL NULL.
public enum PostgresValue: Sendable, Hashable {
    case int(Int)
    case double(Double)
    case text(String)
    case bool(Bool)

    /// The text form PostgreSQL's input functions accept.
    var textForm: String {
        switch self {
        case .int(let value): return String(value)
        case .double(let value):
            if value.isNaN { return "NaN" }
            if value.isInfinite { return value > 0 ? "Infinity" : "-Infinity" }
            return String(value)
        case .text(let value): return value
        case .bool(let value): return value ? "true" : "false"
        }
    }
}

extension PostgresValue: ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByStringLiteral, ExpressibleByBooleanLiteral
{
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .text(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}

/// The rows a statement returned (none for a command), in text form.
public struct PostgresResult: Sendable {
    /// Column names, in order.
    public let columns: [String]
    public let rows: [PostgresRow]
    /// The command tag, e.g. `INSERT 0 1` or `PREPARE TRANSACTION`.
    public let commandTag: String
    /// Rows inserted, updated, deleted, selected… (0 when the command reports none).
    public let affectedRows: Int

    init(columns: [String], rows: [PostgresRow], commandTag: String, affectedRows: Int) {
        self.columns = columns
        self.rows = rows
        self.commandTag = commandTag
        self.affectedRows = affectedRows
    }
}

/// One row of a result: each value is the server's text form, or nil for SQL NULL.
/// The typed getters return nil for NULL and throw when the column does not exist or
/// its text is not of the requested type.
public struct PostgresRow: Sendable {
    public let columns: [String]
    public let values: [String?]

    init(columns: [String], values: [String?]) {
        self.columns = columns
        self.values = values
    }

    /// The value of the column at `index` (nil for NULL or an index out of range).
    public subscript(index: Int) -> String? {
        values.indices.contains(index) ? values[index] : nil
    }

    public func string(_ column: String) throws -> String? {
        values[try index(of: column)]
    }

    public func int(_ column: String) throws -> Int? {
        try convert(column, to: "an integer") { Int($0) }
    }

    public func double(_ column: String) throws -> Double? {
        try convert(column, to: "a number") { Double($0) }
    }

    public func bool(_ column: String) throws -> Bool? {
        try convert(column, to: "a boolean") { text in
            switch text {
            case "t", "true": return true
            case "f", "false": return false
            default: return nil
            }
        }
    }

    private func index(of column: String) throws -> Int {
        guard let index = columns.firstIndex(of: column) else {
            throw PostgresError(code: .invalidValue, message: "the result has no column \"\(column)\"; its columns are \(columns)")
        }
        return index
    }

    private func convert<T>(_ column: String, to typeName: String, _ parse: (String) -> T?) throws -> T? {
        guard let text = try string(column) else { return nil }
        guard let value = parse(text) else {
            throw PostgresError(code: .invalidValue, message: "column \"\(column)\" holds \"\(text)\", which is not \(typeName)")
        }
        return value
    }
}
