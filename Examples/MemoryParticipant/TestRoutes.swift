import DTXAPI
import DTXParticipant
import Foundation
import Hummingbird

/// Routes for tests: what the resource manager holds, and failpoints armed at run time.
///
/// - `GET /test/state`: `{"branches": [{"gid", "branch", "operation", "payload"?, "state", "result"?}]}`,
///   state being `prepared`, `committed` or `rolled_back`.
/// - `GET /test/failpoints`: `{"failpoints": {name: action}}`.
/// - `PUT /test/failpoints` with `{"name": ..., "action": ...}`: arms one failpoint.
/// - `DELETE /test/failpoints`: clears them all.
func addTestRoutes(to router: Router<some RequestContext>, store: InMemoryResourceManager, failpoints: Failpoints) {
    router.get("/test/state") { _, _ -> Response in
        jsonResponse(.ok, StateAnswer(branches: store.branches()))
    }
    router.get("/test/failpoints") { _, _ -> Response in
        jsonResponse(.ok, FailpointsAnswer(failpoints: failpoints.current))
    }
    router.put("/test/failpoints") { request, context -> Response in
        var request = request
        let arming: FailpointRequest
        do {
            let body = try await request.collectBody(upTo: context.maxUploadSize)
            arming = try JSONDecoder().decode(FailpointRequest.self, from: Data(body.readableBytesView))
        } catch {
            return jsonError(.badRequest, code: "bad_request", message: "send a JSON object {\"name\": ..., \"action\": ...}, e.g. {\"name\": \"prepare\", \"action\": \"no\"}")
        }
        do {
            try failpoints.arm(name: arming.name, action: arming.action)
        } catch {
            return jsonError(.badRequest, code: "bad_request", message: "\(error)")
        }
        return jsonResponse(.ok, FailpointsAnswer(failpoints: failpoints.current))
    }
    router.delete("/test/failpoints") { _, _ -> Response in
        failpoints.clear()
        return jsonResponse(.ok, FailpointsAnswer(failpoints: failpoints.current))
    }
}

private struct StateAnswer: Encodable {
    var branches: [InMemoryResourceManager.BranchRecord]
}

private struct FailpointsAnswer: Encodable {
    var failpoints: [String: String]
}

private struct FailpointRequest: Decodable {
    var name: String
    var action: String
}

/// An error answer, `{"error": {"code", "message"}}`.
func jsonError(_ status: HTTPResponse.Status, code: String, message: String) -> Response {
    jsonResponse(status, APIErrorBody(code: code, message: message))
}

func jsonResponse(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
    // Only plain structs of strings and JSON values come here: encoding cannot fail.
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
