import DTXAPI
import DTXCore
import Foundation
import Hummingbird

/// A 3PC message this kit serves at `POST /dtx/3pc/<message>`. ROLLBACK is 3PC's abort.
enum ThreePhaseMessage: String, CaseIterable, Sendable {
    case canCommit = "can_commit"
    case preCommit = "pre_commit"
    case doCommit = "do_commit"
    case rollback

    var path: String { "/dtx/3pc/\(rawValue)" }

    var event: ThreePhaseParticipant.Event {
        switch self {
        case .canCommit: .canCommit
        case .preCommit: .preCommit
        case .doCommit: .doCommit
        case .rollback: .abort
        }
    }

    /// The failpoint checked when this message arrives.
    var arrivalFailpoint: FailpointName {
        switch self {
        case .canCommit: .canCommit
        case .preCommit: .preCommit
        case .doCommit: .doCommit
        case .rollback: .rollback
        }
    }

    private static let byPath = Dictionary(uniqueKeysWithValues: allCases.map { ($0.path, $0) })

    init?(path: String) {
        guard let message = Self.byPath[path] else { return nil }
        self = message
    }

    /// Where peers ask for a branch's state during termination.
    static let statePath = "/dtx/state"
}

extension ParticipantService {
    /// 3PC's routes: `POST /dtx/3pc/can_commit`, `/pre_commit`, `/do_commit`, `/rollback`
    /// (a `ParticipantRequest`; 200 with the branch's state as `status`, 409
    /// `already_aborted`/`already_committed` or a no-vote, 503 while CANCOMMIT's work still
    /// runs or when the resource manager failed) and `GET /dtx/state?gid=…&branch=…` (200
    /// `{"status": <state>}`), all behind the callback token when one is configured.
    func addThreePhaseRoutes<Context: RequestContext>(to router: some RouterMethods<Context>, authorized: @escaping @Sendable (Request) -> Response?) {
        guard let threePhase else { return }
        for message in ThreePhaseMessage.allCases {
            router.post(RouterPath(message.path)) { request, context -> Response in
                if let refusal = authorized(request) { return refusal }
                let body: ParticipantRequest
                let ref: BranchRef
                do throws(Rejection) {
                    (body, ref) = try Self.parse(try await Self.collectBody(request, context: context))
                } catch {
                    return error.response
                }
                return await self.answer(threePhase, message.event, ref, body)
            }
            Self.refuseOtherMethods(on: message.path, allowing: [.post], router)
        }
        Self.refuseOtherMethods(on: ThreePhaseMessage.statePath, allowing: [.get], router)
        router.get(RouterPath(ThreePhaseMessage.statePath)) { request, _ -> Response in
            if let refusal = authorized(request) { return refusal }
            let query = request.uri.queryParameters
            guard let gid = query["gid"].map(String.init), (try? GlobalTransactionID(validating: gid)) != nil,
                  let branch = query["branch"].flatMap(QueryNumber.branch) else {
                return JSONResponse.error(.badRequest, code: "bad_request", message: "GET \(ThreePhaseMessage.statePath) needs ?gid=<gid>&branch=<branch id, 0 to 2147483647>")
            }
            return await self.answer(threePhase, .stateRequested, BranchRef(gid: gid, branch: branch), nil)
        }
    }

    private func answer(_ threePhase: ThreePhaseBranches, _ event: ThreePhaseParticipant.Event, _ ref: BranchRef, _ body: ParticipantRequest?) async -> Response {
        do {
            let answer = try await threePhase.handle(event, for: ref, request: body)
            switch answer.reply {
            case .state(let state): return Self.reply(state.rawValue, answer.result).response
            case let .refused(code, message): return JSONResponse.error(.conflict, code: code, message: message)
            case .busy: return JSONResponse.error(.serviceUnavailable, code: "busy", message: "CANCOMMIT of \(ref) is still running; retry later")
            }
        } catch {
            logger.warning("cannot read a 3PC branch's record", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "error": "\(error)"])
            return JSONResponse.error(.serviceUnavailable, code: "unavailable", message: "cannot read the branch's record: \(error); retry later")
        }
    }
}
