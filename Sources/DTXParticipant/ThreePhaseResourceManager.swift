import DTXCore

/// The participant of one branch of a 3PC transaction, as a peer running termination
/// reaches it.
public struct ThreePhasePeer: Codable, Sendable, Equatable {
    /// The name the participant registered with the coordinator.
    public var name: String
    /// Its base URL when CANCOMMIT arrived; nil when the coordinator's registry did not
    /// know it (termination then counts it as unreachable).
    public var url: String?

    public init(name: String, url: String?) {
        self.name = name
        self.url = url
    }
}

/// What a resource manager durably keeps of one 3PC branch.
public struct ThreePhaseBranchRecord: Sendable, Equatable {
    public var ref: BranchRef
    public var state: ThreePhaseState
    /// Every branch's participant, by branch id (this branch's own included): whom
    /// termination asks, also after a restart while the coordinator is down.
    public var participants: [ThreePhasePeer]

    public init(ref: BranchRef, state: ThreePhaseState, participants: [ThreePhasePeer]) {
        self.ref = ref
        self.state = state
        self.participants = participants
    }
}

/// The local side of a participant in three-phase commit (docs/PROTOCOLS.md, 3PC): the durable
/// states w (prepared) and p (pre-committed) besides `ResourceManager`'s commit and
/// rollback, which end a branch in c or a. The kit's `ThreePhaseBranches` runs the
/// protocol (`ThreePhaseParticipant`) on top of it, timers and termination included.
///
/// Every requirement may be called again for the same branch, concurrently for different
/// branches, and after a restart. 3PC branches are not the 2PC in-doubt recovery's:
/// `inDoubt()` must leave them out (termination resolves them).
public protocol ThreePhaseResourceManager: ResourceManager {
    /// CANCOMMIT: do the branch's work and make it durably prepared (w) before returning,
    /// with `participants` recorded alongside. Throw `BusinessError` to vote no. A branch
    /// already rolled back must refuse with `already_rolled_back`; a repeated CANCOMMIT of
    /// a prepared branch returns its result again.
    func canCommit(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]) async throws -> JSONValue?

    /// Records durably that the prepared branch is pre-committed (p). Idempotent.
    func preCommit(_ branch: BranchRef) async throws

    /// The branch's record, nil for a branch this resource manager has no record of (q).
    func threePhaseBranch(_ branch: BranchRef) async throws -> ThreePhaseBranchRecord?

    /// The 3PC branches in w or p: a restart runs termination for each.
    func unfinishedThreePhaseBranches() async throws -> [ThreePhaseBranchRecord]

    /// Whether the participant serves 3PC. True unless this value only wraps a resource
    /// manager that does not (as `FailpointResourceManager` may).
    var servesThreePhaseCommit: Bool { get }
}

extension ThreePhaseResourceManager {
    public var servesThreePhaseCommit: Bool { true }
}
