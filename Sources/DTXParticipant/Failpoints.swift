import DTXAPI
import DTXCore
import Foundation
import Hummingbird
import Logging
import Synchronization

// Failpoints: named points where a participant service can be told (by a test, through
// the environment or at run time) to refuse, answer 503, stall or SIGKILL itself. The
// memory participant and the example services use them for crash tests.

/// Where a failpoint can be armed.
public enum FailpointName: String, CaseIterable, Sendable {
    /// When a PREPARE, COMMIT, ROLLBACK or COMMIT_ONE_PHASE request arrives.
    case prepare, commit, rollback
    case commitOnePhase = "commit_one_phase"
    /// Once the branch is durably prepared, before the yes-vote is answered.
    case afterPrepare = "after-prepare"
    /// Before a branch commits, whether COMMIT, COMMIT_ONE_PHASE or in-doubt recovery asked.
    case beforeCommit = "before-commit"
    /// Once COMMIT_ONE_PHASE committed the branch, before the answer.
    case afterCommitOnePhase = "after-commit-one-phase"
    /// When a TCC TRY, CONFIRM or CANCEL, or a saga ACTION or COMPENSATE request arrives.
    case `try`, confirm, cancel, action, compensate
    /// Before the resource manager runs a TCC or saga phase (its barrier check and
    /// business work), with the branch known.
    case beforeTry = "before-try", beforeConfirm = "before-confirm", beforeCancel = "before-cancel"
    case beforeAction = "before-action", beforeCompensate = "before-compensate"
    /// Once a TCC or saga phase's local transaction (business work and barrier record)
    /// has committed, before the answer is sent.
    case afterTry = "after-try", afterConfirm = "after-confirm", afterCancel = "after-cancel"
    case afterAction = "after-action", afterCompensate = "after-compensate"
    /// When a 3PC CANCOMMIT, PRECOMMIT or DOCOMMIT arrives (3PC's ROLLBACK checks `rollback`).
    case canCommit = "can_commit", preCommit = "pre_commit", doCommit = "do_commit"
    /// Before CANCOMMIT's work; once the branch is durably prepared (w), before the vote.
    case beforeCanCommit = "before-can-commit", afterCanCommit = "after-can-commit"
    /// Before the pre-commit is recorded; once it is durable (p), before it is acknowledged.
    /// 3PC's commit (DOCOMMIT or termination) checks `before-commit`.
    case beforePreCommit = "before-pre-commit", afterPreCommit = "after-pre-commit"
    /// Msg: when a QUERY_PREPARED (the check-back) arrives.
    case queryPrepared = "query_prepared"
    /// Msg (`transactionalMessage`): inside the local transaction, its work done and its
    /// locks held, before it commits; once it committed, before the submit.
    case beforeLocalCommit = "before-local-commit", afterLocalCommit = "after-local-commit"

    /// The failpoint checked when a message arrives: named after the message.
    init(arrivalOf route: ParticipantRoute) {
        self.init(rawValue: route.message.rawValue)!
    }

    /// The failpoints around the resource manager's work of a TCC or saga phase.
    static func around(_ phase: BarrierPhase) -> (before: FailpointName, after: FailpointName) {
        switch phase {
        case .try: (.beforeTry, .afterTry)
        case .confirm: (.beforeConfirm, .afterConfirm)
        case .cancel: (.beforeCancel, .afterCancel)
        case .action: (.beforeAction, .afterAction)
        case .compensate: (.beforeCompensate, .afterCompensate)
        }
    }
}

/// What an armed failpoint does when reached.
public enum FailpointAction: Sendable, Equatable, CustomStringConvertible {
    /// Refuse with 409 `voted_no`.
    case no
    /// Answer 503, so that the coordinator retries.
    case unavailable
    /// Sleep, then go on normally.
    case stall(Duration)
    /// SIGKILL this process.
    case crash

    public init(parsing text: String) throws(FailpointError) {
        switch text {
        case "no": self = .no
        case "unavailable": self = .unavailable
        case "crash": self = .crash
        default:
            guard text.hasPrefix("stall:"), let seconds = Double(text.dropFirst("stall:".count)), seconds >= 0, seconds.isFinite else {
                throw FailpointError("unknown failpoint action '\(text)'; use no, unavailable, stall:SECONDS or crash")
            }
            self = .stall(.seconds(seconds))
        }
    }

