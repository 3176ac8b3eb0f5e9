import DTXAPI
import DTXCore
import DTXParticipant
import Foundation
import Hummingbird

/// Routes for tests: what the resource manager holds (`GET /test/state`:
/// `{"branches": [{"gid", "branch", "operation", "payload"?, "state", "result"?,
/// "participants"?, "preCommitted"?}],
/// "barriers": [{"gid", "branch", "phase", "operation", "payload"?, "digest", "result"?,
/// "nullCompensation"}]}`, state being `prepared`, `committed` or `rolled_back`, phase
/// `try`, `confirm`, `cancel`, `action` or `compensate`; a 3PC branch has `participants`,
/// and `preCommitted` once in p), the application side of
/// interactive TCC (`POST /test/tcc-try` with `{"gid", "operation", "payload"?}`: enlists a
/// branch in the open transaction and runs its Try; 200 `{"branch", "result"?}`, 409 with
/// the Try's business error, 502 when the coordinator refused or could not be reached),
/// and the kit's failpoint routes.
func addTestRoutes(to router: Router<some RequestContext>, store: InMemoryResourceManager, service: ParticipantService, failpoints: Failpoints) {
    router.get("/test/state") { _, _ -> Response in
        jsonResponse(.ok, StateAnswer(branches: store.branches(), barriers: store.barrierRecords()))
    }
    router.post("/test/tcc-try") { request, context -> Response in
        let body: TryRequest
        do {
            body = try await request.decode(as: TryRequest.self, context: context)
        } catch {
            return jsonResponse(.badRequest, ErrorAnswer(code: "invalid_json", message: "expected {\"gid\", \"operation\", \"payload\"?}: \(error)"))
        }
        do {
            let (branch, result) = try await service.tryEnlisted(gid: body.gid, operation: body.operation, payload: body.payload)
            return jsonResponse(.ok, TryAnswer(branch: branch, result: result))
        } catch let refusal as BusinessError {
            return jsonResponse(.conflict, ErrorAnswer(code: refusal.code, message: refusal.message))
        } catch {
            return jsonResponse(.badGateway, ErrorAnswer(code: "enlist_failed", message: "\(error)"))
        }
    }
    failpoints.addRoutes(to: router)
}

private struct TryRequest: Decodable {
    var gid: String
    var operation: String
    var payload: JSONValue?
}

private struct TryAnswer: Encodable {
    var branch: Int
    var result: JSONValue?
}

private struct ErrorAnswer: Encodable {
    struct Body: Encodable {
        var code: String
        var message: String
    }
    var error: Body
    init(code: String, message: String) { error = Body(code: code, message: message) }
}

private struct StateAnswer: Encodable {
    var branches: [InMemoryResourceManager.BranchRecord]
    var barriers: [InMemoryResourceManager.BarrierRecord]
}

func jsonResponse(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
    // Only plain structs of strings and JSON values come here: encoding cannot fail.
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
