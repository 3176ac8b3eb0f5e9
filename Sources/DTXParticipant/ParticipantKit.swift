/// DTXParticipant: the participant kit a service embeds to take part in dtx global
/// transactions (Schemas/participant-api.yaml).
///
/// The service implements a `ResourceManager` (its local, durable side of each branch);
/// `ParticipantService` serves the participant protocol over HTTP with it, registers the
/// service with the coordinator, keeps the registration alive with heartbeats and
/// resolves in-doubt branches by asking the coordinator for their outcome.
/// `InMemoryResourceManager` is a no-op resource manager for tests, examples and
/// benchmarks, optionally journalled to a file.
import DTXCore
import Foundation

/// One branch of one global transaction, as the coordinator names it.
public struct BranchRef: Hashable, Sendable, Codable, CustomStringConvertible {
    public var gid: String
    public var branch: BranchID

    public init(gid: String, branch: BranchID) {
        self.gid = gid
        self.branch = branch
    }

    public var description: String { "\(gid)/\(branch)" }
}

/// A resource manager's yes-vote to PREPARE.
public enum PrepareOutcome: Sendable, Equatable {
    /// The branch's work is durably prepared: it can still commit or roll back, and the
    /// resource manager may no longer decide alone.
    case prepared(result: JSONValue?)
    /// The branch wrote nothing: it drops out of phase two (no COMMIT or ROLLBACK follows).
    case readOnly(result: JSONValue?)
}

/// A definitive business refusal (a NO vote, a failed action). The participant answers
/// it with HTTP 409 and `{"error": {"code", "message"}}`; the coordinator does not retry.
/// Any other error thrown by a resource manager is answered with 503, and retried.
public struct BusinessError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Machine-readable reason, e.g. `insufficient_funds`.
    public var code: String
    /// What went wrong, for the person reading the transaction.
    public var message: String

    public init(code: String, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(message) (\(code))" }
}

/// The local side of a participant in two-phase commit (presumed abort).
///
/// Every requirement may be called again for the same branch (the coordinator retries
/// until it gets an answer), concurrently for different branches, and after a restart.
/// TCC and Saga have their own protocols next to this one (`TCCResourceManager`,
/// `SagaResourceManager`), so that a service implements only those it serves.
public protocol ResourceManager: Sendable {
    /// Phase one: do the branch's work and make it durably prepared before returning
    /// (returning is the yes-vote). Throw `BusinessError` to vote no. A branch that was
    /// already rolled back must refuse with code `already_rolled_back`: a PREPARE that
    /// arrives after its ROLLBACK must never prepare.
    func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> PrepareOutcome

    /// Phase two, commit. Idempotent: committing a committed branch succeeds. A branch
    /// this resource manager has no record of must refuse with code `unknown_branch`
    /// (the coordinator then shows the transaction as stuck rather than lose a commit).
    func commit(_ branch: BranchRef) async throws

    /// Phase two, roll back. Idempotent, and succeeds for a branch that was never
    /// prepared: presumed abort sends ROLLBACK to branches that may not have prepared;
    /// the rollback is remembered, so that a later PREPARE or one-phase commit refuses.
    /// A committed branch (also one committed in one phase) must refuse with code
    /// `already_committed`: that is how dtxd learns the outcome of a one-phase commit
    /// whose answer it lost.
    func rollback(_ branch: BranchRef) async throws

    /// Do the work and commit it at once: for a transaction with a single branch, and
    /// for dtxd's last agent (the last branch, once the others are prepared), whose
    /// answer then decides the whole transaction. Idempotent: a second call for a
    /// committed branch returns the first call's result. Throw `BusinessError` only when
    /// nothing was committed; refuse with `already_rolled_back` after a rollback.
    func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?

    /// Branches that are prepared and not yet committed or rolled back.
    func inDoubt() async throws -> [BranchRef]
}

