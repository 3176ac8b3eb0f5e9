import DTXAPI
import DTXCore
import DTXParticipant
import Foundation
import Hummingbird
import Logging
import Synchronization

/// Where a failpoint can be armed.
enum FailpointName: String, CaseIterable, Sendable {
    /// When a PREPARE, COMMIT, ROLLBACK or COMMIT_ONE_PHASE request arrives.
    case prepare, commit, rollback
    case commitOnePhase = "commit_one_phase"
    /// Once the branch is durably prepared, before the yes-vote is answered.
    case afterPrepare = "after-prepare"
    /// Before a branch commits, whether COMMIT, COMMIT_ONE_PHASE or in-doubt recovery asked.
    case beforeCommit = "before-commit"
}

/// What an armed failpoint does when reached.
enum FailpointAction: Sendable, Equatable, CustomStringConvertible {
    /// Refuse with 409 `voted_no`.
    case no
    /// Answer 503, so that the coordinator retries.
    case unavailable
    /// Sleep, then go on normally.
    case stall(Duration)
    /// SIGKILL this process.
    case crash

    init(parsing text: String) throws(FailpointError) {
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

    var description: String {
        switch self {
        case .no: return "no"
        case .unavailable: return "unavailable"
        case .crash: return "crash"
        case let .stall(duration):
            let (seconds, attoseconds) = duration.components
            return "stall:\(Double(seconds) + Double(attoseconds) / 1e18)"
        }
    }
}

struct FailpointError: Error, CustomStringConvertible {
    var description: String

    init(_ description: String) {
        self.description = description
    }
}

/// A failpoint answered 503 on purpose.
struct FailpointUnavailable: Error, CustomStringConvertible {
    var name: FailpointName
    var description: String { "failpoint \(name.rawValue) made this participant unavailable" }
}

/// The armed failpoints; tests arm them at start (`DTX_PARTICIPANT_FAILPOINTS`) or at
/// run time (`PUT /test/failpoints`). An armed failpoint stays armed until cleared.
final class Failpoints: Sendable {
    private let armed = Mutex<[FailpointName: FailpointAction]>([:])
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// Arms every `name=action` of a comma-separated list, e.g. `prepare=no,commit=unavailable`.
    func arm(specification: String) throws(FailpointError) {
        for entry in specification.split(separator: ",") {
            let parts = entry.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2 else {
                throw FailpointError("cannot read failpoint '\(entry)'; write name=action, e.g. prepare=no")
            }
            try arm(name: parts[0], action: parts[1])
        }
    }

    func arm(name: String, action: String) throws(FailpointError) {
        guard let failpoint = FailpointName(rawValue: name) else {
            throw FailpointError("unknown failpoint '\(name)'; use one of \(FailpointName.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let parsed = try FailpointAction(parsing: action)
        armed.withLock { $0[failpoint] = parsed }
        logger.notice("failpoint armed", metadata: ["failpoint": .string(name), "action": .string(parsed.description)])
    }

    func clear() {
        armed.withLock { $0.removeAll() }
        logger.notice("failpoints cleared")
    }

    /// The armed failpoints, as name → action.
    var current: [String: String] {
        armed.withLock { armed in
            Dictionary(uniqueKeysWithValues: armed.map { ($0.key.rawValue, $0.value.description) })
        }
    }

    /// Performs the action armed at `name`, if any; returns when processing may go on.
    /// `branch` is logged when known (a request's body is read only after its arrival).
    func reach(_ name: FailpointName, branch: BranchRef? = nil) async throws {
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
/// `commit_one_phase`) before the participant protocol handles a request.
struct RequestFailpointMiddleware<Context: RequestContext>: RouterMiddleware {
    let failpoints: Failpoints

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let prefix = "/dtx/2pc/"
        let path = request.uri.path
        guard path.hasPrefix(prefix),
              let message = ParticipantMessage(rawValue: String(path.dropFirst(prefix.count))),
              let name = FailpointName(rawValue: message.rawValue)
        else {
            return try await next(request, context)
        }
        do {
            try await failpoints.reach(name)
        } catch let error as BusinessError {
            return jsonError(.conflict, code: error.code, message: error.message)
        } catch {
            return jsonError(.serviceUnavailable, code: "unavailable", message: "\(error); retry later")
        }
        return try await next(request, context)
    }
}

/// Checks the failpoints inside a resource manager's work: `after-prepare` and
/// `before-commit`.
struct FailpointResourceManager: ResourceManager {
    let base: any ResourceManager
    let failpoints: Failpoints

    func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> PrepareOutcome {
        let outcome = try await base.prepare(branch, operation: operation, payload: payload)
        try await failpoints.reach(.afterPrepare, branch: branch)
        return outcome
    }

    func commit(_ branch: BranchRef) async throws {
        try await failpoints.reach(.beforeCommit, branch: branch)
        try await base.commit(branch)
    }

    func rollback(_ branch: BranchRef) async throws {
        try await base.rollback(branch)
    }

    func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        try await failpoints.reach(.beforeCommit, branch: branch)
        return try await base.commitOnePhase(branch, operation: operation, payload: payload)
    }

    func inDoubt() async throws -> [BranchRef] {
        try await base.inDoubt()
    }
}
