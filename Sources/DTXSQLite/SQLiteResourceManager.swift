import DTXAPI
import DTXCore
import DTXParticipant
import Foundation
import Logging
import Synchronization

/// SQLite as a two-phase-commit participant (docs/INTERNALS.md, "Resource managers"): the branch's work is
/// recorded as a changeset and kept, with locks on the rows it changes, in the service's
/// own database file.
///
/// - PREPARE runs the branch's operation inside `BEGIN IMMEDIATE` and a savepoint with a
///   session attached, takes the changeset, rolls the savepoint back (the business rows
///   stay untouched) and stores the changeset in `dtx_prepared` and one lock per changed
///   row in `dtx_locks`, in the same transaction: its COMMIT (`synchronous=FULL`) is the
///   durable yes-vote. The row keeps the branch's digest (`BranchDigest`, its operation
///   and payload): a repeated PREPARE or one-phase commit of the branch is a duplicate
///   only when it asks for the same work, and is refused (`branch_mismatch`) otherwise.
/// - Every later write through the resource manager (other branches, `write`) checks the
///   rows it changes against `dtx_locks`: a row held by an in-doubt branch is refused (or
///   waited for), as PostgreSQL's row locks would.
/// - COMMIT applies the changeset, drops the locks and records the outcome in
///   `dtx_outcomes` in one transaction; ROLLBACK drops the changeset and the locks.
///
/// Operations are Swift closures registered by name. Their writes must go to tables with
/// a PRIMARY KEY whose key columns hold no NULL (the rows a changeset can name); other
/// writes, schema changes and transaction statements are refused. A row a branch inserts
/// keeps its key reserved only through its lock: let the application choose keys (an
/// INTEGER PRIMARY KEY left to SQLite may be handed to two branches, and the second is
/// refused as `row_locked`).
///
/// TCC and saga phases are plain local transactions behind the branch barrier
/// (SQLiteBarrier.swift).
///
/// 3PC (`ThreePhaseResourceManager`): CANCOMMIT prepares as PREPARE does (w is the
/// stored changeset; there is no read-only vote, so an empty changeset is stored too)
/// and records the branch's state and the transaction's participants in `dtx_3pc` in the
/// same transaction; PRECOMMIT marks that row (p) in a transaction of its own. Commit and
/// rollback drop the row with the changeset, so `dtx_3pc` holds exactly the branches in
/// w or p (a restart runs termination for them, and `inDoubt()` leaves them out), and
/// `dtx_outcomes` answers c or a for finished ones.
///
/// All database work runs on one dedicated thread (`SQLiteDatabase`), one job at a time.
/// The resource manager assumes it owns every write to the file.
public final class SQLiteResourceManager: ResourceManager, ThreePhaseResourceManager {
    /// A named unit of a branch's work: reads the payload, runs SQL on the connection and
    /// returns the branch's result. Throw `BusinessError` to refuse (a NO vote). It runs
    /// inside the resource manager's transaction, on the database thread, and may run
    /// again for a retried message until the branch is prepared.
    public typealias Operation = @Sendable (_ payload: JSONValue?, _ connection: SQLiteConnection) throws -> JSONValue?

    /// The database file.
    public var path: String { database.path }
    /// How long `write` waits for rows held by in-doubt branches.
    public let lockWaitTimeout: Duration
    let database: SQLiteDatabase
    private let operations = Mutex<[String: Operation]>([:])
    /// The TCC and saga operations (SQLiteBarrier.swift).
    let barrierOperations = BarrierOperations<Operation>()
    private let logger: Logger

    /// How often `write` looks again at a row held by an in-doubt branch.
    static let lockPollInterval = Duration.milliseconds(5)

    /// Opens (creating if needed) the database file and the resource manager's tables.
    /// Branches prepared before a crash are in doubt (`inDoubt()`), their rows locked
    /// until the coordinator decides.
    /// - Parameters:
    ///   - busyTimeout: how long a transaction waits for another process's write lock.
    ///   - lockWaitTimeout: how long `write` waits for rows held by in-doubt branches.
    /// - Throws: `SQLiteError` when the file cannot be opened or its tables created.
    public init(path: String, busyTimeout: Duration = .seconds(5), lockWaitTimeout: Duration = .seconds(2), logger: Logger = Logger(label: "dtx.sqlite")) async throws {
        database = try await SQLiteDatabase(path: path, busyTimeout: busyTimeout)
        self.lockWaitTimeout = lockWaitTimeout
        self.logger = logger
        try await database.run { connection in
            try connection.executeScript(SQLiteParticipantSchema.ddl)
        }
    }

