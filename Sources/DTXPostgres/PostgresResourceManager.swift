/// DTXPostgres: PostgreSQL as a participant in dtx global transactions (docs/INTERNALS.md, "Resource managers"),
/// through libpq (no Swift driver).
///
/// `PostgresResourceManager` runs each branch's operation in a local transaction and
/// makes it durable with `PREPARE TRANSACTION`; phase two is `COMMIT PREPARED` /
/// `ROLLBACK PREPARED` from any pooled connection. TCC and saga phases are ordinary
/// committed transactions behind the branch barrier (PostgresBarrier.swift).
/// `PostgresPool` keeps libpq's blocking calls on threads of their own;
/// `PostgresConnection` is one libpq connection.
import DTXCore
import DTXPostgresClient
import DTXParticipant
import Foundation
import Logging
import Synchronization

/// A `ResourceManager` backed by PostgreSQL prepared transactions.
///
/// A branch's work is a registered operation: a closure that runs SQL on the
/// connection it is given, inside the branch's transaction. PREPARE runs
/// `BEGIN` → the operation → a row in `dtx_branches` → `PREPARE TRANSACTION
/// 'prefix:gid:branch:digest'`. The `dtx_branches` row commits or rolls back with the
/// business rows, so it exists exactly when the branch committed: it is the
/// participant's own outcome record, which tells a retried COMMIT (the prepared
/// transaction is gone because it committed) from a COMMIT of a branch that never
/// prepared. A ROLLBACK leaves a row in `dtx_rollbacks`, so that a PREPARE arriving
/// after it refuses.
///
/// `digest` is the `BranchDigest` of the branch's operation and payload, kept in the
/// prepared transaction's name (readable while the branch is prepared) and in its
/// `dtx_branches` row (after it committed). A repeated PREPARE or one-phase commit of a
/// prepared or committed branch is a duplicate when it asks for the same work, and is
/// refused with `branch_mismatch` when it asks for other work (a gid reused after the
/// coordinator lost it). COMMIT and ROLLBACK find the branch's prepared transaction by
/// its gid and branch, whatever its digest.
///
/// Concurrent calls for the same branch are serialized by a transaction-level advisory
/// lock on `prefix:gid:branch` (whatever the digest), which a prepared transaction
/// keeps until it is committed or rolled back (also across a server restart); a call
/// that finds it taken fails with `PostgresError.Code.branchBusy`, which the
/// coordinator retries.
///
/// 3PC (`ThreePhaseResourceManager`): w is the branch's prepared transaction, made by
/// CANCOMMIT as by PREPARE. The 3PC state cannot live in the prepared transaction (no one
/// reads its writes before it commits), so it is a row of `dtx_3pc_state`, committed on
/// its own: written (`prepared`, with the transaction's participants) just before the
/// branch's transaction begins, and set to `pre_committed` by PRECOMMIT. The row counts
/// only while the prepared transaction exists: without it a row is a CANCOMMIT that did
/// not prepare (q), and `dtx_branches` or `dtx_rollbacks` answer c or a once the branch
/// is finished. Prepared transactions with a state row are left out of `inDoubt()`: a
/// restart runs 3PC termination for them instead.
///
/// The tables keep one small row per committed or rolled-back branch; delete old rows
/// when the coordinator no longer retries their transactions.
public final class PostgresResourceManager: ResourceManager, ThreePhaseResourceManager {
    /// The closure that does a branch's work: it gets the branch's payload and a
    /// connection inside the branch's transaction, runs its SQL there (never BEGIN,
    /// COMMIT or ROLLBACK) and returns the branch's result. It throws `BusinessError` to
    /// refuse; a SQL error of class 22 (data exception) or 23 (integrity constraint
    /// violation, e.g. a CHECK on a balance) is a refusal too, because running the same
    /// SQL again cannot succeed. Any other error is retried by the coordinator.
    public typealias Operation = @Sendable (_ payload: JSONValue?, _ connection: PostgresConnection) throws -> JSONValue?

    /// Outcome records: one row per committed branch, written in the branch's own
    /// transaction. `result` is the operation's result as JSON text; `digest` the
    /// `BranchDigest` of its operation and payload.
    public static let branchesTableDDL = """
        CREATE TABLE IF NOT EXISTS dtx_branches (
            gid TEXT NOT NULL,
            branch BIGINT NOT NULL,
            operation TEXT NOT NULL,
            result TEXT,
            digest TEXT NOT NULL,
            written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (gid, branch)
        )
        """