    public var description: String {
        switch self {
        case .no: return "no"
        case .unavailable: return "unavailable"
        case .crash: return "crash"
        case let .stall(duration):
            return "stall:\(duration.apiSeconds)"
        }
    }
}

public struct FailpointError: Error, CustomStringConvertible {
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}

/// A failpoint answered 503 on purpose.
public struct FailpointUnavailable: Error, CustomStringConvertible {
    public var name: FailpointName
    public var description: String { "failpoint \(name.rawValue) made this participant unavailable" }
}

/// The armed failpoints; tests arm them at start (`DTX_PARTICIPANT_FAILPOINTS`) or at
/// run time (`PUT /test/failpoints`). An armed failpoint stays armed until cleared.
public final class Failpoints: Sendable {
    private let armed = Mutex<[FailpointName: FailpointAction]>([:])
    private let logger: Logger

    public init(logger: Logger) {
        self.logger = logger
    }

    /// Arms every `name=action` of a comma-separated list, e.g. `prepare=no,commit=unavailable`.
    public func arm(specification: String) throws(FailpointError) {
        for entry in specification.split(separator: ",") {
            let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else {
                throw FailpointError("cannot read failpoint '\(entry)'; write name=action, e.g. prepare=no")
            }
            try arm(name: parts[0], action: parts[1])
        }
    }