    /// Registers `body` as the operation called `name`, replacing any operation of that
    /// name.
    public func register(_ name: String, _ body: @escaping Operation) {
        operations.withLock { $0[name] = body }
    }

    /// Finishes queued work and closes the database. Later calls fail.
    public func close() async {
        await database.close()
    }

    // MARK: ResourceManager

    public func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> PrepareOutcome {
        try await prepare(branch, operation: operation, payload: payload, participants: nil)
    }

    /// PREPARE, or with `participants` 3PC's CANCOMMIT, which has no read-only vote and
    /// records the branch in `dtx_3pc` (w) in the same transaction.
    private func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]?) async throws -> PrepareOutcome {
        let body = operations.withLock { $0[operation] }
        let digest = BranchDigest.of(operation: operation, payload: payload)
        let peers = try participants.map(Self.stored)
        return try await database.run(sharingCommit: true) { connection in
            try connection.transaction(immediate: true) {
                switch try Self.recorded(branch, in: connection) {
                case .rolledBack: throw BusinessError.alreadyRolledBack(branch, cannot: "prepare")
                case .prepared(let result, let recorded), .committed(let result, let recorded):
                    try Self.check(digest, against: recorded, of: branch)
                    return .prepared(result: result)
                case nil: break
                }
                guard let body else { throw BusinessError.unknownOperation(operation) }
                let work = try Self.runBranchWork(operation, body, payload, keep: false, in: connection)
                if work.changeset.isEmpty, peers == nil { return .readOnly(result: work.result) }
                let rows = try work.changeset.summary().rows
                if let (row, holder) = try Self.lockHolder(of: rows, in: connection) {
                    throw BusinessError.rowLocked(row, heldBy: holder)
                }
                try connection.execute(
                    "INSERT INTO dtx_prepared (gid, branch, operation, changeset, result, prepared_at, digest) VALUES (?, ?, ?, ?, ?, \(Self.now), ?)",
                    [.text(branch.gid), .integer(Int64(branch.branch)), .text(operation), .blob(work.changeset.bytes), Self.stored(work.result), .text(digest)])
                if let peers {
                    try connection.execute(
                        "INSERT INTO dtx_3pc (gid, branch, state, participants, updated_at) VALUES (?, ?, ?, ?, \(Self.now))",
                        Self.keyParameters(branch) + [.text(ThreePhaseState.prepared.rawValue), peers])
                }
                for row in rows {
                    try connection.execute(
                        "INSERT INTO dtx_locks (tbl, pk, gid, branch) VALUES (?, ?, ?, ?)",
                        [.text(row.table), .blob(row.encodedKey), .text(branch.gid), .integer(Int64(branch.branch))])
                }
                return .prepared(result: work.result)
            }
        }
    }

    public func commit(_ branch: BranchRef) async throws {
        try await database.run(sharingCommit: true) { [logger] connection in
            try connection.transaction(immediate: true) {
                switch try Self.recorded(branch, in: connection) {
                case .committed: return
                case .rolledBack: throw BusinessError.alreadyRolledBack(branch, cannot: "commit")
                case nil: throw BusinessError(code: "unknown_branch", message: "no record of branch \(branch): it was never prepared here; the transaction needs an operator's decision")
                case .prepared: _ = try Self.commitPrepared(branch, in: connection, logger: logger)
                }
            }
        }
    }

    public func rollback(_ branch: BranchRef) async throws {
        try await database.run(sharingCommit: true) { connection in
            try connection.transaction(immediate: true) {
                switch try Self.recorded(branch, in: connection) {
                case .rolledBack: return
                case .committed: throw BusinessError(code: "already_committed", message: "branch \(branch) was already committed; it cannot roll back")
                case .prepared(_, let digest):
                    try Self.forgetPrepared(branch, in: connection)
                    try Self.recordOutcome(.rolledBack, result: nil, digest: digest, of: branch, in: connection)
                case nil:
                    // A branch never prepared (presumed abort) is recorded too, so that a
                    // PREPARE arriving after this ROLLBACK refuses.
                    try Self.forgetPrepared(branch, in: connection)
                    try Self.recordOutcome(.rolledBack, result: nil, digest: nil, of: branch, in: connection)
                }
            }
        }
    }

    public func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        let body = operations.withLock { $0[operation] }
        let digest = BranchDigest.of(operation: operation, payload: payload)
        return try await database.run(sharingCommit: true) { [logger] connection in
            try connection.transaction(immediate: true) {
                switch try Self.recorded(branch, in: connection) {
                case .committed(let result, let recorded):
                    try Self.check(digest, against: recorded, of: branch)
                    return result
                case .rolledBack: throw BusinessError.alreadyRolledBack(branch, cannot: "commit")
                case .prepared(_, let recorded):
                    try Self.check(digest, against: recorded, of: branch)
                    return try Self.commitPrepared(branch, in: connection, logger: logger)
                case nil: break
                }
                guard let body else { throw BusinessError.unknownOperation(operation) }
                let work = try Self.runBranchWork(operation, body, payload, keep: true, in: connection)
                if !work.changeset.isEmpty, let (row, holder) = try Self.lockHolder(of: work.changeset.summary().rows, in: connection) {
                    throw BusinessError.rowLocked(row, heldBy: holder)
                }
                try Self.recordOutcome(.committed, result: work.result, digest: digest, of: branch, in: connection)
                return work.result
            }
        }
    }

    public func inDoubt() async throws -> [BranchRef] {
        try await database.run { connection in
            try connection.query(
                "SELECT gid, branch FROM dtx_prepared p WHERE NOT EXISTS (SELECT 1 FROM dtx_3pc t WHERE t.gid = p.gid AND t.branch = p.branch) ORDER BY prepared_at, gid, branch"
            ).compactMap { row in
                guard let gid = row.values[0].textValue, let branch = row.values[1].integerValue else { return nil }
                return BranchRef(gid: gid, branch: BranchID(branch))
            }
        }
    }

    // MARK: 3PC

    public func canCommit(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]) async throws -> JSONValue? {
        switch try await prepare(branch, operation: operation, payload: payload, participants: participants) {
        case let .prepared(result), let .readOnly(result): return result
        }
    }

    public func preCommit(_ branch: BranchRef) async throws {
        try await database.run(sharingCommit: true) { connection in
            try connection.transaction(immediate: true) {
                switch try Self.recorded(branch, in: connection) {
                case .committed: return
                case .rolledBack: throw BusinessError.alreadyRolledBack(branch, cannot: "pre-commit")
                case .prepared, nil:
                    let marked = try connection.execute(
                        "UPDATE dtx_3pc SET state = ?, updated_at = \(Self.now) WHERE gid = ? AND branch = ?",
                        [.text(ThreePhaseState.preCommitted.rawValue)] + Self.keyParameters(branch))
                    guard marked == 1 else {
                        throw BusinessError(code: "unknown_branch", message: "branch \(branch) is not a prepared 3PC branch here; it cannot pre-commit")
                    }
                }
            }
        }
    }

    public func threePhaseBranch(_ branch: BranchRef) async throws -> ThreePhaseBranchRecord? {
        try await database.run { connection in
            try connection.transaction(immediate: false) {
                switch try Self.recorded(branch, in: connection) {
                case nil: return nil
                case .committed: return ThreePhaseBranchRecord(ref: branch, state: .committed, participants: [])
                case .rolledBack: return ThreePhaseBranchRecord(ref: branch, state: .aborted, participants: [])
                case .prepared:
                    let row = try connection.query("SELECT gid, branch, state, participants FROM dtx_3pc WHERE gid = ? AND branch = ?", Self.keyParameters(branch)).first
                    // A branch prepared by 2PC's PREPARE has no row: it is in w, with no peers to ask.
                    return try row.flatMap(Self.threePhaseRecord) ?? ThreePhaseBranchRecord(ref: branch, state: .prepared, participants: [])
                }
            }
        }
    }

    public func unfinishedThreePhaseBranches() async throws -> [ThreePhaseBranchRecord] {
        try await database.run { connection in
            try connection.query("SELECT gid, branch, state, participants FROM dtx_3pc ORDER BY gid, branch").compactMap(Self.threePhaseRecord)
        }
    }

    /// A `dtx_3pc` row (gid, branch, state, participants) as the kit reads it.
    private static func threePhaseRecord(_ row: SQLiteRow) throws -> ThreePhaseBranchRecord? {
        guard let gid = row.values[0].textValue, let id = row.values[1].integerValue else { return nil }
        let branch = BranchRef(gid: gid, branch: BranchID(id))
        guard let state = row.values[2].textValue.flatMap(ThreePhaseState.init(rawValue:)), state == .prepared || state == .preCommitted else {
            throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "dtx_3pc holds the state \(row.values[2]), not prepared or pre_committed")
        }
        guard let text = row.values[3].textValue, let participants = try? JSONDecoder().decode([ThreePhasePeer].self, from: Data(text.utf8)) else {
            throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "its dtx_3pc participants are not a JSON list of peers")
        }
        return ThreePhaseBranchRecord(ref: branch, state: state, participants: participants)
    }

    /// The participants as stored: JSON text.
    private static func stored(_ participants: [ThreePhasePeer]) throws -> SQLiteValue {
        .text(String(decoding: try JSONEncoder().encode(participants), as: UTF8.self))
    }

    // MARK: Local transactions

    /// Runs `body` as a local transaction (not part of any global transaction) that
    /// respects the rows held by in-doubt branches: it runs in `BEGIN IMMEDIATE` with a
    /// session, and commits only if it changed no locked row. Otherwise it is rolled back
    /// and run again every few milliseconds, until the rows are free or `lockWaitTimeout`
    /// has passed. `body` may thus run more than once; only its last run is committed.
    /// - Throws: `SQLiteResourceManagerError.rowLocked` when a row stayed locked;
    ///   `BusinessError` for a statement the resource manager refuses (writing its `dtx_`
    ///   tables, ending the transaction); what `body` throws (nothing is written).
    @discardableResult
    public func write<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await write(body, message: nil)
    }

    /// `write`, which also writes message `message`'s committed row (`MessageResourceManager`).
    func write<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T, message: String?) async throws -> T {
        let deadline = ContinuousClock.now + lockWaitTimeout
        while true {
            let attempt = try await database.run { connection in
                try Self.writeIfUnlocked(body, message: message, in: connection)
            }
            switch attempt {
            case .written(let value): return value
            case .locked(let row, let holder):
                guard ContinuousClock.now < deadline else {
                    throw SQLiteResourceManagerError.rowLocked(table: row.table, key: row.keyDescription, gid: holder.gid, branch: holder.branch)
                }
                try await Task.sleep(for: Self.lockPollInterval)
            }
        }
    }

    /// Runs `body` in a read transaction (a consistent snapshot).
    /// - Throws: `BusinessError` (`write_in_read`) if `body` writes; what `body` throws.
    public func read<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await database.run { connection in
            try connection.transaction(immediate: false) {
                let statements = StatementGuard(.read, tables: [:])
                let outcome = statements.guarding(connection) { Result { try body(connection) } }
                if let refusal = statements.refusal { throw refusal }
                return try outcome.get()
            }
        }
    }

    // MARK: Work on the database thread

    /// What the resource manager knows of a branch: its result and the digest of its
    /// work.
    private enum Recorded {
        case prepared(JSONValue?, digest: String)
        case committed(JSONValue?, digest: String)
        case rolledBack
    }

    private enum Outcome: String {
        case committed
        case rolledBack = "rolled_back"
    }

    private static func recorded(_ branch: BranchRef, in connection: SQLiteConnection) throws -> Recorded? {
        let key = keyParameters(branch)
        if let row = try connection.query("SELECT outcome, result, digest FROM dtx_outcomes WHERE gid = ? AND branch = ?", key).first {
            switch row.values[0].textValue.flatMap(Outcome.init(rawValue:)) {
            case .committed: return .committed(try result(row.values[1], of: branch), digest: try digest(row.values[2], of: branch))
            case .rolledBack: return .rolledBack
            case nil: throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "dtx_outcomes holds the unknown outcome \(row.values[0])")
            }
        }
        if let row = try connection.query("SELECT result, digest FROM dtx_prepared WHERE gid = ? AND branch = ?", key).first {
            return .prepared(try result(row.values[0], of: branch), digest: try digest(row.values[1], of: branch))
        }
        return nil
    }

    /// Refuses a repeated PREPARE or one-phase commit that asks for other work than the
    /// branch was recorded with.
    private static func check(_ digest: String, against recorded: String, of branch: BranchRef) throws {
        if recorded != digest { throw BranchDigest.mismatch(branch) }
    }

    /// Applies a prepared branch's changeset, drops its locks and records it committed.
    /// - Returns: the branch's result.
    /// - Throws: `SQLiteResourceManagerError.commitConflict` when the changeset does not
    ///   apply cleanly (logged as a heuristic hazard; the branch stays prepared).
    private static func commitPrepared(_ branch: BranchRef, in connection: SQLiteConnection, logger: Logger) throws -> JSONValue? {
        guard let row = try connection.query("SELECT changeset, result, digest FROM dtx_prepared WHERE gid = ? AND branch = ?", keyParameters(branch)).first,
              let bytes = row.values[0].blobValue
        else { throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "its dtx_prepared row has no changeset") }
        let branchResult = try result(row.values[1], of: branch)
        let branchDigest = try digest(row.values[2], of: branch)
        let changeset = Changeset(bytes: bytes)
        let conflict = try incompatibleTable(changeset, in: connection) ?? changeset.apply(to: connection)?.description
        if let conflict {
            logger.critical("HEURISTIC HAZARD: prepared branch cannot commit", metadata: ["gid": "\(branch.gid)", "branch": "\(branch.branch)", "conflict": "\(conflict)"])
            throw SQLiteResourceManagerError.commitConflict(branch: branch, reason: conflict)
        }
        try forgetPrepared(branch, in: connection)
        try recordOutcome(.committed, result: branchResult, digest: branchDigest, of: branch, in: connection)
        return branchResult
    }

    /// A table of the changeset whose columns or primary key changed since the branch
    /// prepared: `sqlite3changeset_apply` would skip its rows without an error.
    private static func incompatibleTable(_ changeset: Changeset, in connection: SQLiteConnection) throws -> String? {
        let tables = try connection.tableKeys()
        for (name, shape) in try changeset.summary().tables {
            guard let keys = tables[name] else {
                return "table \(name) no longer exists; restore it to commit the branch"
            }
            if keys.columnCount < shape.columnCount || keys.columns.map(\.position).sorted() != shape.keyPositions {
                return "table \(name) no longer has the \(shape.columnCount) columns and primary key the branch recorded; restore its schema to commit the branch"
            }
        }
        return nil
    }

    private static func forgetPrepared(_ branch: BranchRef, in connection: SQLiteConnection) throws {
        try connection.execute("DELETE FROM dtx_locks WHERE gid = ? AND branch = ?", keyParameters(branch))
        try connection.execute("DELETE FROM dtx_prepared WHERE gid = ? AND branch = ?", keyParameters(branch))
        try connection.execute("DELETE FROM dtx_3pc WHERE gid = ? AND branch = ?", keyParameters(branch))
    }

    private static func recordOutcome(_ outcome: Outcome, result: JSONValue?, digest: String?, of branch: BranchRef, in connection: SQLiteConnection) throws {
        try connection.execute(
            "INSERT INTO dtx_outcomes (gid, branch, outcome, result, decided_at, digest) VALUES (?, ?, ?, ?, \(now), ?)",
            keyParameters(branch) + [.text(outcome.rawValue), stored(result), digest.map(SQLiteValue.text) ?? .null])
    }

    /// A branch operation's result and the changes it made.
    private struct BranchWork {
        var result: JSONValue?
        var changeset: Changeset
    }

    /// Runs an operation in a savepoint of the open transaction, recording its changes.
    /// - Parameter keep: keep the changes (one-phase commit); otherwise roll them back,
    ///   leaving only the changeset.
    /// - Throws: `BusinessError` when the operation refuses, breaks a constraint or writes
    ///   what a changeset cannot carry; other errors of the operation.
    private static func runBranchWork(_ operation: String, _ body: Operation, _ payload: JSONValue?, keep: Bool, in connection: SQLiteConnection) throws -> BranchWork {
        let tables = try connection.tableKeys()
        try connection.execute("SAVEPOINT \(StatementGuard.savepoint)")
        let (result, changeset) = try { () throws -> (JSONValue?, Changeset) in
            let session = try SQLiteSession(connection)
            let statements = StatementGuard(.branch(operation: operation), tables: tables)
            let outcome = statements.guarding(connection) { Result { try body(payload, connection) } }
            if let refusal = statements.refusal { throw refusal }
            let result: JSONValue?
            do {
                result = try outcome.get()
            } catch let error as SQLiteError where error.isConstraintViolation {
                throw BusinessError(code: "constraint_violation", message: "operation \(operation) breaks a constraint: \(error.message)")
            }
            try refuseNullKeys(in: statements.writtenTables, tables, operation: operation, connection)
            return (result, try session.changeset())
        }()
        if !keep { try connection.execute("ROLLBACK TO \(StatementGuard.savepoint)") }
        try connection.execute("RELEASE \(StatementGuard.savepoint)")
        return BranchWork(result: result, changeset: changeset)
    }

    /// Refuses rows with a NULL in their primary key in the tables an operation wrote: the
    /// session extension does not record them, so their changes would be lost.
    private static func refuseNullKeys(in written: Set<String>, _ tables: [String: TableKeys], operation: String, _ connection: SQLiteConnection) throws {
        for table in written.sorted() {
            guard let columns = tables[table]?.nullableColumns, !columns.isEmpty else { continue }
            let condition = columns.map { "\(quoted($0)) IS NULL" }.joined(separator: " OR ")
            if try !connection.query("SELECT 1 FROM \(quoted(table)) WHERE \(condition) LIMIT 1").isEmpty {
                throw BusinessError(code: "null_primary_key", message: "table \(table) has a row with NULL in its primary key (\(columns.joined(separator: ", "))) after operation \(operation); a prepared branch records rows by primary key and cannot record it. Declare the key columns NOT NULL and give them values")
            }
        }
    }

    /// The first of `rows` locked by a prepared branch, with that branch.
    static func lockHolder(of rows: [RowKey], in connection: SQLiteConnection) throws -> (RowKey, BranchRef)? {
        for row in rows {
            if let lock = try connection.query("SELECT gid, branch FROM dtx_locks WHERE tbl = ? AND pk = ?", [.text(row.table), .blob(row.encodedKey)]).first,
               let gid = lock.values[0].textValue, let branch = lock.values[1].integerValue {
                return (row, BranchRef(gid: gid, branch: BranchID(branch)))
            }
        }
        return nil
    }

    /// One attempt of a local write.
    private enum WriteAttempt<T: Sendable>: Sendable {
        case written(T)
        /// Rolled back: the row is held by the branch.
        case locked(RowKey, BranchRef)
    }

    /// A local write changed a locked row (rolls its transaction back).
    private struct RowHeld: Error {
        var row: RowKey
        var holder: BranchRef
    }

    private static func writeIfUnlocked<T: Sendable>(_ body: @Sendable (SQLiteConnection) throws -> T, message: String?, in connection: SQLiteConnection) throws -> WriteAttempt<T> {
        do {
            return .written(try connection.transaction(immediate: true) {
                if let message { try recordCommitted(message: message, in: connection) }
                let session = try SQLiteSession(connection)
                let statements = StatementGuard(.local, tables: try connection.tableKeys())
                let outcome = statements.guarding(connection) { Result { try body(connection) } }
                if let refusal = statements.refusal { throw refusal }
                let value = try outcome.get()
                let changeset = try session.changeset()
                if !changeset.isEmpty, let (row, holder) = try lockHolder(of: changeset.summary().rows, in: connection) {
                    throw RowHeld(row: row, holder: holder)
                }
                return value
            })
        } catch let held as RowHeld {
            return .locked(held.row, held.holder)
        }
    }

    // MARK: Encoding

    /// The current time as SQL: ISO 8601, UTC, milliseconds.
    static let now = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

    private static func keyParameters(_ branch: BranchRef) -> [SQLiteValue] {
        [.text(branch.gid), .integer(Int64(branch.branch))]
    }

    /// A result as stored: JSON text, or NULL for none.
    static func stored(_ result: JSONValue?) -> SQLiteValue {
        guard let result else { return .null }
        var writer = JSONWriter()
        writer.value(result)
        return .text(String(decoding: writer.bytes, as: UTF8.self))
    }

    static func result(_ stored: SQLiteValue, of branch: BranchRef) throws -> JSONValue? {
        switch stored {
        case .null: return nil
        case .text(let text):
            do {
                return try JSONValue(parsing: Array(text.utf8))
            } catch {
                throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "its stored result is not JSON (\(error))")
            }
        default: throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "its stored result is \(stored), not JSON text")
        }
    }

    /// A stored digest of a prepared or committed branch: text.
    private static func digest(_ stored: SQLiteValue, of branch: BranchRef) throws -> String {
        guard case .text(let text) = stored else {
            throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "its stored digest is \(stored), not text")
        }
        return text
    }

    /// `name` as an SQL identifier.
    private static func quoted(_ name: String) -> String {
        "\"" + name.replacing("\"", with: "\"\"") + "\""
    }
}

