import CSQLite

/// A session (SQLite session extension) recording every change to the user tables of the
/// main database from its creation on. Tables named `dtx_…` (the resource manager's own)
/// and `sqlite_…` (SQLite's) are not recorded.
final class SQLiteSession {
    private let handle: OpaquePointer
    private let connection: SQLiteConnection

    init(_ connection: SQLiteConnection) throws {
        var created: OpaquePointer?
        let status = sqlite3session_create(connection.handle, "main", &created)
        guard status == SQLITE_OK, let created else { throw connection.error(status, sql: nil) }
        sqlite3session_table_filter(created, { _, table in
            guard let table else { return 0 }
            return isUserTable(String(cString: table)) ? 1 : 0
        }, nil)
        let attached = sqlite3session_attach(created, nil)
        guard attached == SQLITE_OK else {
            sqlite3session_delete(created)
            throw connection.error(attached, sql: nil)
        }
        handle = created
        self.connection = connection
    }

    deinit {
        sqlite3session_delete(handle)
    }

    /// The changes recorded so far, against the rows' current values.
    func changeset() throws -> Changeset {
        var size: Int32 = 0
        var buffer: UnsafeMutableRawPointer?
        let status = sqlite3session_changeset(handle, &size, &buffer)
        defer { sqlite3_free(buffer) }
        guard status == SQLITE_OK else { throw connection.error(status, sql: nil) }
        guard let buffer, size > 0 else { return Changeset(bytes: []) }
        return Changeset(bytes: Array(UnsafeRawBufferPointer(start: buffer, count: Int(size))))
    }
}

/// Whether changes to `table` belong to the application (not to the resource manager or
/// to SQLite itself).
func isUserTable(_ table: String) -> Bool {
    !table.hasPrefix("dtx_") && !table.hasPrefix("sqlite_")
}

/// The changes one branch made, as SQLite's session extension serializes them: each
/// changed row with its old and new values.
struct Changeset {
    let bytes: [UInt8]

    var isEmpty: Bool { bytes.isEmpty }

    /// What a changeset touches.
    struct Summary {
        /// Every changed row.
        var rows: [RowKey] = []
        /// Every changed table, with the columns the changeset expects.
        var tables: [String: TableShape] = [:]
    }

    /// A table as a changeset recorded it.
    struct TableShape: Equatable {
        var columnCount: Int
        /// Positions of the primary-key columns.
        var keyPositions: [Int]
    }

    /// Lists the rows and tables the changeset changes.
    /// - Throws: `SQLiteError` when the bytes are not a valid changeset.
    func summary() throws -> Summary {
        var summary = Summary()
        try bytes.withUnsafeBytes { buffer in
            var started: OpaquePointer?
            let status = sqlite3changeset_start(&started, Int32(buffer.count), UnsafeMutableRawPointer(mutating: buffer.baseAddress))
            guard status == SQLITE_OK, let iterator = started else { throw Self.invalid(status) }
            defer { sqlite3changeset_finalize(iterator) }
            while true {
                let next = sqlite3changeset_next(iterator)
                if next == SQLITE_DONE { break }
                guard next == SQLITE_ROW, let (row, shape) = RowKey.current(iterator) else { throw Self.invalid(next) }
                summary.rows.append(row)
                summary.tables[row.table] = shape
            }
        }
        return summary
    }

    /// Applies the changeset to the connection's database, in the open transaction.
    /// Stops at the first conflict (a row not as the changeset expects it, a constraint
    /// it would break), undoing what it applied.
    /// - Returns: the conflict that stopped it, nil when everything applied.
    /// - Throws: `SQLiteError` when SQLite fails for another reason.
    func apply(to connection: SQLiteConnection) throws -> ApplyConflict? {
        let recorder = ConflictRecorder()
        let status = bytes.withUnsafeBytes { buffer in
            withExtendedLifetime(recorder) {
                sqlite3changeset_apply(
                    connection.handle, Int32(buffer.count), UnsafeMutableRawPointer(mutating: buffer.baseAddress),
                    nil,
                    { context, kind, iterator in
                        if let context {
                            let recorder = Unmanaged<ConflictRecorder>.fromOpaque(context).takeUnretainedValue()
                            recorder.conflict = ApplyConflict(kind: kind, iterator: iterator)
                        }
                        return SQLITE_CHANGESET_ABORT
                    },
                    Unmanaged.passUnretained(recorder).toOpaque())
            }
        }
        if let conflict = recorder.conflict { return conflict }
        guard status == SQLITE_OK else { throw connection.error(status, sql: nil) }
        return nil
    }

    private static func invalid(_ status: Int32) -> SQLiteError {
        SQLiteError(code: status, message: "a stored changeset cannot be read (\(String(cString: sqlite3_errstr(status)))): the dtx_prepared table is damaged")
    }
}

/// Where `sqlite3changeset_apply`'s conflict handler leaves the conflict it met.
private final class ConflictRecorder {
    var conflict: ApplyConflict?
}