    /// One row per rolled-back branch (including branches rolled back before they
    /// prepared, as presumed abort allows), so that a late PREPARE refuses.
    public static let rollbacksTableDDL = """
        CREATE TABLE IF NOT EXISTS dtx_rollbacks (
            gid TEXT NOT NULL,
            branch BIGINT NOT NULL,
            written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (gid, branch)
        )
        """

    /// One row per 3PC branch that reached CANCOMMIT: its state while prepared
    /// (`prepared` or `pre_committed`) and the transaction's participants as JSON
    /// (`ThreePhasePeer`s, by branch id), whom termination asks after a restart.
    public static let threePhaseStateTableDDL = """
        CREATE TABLE IF NOT EXISTS dtx_3pc_state (
            gid TEXT NOT NULL,
            branch BIGINT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('prepared', 'pre_committed')),
            participants TEXT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (gid, branch)
        )
        """

    /// The retention (`PostgresRetention.swift`) finds old rows by these: BRIN indexes on
    /// the time columns, a few pages each and cheap to keep, since rows are written in
    /// time order. By name, for `createTables`.
    public static let retentionIndexes: [(name: String, ddl: String)] = [
        ("dtx_branches_written_at", "CREATE INDEX IF NOT EXISTS dtx_branches_written_at ON dtx_branches USING brin (written_at)"),
        ("dtx_rollbacks_written_at", "CREATE INDEX IF NOT EXISTS dtx_rollbacks_written_at ON dtx_rollbacks USING brin (written_at)"),
        ("dtx_barrier_created_at", "CREATE INDEX IF NOT EXISTS dtx_barrier_created_at ON dtx_barrier USING brin (created_at)"),
        ("dtx_3pc_state_updated_at", "CREATE INDEX IF NOT EXISTS dtx_3pc_state_updated_at ON dtx_3pc_state USING brin (updated_at)"),
        ("dtx_messages_created_at", "CREATE INDEX IF NOT EXISTS dtx_messages_created_at ON dtx_messages USING brin (created_at)"),
    ]

    /// The participant tables (with `dtx_barrier`, PostgresBarrier.swift) and their
    /// indexes, as one SQL script.
    public static let schemaSQL = ([branchesTableDDL, rollbacksTableDDL, barrierTableDDL, threePhaseStateTableDDL, messagesTableDDL].map { $0 + ";\n" }
        + [retentionIndexes.map { $0.ddl + ";" }.joined(separator: "\n")]).joined(separator: "\n")

    /// A prepared transaction of this resource manager, as `orphans()` reports it.
    public struct PreparedBranch: Sendable, Equatable {
        public var ref: BranchRef
        /// The prepared transaction's name (`gid` in `pg_prepared_xacts`).
        public var transactionName: String
        /// The `BranchDigest` of the work it was prepared for.
        public var digest: String
        /// When PREPARE TRANSACTION ran.
        public var preparedAt: Date
        /// The database role that prepared it.
        public var owner: String
    }

    /// Marks this resource manager's prepared transactions: `prefix:gid:branch:digest`.
    public let prefix: String
    let pool: PostgresPool
    let lockTimeout: String
    let logger: Logger
    private let operations = Mutex<[String: Operation]>([:])
    /// The names of the transactions this process prepared, by branch, for phase two.
    private let preparedNames = Mutex<[BranchRef: PreparedTransactionName]>([:])
    /// The TCC and saga operations (PostgresBarrier.swift).
    let barrierOperations = BarrierOperations<Operation>()