/// Errors of `SQLiteResourceManager` that are not business refusals: the participant kit
/// answers them as "retry later".
public enum SQLiteResourceManagerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A local write changed a row held by an in-doubt branch, and the row stayed held for
    /// the whole lock wait.
    case rowLocked(table: String, key: String, gid: String, branch: BranchID)
    /// A prepared branch's changes could not be applied (a heuristic hazard: something
    /// wrote its rows behind the resource manager's back, or changed their table). The
    /// branch stays prepared and its rows locked.
    case commitConflict(branch: BranchRef, reason: String)
    /// The resource manager's own tables hold something it did not write.
    case corruptRecord(branch: BranchRef, reason: String)

    public var description: String {
        switch self {
        case let .rowLocked(table, key, gid, branch):
            "row \(key) of table \(table) is held by in-doubt branch \(gid)/\(branch): the write waited for that transaction's outcome and gave up; retry later, or resolve transaction \(gid) with the dtx CLI if it stays in doubt"
        case let .commitConflict(branch, reason):
            "heuristic hazard: branch \(branch) is prepared but its changes cannot be applied: \(reason). Nothing was committed; the branch stays prepared and its rows locked. Repair the data by hand, then let the coordinator retry"
        case let .corruptRecord(branch, reason):
            "the record of branch \(branch) is damaged: \(reason); inspect the dtx_ tables of the database"
        }
    }
}

