import DTXCore
import DTXPostgresClient
import DTXParticipant
import Logging

/// TCC and sagas on PostgreSQL, behind the branch barrier (`BranchBarrier`).
///
/// A phase is an ordinary committed transaction (no `PREPARE TRANSACTION`):
/// `BEGIN` → a transaction-level advisory lock on the branch → read the branch's rows of
/// `dtx_barrier` → run the phase's operation (unless the barrier says it is a repeat, a
/// null compensation or a late try) → `INSERT` the phase's row with its result
/// (`ON CONFLICT DO NOTHING`) → `COMMIT`.
///
/// Concurrent messages of one branch: the advisory lock makes the later one wait (at
/// most the resource manager's lock timeout, then it fails and the coordinator retries)
/// until the first has committed or rolled back, and it then reads the first one's row:
/// a duplicate answers the stored result, a late try finds its cancel's marker. The
/// primary key (gid, branch, op) is the durable guarantee behind the lock: a row that
/// appears anyway (written without the lock) makes the insert do nothing, and the phase
/// rolls back and is retried rather than run twice. A refusal rolls the business work
/// and the barrier row back together.
extension PostgresResourceManager: BarrierResourceManager {
    /// The branch barrier: one row per phase a TCC or saga branch has done, written in
    /// the phase's own transaction. `op` is the phase; `digest` the `BranchDigest` of its
    /// operation and payload; `result` the operation's result as JSON text;
    /// `null_compensation` marks a cancel or compensate that did nothing because its try
    /// or action never ran here (the marker that refuses a late try or action).
    public static let barrierTableDDL = """
        CREATE TABLE IF NOT EXISTS dtx_barrier (
            gid TEXT NOT NULL,
            branch BIGINT NOT NULL,
            op TEXT NOT NULL CHECK (op IN ('try', 'confirm', 'cancel', 'action', 'compensate')),
            operation TEXT NOT NULL,
            digest TEXT NOT NULL,
            null_compensation BOOLEAN NOT NULL DEFAULT false,
            result TEXT,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (gid, branch, op)
        )
        """

    /// Registers (or replaces) the TCC operation `name`: its try, confirm and cancel.
    /// Each runs in a committed transaction with its barrier row; throw `BusinessError`
    /// from `try` to refuse (a SQL error of class 22 or 23 is a refusal too). Confirm and
    /// cancel get the try's payload.
    public func register(tcc name: String, try tryBody: @escaping Operation, confirm: @escaping Operation, cancel: @escaping Operation) {
        barrierOperations.register(tcc: name, try: tryBody, confirm: confirm, cancel: cancel)
    }

    /// Registers (or replaces) the saga operation `name`: its action and compensation.
    /// Throw `BusinessError` from `action` for a definitive failure. The compensation gets
    /// the action's payload.
    public func register(saga name: String, action: @escaping Operation, compensate: @escaping Operation) {
        barrierOperations.register(saga: name, action: action, compensate: compensate)
    }

    /// What a phase did, for the log.
    private enum BarrierOutcome: String {
        case ran, repeated, nullCompensation = "null compensation"
    }

    public func runPhase(_ phase: BarrierPhase, _ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        let digest = BranchDigest.of(operation: operation, payload: payload)
        let body = barrierOperations.body(phase, operation)
        let operations = barrierOperations
        let lockTimeout = lockTimeout
        let logger = logger
        let (result, outcome) = try await pool.withConnection { connection in
            try connection.execute("BEGIN")
            do {
                let answer = try Self.barrierTransaction(
                    phase, branch, operation: operation, payload: payload, digest: digest, lockTimeout: lockTimeout, logger: logger, connection
                ) {
                    try operations.required(body, phase, operation, of: branch)
                }
                connection.rollbackIfInTransaction()
                return answer
            } catch {
                connection.rollbackIfInTransaction()
                throw error
            }
        }
        logger.debug("\(phase.transactionProtocol.rawValue) \(phase.rawValue): \(outcome.rawValue)", metadata: ["gid": .string(branch.gid), "branch": .stringConvertible(branch.branch), "operation": .string(operation)])
        return result
    }

