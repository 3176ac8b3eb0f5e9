import CSQLite
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One open SQLite database file, called synchronously.
///
/// Every call blocks, so a connection belongs to one thread: `SQLiteDatabase` opens it on
/// its own thread and hands it to the jobs it runs there. It is deliberately not
/// `Sendable`. The file is put in WAL mode with `synchronous=FULL` (a committed
/// transaction survives a power loss) and foreign keys on.
public final class SQLiteConnection {
    /// The file this connection opened.
    public let path: String
    /// How long a statement waits for another writer's lock before failing as busy.
    public let busyTimeout: Duration
    let handle: OpaquePointer
    private var keyCatalog: (schemaVersion: Int64, tables: [String: TableKeys])?
    /// Compiled statements by their SQL, reused (reset, bindings cleared) instead of
    /// compiled again on every call. `String` equality takes `é` and `e` + accent as the
    /// same text, so a hit is reused only when its bytes are the same too. SQLite
    /// recompiles one itself after a schema change, and after an authorizer is set (so
    /// `StatementGuard` sees reused ones too).
    private var statements: [String: OpaquePointer] = [:]
    /// Beyond this many distinct statements (SQL built with literals), new ones are
    /// compiled per call; the kept ones stay.
    static let statementCacheLimit = 256
    /// How many compiled statements are kept (for tests).
    var cachedStatements: Int { statements.count }

