import DTXCore
import DTXParticipant

/// TCC and sagas on SQLite, behind the branch barrier (`BranchBarrier`).
///
/// A phase is a plain local transaction (no changeset, no prepare): `BEGIN IMMEDIATE` →
/// read the branch's rows of `dtx_barrier` → run the phase's operation (unless the
/// barrier says it is a repeat, a null compensation or a late try) → insert the phase's
/// row with its result → `COMMIT`. The write lock taken by `BEGIN IMMEDIATE` orders the
/// messages of a branch (also across processes), so concurrent duplicates run the
/// operation once. A refusal (`BusinessError`, or a constraint violation) rolls the
/// business work and the barrier row back together.
///
/// Like `write`, a phase respects the rows held by in-doubt 2PC branches: it runs with a
/// session and commits only if it changed no locked row; otherwise it is rolled back and
/// run again every few milliseconds until the rows are free or `lockWaitTimeout` has
/// passed (then `SQLiteResourceManagerError.rowLocked`, which the coordinator retries).
/// An operation may thus run more than once, but only its last run commits.
extension SQLiteResourceManager: BarrierResourceManager {
    /// Registers (or replaces) the TCC operation `name`: its try, confirm and cancel.
    /// Each runs in a local transaction with its barrier record; throw `BusinessError`
    /// from `try` to refuse. Confirm and cancel get the try's payload.
    public func register(tcc name: String, try tryBody: @escaping Operation, confirm: @escaping Operation, cancel: @escaping Operation) {
        barrierOperations.register(tcc: name, try: tryBody, confirm: confirm, cancel: cancel)
    }

    /// Registers (or replaces) the saga operation `name`: its action and compensation.
    /// Throw `BusinessError` from `action` for a definitive failure. The compensation gets
    /// the action's payload.
    public func register(saga name: String, action: @escaping Operation, compensate: @escaping Operation) {
        barrierOperations.register(saga: name, action: action, compensate: compensate)
    }

    /// Runs `phase` of `branch` through the barrier, waiting for rows held by in-doubt
    /// branches as `write` does.
    public func runPhase(_ phase: BarrierPhase, _ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        let digest = BranchDigest.of(operation: operation, payload: payload)
        let body = barrierOperations.body(phase, operation)
        let operations = barrierOperations
        let deadline = ContinuousClock.now + lockWaitTimeout
        while true {
            let attempt = try await database.run(sharingCommit: true) { connection in
                try Self.barrierAttempt(phase, branch, operation: operation, payload: payload, digest: digest, in: connection) {
                    try operations.required(body, phase, operation, of: branch)
                }
            }
            switch attempt {
            case .done(let result): return result
            case .locked(let row, let holder):
                guard ContinuousClock.now < deadline else {
                    throw SQLiteResourceManagerError.rowLocked(table: row.table, key: row.keyDescription, gid: holder.gid, branch: holder.branch)
                }
                try await Task.sleep(for: Self.lockPollInterval)
            }
        }
    }

    /// One attempt of a phase.
    private enum BarrierAttempt: Sendable {
        case done(JSONValue?)
        /// Rolled back: the operation changed a row held by an in-doubt branch.
        case locked(RowKey, BranchRef)
    }

    /// The operation changed a row held by an in-doubt branch (rolls the transaction back).
    private struct BarrierRowHeld: Error {
        var row: RowKey
        var holder: BranchRef
    }

    private static func barrierAttempt(
        _ phase: BarrierPhase, _ branch: BranchRef, operation: String, payload: JSONValue?, digest: String,
        in connection: SQLiteConnection, body: () throws -> Operation
    ) throws -> BarrierAttempt {
        do {
            return try connection.transaction(immediate: true) {
                let recorded = try barrierRecords(of: branch, in: connection)
                switch try BranchBarrier.step(for: phase, of: branch, digest: digest, recorded: recorded) {
                case .answer(let result):
                    return .done(result)
                case .recordNullCompensation:
                    try recordBarrier(phase, of: branch, operation: operation, digest: digest, result: nil, nullCompensation: true, in: connection)
                    return .done(nil)
                case .run:
                    let result = try runBarrierWork(phase, operation: operation, body: body(), payload: payload, in: connection)
                    try recordBarrier(phase, of: branch, operation: operation, digest: digest, result: result, nullCompensation: false, in: connection)
                    return .done(result)
                }
            }
        } catch let held as BarrierRowHeld {
            return .locked(held.row, held.holder)
        }
    }

    /// Runs the phase's operation in the open transaction with a session, so that its
    /// changes can be checked against the rows held by in-doubt branches.
    /// - Throws: `BarrierRowHeld` when it changed a held row; `BusinessError` when it
    ///   refused, broke a constraint or ran a statement the resource manager refuses.
    private static func runBarrierWork(_ phase: BarrierPhase, operation: String, body: Operation, payload: JSONValue?, in connection: SQLiteConnection) throws -> JSONValue? {
        let session = try SQLiteSession(connection)
        let statements = StatementGuard(.barrier(operation: operation, phase: phase), tables: try connection.tableKeys())
        let outcome = statements.guarding(connection) { Result { try body(payload, connection) } }
        if let refusal = statements.refusal { throw refusal }
        let result: JSONValue?
        do {
            result = try outcome.get()
        } catch let error as SQLiteError where error.isConstraintViolation {
            throw BusinessError(code: "constraint_violation", message: "the \(phase.rawValue) of operation \(operation) breaks a constraint: \(error.message)")
        }
        let changeset = try session.changeset()
        if !changeset.isEmpty, let (row, holder) = try lockHolder(of: changeset.summary().rows, in: connection) {
            throw BarrierRowHeld(row: row, holder: holder)
        }
        return result
    }

    /// The branch's barrier rows, by phase.
    private static func barrierRecords(of branch: BranchRef, in connection: SQLiteConnection) throws -> [BarrierPhase: BranchBarrier.Record] {
        var records: [BarrierPhase: BranchBarrier.Record] = [:]
        for row in try connection.query("SELECT op, digest, result FROM dtx_barrier WHERE gid = ? AND branch = ?", [.text(branch.gid), .integer(Int64(branch.branch))]) {
            guard let phase = row.values[0].textValue.flatMap(BarrierPhase.init(rawValue:)), let digest = row.values[1].textValue else {
                throw SQLiteResourceManagerError.corruptRecord(branch: branch, reason: "dtx_barrier holds the row \(row.values) that the resource manager did not write")
            }
            records[phase] = BranchBarrier.Record(digest: digest, result: try result(row.values[2], of: branch))
        }
        return records
    }

    private static func recordBarrier(
        _ phase: BarrierPhase, of branch: BranchRef, operation: String, digest: String, result: JSONValue?, nullCompensation: Bool, in connection: SQLiteConnection
    ) throws {
        try connection.execute(
            "INSERT INTO dtx_barrier (gid, branch, op, operation, digest, null_compensation, result, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, \(now))",
            [.text(branch.gid), .integer(Int64(branch.branch)), .text(phase.rawValue), .text(operation), .text(digest), .integer(nullCompensation ? 1 : 0), stored(result)])
    }
}
