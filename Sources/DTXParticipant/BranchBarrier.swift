import DTXAPI
import DTXCore
import Synchronization

/// The TCC and saga messages, which run behind the branch barrier (the raw values are
/// the messages', kept in the barrier's records). What travels is their `route`'s.
public enum BarrierPhase: String, Sendable, CaseIterable, Codable {
    case `try`, confirm, cancel
    case action, compensate

    /// The phase's message and protocol: `/dtx/tcc/try`, `/dtx/saga/action`…
    public var route: ParticipantRoute {
        let message = ParticipantMessage(rawValue: rawValue)!
        return ParticipantRoute(.tcc, message) ?? ParticipantRoute(.saga, message)!
    }

    /// The protocol the phase belongs to.
    public var transactionProtocol: TransactionProtocol { route.proto }

    /// The phase that does the branch's work and may be refused: `try` or `action`.
    public var isForward: Bool { self == .try || self == .action }

    /// The word a participant answers the phase with (`ParticipantReply.status`).
    public var replyStatus: String { route.doneStatus }

    public var path: String { route.path }
}

/// The branch barrier's rules (docs/PROTOCOLS.md, "The anomalies the barrier removes"), shared by every resource
/// manager. A resource manager keeps one record per (gid, branch, phase) in the same
/// local transaction as the business work of the phase, reads a branch's records under a
/// lock that orders the branch's messages, and asks `step` what to do:
///
/// - **Idempotency**: a phase already recorded is answered with its stored result; the
///   business code does not run again.
/// - **Null compensation**: a `cancel` (`compensate`) whose `try` (`action`) is not
///   recorded — it never arrived, or was refused and rolled back — runs nothing and
///   succeeds, recording a marker.
/// - **No hanging**: a `try` (`action`) that finds the marker of its `cancel`
///   (`compensate`) runs nothing and is refused (`already_cancelled`,
///   `already_compensated`), so that no reservation is left that nobody will release.
///
/// Every record keeps the `BranchDigest` of the message's operation and payload: the
/// coordinator sends a branch's operation and payload with each of its messages, so a
/// message naming other work under the same (gid, branch) is refused (`branch_mismatch`).
public enum BranchBarrier {
    /// What a resource manager recorded for one phase of a branch.
    public struct Record: Sendable, Equatable {
        /// `BranchDigest.of(operation:payload:)` of the message that wrote the record.
        public var digest: String
        /// The business code's result, returned again to repeats; nil for a marker.
        public var result: JSONValue?

        public init(digest: String, result: JSONValue?) {
            self.digest = digest
            self.result = result
        }
    }

    /// What to do with a message.
    public enum Step: Sendable, Equatable {
        /// Done before: answer with this stored result, write nothing, run nothing.
        case answer(JSONValue?)
        /// Run the business code, then record the phase with its result, in one local
        /// transaction (a refusal rolls both back).
        case run
        /// Null compensation: record the phase as a marker (no result) and run nothing.
        case recordNullCompensation
    }

    /// The step for `phase` of `branch`, given the branch's records.
    /// - Throws: `BusinessError` when the message must be refused: `already_cancelled`,
    ///   `already_compensated` (no hanging; also a confirm after a cancel),
    ///   `already_confirmed` (a cancel after a confirm), `unknown_branch` (a confirm
    ///   without a successful try), `branch_mismatch` (other work under the same branch).
    public static func step(for phase: BarrierPhase, of branch: BranchRef, digest: String, recorded: [BarrierPhase: Record]) throws(BusinessError) -> Step {
        if let done = recorded[phase] {
            try check(digest, against: done, phase: phase, recordedPhase: phase, of: branch)
            return .answer(done.result)
        }
        switch phase {
        case .try:
            if recorded[.cancel] != nil {
                throw BusinessError(code: "already_cancelled", message: "branch \(branch) was already cancelled before its try arrived; the late try does nothing (the transaction is cancelled)")
            }
            return .run
        case .action:
            if recorded[.compensate] != nil {
                throw BusinessError(code: "already_compensated", message: "branch \(branch) was already compensated before its action arrived; the late action does nothing (the saga is compensating)")
            }
            return .run
        case .confirm:
            if recorded[.cancel] != nil {
                throw BusinessError(code: "already_cancelled", message: "branch \(branch) was already cancelled; it cannot confirm")
            }
            guard let tried = recorded[.try] else {
                throw BusinessError(code: "unknown_branch", message: "no successful try of branch \(branch) is recorded here, so there is nothing to confirm; the transaction needs an operator's decision")
            }
            try check(digest, against: tried, phase: phase, recordedPhase: .try, of: branch)
            return .run
        case .cancel:
            if recorded[.confirm] != nil {
                throw BusinessError(code: "already_confirmed", message: "branch \(branch) was already confirmed; it cannot cancel")
            }
            guard let tried = recorded[.try] else { return .recordNullCompensation }
            try check(digest, against: tried, phase: phase, recordedPhase: .try, of: branch)
            return .run
        case .compensate:
            guard let acted = recorded[.action] else { return .recordNullCompensation }
            try check(digest, against: acted, phase: phase, recordedPhase: .action, of: branch)
            return .run
        }
    }

