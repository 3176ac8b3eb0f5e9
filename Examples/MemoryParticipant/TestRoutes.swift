import DTXAPI
import DTXCore
import DTXParticipant
import Foundation
import Hummingbird
import Synchronization

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

/// With `DTX_PARTICIPANT_RECORD=1`: every protocol message received, in order, for tests
/// that must say who sent what when (`GET /test/messages`: `{"messages": [{"at"
/// (seconds since 1970, to the microsecond), "path", "node" (its `dtx-node` header, when
/// sent), "gid"?}]}`; a batch is one message whose gid is absent).
final class MessageRecorder: Sendable {
    struct Message: Encodable, Sendable {
        var at: Double
        var path: String
        var node: String?
        var gid: String?
    }

    private let messages = Mutex<[Message]>([])

    func record(_ message: Message) { messages.withLock { $0.append(message) } }

    var all: [Message] { messages.withLock { $0 } }
}

struct MessageRecordingMiddleware<Context: RequestContext>: RouterMiddleware {
    let recorder: MessageRecorder

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/dtx/") else { return try await next(request, context) }
        var request = request
        let at = Date().timeIntervalSince1970
        let body = try await request.collectBody(upTo: 16 << 20)
        var gid: String?
        if case .object(let members)? = try? JSONValue(parsing: Array(body.readableBytesView)), case .string(let text)? = members["gid"] { gid = text }
        let node = request.headers.first { $0.name.canonicalName == "dtx-node" }?.value
        recorder.record(.init(at: at, path: request.uri.path, node: node, gid: gid))
        return try await next(request, context)
    }
}

func addMessageRoutes(to router: Router<some RequestContext>, recorder: MessageRecorder) {
    router.get("/test/messages") { _, _ -> Response in
        jsonResponse(.ok, MessagesAnswer(messages: recorder.all))
    }
}

private struct MessagesAnswer: Encodable {
    var messages: [MessageRecorder.Message]
}
