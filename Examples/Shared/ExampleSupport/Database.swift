import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXSQLite
import Logging

/// The service's database, SQLite or PostgreSQL, behind one small interface so that the
/// business code is written once. SQL uses `?` placeholders on both (they become `$1`,
/// `$2`… for PostgreSQL) and only integers and text.
///
/// Shared by the TravelSaga and OrderTCC examples.
public enum Database: Sendable {
    case sqlite(SQLiteResourceManager)
    case postgres(PostgresResourceManager, PostgresPool)

    /// A handler of a saga or TCC phase: reads the payload, runs SQL in the phase's local
    /// transaction (the resource manager commits it together with the barrier row) and
    /// returns the phase's result. Throw `BusinessError` to refuse.
    public typealias Handler = @Sendable (_ payload: JSONValue?, _ sql: SQL) throws -> JSONValue?

    /// Opens `sqlite:PATH` (the file is created if missing) or `postgres:CONNINFO` (the
    /// server needs `max_prepared_transactions` above 0: the resource manager also serves
    /// 2PC). `prefix` names this service's prepared transactions in PostgreSQL.
    public static func open(_ spec: String, prefix: String, logger: Logger) async throws -> Database {
        if spec.hasPrefix("sqlite:") {
            return .sqlite(try await SQLiteResourceManager(path: String(spec.dropFirst("sqlite:".count))))
        }
        let pool = try await PostgresPool(String(spec.dropFirst("postgres:".count)), size: 4, logger: logger)
        return .postgres(try await PostgresResourceManager(pool: pool, prefix: prefix, logger: logger), pool)
    }

    public static func isValid(_ spec: String) -> Bool {
        (spec.hasPrefix("sqlite:") || spec.hasPrefix("postgres:")) && !spec.hasSuffix(":")
    }

    public var resourceManager: any ResourceManager {
        switch self {
        case .sqlite(let manager): manager
        case .postgres(let manager, _): manager
        }
    }

    /// Registers a saga operation: both handlers run inside the branch barrier.
    public func register(saga name: String, action: @escaping Handler, compensate: @escaping Handler) {
        switch self {
        case .sqlite(let manager):
            manager.register(saga: name, action: { try action($0, SQL($1)) }, compensate: { try compensate($0, SQL($1)) })
        case .postgres(let manager, _):
            manager.register(saga: name, action: { try action($0, SQL($1)) }, compensate: { try compensate($0, SQL($1)) })
        }
    }

    /// Registers a TCC operation: the three handlers run inside the branch barrier.
    public func register(tcc name: String, try tryHandler: @escaping Handler, confirm: @escaping Handler, cancel: @escaping Handler) {
        switch self {
        case .sqlite(let manager):
            manager.register(tcc: name, try: { try tryHandler($0, SQL($1)) }, confirm: { try confirm($0, SQL($1)) }, cancel: { try cancel($0, SQL($1)) })
        case .postgres(let manager, _):
            manager.register(tcc: name, try: { try tryHandler($0, SQL($1)) }, confirm: { try confirm($0, SQL($1)) }, cancel: { try cancel($0, SQL($1)) })
        }
    }

    /// Sends a transactional message through `service` (`ParticipantService.transactionalMessage`):
    /// `body` runs in the local transaction that commits together with the message's row.
    public func send<Value: Sendable>(
        message gid: String, branches: [BranchSpec], timeout: Double? = nil, through service: ParticipantService,
        _ body: @escaping @Sendable (SQL) throws -> Value
    ) async throws -> SentMessage<Value> {
        // Not a `switch` expression whose cases `try await`: Swift 6.3's debug build frees
        // what such an expression returns before the caller copies it (a crash under load,
        // every time with MALLOC_PERTURB_=165).
        switch self {
        case .sqlite:
            let sent = try await service.transactionalMessage(gid: gid, branches: branches, timeout: timeout) { (connection: SQLiteConnection) in try body(SQL(connection)) }
            return sent
        case .postgres:
            let sent = try await service.transactionalMessage(gid: gid, branches: branches, timeout: timeout) { (connection: PostgresConnection) in try body(SQL(connection)) }
            return sent
        }
    }

    /// Runs one statement in a plain local transaction, outside any global transaction
    /// (schema, stocking the shelves, listing).
    @discardableResult
    public func query(_ statement: String, _ arguments: SQL.Value...) async throws -> [SQL.Row] {
        // Statements, not a `switch` expression (see `send`).
        switch self {
        case .sqlite(let manager):
            let rows = try await manager.write { try SQL($0).query(statement, arguments) }
            return rows
        case .postgres(_, let pool):
            let rows = try await pool.withConnection { try SQL($0).query(statement, arguments) }
            return rows
        }
    }
}

/// The open local transaction a handler runs in, on either database.
public struct SQL {
    public enum Value: Sendable {
        case int(Int)
        case text(String)
    }

    /// A row by column name; values in text form, as PostgreSQL sends them.
    public struct Row: Sendable {
        public var values: [String: String]

        public func text(_ column: String) -> String? { values[column] }
        public func int(_ column: String) -> Int? { values[column].flatMap { Int($0) } }
    }

    private let run: (String, [Value]) throws -> [Row]

    init(_ connection: SQLiteConnection) {
        run = { statement, arguments in
            try connection.query(statement, arguments.map { value -> SQLiteValue in
                switch value {
                case .int(let number): .integer(Int64(number))
                case .text(let text): .text(text)
                }
            }).map { row in
                var values: [String: String] = [:]
                for (column, value) in zip(row.columns, row.values) {
                    switch value {
                    case .integer(let number): values[column] = String(number)
                    case .text(let text): values[column] = text
                    default: break
                    }
                }
                return Row(values: values)
            }
        }
    }

    init(_ connection: PostgresConnection) {
        run = { statement, arguments in
            // `?` → `$1`, `$2`…: the statements here hold no `?` inside string literals.
            var numbered = "", count = 0
            for character in statement {
                if character == "?" { count += 1; numbered += "$\(count)" } else { numbered.append(character) }
            }
            let parameters = arguments.map { value -> PostgresValue? in
                switch value {
                case .int(let number): .int(number)
                case .text(let text): .text(text)
                }
            }
            return try connection.execute(numbered, parameters).rows.map { row in
                var values: [String: String] = [:]
                for (column, value) in zip(row.columns, row.values) { values[column] = value }
                return Row(values: values)
            }
        }
    }

    /// Runs a statement; returns the rows it gives back (SELECT, or `RETURNING`).
    @discardableResult
    public func query(_ statement: String, _ arguments: Value...) throws -> [Row] {
        try run(statement, arguments)
    }

    public func query(_ statement: String, _ arguments: [Value]) throws -> [Row] {
        try run(statement, arguments)
    }
}