/// A change that could not be applied as recorded.
struct ApplyConflict: CustomStringConvertible {
    /// The changed row; nil for foreign-key violations, which SQLite reports only as a
    /// count at the end.
    var row: RowKey?
    var reason: String

    init(kind: Int32, iterator: OpaquePointer?) {
        switch kind {
        case SQLITE_CHANGESET_DATA: reason = "the row's current values are not those the branch changed"
        case SQLITE_CHANGESET_NOTFOUND: reason = "the row the branch changed no longer exists"
        case SQLITE_CHANGESET_CONFLICT: reason = "a row with the primary key the branch inserted already exists"
        case SQLITE_CHANGESET_CONSTRAINT: reason = "the change breaks a constraint (UNIQUE, CHECK or NOT NULL)"
        case SQLITE_CHANGESET_FOREIGN_KEY:
            var violations: Int32 = 0
            if let iterator { sqlite3changeset_fk_conflicts(iterator, &violations) }
            reason = "the changes break \(violations) foreign key constraint(s)"
        default: reason = "SQLite reported conflict type \(kind)"
        }
        row = kind == SQLITE_CHANGESET_FOREIGN_KEY ? nil : iterator.flatMap { RowKey.current($0)?.row }
    }

    var description: String {
        guard let row else { return reason }
        return "\(row): \(reason)"
    }
}

/// A row named by its table and primary-key values.
struct RowKey: Hashable, CustomStringConvertible {
    var table: String
    var key: [SQLiteValue]

    /// The key in a canonical binary form, one entry per column: a type tag, then the
    /// value (integers and reals as 8 big-endian bytes, text and blobs length-prefixed).
    /// The same row always encodes to the same bytes: it is the lock's identity in
    /// `dtx_locks`.
    var encodedKey: [UInt8] {
        var bytes: [UInt8] = []
        func append(_ number: UInt64) {
            withUnsafeBytes(of: number.bigEndian) { bytes.append(contentsOf: $0) }
        }
        for value in key {
            switch value {
            case .null: bytes.append(0)
            case .integer(let number): bytes.append(1); append(UInt64(bitPattern: number))
            case .real(let number): bytes.append(2); append(number.bitPattern)
            case .text(let text): bytes.append(3); append(UInt64(text.utf8.count)); bytes.append(contentsOf: text.utf8)
            case .blob(let blob): bytes.append(4); append(UInt64(blob.count)); bytes.append(contentsOf: blob)
            }
        }
        return bytes
    }

    /// The key's values as SQL literals: `(1)`, `('a', 2)`.
    var keyDescription: String {
        "(" + key.map(\.description).joined(separator: ", ") + ")"
    }

    /// `accounts (1)`.
    var description: String { "\(table) \(keyDescription)" }

    /// The row the changeset iterator is on, and its table's shape; nil if the iterator
    /// cannot tell.
    static func current(_ iterator: OpaquePointer) -> (row: RowKey, shape: Changeset.TableShape)? {
        var name: UnsafePointer<CChar>?
        var columnCount: Int32 = 0
        var operation: Int32 = 0
        var indirect: Int32 = 0
        var flags: UnsafeMutablePointer<UInt8>?
        guard sqlite3changeset_op(iterator, &name, &columnCount, &operation, &indirect) == SQLITE_OK, let name,
              sqlite3changeset_pk(iterator, &flags, &columnCount) == SQLITE_OK, let flags
        else { return nil }
        var key: [SQLiteValue] = []
        var positions: [Int] = []
        for column in 0..<columnCount where flags[Int(column)] != 0 {
            // An insert has only new values; updates and deletes keep the key in the old
            // ones (an update that changes the key is recorded as a delete and an insert).
            var value: OpaquePointer?
            let status = operation == SQLITE_INSERT
                ? sqlite3changeset_new(iterator, column, &value)
                : sqlite3changeset_old(iterator, column, &value)
            guard status == SQLITE_OK else { return nil }
            key.append(SQLiteValue(value))
            positions.append(Int(column))
        }
        let shape = Changeset.TableShape(columnCount: Int(columnCount), keyPositions: positions)
        return (RowKey(table: String(cString: name), key: key), shape)
    }
}

extension SQLiteValue {
    /// Copies an `sqlite3_value` (NULL for a missing one).
    init(_ value: OpaquePointer?) {
        guard let value else {
            self = .null
            return
        }
        switch sqlite3_value_type(value) {
        case SQLITE_INTEGER: self = .integer(sqlite3_value_int64(value))
        case SQLITE_FLOAT: self = .real(sqlite3_value_double(value))
        case SQLITE_TEXT:
            // The pointer first, then the size (the documented order).
            let text = sqlite3_value_text(value)
            let count = Int(sqlite3_value_bytes(value))
            self = .text(text.map { String(decoding: UnsafeBufferPointer(start: $0, count: count), as: UTF8.self) } ?? "")
        case SQLITE_BLOB:
            let blob = sqlite3_value_blob(value)
            let count = Int(sqlite3_value_bytes(value))
            self = .blob(blob.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? [])
        default: self = .null
        }
    }
}