    private static func check(_ digest: String, against record: Record, phase: BarrierPhase, recordedPhase: BarrierPhase, of branch: BranchRef) throws(BusinessError) {
        guard record.digest != digest else { return }
        throw BusinessError(
            code: "branch_mismatch",
            message: "this \(phase.rawValue) of branch \(branch) names another operation or payload than the \(recordedPhase.rawValue) recorded here; every message of a branch carries the same operation and payload, so this gid was reused: submit under a new gid")
    }
}

/// A TCC confirm or cancel (a saga compensate) found its branch's try (action) recorded,
/// but no code is registered for it: the participant answers "retry later" until it is
/// registered, because these phases must not fail definitively.
public struct UnregisteredBarrierOperation: Error, Sendable, Equatable, CustomStringConvertible {
    public var phase: BarrierPhase
    public var operation: String
    public var branch: BranchRef

    public init(phase: BarrierPhase, operation: String, branch: BranchRef) {
        self.phase = phase
        self.operation = operation
        self.branch = branch
    }

    public var description: String {
        "no \(phase.rawValue) is registered for \(phase.transactionProtocol.rawValue) operation \(operation), but branch \(branch) ran its \(phase.transactionProtocol == .tcc ? "try" : "action") here; register the operation and restart the service (the coordinator retries meanwhile)"
    }
}

/// The TCC and Saga operations a resource manager serves: for each operation name, the
/// closures of its phases. `Body` is the resource manager's closure type (it gets the
/// payload and the database handle).
public final class BarrierOperations<Body: Sendable>: Sendable {
    private let bodies = Mutex<[BarrierPhase: [String: Body]]>([:])

    public init() {}

    /// Registers (or replaces) the TCC operation `name`.
    public func register(tcc name: String, try tryBody: Body, confirm: Body, cancel: Body) {
        bodies.withLock { bodies in
            bodies[.try, default: [:]][name] = tryBody
            bodies[.confirm, default: [:]][name] = confirm
            bodies[.cancel, default: [:]][name] = cancel
        }
    }

    /// Registers (or replaces) the saga operation `name`.
    public func register(saga name: String, action: Body, compensate: Body) {
        bodies.withLock { bodies in
            bodies[.action, default: [:]][name] = action
            bodies[.compensate, default: [:]][name] = compensate
        }
    }

    /// The closure of `operation` for `phase`, if registered.
    public func body(_ phase: BarrierPhase, _ operation: String) -> Body? {
        bodies.withLock { $0[phase]?[operation] }
    }

    /// The closure to run for `phase` of `branch`, given what `body(_:_:)` returned.
    /// - Throws: for a try or action, `BusinessError` `unknown_operation` (a refusal);
    ///   for the other phases `UnregisteredBarrierOperation` (retried: they must not
    ///   fail definitively).
    public func required(_ body: Body?, _ phase: BarrierPhase, _ operation: String, of branch: BranchRef) throws -> Body {
        if let body { return body }
        guard phase.isForward else { throw UnregisteredBarrierOperation(phase: phase, operation: operation, branch: branch) }
        let known = bodies.withLock { $0[phase].map { $0.keys.sorted() } ?? [] }
        let kind = phase.transactionProtocol == .tcc ? "TCC" : "saga"
        let registration = phase.transactionProtocol == .tcc ? "register(tcc:try:confirm:cancel:)" : "register(saga:action:compensate:)"
        throw BusinessError(
            code: "unknown_operation",
            message: "no \(kind) operation named \(operation) is registered with this participant (known: \(known.isEmpty ? "none" : known.joined(separator: ", "))); register it with \(registration)")
    }
}
