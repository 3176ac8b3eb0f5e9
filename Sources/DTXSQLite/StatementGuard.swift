import CSQLite
import DTXParticipant

/// Vets the statements application code prepares inside the resource manager's
/// transactions, as SQLite's authorizer, and refuses those that would break them.
///
/// In every scope: ending the transaction (BEGIN/COMMIT/ROLLBACK, or the savepoints that
/// hold a branch's or a job's work) and writing the resource manager's `dtx_` tables. For a
/// branch's work, also every write whose effect a changeset would lose: to a table
/// without a PRIMARY KEY (the session extension ignores such tables), to an attached
/// database (only `main` is recorded), and schema changes (a changeset carries rows,
/// not DDL). For a read, every write. The first refusal is kept: the resource manager
/// reports it as a `BusinessError` even if the code caught SQLite's "not authorized"
/// error.
final class StatementGuard {
    enum Scope {
        /// A branch's work, recorded into a changeset.
        case branch(operation: String)
        /// A local transaction committed at once.
        case local
        /// The business work of a TCC or saga phase: a local transaction committed at
        /// once with its barrier record (allowed what `local` is).
        case barrier(operation: String, phase: BarrierPhase)
        /// A read-only transaction.
        case read
    }

    /// The savepoint that holds a branch's work.
    static let savepoint = "dtx_branch_work"

    private let scope: Scope
    private let tables: [String: TableKeys]
    /// The first statement refused.
    private(set) var refusal: BusinessError?
    /// User tables of the main database the statements write.
    private(set) var writtenTables: Set<String> = []

    init(_ scope: Scope, tables: [String: TableKeys]) {
        self.scope = scope
        self.tables = tables
    }

    /// Runs `body` with the guard installed as the connection's authorizer.
    func guarding<T>(_ connection: SQLiteConnection, _ body: () throws -> T) rethrows -> T {
        let context = Unmanaged.passUnretained(self).toOpaque()
        sqlite3_set_authorizer(connection.handle, { context, action, first, second, database, _ in
            guard let context else { return SQLITE_OK }
            let guardian = Unmanaged<StatementGuard>.fromOpaque(context).takeUnretainedValue()
            return guardian.authorize(action, first.map { String(cString: $0) }, second.map { String(cString: $0) }, database.map { String(cString: $0) })
        }, context)
        defer { sqlite3_set_authorizer(connection.handle, nil, nil) }
        return try withExtendedLifetime(self) { try body() }
    }

    /// The authorizer's answer for one action (arguments as SQLite documents them per
    /// action code).
    private func authorize(_ action: Int32, _ first: String?, _ second: String?, _ database: String?) -> Int32 {
        switch action {
        case SQLITE_INSERT, SQLITE_UPDATE, SQLITE_DELETE:
            return authorizeWrite(table: first ?? "", database: database ?? "main")
        case SQLITE_TRANSACTION:
            return refuse(code: "transaction_control", "\(subject) ran \(first ?? "a transaction statement"); the resource manager begins and ends the transaction itself (use SAVEPOINT for nested work)")
        case SQLITE_SAVEPOINT where [Self.savepoint, SQLiteConnection.jobSavepoint].contains(second?.lowercased()):
            return refuse(code: "transaction_control", "\(subject) used the savepoint \(second ?? ""), which belongs to the resource manager; name yours differently")
        case SQLITE_CREATE_INDEX, SQLITE_CREATE_TABLE, SQLITE_CREATE_TRIGGER, SQLITE_CREATE_VIEW, SQLITE_CREATE_VTABLE,
             SQLITE_DROP_INDEX, SQLITE_DROP_TABLE, SQLITE_DROP_TRIGGER, SQLITE_DROP_VIEW, SQLITE_DROP_VTABLE, SQLITE_ALTER_TABLE:
            // ALTER TABLE names the database first, the table second; the others the object.
            let object = (action == SQLITE_ALTER_TABLE ? second : first) ?? "the schema"
            switch scope {
            case .local, .barrier: return SQLITE_OK
            case .read: return refuseWriteInRead(object)
            case .branch: return refuse(code: "schema_change_in_branch", "\(subject) changes the schema (\(object)); a prepared branch records row changes only, so run schema changes as migrations before serving transactions")
            }
        default:
            return SQLITE_OK
        }
    }

    private func authorizeWrite(table: String, database: String) -> Int32 {
        // SQLite's own tables change with the statements that imply it (sqlite_sequence
        // for AUTOINCREMENT); temporary tables are the connection's scratch space.
        if table.hasPrefix("sqlite_") || database == "temp" { return SQLITE_OK }
        if database == "main", table.hasPrefix("dtx_") {
            return refuse(code: "reserved_table", "\(subject) writes \(table); tables named dtx_… belong to the resource manager, rename yours")
        }
        switch scope {
        case .local, .barrier: return SQLITE_OK
        case .read: return refuseWriteInRead(table)
        case .branch: break
        }
        guard database == "main" else {
            return refuse(code: "attached_database_write", "\(subject) writes \(database).\(table); only the main database of the resource manager takes part in transactions")
        }
        // Views are not in the catalog: their triggers' writes are vetted one by one.
        guard let keys = tables[table] else { return SQLITE_OK }
        guard keys.hasPrimaryKey else {
            return refuse(code: "table_without_primary_key", "\(subject) writes table \(table), which has no PRIMARY KEY; a prepared branch records its changes by primary key and would lose these writes. Add a PRIMARY KEY to \(table)")
        }
        writtenTables.insert(table)
        return SQLITE_OK
    }

    private var subject: String {
        switch scope {
        case .branch(let operation): "operation \(operation)"
        case .local: "the local write"
        case .barrier(let operation, let phase): "the \(phase.rawValue) of operation \(operation)"
        case .read: "the read"
        }
    }

    private func refuseWriteInRead(_ target: String) -> Int32 {
        refuse(code: "write_in_read", "the read writes \(target); run writes through write(_:), which respects the rows held by prepared branches")
    }

    private func refuse(code: String, _ message: String) -> Int32 {
        if refusal == nil { refusal = BusinessError(code: code, message: message) }
        return SQLITE_DENY
    }
}