    public func arm(name: String, action: String) throws(FailpointError) {
        guard let failpoint = FailpointName(rawValue: name) else {
            throw FailpointError("unknown failpoint '\(name)'; use one of \(FailpointName.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let parsed = try FailpointAction(parsing: action)
        armed.withLock { $0[failpoint] = parsed }
        logger.notice("failpoint armed", metadata: ["failpoint": .string(name), "action": .string(parsed.description)])
    }

    public func clear() {
        armed.withLock { $0.removeAll() }
        logger.notice("failpoints cleared")
    }

    /// The armed failpoints, as name → action.
    public var current: [String: String] {
        armed.withLock { armed in
            Dictionary(uniqueKeysWithValues: armed.map { ($0.key.rawValue, $0.value.description) })
        }
    }

    /// `reach` on a thread that may block (inside a local transaction): a stall sleeps the thread.
    public func reachSynchronously(_ name: FailpointName) throws {
        guard let action = armed.withLock({ $0[name] }) else { return }
        logger.notice("failpoint reached", metadata: ["failpoint": .string(name.rawValue), "action": .string(action.description)])
        switch action {
        case .no: throw BusinessError(code: "voted_no", message: "failpoint \(name.rawValue) refused")
        case .unavailable: throw FailpointUnavailable(name: name)
        case let .stall(duration): Thread.sleep(forTimeInterval: duration.apiSeconds)
        case .crash: kill(getpid(), SIGKILL)
        }
    }

    /// Performs the action armed at `name`, if any; returns when processing may go on.
    /// `branch` is logged when known (a request's body is read only after its arrival).
    public func reach(_ name: FailpointName, branch: BranchRef? = nil) async throws {
        guard let action = armed.withLock({ $0[name] }) else { return }
        var metadata: Logger.Metadata = ["failpoint": .string(name.rawValue), "action": .string(action.description)]
        if let branch {
            metadata["gid"] = .string(branch.gid)
            metadata["branch"] = .stringConvertible(branch.branch)
        }
        logger.notice("failpoint reached", metadata: metadata)
        switch action {
        case .no: throw BusinessError(code: "voted_no", message: "failpoint \(name.rawValue) refused the branch")
        case .unavailable: throw FailpointUnavailable(name: name)
        case let .stall(duration): try await Task.sleep(for: duration)
        case .crash: kill(getpid(), SIGKILL)
        }
    }
}

/// Checks the request-arrival failpoints (`prepare`, `commit`, `rollback`,
/// `commit_one_phase`, `try`, `confirm`, `cancel`, `action`, `compensate`, `can_commit`,
/// `pre_commit`, `do_commit`) before the
/// participant protocol handles a request.
public struct RequestFailpointMiddleware<Context: RequestContext>: RouterMiddleware {
    let failpoints: Failpoints

    public init(failpoints: Failpoints) {
        self.failpoints = failpoints
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let name = ParticipantRoute(path: request.uri.path).map(FailpointName.init(arrivalOf:)) else {
            return try await next(request, context)
        }
        do {
            try await failpoints.reach(name)
        } catch let error as BusinessError {
            return JSONResponse.error(.conflict, code: error.code, message: error.message)
        } catch {
            return JSONResponse.error(.serviceUnavailable, code: "unavailable", message: "\(error); retry later")
        }
        return try await next(request, context)
    }
}

/// Checks the failpoints inside a resource manager's work: `after-prepare`,
/// `before-commit` and `after-commit-one-phase`; and around each TCC and saga phase, `before-<phase>` and
/// `after-<phase>`; around 3PC's CANCOMMIT and pre-commit, `before-can-commit`,
/// `after-can-commit`, `before-pre-commit` and `after-pre-commit`. It serves TCC, sagas
/// and 3PC when `base` does (`servesTCC`, `servesSagas`, `servesThreePhaseCommit`).
public struct FailpointResourceManager: ResourceManager, TCCResourceManager, SagaResourceManager, ThreePhaseResourceManager {
    let base: any ResourceManager
    let failpoints: Failpoints
    private let tcc: (any TCCResourceManager)?
    private let saga: (any SagaResourceManager)?
    private let threePhase: (any ThreePhaseResourceManager)?

    public init(base: any ResourceManager, failpoints: Failpoints) {
        self.base = base
        self.failpoints = failpoints
        tcc = (base as? any TCCResourceManager).flatMap { $0.servesTCC ? $0 : nil }
        saga = (base as? any SagaResourceManager).flatMap { $0.servesSagas ? $0 : nil }
        threePhase = (base as? any ThreePhaseResourceManager).flatMap { $0.servesThreePhaseCommit ? $0 : nil }
    }

    public func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> PrepareOutcome {
        let outcome = try await base.prepare(branch, operation: operation, payload: payload)
        try await failpoints.reach(.afterPrepare, branch: branch)
        return outcome
    }

    public func commit(_ branch: BranchRef) async throws {
        try await failpoints.reach(.beforeCommit, branch: branch)
        try await base.commit(branch)
    }

    public func rollback(_ branch: BranchRef) async throws {
        try await base.rollback(branch)
    }

    public func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await failpoints.reach(.beforeCommit, branch: branch)
        let result = try await base.commitOnePhase(branch, operation: operation, payload: payload)
        try await failpoints.reach(.afterCommitOnePhase, branch: branch)
        return result
    }

    public func inDoubt() async throws -> [BranchRef] {
        try await base.inDoubt()
    }

    // MARK: TCC and Saga

    public var servesTCC: Bool { tcc != nil }
    public var servesSagas: Bool { saga != nil }

    public func `try`(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await aroundTCC(.try, branch) { try await $0.try(branch, operation: operation, payload: payload) }
    }

    public func confirm(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await aroundTCC(.confirm, branch) { try await $0.confirm(branch, operation: operation, payload: payload) }
    }

    public func cancel(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await aroundTCC(.cancel, branch) { try await $0.cancel(branch, operation: operation, payload: payload) }
    }

    public func action(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await aroundSaga(.action, branch) { try await $0.action(branch, operation: operation, payload: payload) }
    }

    public func compensate(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await aroundSaga(.compensate, branch) { try await $0.compensate(branch, operation: operation, payload: payload) }
    }

    // MARK: 3PC

    public var servesThreePhaseCommit: Bool { threePhase != nil }

    public func canCommit(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]) async throws -> JSONValue? {
        let base = try threePhaseBase()
        try await failpoints.reach(.beforeCanCommit, branch: branch)
        let result = try await base.canCommit(branch, operation: operation, payload: payload, participants: participants)
        try await failpoints.reach(.afterCanCommit, branch: branch)
        return result
    }

    public func preCommit(_ branch: BranchRef) async throws {
        let base = try threePhaseBase()
        try await failpoints.reach(.beforePreCommit, branch: branch)
        try await base.preCommit(branch)
        try await failpoints.reach(.afterPreCommit, branch: branch)
    }