    /// Opens (creating if needed) the database file at `path`.
    /// - Throws: `SQLiteError` when the file cannot be opened or put in WAL mode.
    public init(path: String, busyTimeout: Duration = .seconds(5)) throws {
        var opened: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let status = sqlite3_open_v2(path, &opened, flags, nil)
        guard status == SQLITE_OK, let opened else {
            let reason = opened.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(status))
            sqlite3_close_v2(opened)
            throw SQLiteError(code: status, message: "cannot open database \(path): \(reason); check that its directory exists and is writable")
        }
        self.path = path
        self.busyTimeout = busyTimeout
        handle = opened
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, Int32(clamping: busyTimeout.milliseconds))
        let mode = try query("PRAGMA journal_mode=WAL").first?.values.first?.textValue
        guard mode?.lowercased() == "wal" else {
            throw SQLiteError(code: SQLITE_ERROR, message: "cannot put \(path) in WAL mode (journal mode is \(mode ?? "unknown")); use a database file on a local file system")
        }
        try execute("PRAGMA synchronous=FULL")
        try execute("PRAGMA foreign_keys=ON")
    }

    deinit {
        for statement in statements.values { sqlite3_finalize(statement) }
        sqlite3_close_v2(handle)
    }

    /// Runs one statement with `parameters` bound to its `?` placeholders, ignoring any
    /// rows it returns.
    /// - Returns: how many rows it inserted, updated or deleted.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLiteValue] = []) throws -> Int {
        try withStatement(sql, parameters) { statement in
            while try step(statement, sql) {}
            return Int(sqlite3_changes64(handle))
        }
    }

    /// Runs one statement with `parameters` bound to its `?` placeholders.
    /// - Returns: the rows it returns.
    public func query(_ sql: String, _ parameters: [SQLiteValue] = []) throws -> [SQLiteRow] {
        try withStatement(sql, parameters) { statement in
            // The columns are read once the first step ran: a reused statement that
            // SQLite recompiled after a schema change may have gained some.
            var columns: [String]?
            var rows: [SQLiteRow] = []
            while try step(statement, sql) {
                let count = sqlite3_column_count(statement)
                if columns == nil {
                    columns = (0..<count).map { index in sqlite3_column_name(statement, index).map { String(cString: $0) } ?? "" }
                }
                rows.append(SQLiteRow(columns: columns!, values: (0..<count).map { column(statement, $0) }))
            }
            return rows
        }
    }

    /// Runs several statements separated by semicolons, without parameters (schema
    /// scripts, migrations).
    public func executeScript(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let status = sqlite3_exec(handle, sql, nil, nil, &message)
        defer { sqlite3_free(message) }
        guard status == SQLITE_OK else {
            throw error(status, sql: sql, detail: message.map { String(cString: $0) })
        }
    }

    /// Whether a transaction is open on this connection.
    public var isInTransaction: Bool { sqlite3_get_autocommit(handle) == 0 }

    /// Set by the database's thread while it holds a transaction open for a group of
    /// jobs that share one COMMIT (see `SQLiteDatabase.run(sharingCommit:_:)`).
    var sharesCommit = false

    /// Runs `body` in a transaction: commits if it returns, rolls back if it or the
    /// commit throws. Inside a group that shares a commit, the transaction is a
    /// savepoint of the group's, released if `body` returns (the group's COMMIT makes it
    /// durable) and rolled back if it throws.
    /// - Parameter immediate: take the write lock at the start (`BEGIN IMMEDIATE`), so
    ///   that what `body` reads cannot change before it writes; otherwise a read
    ///   transaction (`BEGIN`), a consistent snapshot.
    func transaction<T>(immediate: Bool, _ body: () throws -> T) throws -> T {
        if sharesCommit {
            try execute("SAVEPOINT \(Self.jobSavepoint)")
            do {
                let value = try body()
                // Deferred foreign keys are checked at COMMIT, which this job shares:
                // one left unresolved fails this job here, not the whole group there.
                var unresolved: Int32 = 0, highest: Int32 = 0
                sqlite3_db_status(handle, SQLITE_DBSTATUS_DEFERRED_FKS, &unresolved, &highest, 0)
                if unresolved > 0 {
                    throw SQLiteError(code: Self.foreignKeyConstraint, message: "FOREIGN KEY constraint failed")
                }
                try execute("RELEASE \(Self.jobSavepoint)")
                return value
            } catch {
                // An error that made SQLite roll back the whole transaction leaves no
                // savepoint: the database's thread sees that and fails the group.
                if isInTransaction {
                    sqlite3_exec(handle, "ROLLBACK TO \(Self.jobSavepoint); RELEASE \(Self.jobSavepoint)", nil, nil, nil)
                }
                throw error
            }
        }
        try execute(immediate ? "BEGIN IMMEDIATE" : "BEGIN")
        do {
            let value = try body()
            try execute("COMMIT")
            return value
        } catch {
            rollback()
            throw error
        }
    }

    static let jobSavepoint = "dtx_job"
    /// SQLITE_CONSTRAINT_FOREIGNKEY (a C macro Swift does not import).
    private static let foreignKeyConstraint = SQLITE_CONSTRAINT | (3 << 8)

    /// Rolls back the open transaction, if any. A failing ROLLBACK leaves nothing to
    /// do: SQLite has then already rolled the transaction back itself.
    func rollback() {
        if isInTransaction { sqlite3_exec(handle, "ROLLBACK", nil, nil, nil) }
    }

    /// The columns and primary key of every table of the main database, reloaded when
    /// the schema changes.
    func tableKeys() throws -> [String: TableKeys] {
        let version = try query("PRAGMA schema_version").first?.values.first?.integerValue ?? 0
        if let keyCatalog, keyCatalog.schemaVersion == version { return keyCatalog.tables }
        let rows = try query("""
            SELECT t.name, t.ncol, t.wr, c.cid, c.name, c.type, c.pk, c."notnull"
            FROM pragma_table_list AS t, pragma_table_info(t.name, t.schema) AS c
            WHERE t.schema = 'main' AND t.type IN ('table', 'virtual', 'shadow')
            ORDER BY t.name, c.pk
            """)
        var tables: [String: TableKeys] = [:]
        for row in rows {
            let value = row.values
            guard let table = value[0].textValue, let columnCount = value[1].integerValue,
                  let position = value[3].integerValue, let column = value[4].textValue
            else { continue }
            var keys = tables[table] ?? TableKeys(columnCount: Int(columnCount), withoutRowID: value[2].integerValue == 1)
            if let order = value[6].integerValue, order > 0 {
                keys.columns.append(.init(name: column, position: Int(position), type: value[5].textValue ?? "", notNull: value[7].integerValue == 1))
            }
            tables[table] = keys
        }
        keyCatalog = (version, tables)
        return tables
    }

    private func withStatement<T>(_ sql: String, _ parameters: [SQLiteValue], _ body: (OpaquePointer) throws -> T) throws -> T {
        let statement: OpaquePointer
        let cached: Bool
        if let reusable = statements[sql], sqlite3_stmt_busy(reusable) == 0, sql.withCString({ strcmp(sqlite3_sql(reusable), $0) == 0 }) {
            (statement, cached) = (reusable, true)
        } else {
            statement = try compile(sql)
            cached = statements[sql] == nil && statements.count < Self.statementCacheLimit
            if cached { statements[sql] = statement }
        }
        defer {
            if cached {
                sqlite3_reset(statement)
                sqlite3_clear_bindings(statement)
            } else {
                sqlite3_finalize(statement)
            }
        }
        let expected = Int(sqlite3_bind_parameter_count(statement))
        guard expected == parameters.count else {
            throw SQLiteError(code: SQLITE_RANGE, message: "the statement has \(expected) parameter(s) but \(parameters.count) value(s) were given", sql: sql)
        }
        for (offset, value) in parameters.enumerated() {
            let bound = bind(value, to: statement, at: Int32(offset + 1))
            guard bound == SQLITE_OK else { throw error(bound, sql: sql) }
        }
        return try body(statement)
    }

    /// Compiles `sql`, which must be exactly one statement.
    private func compile(_ sql: String) throws -> OpaquePointer {
        var prepared: OpaquePointer?
        // What follows the first statement, read while the C string `tail` points into
        // still exists (a String passed as a pointer lives only for the call).
        let rest = sql.withCString { text -> (status: Int32, rest: String) in
            var tail: UnsafePointer<CChar>?
            let status = sqlite3_prepare_v2(handle, text, -1, &prepared, &tail)
            return (status, tail.map { String(cString: $0) } ?? "")
        }
        let status = rest.status
        guard status == SQLITE_OK else { throw error(status, sql: sql) }
        guard let statement = prepared else {
            throw SQLiteError(code: SQLITE_MISUSE, message: "no statement to run: the SQL is empty or only a comment", sql: sql)
        }
        if !rest.rest.allSatisfy(\.isWhitespace) {
            sqlite3_finalize(statement)
            throw SQLiteError(code: SQLITE_MISUSE, message: "more than one statement given; run them one at a time, or use executeScript for a script without parameters", sql: sql)
        }
        return statement
    }

    private func bind(_ value: SQLiteValue, to statement: OpaquePointer, at index: Int32) -> Int32 {
        switch value {
        case .null: return sqlite3_bind_null(statement, index)
        case .integer(let number): return sqlite3_bind_int64(statement, index, number)
        case .real(let number): return sqlite3_bind_double(statement, index, number)
        case .text(var text):
            // With its length, so that a text holding NUL characters binds whole; "" has no
            // address, and a NULL address would bind NULL.
            if text.isEmpty { return sqlite3_bind_text(statement, index, "", 0, SQLITE_TRANSIENT) }
            return text.withUTF8 { bytes in
                sqlite3_bind_text64(statement, index, bytes.baseAddress, sqlite3_uint64(bytes.count), SQLITE_TRANSIENT, UInt8(SQLITE_UTF8))
            }
        case .blob(let bytes):
            // A zero-length buffer has no address, and a NULL address would bind NULL.
            if bytes.isEmpty { return sqlite3_bind_zeroblob(statement, index, 0) }
            return bytes.withUnsafeBytes { buffer in
                sqlite3_bind_blob64(statement, index, buffer.baseAddress, sqlite3_uint64(buffer.count), SQLITE_TRANSIENT)
            }
        }
    }

    /// Steps `statement`: true when it produced a row, false when it is done.
    private func step(_ statement: OpaquePointer, _ sql: String) throws -> Bool {
        switch sqlite3_step(statement) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        case let status: throw error(status, sql: sql)
        }
    }

    private func column(_ statement: OpaquePointer, _ index: Int32) -> SQLiteValue {
        switch sqlite3_column_type(statement, index) {
        case SQLITE_INTEGER: return .integer(sqlite3_column_int64(statement, index))
        case SQLITE_FLOAT: return .real(sqlite3_column_double(statement, index))
        case SQLITE_TEXT:
            // The pointer first, then the size (the documented order).
            guard let text = sqlite3_column_text(statement, index) else { return .text("") }
            let count = Int(sqlite3_column_bytes(statement, index))
            return .text(String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self))
        case SQLITE_BLOB:
            guard let bytes = sqlite3_column_blob(statement, index) else { return .blob([]) }
            let count = Int(sqlite3_column_bytes(statement, index))
            return .blob(Array(UnsafeRawBufferPointer(start: bytes, count: count)))
        default: return .null
        }
    }

    /// The error for a failed call, with the connection's message. A busy database gets
    /// a message that says what happened and what to do.
    func error(_ status: Int32, sql: String?, detail: String? = nil) -> SQLiteError {
        if status & 0xff == SQLITE_BUSY {
            return SQLiteError(code: status, message: "database is busy: another process holds the write lock for more than \(busyTimeout.secondsText) s; stop the other writer or raise the busy timeout", sql: sql)
        }
        return SQLiteError(code: status, message: detail ?? String(cString: sqlite3_errmsg(handle)), sql: sql)
    }
}

