/// DTXParticipant: the participant kit a service embeds to take part in dtx global
/// transactions (architecture §6).
///
/// The service implements a `ResourceManager` (its local, durable side of each branch);
/// `ParticipantService` serves the participant protocol over HTTP with it, registers the
/// service with the coordinator, keeps the registration alive with heartbeats and
/// resolves in-doubt branches by asking the coordinator for their outcome.
/// `InMemoryResourceManager` is a no-op resource manager for tests, examples and
/// benchmarks, optionally journalled to a file.
import DTXCore

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
/// Other protocols (3PC, TCC, Saga) will get their own protocols next to this one, so
/// that a service implements only those it serves.
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
    /// prepared: presumed abort sends ROLLBACK to branches that may not have prepared.
    func rollback(_ branch: BranchRef) async throws

    /// A transaction with a single branch: do the work and commit it at once. Idempotent:
    /// a second call for a committed branch returns the first call's result.
    func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue?

    /// Branches that are prepared and not yet committed or rolled back.
    func inDoubt() async throws -> [BranchRef]
}