    /// Checks that the server can prepare transactions and creates the participant
    /// tables when they are missing.
    /// - Parameters:
    ///   - pool: connections to the database that holds the business tables.
    ///   - prefix: 1 to 16 ASCII letters and digits that start this resource manager's
    ///     prepared-transaction names; services sharing a database need distinct ones.
    ///   - lockTimeout: how long a PREPARE waits for a row lock before giving up (and
    ///     being retried). Prepared transactions hold their locks until phase two, which
    ///     needs a free pooled connection: without a bound, PREPAREs waiting for those
    ///     locks could occupy every connection.
    ///   - logger: where branch events and server notices are logged.
    /// - Throws: `PostgresError` `.preparedTransactionsDisabled` when the server has
    ///   `max_prepared_transactions = 0`, `.invalidConfiguration` for a bad prefix.
    public init(pool: PostgresPool, prefix: String = "dtx", lockTimeout: Duration = .seconds(5), logger: Logger) async throws {
        try PreparedTransactionName.validate(prefix: prefix)
        let (seconds, attoseconds) = lockTimeout.components
        let milliseconds = max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        self.prefix = prefix
        self.pool = pool
        self.lockTimeout = "\(milliseconds)ms"
        self.logger = logger
        try await pool.withConnection { connection in
            try Self.checkPreparedTransactions(connection)
            try Self.createTables(connection)
            Self.createRetentionIndexes(connection, logger: logger)
        }
        logger.info("PostgreSQL resource manager ready", metadata: ["prefix": .string(prefix)])
    }

    /// Registers (or replaces) the operation `name`. Branches name it in their spec.
    public func register(_ name: String, _ body: @escaping Operation) {
        operations.withLock { $0[name] = body }
    }

    // MARK: - ResourceManager

    public func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> PrepareOutcome {
        try await prepare(branch, operation: operation, payload: payload, participants: nil)
    }