@available(*, unavailable, message: "a connection belongs to the thread that opened it; use SQLiteDatabase to reach it from other tasks")
extension SQLiteConnection: Sendable {}

/// The shape of one table that matters to changesets: its column count and primary key.
struct TableKeys {
    struct Column {
        var name: String
        /// Index of the column in the table (0-based).
        var position: Int
        var type: String
        var notNull: Bool
    }

    var columnCount: Int
    var withoutRowID: Bool
    /// The primary key's columns in key order; empty when the table has none.
    var columns: [Column] = []

    var hasPrimaryKey: Bool { !columns.isEmpty }

    /// Key columns that may hold NULL: SQLite allows it in the primary key of a rowid
    /// table (except an INTEGER PRIMARY KEY, the rowid itself), and the session extension
    /// does not record rows with a NULL in their key.
    var nullableColumns: [String] {
        if withoutRowID { return [] }
        if columns.count == 1, columns[0].type.uppercased() == "INTEGER" { return [] }
        return columns.filter { !$0.notNull }.map(\.name)
    }
}

/// SQLite copies the bound value before the bind call returns.
let SQLITE_TRANSIENT = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

extension Duration {
    var milliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }

    /// Whole seconds without a fraction (`5`), others with one (`0.25`).
    var secondsText: String {
        let milliseconds = milliseconds
        return milliseconds % 1000 == 0 ? String(milliseconds / 1000) : String(Double(milliseconds) / 1000)
    }
}