    public func threePhaseBranch(_ branch: BranchRef) async throws -> ThreePhaseBranchRecord? {
        try await threePhaseBase().threePhaseBranch(branch)
    }

    public func unfinishedThreePhaseBranches() async throws -> [ThreePhaseBranchRecord] {
        try await threePhaseBase().unfinishedThreePhaseBranches()
    }

    private func threePhaseBase() throws -> any ThreePhaseResourceManager {
        guard let threePhase else { throw ProtocolNotServed(transactionProtocol: .threePhaseCommit) }
        return threePhase
    }

    private func aroundTCC(_ phase: BarrierPhase, _ branch: BranchRef, _ work: (any TCCResourceManager) async throws -> JSONValue?) async throws -> JSONValue? {
        guard let tcc else { throw ProtocolNotServed(transactionProtocol: .tcc) }
        let points = FailpointName.around(phase)
        try await failpoints.reach(points.before, branch: branch)
        let result = try await work(tcc)
        try await failpoints.reach(points.after, branch: branch)
        return result
    }

    private func aroundSaga(_ phase: BarrierPhase, _ branch: BranchRef, _ work: (any SagaResourceManager) async throws -> JSONValue?) async throws -> JSONValue? {
        guard let saga else { throw ProtocolNotServed(transactionProtocol: .saga) }
        let points = FailpointName.around(phase)
        try await failpoints.reach(points.before, branch: branch)
        let result = try await work(saga)
        try await failpoints.reach(points.after, branch: branch)
        return result
    }
}

/// A TCC or saga message reached a resource manager that does not serve the protocol.
public struct ProtocolNotServed: Error, Sendable, Equatable, CustomStringConvertible {
    public var transactionProtocol: TransactionProtocol

    public var description: String {
        let requirement: String
        switch transactionProtocol {
        case .tcc: requirement = "TCCResourceManager"
        case .saga: requirement = "SagaResourceManager"
        default: requirement = "ThreePhaseResourceManager"
        }
        return "this participant does not serve \(transactionProtocol.rawValue): its resource manager does not implement \(requirement)"
    }
}

extension Failpoints {
    /// Test routes to arm failpoints at run time:
    /// - `GET /test/failpoints`: `{"failpoints": {name: action}}`;
    /// - `PUT /test/failpoints` with `{"name": ..., "action": ...}`: arms one;
    /// - `DELETE /test/failpoints`: clears them all.
    public func addRoutes(to router: Router<some RequestContext>) {
        router.get("/test/failpoints") { _, _ -> Response in
            JSONResponse.encode(.ok, FailpointsAnswer(failpoints: self.current))
        }
        router.put("/test/failpoints") { request, context -> Response in
            var request = request
            let arming: FailpointRequest
            do {
                let body = try await request.collectBody(upTo: context.maxUploadSize)
                arming = try JSONDecoder().decode(FailpointRequest.self, from: Data(body.readableBytesView))
            } catch {
                return JSONResponse.error(.badRequest, code: "bad_request", message: "send a JSON object {\"name\": ..., \"action\": ...}, e.g. {\"name\": \"prepare\", \"action\": \"no\"}")
            }
            do {
                try self.arm(name: arming.name, action: arming.action)
            } catch {
                return JSONResponse.error(.badRequest, code: "bad_request", message: "\(error)")
            }
            return JSONResponse.encode(.ok, FailpointsAnswer(failpoints: self.current))
        }
        router.delete("/test/failpoints") { _, _ -> Response in
            self.clear()
            return JSONResponse.encode(.ok, FailpointsAnswer(failpoints: self.current))
        }
    }
}

private struct FailpointsAnswer: Encodable {
    var failpoints: [String: String]
}

private struct FailpointRequest: Decodable {
    var name: String
    var action: String
}

extension FailpointResourceManager: RecordRetaining {
    /// The base's, when it deletes its finished records (no failpoint applies); else nothing.
    public func forgetFinished(before cutoff: Date, limit: Int) async throws -> Int {
        guard let retaining = base as? any RecordRetaining else { return 0 }
        return try await retaining.forgetFinished(before: cutoff, limit: limit)
    }
}