    /// PREPARE, or with `participants` 3PC's CANCOMMIT, which first commits the branch's
    /// `dtx_3pc_state` row (a repeat keeps the row it finds, p included).
    private func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]?) async throws -> PrepareOutcome {
        let name = try PreparedTransactionName.make(prefix: prefix, branch: branch, digest: BranchDigest.of(operation: operation, payload: payload))
        let body = try operationBody(operation)
        let peers = try participants.map { String(decoding: try JSONEncoder().encode($0), as: UTF8.self) }
        let outcome = try await pool.withConnection { connection in
            if let peers {
                try connection.execute(
                    // A repeat keeps the row's state (p included) but makes it young again, so
                    // that the retention cannot take it before the branch prepares.
                    "INSERT INTO dtx_3pc_state (gid, branch, state, participants) VALUES ($1, $2, $3, $4) ON CONFLICT (gid, branch) DO UPDATE SET updated_at = now()",
                    [.text(branch.gid), .int(branch.branch), .text(ThreePhaseState.prepared.rawValue), .text(peers)])
            }
            return try self.prepare(branch, name: name, operation: operation, body: body, payload: payload, connection)
        }
        logger.debug("prepared branch", metadata: metadata(branch, operation: operation))
        return outcome
    }

    public func commit(_ branch: BranchRef) async throws {
        let name = try PreparedTransactionName.base(validating: branch, prefix: prefix)
        let committedNow = try await pool.withConnection(for: .finish) { connection in
            if try self.finishPrepared("COMMIT PREPARED", branch, connection) { return true }
            switch try self.recordedState(of: branch, connection) {
            case .committed: return false
            case .rolledBack:
                throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot commit")
            case .prepared:
                throw PostgresError(code: .branchBusy, message: "branch \(branch) was prepared while its COMMIT ran; retry the COMMIT")
            case nil:
                throw BusinessError(code: "unknown_branch", message: "no prepared transaction \(name):<digest> and no record of branch \(branch): it never prepared in this database")
            }
        }
        logger.debug(committedNow ? "committed branch" : "branch was already committed", metadata: metadata(branch))
    }

    public func rollback(_ branch: BranchRef) async throws {
        let lockKey = try PreparedTransactionName.base(validating: branch, prefix: prefix)
        let rolledBackPrepared = try await pool.withConnection(for: .finish) { connection in
            let rolledBack = try self.finishPrepared("ROLLBACK PREPARED", branch, connection)
            // Record the decision, under the branch's lock so that no PREPARE of it is
            // half-way: a PREPARE that comes later sees the row and refuses.
            try connection.execute("BEGIN")
            do {
                try self.lockBranch(lockKey, branch, connection)
                if !rolledBack, case .committed = try self.recordedState(of: branch, connection) {
                    throw BusinessError(code: "already_committed", message: "branch \(branch) was already committed; it cannot roll back")
                }
                try connection.execute("INSERT INTO dtx_rollbacks (gid, branch) VALUES ($1, $2) ON CONFLICT DO NOTHING", [.text(branch.gid), .int(branch.branch)])
                try connection.execute("COMMIT")
            } catch {
                connection.rollbackIfInTransaction()
                throw error
            }
            return rolledBack
        }
        logger.debug(rolledBackPrepared ? "rolled back branch" : "recorded rollback of a branch that is not prepared", metadata: metadata(branch))
    }

    public func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        let name = try PreparedTransactionName.make(prefix: prefix, branch: branch, digest: BranchDigest.of(operation: operation, payload: payload))
        let body = try operationBody(operation)
        let result = try await pool.withConnection { connection in
            do {
                return try self.inBranchTransaction(branch, lockKey: name.base, connection) { connection, state -> JSONValue? in
                    switch state {
                    case .committed(let result, let recorded):
                        try self.checkSameWork(branch, recorded: recorded, requested: name, operation: operation)
                        return result
                    case .rolledBack:
                        throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot commit")
                    case .prepared(let prepared):
                        try self.checkSameWork(branch, recorded: prepared.digest, requested: name, operation: operation)
                        throw BusinessError(code: "already_prepared", message: "branch \(branch) is prepared for two-phase commit; finish it with COMMIT or ROLLBACK")
                    case nil:
                        return try self.run(body, payload: payload, operation: operation, name: name, ending: ("COMMIT", "COMMIT"), connection)
                    }
                }
            } catch let error as PostgresError where error.code == .branchBusy {
                // A prepared transaction keeps the branch's lock. Asking for its work it
                // waits (retried) for the branch's outcome; asking for other work it is
                // refused now.
                if let prepared = try self.preparedTransaction(of: branch, connection) {
                    try self.checkSameWork(branch, recorded: prepared.digest, requested: name, operation: operation)
                }
                throw error
            }
        }
        logger.debug("committed branch in one phase", metadata: metadata(branch, operation: operation))
        return result
    }

    public func inDoubt() async throws -> [BranchRef] {
        let prepared = try await orphans().map(\.ref)
        guard !prepared.isEmpty else { return [] }
        return try await pool.withConnection { connection in
            try prepared.filter { try self.threePhaseRow(of: $0, connection) == nil }
        }
    }

    // MARK: - 3PC

    public func canCommit(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]) async throws -> JSONValue? {
        switch try await prepare(branch, operation: operation, payload: payload, participants: participants) {
        case let .prepared(result), let .readOnly(result): return result
        }
    }

    public func preCommit(_ branch: BranchRef) async throws {
        try await pool.withConnection { connection in
            switch try self.recordedState(of: branch, connection) {
            case .committed: return
            case .rolledBack:
                throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot pre-commit")
            case .prepared:
                let marked = try connection.execute(
                    "UPDATE dtx_3pc_state SET state = $3, updated_at = now() WHERE gid = $1 AND branch = $2",
                    [.text(branch.gid), .int(branch.branch), .text(ThreePhaseState.preCommitted.rawValue)])
                if marked.affectedRows != 1 { throw Self.notThreePhase(branch) }
            case nil:
                // A row without its prepared transaction is a CANCOMMIT that did not
                // prepare: it must stay w, should that CANCOMMIT be retried.
                throw Self.notThreePhase(branch)
            }
        }
        logger.debug("pre-committed branch", metadata: metadata(branch))
    }

    public func threePhaseBranch(_ branch: BranchRef) async throws -> ThreePhaseBranchRecord? {
        try await pool.withConnection { connection in
            switch try self.recordedState(of: branch, connection) {
            case nil: return nil
            case .committed: return ThreePhaseBranchRecord(ref: branch, state: .committed, participants: [])
            case .rolledBack: return ThreePhaseBranchRecord(ref: branch, state: .aborted, participants: [])
            case .prepared:
                // A branch prepared by 2PC's PREPARE has no row: it is in w, with no peers to ask.
                return try self.threePhaseRow(of: branch, connection) ?? ThreePhaseBranchRecord(ref: branch, state: .prepared, participants: [])
            }
        }
    }

    public func unfinishedThreePhaseBranches() async throws -> [ThreePhaseBranchRecord] {
        let prepared = try await orphans().map(\.ref)
        return try await pool.withConnection { connection in
            try prepared.compactMap { ref in
                // A rollback record wins over the prepared transaction (`recordedState`).
                guard case .prepared = try self.recordedState(of: ref, connection) else { return nil }
                return try self.threePhaseRow(of: ref, connection)
            }
        }
    }

    private static func notThreePhase(_ branch: BranchRef) -> BusinessError {
        BusinessError(code: "unknown_branch", message: "branch \(branch) is not a prepared 3PC branch in this database; it cannot pre-commit")
    }

    /// The branch's `dtx_3pc_state` row as a record in w or p; nil when it has none (it
    /// is no 3PC branch). Meaningful only while the branch's transaction is prepared.
    private func threePhaseRow(of branch: BranchRef, _ connection: PostgresConnection) throws -> ThreePhaseBranchRecord? {
        guard let row = try connection.execute("SELECT state, participants FROM dtx_3pc_state WHERE gid = $1 AND branch = $2", [.text(branch.gid), .int(branch.branch)]).rows.first else {
            return nil
        }
        guard let state = try row.string("state").flatMap(ThreePhaseState.init(rawValue:)),
              let participants = try row.string("participants").flatMap({ try? JSONDecoder().decode([ThreePhasePeer].self, from: Data($0.utf8)) }) else {
            throw PostgresError(code: .invalidValue, message: "the dtx_3pc_state row of branch \(branch) is damaged: its state or participants cannot be read")
        }
        return ThreePhaseBranchRecord(ref: branch, state: state, participants: participants)
    }

    /// Every prepared transaction of this resource manager in its database (the
    /// branches `inDoubt()` lists), oldest first, with when and by whom it was
    /// prepared. After a crash of the service these are the orphans to resolve by
    /// asking the coordinator for each branch's outcome.
    public func orphans() async throws -> [PreparedBranch] {
        let prefix = prefix
        let rows = try await pool.withConnection { connection in
            try connection.execute(
                """
                SELECT gid, extract(epoch FROM prepared)::float8 AS prepared_at, owner
                FROM pg_prepared_xacts
                WHERE database = current_database() AND gid LIKE $1
                ORDER BY prepared
                """, [.text(prefix + ":%")]
            ).rows
        }
        return try rows.compactMap { row in
            let name = try row.string("gid") ?? ""
            guard let parsed = PreparedTransactionName.parse(name, prefix: prefix) else {
                logger.warning("ignoring a prepared transaction with this resource manager's prefix whose name does not parse", metadata: ["name": .string(name)])
                return nil
            }
            return PreparedBranch(
                ref: parsed.branch, transactionName: name, digest: parsed.digest,
                preparedAt: Date(timeIntervalSince1970: try row.double("prepared_at") ?? 0),
                owner: try row.string("owner") ?? "")
        }
    }

    // MARK: - Branch steps (run on a pool thread)

    /// What the database says about a branch: its outcome record in `dtx_branches` or
    /// `dtx_rollbacks`, else its prepared transaction.
    private enum BranchState {
        case committed(result: JSONValue?, digest: String)
        case rolledBack
        case prepared(PreparedTransactionName)
    }

    private func prepare(_ branch: BranchRef, name: PreparedTransactionName, operation: String, body: Operation, payload: JSONValue?, _ connection: PostgresConnection) throws -> PrepareOutcome {
        do {
            return try inBranchTransaction(branch, lockKey: name.base, connection) { connection, state in
                switch state {
                case .committed(let result, let recorded):
                    try self.checkSameWork(branch, recorded: recorded, requested: name, operation: operation)
                    return .prepared(result: result)
                case .rolledBack:
                    throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot prepare again")
                case .prepared(let prepared):
                    // Prepared by a call that holds no lock on it (another process).
                    try self.checkSameWork(branch, recorded: prepared.digest, requested: name, operation: operation)
                    return .prepared(result: nil)
                case nil:
                    let result = try self.run(body, payload: payload, operation: operation, name: name,
                                              ending: ("PREPARE TRANSACTION '\(name.text)'", "PREPARE TRANSACTION"), connection)
                    self.preparedNames.withLock { names in
                        if names.count >= 65536 { names.removeAll() }  // branches finished elsewhere (another process, the orphan scan)
                        names[branch] = name
                    }
                    return .prepared(result: result)
                }
            }
        } catch let error as PostgresError where error.code == .branchBusy {
            // A prepared transaction keeps the branch's lock: this is a repeated PREPARE,
            // of the same work or (a reused gid) of other work, which its name tells.
            // Its result was only in the first answer; the outcome record is not
            // readable until the branch commits.
            if let prepared = try preparedTransaction(of: branch, connection) {
                try checkSameWork(branch, recorded: prepared.digest, requested: name, operation: operation)
                return .prepared(result: nil)
            }
            throw error
        }
    }

    /// Refuses a repeat of `branch` that asks for other work than the work it was
    /// prepared or committed for.
    private func checkSameWork(_ branch: BranchRef, recorded: String, requested: PreparedTransactionName, operation: String) throws {
        guard recorded != requested.digest else { return }
        logger.warning(
            "refused a repeat of a branch that asks for other work: its gid was reused",
            metadata: metadata(branch, operation: operation).merging(["digest": .string(requested.digest), "recorded_digest": .string(recorded)]) { $1 })
        throw BranchDigest.mismatch(branch)
    }

    /// Runs `work` in a transaction that holds the branch's lock, given the branch's
    /// recorded state as read under that lock. `work` ends the transaction itself when it
    /// succeeds (PREPARE or COMMIT); when it returns without ending it (the branch was
    /// already decided) or throws, it is rolled back. BEGIN, the lock and the read go to
    /// the server in one round trip: it runs them one after the other, so the read sees
    /// what was committed before the lock was taken.
    private func inBranchTransaction<T>(_ branch: BranchRef, lockKey: String, _ connection: PostgresConnection, _ work: (PostgresConnection, BranchState?) throws -> T) throws -> T {
        do {
            let results = try connection.executeInOneRoundTrip([("BEGIN", []), lockStatement(lockKey), recordedStateStatement(of: branch)])
            guard try results[1].rows.first?.bool("locked") == true else { throw Self.busy(branch) }
            let state = try recordedState(of: branch, from: results[2])
            let value = try work(connection, state)
            connection.rollbackIfInTransaction()
            return value
        } catch {
            connection.rollbackIfInTransaction()
            throw error
        }
    }

    /// Takes the branch's advisory lock for the current transaction (and bounds lock
    /// waits for its other statements), or throws `.branchBusy`. The lock's key is
    /// `prefix:gid:branch` (`PreparedTransactionName.base`), without the digest: the
    /// same for any work.
    private func lockBranch(_ lockKey: String, _ branch: BranchRef, _ connection: PostgresConnection) throws {
        let (sql, parameters) = lockStatement(lockKey)
        guard try connection.execute(sql, parameters).rows.first?.bool("locked") == true else { throw Self.busy(branch) }
    }

    private func lockStatement(_ lockKey: String) -> (sql: String, parameters: [PostgresValue?]) {
        ("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS locked, set_config('lock_timeout', $2, true)", [.text(lockKey), .text(lockTimeout)])
    }

    private static func busy(_ branch: BranchRef) -> PostgresError {
        PostgresError(code: .branchBusy, message: "branch \(branch) is being prepared, committed or rolled back by another call, or is prepared; retry later")
    }

    /// Runs a branch's operation, turning definitive SQL failures into refusals, records
    /// it in `dtx_branches` and ends the transaction with `ending` (PREPARE TRANSACTION or
    /// COMMIT, and the command tag that proves it did not roll back).
    private func run(_ body: Operation, payload: JSONValue?, operation: String, name: PreparedTransactionName, ending: (statement: String, tag: String), _ connection: PostgresConnection) throws -> JSONValue? {
        let branch = name.branch
        let result: JSONValue?
        do {
            result = try body(payload, connection)
        } catch let error as PostgresError where error.sqlStateClass == "22" || error.sqlStateClass == "23" {
            logger.info("operation refused by the database", metadata: metadata(branch, operation: operation).merging(["error": "\(error)"]) { $1 })
            throw BusinessError(code: error.sqlStateClass == "23" ? "constraint_violation" : "invalid_data", message: "operation \(operation) failed: \(error.message)")
        }
        guard connection.isInTransaction else {
            throw PostgresError(code: .invalidValue, message: "operation \(operation) ended the branch's transaction; an operation must not run BEGIN, COMMIT or ROLLBACK")
        }
        let encoded: PostgresValue? = try result.map { .text(try Self.encode($0)) }
        let record: (sql: String, parameters: [PostgresValue?]) = (
            "INSERT INTO dtx_branches (gid, branch, operation, result, digest) VALUES ($1, $2, $3, $4, $5)",
            [.text(branch.gid), .int(branch.branch), .text(operation), encoded, .text(name.digest)])
        // The record and the statement that ends the transaction, in one round trip.
        let results = try connection.executeInOneRoundTrip([record, (ending.statement, [])])
        guard results[1].commandTag == ending.tag else {
            throw PostgresError(code: .server, message: "branch \(branch) was rolled back instead of \(ending.tag): its transaction had failed", sql: ending.statement)
        }
        return result
    }


    /// Runs COMMIT PREPARED or ROLLBACK PREPARED on the branch's prepared transaction,
    /// whatever its digest; false when it has none (or it ended meanwhile: SQLSTATE
    /// 42704).
    private func finishPrepared(_ command: String, _ branch: BranchRef, _ connection: PostgresConnection) throws -> Bool {
        // The name this process prepared the branch under saves looking it up; if the
        // transaction is gone (finished by another process), the lookup decides.
        if let remembered = preparedNames.withLock({ $0.removeValue(forKey: branch) }), try finish(command, remembered, connection) {
            return true
        }
        guard let name = try preparedTransaction(of: branch, connection) else { return false }
        return try finish(command, name, connection)
    }

    private func finish(_ command: String, _ name: PreparedTransactionName, _ connection: PostgresConnection) throws -> Bool {
        do {
            try connection.execute("\(command) '\(name.text)'")
            return true
        } catch let error as PostgresError where error.sqlState == "42704" {
            return false
        }
    }

    /// The branch's prepared transaction in this database: `prefix:gid:branch:digest`
    /// for any digest. The gid may contain `:`, so names of other branches can start the
    /// same way (gid `a:1`, branch 2 starts with `prefix:a:1:`); each candidate is parsed
    /// back to its branch.
    private func preparedTransaction(of branch: BranchRef, _ connection: PostgresConnection) throws -> PreparedTransactionName? {
        let base = PreparedTransactionName.base(prefix: prefix, branch: branch)
        let rows = try connection.execute(
            """
            SELECT gid FROM pg_prepared_xacts
            WHERE database = current_database()
              AND left(gid, length($1::text) + 1) = $1::text || ':'
            ORDER BY prepared
            """, [.text(base)]
        ).rows
        return preparedName(of: branch, among: try rows.compactMap { try $0.string("gid") })
    }

    /// The first of `candidates` (prepared transaction names) that names `branch`.
    private func preparedName(of branch: BranchRef, among candidates: [String]) -> PreparedTransactionName? {
        for text in candidates {
            if let name = PreparedTransactionName.parse(text, prefix: prefix), name.branch == branch { return name }
        }
        return nil
    }

    /// The branch's state; nil when it was never prepared or decided here. A rollback
    /// record wins over a prepared transaction: one prepared after its rollback was
    /// recorded is about to be rolled back, so it must not count as a yes-vote.
    private func recordedState(of branch: BranchRef, _ connection: PostgresConnection) throws -> BranchState? {
        let (sql, parameters) = recordedStateStatement(of: branch)
        return try recordedState(of: branch, from: connection.execute(sql, parameters))
    }

    /// One query for all of the branch's state: its outcome records and the names of the
    /// prepared transactions that may be its own.
    private func recordedStateStatement(of branch: BranchRef) -> (sql: String, parameters: [PostgresValue?]) {
        let base = PreparedTransactionName.base(prefix: prefix, branch: branch)
        return ("""
            SELECT b.result, b.digest, b.gid IS NOT NULL AS committed,
                   EXISTS (SELECT 1 FROM dtx_rollbacks r WHERE r.gid = $1 AND r.branch = $2) AS rolled_back,
                   (SELECT json_agg(p.gid ORDER BY p.prepared) FROM pg_prepared_xacts p
                    WHERE p.database = current_database()
                      AND left(p.gid, length($3::text) + 1) = $3::text || ':') AS prepared
            FROM (SELECT 1) AS one
            LEFT JOIN dtx_branches b ON b.gid = $1 AND b.branch = $2
            """, [.text(branch.gid), .int(branch.branch), .text(base)])
    }

    private func recordedState(of branch: BranchRef, from result: PostgresResult) throws -> BranchState? {
        guard let row = result.rows.first else { return nil }
        if try row.bool("committed") == true {
            guard let digest = try row.string("digest") else {
                throw PostgresError(code: .invalidValue, message: "the dtx_branches row of branch \(branch) is damaged: it has no digest")
            }
            return .committed(result: try row.string("result").map(Self.decode), digest: digest)
        }
        if try row.bool("rolled_back") == true { return .rolledBack }
        guard let names = try row.string("prepared"), case .array(let candidates) = try JSONValue(parsing: Array(names.utf8)) else { return nil }
        return preparedName(of: branch, among: candidates.compactMap(\.stringValue)).map(BranchState.prepared)
    }

    private static func checkPreparedTransactions(_ connection: PostgresConnection) throws {
        let setting = try connection.execute("SHOW max_prepared_transactions").rows.first?.int("max_prepared_transactions")
        guard let setting, setting > 0 else {
            throw PostgresError(
                code: .preparedTransactionsDisabled,
                message: """
                    PostgreSQL at \(connection.endpoint) has max_prepared_transactions = \(setting.map(String.init) ?? "unknown"), \
                    so it cannot prepare transactions for two-phase commit. Set it to at least the number of branches \
                    that may be in doubt at once: run ALTER SYSTEM SET max_prepared_transactions = 64; and restart the \
                    server, or start postgres with -c max_prepared_transactions=64
                    """)
        }
    }

    /// Creates the tables under an advisory lock: two resource managers starting at
    /// once could otherwise both try to create them and one would fail.
    private static func createTables(_ connection: PostgresConnection) throws {
        try connection.execute("BEGIN")
        do {
            try connection.execute("SELECT pg_advisory_xact_lock(hashtextextended('dtx participant schema', 0))")
            try connection.execute(branchesTableDDL)
            try connection.execute(rollbacksTableDDL)
            try connection.execute(barrierTableDDL)
            try connection.execute(threePhaseStateTableDDL)
            try connection.execute(messagesTableDDL)
            try connection.execute("COMMIT")
        } catch {
            connection.rollbackIfInTransaction()
            throw error
        }
    }

    /// Creates the retention's indexes that are missing. CREATE INDEX locks its table even
    /// when the index exists, and waits for the prepared transactions that wrote to it,
    /// which only this service's recovery (after start) finishes: so only a missing index
    /// is created, waiting 2 s at most; one not made now is tried at the next start, and
    /// the retention works without it (more slowly).
    private static func createRetentionIndexes(_ connection: PostgresConnection, logger: Logger) {
        do {
            let names = retentionIndexes.map { "'\($0.name)'" }.joined(separator: ", ")
            let existing = try Set(connection.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND indexname IN (\(names))")
                .rows.compactMap { try $0.string("indexname") })
            let missing = retentionIndexes.filter { !existing.contains($0.name) }
            guard !missing.isEmpty else { return }
            try connection.execute("SET lock_timeout = '2s'")
            defer { _ = try? connection.execute("RESET lock_timeout") }
            for index in missing {
                do {
                    try connection.execute(index.ddl)
                } catch {
                    logger.warning("cannot create a retention index now (prepared transactions hold its table); the next start tries again",
                                   metadata: ["index": .string(index.name), "error": "\(error)"])
                }
            }
        } catch {
            logger.warning("cannot check the retention indexes; the next start tries again", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Helpers

    private func operationBody(_ operation: String) throws -> Operation {
        guard let body = operations.withLock({ $0[operation] }) else {
            let known = operations.withLock { $0.keys.sorted() }
            throw BusinessError(code: "unknown_operation", message: "operation \"\(operation)\" is not registered with this participant; known operations: \(known.joined(separator: ", "))")
        }
        return body
    }

    private func metadata(_ branch: BranchRef, operation: String? = nil) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["gid": .string(branch.gid), "branch": .stringConvertible(branch.branch), "prefix": .string(prefix)]
        if let operation { metadata["operation"] = .string(operation) }
        return metadata
    }

    private static func encode(_ value: JSONValue) throws -> String {
        String(decoding: try JSONEncoder().encode(value), as: UTF8.self)
    }

    private static func decode(_ text: String) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }
}
