import DTXAPI
import DTXCore
import Foundation
import Hummingbird

extension ParticipantService {
    /// 3PC's routes: `POST /dtx/3pc/can_commit`, `/pre_commit`, `/do_commit`, `/rollback`
    /// (a `ParticipantRequest`; 200 with the branch's state as `status`, 409
    /// `already_aborted`/`already_committed` or a no-vote, 503 while CANCOMMIT's work still
    /// runs or when the resource manager failed) and `GET /dtx/state?gid=…&branch=…` (200
    /// `{"status": <state>}`), all behind the callback token when one is configured.
    func addThreePhaseRoutes<Context: RequestContext>(to router: some RouterMethods<Context>, authorized: @escaping @Sendable (Request) -> Response?) {
        guard let threePhase else {
            // Not served: its paths say so (as TCC's and Saga's do), rather than not existing.
            for path in ParticipantRoute.threePhase.map(\.path) + [ParticipantRoute.statePath] {
                let method: HTTPRequest.Method = path == ParticipantRoute.statePath ? .get : .post
                router.on(RouterPath(path), method: method) { _, _ -> Response in
                    JSONResponse.error(.notFound, code: "protocol_not_served",
                                       message: "\(ProtocolNotServed(transactionProtocol: .threePhaseCommit)); it serves \(self.servedProtocols.map(\.rawValue).joined(separator: ", "))")
                }
                Self.refuseOtherMethods(on: path, allowing: [method], router)
            }
            return
        }
        for route in ParticipantRoute.threePhase {
            let event = ThreePhaseParticipant.Event(arrivalOf: route.message)!
            router.post(RouterPath(route.path)) { request, context -> Response in
                if let refusal = authorized(request) { return refusal }
                let body: ParticipantRequest
                let ref: BranchRef
                do throws(Rejection) {
                    (body, ref) = try Self.parse(try await Self.collectBody(request, context: context))
                } catch {
                    return error.response
                }
                return await self.traced(route, body, ref, status: \.status) { await self.answer(threePhase, event, ref, body) }
            }
            Self.refuseOtherMethods(on: route.path, allowing: [.post], router)
        }
        Self.refuseOtherMethods(on: ParticipantRoute.statePath, allowing: [.get], router)
        router.get(RouterPath(ParticipantRoute.statePath)) { request, _ -> Response in
            if let refusal = authorized(request) { return refusal }
            let query = request.uri.queryParameters
            guard let gid = query["gid"].map(String.init), (try? GlobalTransactionID(validating: gid)) != nil,
                  let branch = query["branch"].flatMap(QueryNumber.branch) else {
                return JSONResponse.error(.badRequest, code: "bad_request", message: "GET \(ParticipantRoute.statePath) needs ?gid=<gid>&branch=<branch id, 0 to 2147483647>")
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
            case .unavailable(let message): return JSONResponse.error(.serviceUnavailable, code: "unavailable", message: message)
            }
        } catch {
            logger.warning("cannot read a 3PC branch's record", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "error": "\(error)"])
            return JSONResponse.error(.serviceUnavailable, code: "unavailable", message: "cannot read the branch's record: \(error); retry later")
        }
    }
}