extension BusinessError {
    static func alreadyRolledBack(_ branch: BranchRef, cannot action: String) -> BusinessError {
        BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot \(action)")
    }

    static func unknownOperation(_ operation: String) -> BusinessError {
        BusinessError(code: "unknown_operation", message: "no operation named \(operation) is registered with this participant; register it with SQLiteResourceManager.register before serving transactions")
    }

    static func rowLocked(_ row: RowKey, heldBy holder: BranchRef) -> BusinessError {
        BusinessError(code: "row_locked", message: "row \(row.keyDescription) of table \(row.table) is held by in-doubt branch \(holder.gid)/\(holder.branch); retry the transaction once \(holder.gid) has ended")
    }
}

// MARK: Messages

/// Msg on SQLite: a message's row in `dtx_messages` is written by its local transaction
/// (`committed`) or by the check-back (`rolled_back`), whichever comes first. The local
/// transaction runs in `BEGIN IMMEDIATE`, so a check-back (another job on the database's
/// thread, or another process waiting `busyTimeout` for the write lock) sees its row
/// only once it has committed.
extension SQLiteResourceManager: MessageResourceManager {
    public typealias Connection = SQLiteConnection

    /// Runs `body` as `write` does, together with message `gid`'s committed row.
    /// - Throws: `MessageRolledBack` when the check-back came first; `BusinessError`
    ///   (`message_exists`) when a local transaction of `gid` already committed.
    public func write<T: Sendable>(message gid: String, _ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await write(body, message: gid)
    }