    /// The phase, inside the transaction `BEGIN` opened. It commits the transaction when
    /// it wrote; a repeat (nothing written) leaves it for the caller to roll back.
    private static func barrierTransaction(
        _ phase: BarrierPhase, _ branch: BranchRef, operation: String, payload: JSONValue?, digest: String,
        lockTimeout: String, logger: Logger, _ connection: PostgresConnection, body: () throws -> Operation
    ) throws -> (JSONValue?, BarrierOutcome) {
        // The timeout first: it bounds the wait for the lock, and the operation's waits
        // for row locks (rows held by prepared 2PC branches are released only by phase two).
        try connection.execute("SELECT set_config('lock_timeout', $1, true)", [.text(lockTimeout)])
        try connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [.text("dtx barrier:\(branch.gid):\(branch.branch)")])
        let recorded = try barrierRecords(of: branch, connection)
        switch try BranchBarrier.step(for: phase, of: branch, digest: digest, recorded: recorded) {
        case .answer(let result):
            return (result, .repeated)
        case .recordNullCompensation:
            try recordBarrier(phase, of: branch, operation: operation, digest: digest, result: nil, nullCompensation: true, connection)
            try commit(phase, of: branch, connection)
            return (nil, .nullCompensation)
        case .run:
            let result = try runBarrierWork(phase, operation: operation, body: body(), payload: payload, logger: logger, connection)
            try recordBarrier(phase, of: branch, operation: operation, digest: digest, result: result, nullCompensation: false, connection)
            try commit(phase, of: branch, connection)
            return (result, .ran)
        }
    }

    /// Runs the phase's operation, turning definitive SQL failures into refusals.
    private static func runBarrierWork(_ phase: BarrierPhase, operation: String, body: Operation, payload: JSONValue?, logger: Logger, _ connection: PostgresConnection) throws -> JSONValue? {
        let result: JSONValue?
        do {
            result = try body(payload, connection)
        } catch let error as PostgresError where error.sqlStateClass == "22" || error.sqlStateClass == "23" {
            logger.info("operation refused by the database", metadata: ["operation": .string(operation), "phase": .string(phase.rawValue), "error": "\(error)"])
            throw BusinessError(code: error.sqlStateClass == "23" ? "constraint_violation" : "invalid_data", message: "the \(phase.rawValue) of operation \(operation) failed: \(error.message)")
        }
        guard connection.isInTransaction else {
            throw PostgresError(code: .invalidValue, message: "the \(phase.rawValue) of operation \(operation) ended its transaction; an operation must not run BEGIN, COMMIT or ROLLBACK")
        }
        return result
    }

    /// The branch's barrier rows, by phase.
    private static func barrierRecords(of branch: BranchRef, _ connection: PostgresConnection) throws -> [BarrierPhase: BranchBarrier.Record] {
        var records: [BarrierPhase: BranchBarrier.Record] = [:]
        let rows = try connection.execute("SELECT op, digest, result FROM dtx_barrier WHERE gid = $1 AND branch = $2", [.text(branch.gid), .int(branch.branch)]).rows
        for row in rows {
            guard let phase = try row.string("op").flatMap(BarrierPhase.init(rawValue:)), let digest = try row.string("digest") else {
                throw PostgresError(code: .invalidValue, message: "dtx_barrier holds a row for branch \(branch) that the resource manager did not write (op \(row[0] ?? "NULL")); inspect the table")
            }
            let result: JSONValue?
            do {
                result = try row.string("result").map { try JSONValue(parsing: Array($0.utf8)) }
            } catch {
                throw PostgresError(code: .invalidValue, message: "the stored result of the \(phase.rawValue) of branch \(branch) in dtx_barrier is not JSON (\(error)); inspect the table")
            }
            records[phase] = BranchBarrier.Record(digest: digest, result: result)
        }
        return records
    }

    /// Inserts the phase's row. Under the branch's lock the row cannot exist; if it does
    /// (something wrote it without the lock) nothing is inserted, and the phase fails to
    /// be retried: the retry reads the row and answers from it.
    private static func recordBarrier(
        _ phase: BarrierPhase, of branch: BranchRef, operation: String, digest: String, result: JSONValue?, nullCompensation: Bool, _ connection: PostgresConnection
    ) throws {
        let stored: PostgresValue? = result.map { result in
            var writer = JSONWriter()
            writer.value(result)
            return .text(String(decoding: writer.bytes, as: UTF8.self))
        }
        let inserted = try connection.execute(
            """
            INSERT INTO dtx_barrier (gid, branch, op, operation, digest, null_compensation, result)
            VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING
            """,
            [.text(branch.gid), .int(branch.branch), .text(phase.rawValue), .text(operation), .text(digest), .bool(nullCompensation), stored])
        guard inserted.affectedRows == 1 else {
            throw PostgresError(code: .branchBusy, message: "the \(phase.rawValue) of branch \(branch) was recorded by another call meanwhile; retry to get its answer")
        }
    }

    /// PostgreSQL answers a COMMIT of a failed transaction with a plain ROLLBACK, not an
    /// error, so the command tag is checked.
    private static func commit(_ phase: BarrierPhase, of branch: BranchRef, _ connection: PostgresConnection) throws {
        let tag = try connection.execute("COMMIT").commandTag
        guard tag == "COMMIT" else {
            throw PostgresError(code: .server, message: "the \(phase.rawValue) of branch \(branch) was rolled back instead of committed: its transaction had failed", sql: "COMMIT")
        }
    }
}