/// The local side of a participant in TCC (try / confirm / cancel).
///
/// Each message runs the service's code for it behind the **branch barrier**
/// (`BranchBarrier`): a record of (gid, branch, phase) written in the same local
/// transaction as the business work. So a repeated message answers the stored result
/// without running the work again; a `cancel` whose `try` never ran (or was refused and
/// rolled back) does nothing and succeeds (null compensation) and leaves a marker, so
/// that a `try` arriving after its `cancel` is refused with `already_cancelled` (no
/// hanging). The coordinator sends `confirm` and `cancel` with the operation and
/// payload of the branch's `try`.
///
/// Every requirement may be called again for the same branch, concurrently, and after a
/// restart; concurrent duplicates run the work at most once.
public protocol TCCResourceManager: Sendable {
    /// Reserves the branch's resources in a committed local transaction. Throw
    /// `BusinessError` to refuse (the transaction is then cancelled); the local
    /// transaction, barrier record included, rolls back.
    func `try`(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?
    /// Uses the reservation of a successful `try`. Must succeed eventually: the
    /// coordinator retries it until it does.
    func confirm(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?
    /// Releases the reservation of a `try`, or does nothing when the `try` never ran
    /// here. Must succeed eventually: the coordinator retries it until it does.
    func cancel(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?
    /// Whether the participant serves TCC. True unless this value only wraps a resource
    /// manager that does not (as `FailpointResourceManager` may).
    var servesTCC: Bool { get }
}

extension TCCResourceManager {
    public var servesTCC: Bool { true }
}

/// The local side of a participant in a Saga (action / compensate), behind the same
/// branch barrier as TCC (`BranchBarrier`): a repeated message answers the stored result
/// without running the work again; a `compensate` whose `action` never ran (or was
/// refused) does nothing and succeeds (null compensation); an `action` arriving after
/// its `compensate` is refused with `already_compensated` (no hanging). The coordinator
/// sends `compensate` with the operation and payload of the branch's `action`.
public protocol SagaResourceManager: Sendable {
    /// Does the step's work in a committed local transaction. Throw `BusinessError` for
    /// a definitive failure (the saga then compensates); the local transaction, barrier
    /// record included, rolls back.
    func action(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?
    /// Undoes the work of the step's `action`, or does nothing when it never ran here.
    /// Must succeed eventually: the coordinator retries it until it does.
    func compensate(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?
    /// Whether the participant serves sagas. True unless this value only wraps a
    /// resource manager that does not (as `FailpointResourceManager` may).
    var servesSagas: Bool { get }
}

extension SagaResourceManager {
    public var servesSagas: Bool { true }
}

/// A resource manager whose TCC and Saga messages all run through one barrier pass
/// (`BranchBarrier`): it implements `runPhase` and gets `try` … `compensate` from it.
public protocol BarrierResourceManager: TCCResourceManager, SagaResourceManager {
    /// Runs `phase` of `branch` behind the barrier and returns the phase's result.
    func runPhase(_ phase: BarrierPhase, _ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?
}

extension BarrierResourceManager {
    public func `try`(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await runPhase(.try, branch, operation: operation, payload: payload)
    }

    public func confirm(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await runPhase(.confirm, branch, operation: operation, payload: payload)
    }

    public func cancel(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await runPhase(.cancel, branch, operation: operation, payload: payload)
    }

    public func action(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await runPhase(.action, branch, operation: operation, payload: payload)
    }

    public func compensate(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await runPhase(.compensate, branch, operation: operation, payload: payload)
    }
}

/// A resource manager that deletes the records of finished branches, so that its
/// tables do not grow for ever (`ParticipantService.Configuration.retention`).
public protocol RecordRetaining: Sendable {
    /// Deletes at most `limit` records of branches that finished before `cutoff`, in one
    /// local transaction, and returns how many it deleted. Never a record an unfinished
    /// branch needs: prepared branches, and a saga step whose action ran without a
    /// compensation (its saga may still compensate it), are kept.
    func forgetFinished(before cutoff: Date, limit: Int) async throws -> Int
}