    public func queryPrepared(gid: String) async throws -> String {
        do {
            return try await database.run { connection in
                try connection.transaction(immediate: true) {
                    try connection.execute("INSERT OR IGNORE INTO dtx_messages (gid, outcome, created_at) VALUES (?, 'rolled_back', \(Self.now))", [.text(gid)])
                    return try connection.query("SELECT outcome FROM dtx_messages WHERE gid = ?", [.text(gid)]).first?.values[0].textValue ?? MessageCheckBack.rolledBack
                }
            }
        } catch let error as SQLiteError where error.isBusy {
            // Another process's local transaction holds the write lock past the busy timeout.
            return MessageCheckBack.running
        }
    }

    /// Inserts message `gid`'s committed row in the open transaction.
    static func recordCommitted(message gid: String, in connection: SQLiteConnection) throws {
        do {
            try connection.execute("INSERT INTO dtx_messages (gid, outcome, created_at) VALUES (?, 'committed', \(now))", [.text(gid)])
        } catch let error as SQLiteError where error.isConstraintViolation {
            let outcome = try connection.query("SELECT outcome FROM dtx_messages WHERE gid = ?", [.text(gid)]).first?.values[0].textValue
            if outcome == MessageCheckBack.committed {
                throw BusinessError(code: "message_exists", message: "message \(gid) was already sent (its local transaction committed); use a new gid")
            }
            throw MessageRolledBack(gid: gid)
        }
    }
}
