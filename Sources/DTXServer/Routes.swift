import DTXAPI
import DTXCoordinator
import DTXCore
import Foundation
import Hummingbird

/// The routes of Schemas/coordinator-api.yaml.
struct CoordinatorRoutes: Sendable {
    let coordinator: Coordinator
    let maxBodySize: Int
    let metrics: LogMetrics

    func register<Context: RequestContext>(on router: Router<Context>) {
        router.get("/healthz") { _, _ in
            let gauges = coordinator.gauges()
            return jsonResponse(HealthAnswer(status: "ok", unfinishedTransactions: gauges.unfinished, participants: gauges.participants))
        }
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render())))
        }

        let participants = router.group("/v1/participants")
        participants.post { request, context in
            let registration = try await decode(ParticipantRegistration.self, from: request, context: context)
            let (info, created) = try await coordinator.register(registration)
            return jsonResponse(info, status: created ? 201 : 200)
        }
        participants.get { _, _ in
            jsonResponse(ParticipantList(participants: coordinator.participants()))
        }
        participants.get(":name") { _, context in
            jsonResponse(try coordinator.participant(try context.parameters.require("name")))
        }
        participants.post(":name/heartbeat") { _, context in
            jsonResponse(try coordinator.heartbeat(try context.parameters.require("name")))
        }
        participants.delete(":name") { _, context in
            try await coordinator.deregister(try context.parameters.require("name"))
            return Response(status: .noContent)
        }

        let transactions = router.group("/v1/transactions")
        transactions.post { request, context in
            var request = request
            let buffer = try await request.collectBody(upTo: maxBodySize)
            let submission = try TransactionSubmission(commonJSON: Array(buffer.readableBytesView))
                ?? decode(TransactionSubmission.self, from: buffer)
            let (view, created) = try await coordinator.submit(submission)
            return jsonResponse(view, status: created ? 201 : 200)
        }
        transactions.get { request, _ in
            jsonResponse(coordinator.list(try listQuery(request.uri.queryParameters)))
        }
        transactions.get(":gid") { _, context in
            jsonResponse(try coordinator.transaction(try context.parameters.require("gid")))
        }
        transactions.get(":gid/outcome") { request, context in
            jsonResponse(coordinator.outcome(gid: try context.parameters.require("gid"), branch: try branchQuery(request)))
        }
        transactions.get(":gid/state") { request, context in
            let gid = try context.parameters.require("gid")
            return jsonResponse(ThreePhaseStateAnswer(gid: gid, state: coordinator.threePhaseState(gid: gid, branch: try branchQuery(request))))
        }
        transactions.post(":gid/branches") { request, context in
            let enlist = try await decode(EnlistRequest.self, from: request, context: context)
            return jsonResponse(try await coordinator.enlist(gid: try context.parameters.require("gid"), enlist), status: 201)
        }
        transactions.post(":gid/commit") { request, context in
            let body = try await decodeOptional(ResolveRequest.self, from: request, context: context) ?? ResolveRequest()
            return jsonResponse(try await coordinator.commit(gid: try context.parameters.require("gid"), reason: body.reason, wait: body.wait ?? false))
        }
        transactions.post(":gid/abort") { request, context in
            let body = try await decodeOptional(ResolveRequest.self, from: request, context: context) ?? ResolveRequest()
            return jsonResponse(try await coordinator.abort(gid: try context.parameters.require("gid"), reason: body.reason, wait: body.wait ?? false))
        }

        router.post("/v1/admin/recover") { _, _ in
            jsonResponse(coordinator.recoverNow())
        }
    }

    /// The optional `branch` query parameter of the questions participants ask.
    private func branchQuery(_ request: Request) throws -> BranchID? {
        guard let text = request.uri.queryParameters["branch"] else { return nil }
        guard let value = Int(String(text)), value >= 0 else {
            throw CoordinatorError(400, "invalid_query", "branch must be a branch number (0 or more), not '\(text)'")
        }
        return value
    }

    private func listQuery(_ parameters: Parameters) throws -> Coordinator.ListQuery {
        var query = Coordinator.ListQuery()
        let statuses = TransactionStatus.allCases.map(\.rawValue) + ["stuck"]
        if let status = parameters["status"].map(String.init) {
            guard statuses.contains(status) else {
                throw CoordinatorError(400, "invalid_query", "status must be one of \(statuses.joined(separator: ", ")), not '\(status)'")
            }
            query.status = status
        }
        if let text = parameters["protocol"].map(String.init) {
            guard let proto = TransactionProtocol(rawValue: text) else {
                throw CoordinatorError(400, "invalid_query", "protocol must be 2pc, 3pc, tcc or saga, not '\(text)'")
            }
            query.protocol = proto
        }
        query.participant = parameters["participant"].map(String.init)
        if let text = parameters["olderThan"].map(String.init) {
            guard let seconds = Double(text), seconds.isFinite, seconds >= 0 else {
                throw CoordinatorError(400, "invalid_query", "olderThan must be a number of seconds (0 or more), not '\(text)'")
            }
            query.olderThan = seconds
        }
        if let text = parameters["limit"].map(String.init) {
            guard let limit = Int(text), (1...1000).contains(limit) else {
                throw CoordinatorError(400, "invalid_query", "limit must be a whole number from 1 to 1000, not '\(text)'")
            }
            query.limit = limit
        }
        if let text = parameters["cursor"].map(String.init) {
            guard let cursor = UInt64(text) else {
                throw CoordinatorError(400, "invalid_query", "cursor must be a value returned as nextCursor, not '\(text)'")
            }
            query.cursor = cursor
        }
        return query
    }

    private func decode<Body: Decodable>(_ type: Body.Type, from request: Request, context: some RequestContext) async throws -> Body {
        var request = request
        return try decode(type, from: try await request.collectBody(upTo: maxBodySize))
    }

    /// nil for an empty body; a clear 400 for anything that is not the expected JSON.
    private func decodeOptional<Body: Decodable>(_ type: Body.Type, from request: Request, context: some RequestContext) async throws -> Body? {
        var request = request
        let buffer = try await request.collectBody(upTo: maxBodySize)
        guard buffer.readableBytes > 0 else { return nil }
        return try decode(type, from: buffer)
    }

    /// The body decoded with Codable; a clear 400 for an empty body or anything that is
    /// not the expected JSON.
    private func decode<Body: Decodable>(_ type: Body.Type, from buffer: ByteBuffer) throws -> Body {
        guard buffer.readableBytes > 0 else { throw CoordinatorError(400, "invalid_json", "the request needs a JSON body") }
        do {
            return try JSONDecoder.dtx().decode(type, from: Data(buffer.readableBytesView))
        } catch let error as DecodingError {
            throw CoordinatorError(400, "invalid_json", describe(error))
        } catch {
            throw CoordinatorError(400, "invalid_json", "the body is not valid JSON: \(error)")
        }
    }

    private func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let text = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return text.isEmpty ? "the body" : String(text.drop { $0 == "." })
        }
        switch error {
        case let .keyNotFound(key, context):
            let parent = path(context)
            return "\(parent == "the body" ? "" : parent + ".")\(key.stringValue) is required"
        case let .typeMismatch(type, context):
            return "\(path(context)) has the wrong type (expected \(type))"
        case let .valueNotFound(type, context):
            return "\(path(context)) must not be null (expected \(type))"
        case let .dataCorrupted(context):
            if context.codingPath.isEmpty { return "the body is not valid JSON" }
            return "\(path(context)): \(context.debugDescription)"
        @unknown default:
            return "the body cannot be read: \(error)"
        }
    }
}

/// `GET /v1/transactions/{gid}/state`: the coordinator's 3PC state, which a participant
/// running the termination protocol acts on.
struct ThreePhaseStateAnswer: Encodable {
    var gid: String
    var state: ThreePhaseState
}
