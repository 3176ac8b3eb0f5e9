import DTXAPI
import DTXCore
import Foundation
import Hummingbird
import Logging

extension ParticipantService {
    /// The 2PC messages this service answers, each at `POST /dtx/2pc/<message>`.
    static let twoPhaseMessages: [ParticipantMessage] = [.prepare, .commit, .rollback, .commitOnePhase]
    /// Shared by all requests: its options never change, and decoding is thread-safe.
    private static let requestDecoder = JSONDecoder.dtx()

    /// Adds the participant protocol's routes: `POST /dtx/2pc/prepare`, `/commit`,
    /// `/rollback` and `/commit_one_phase`, each taking a `ParticipantRequest` and
    /// answering 200 with a `ParticipantReply`, 409 for a `BusinessError`, 400 for a
    /// malformed request, 401 without the callback token (when one is configured) and
    /// 503 when the resource manager failed otherwise (the coordinator retries). Any
    /// other path under `/dtx` answers 404, and another method on these paths 405.
    public func addRoutes<Context: RequestContext>(to router: some RouterMethods<Context>) {
        let expectedAuthorization = configuration.callbackToken.map { Array("Bearer \($0)".utf8) }
        let otherMethods: [HTTPRequest.Method] = [.get, .head, .put, .patch, .delete]
        for message in Self.twoPhaseMessages {
            let path = RouterPath(message.path(for: .twoPhaseCommit))
            router.post(path) { request, context -> Response in
                if let expectedAuthorization, !Self.matches(request.headers[.authorization], expectedAuthorization) {
                    return JSONResponse.error(.unauthorized, code: "unauthorized", message: "this participant requires 'Authorization: Bearer <token>' with the callback token it registered")
                }
                return await self.respond(to: message, request: request, context: context)
            }
            for method in otherMethods {
                router.on(path, method: method) { _, _ -> Response in
                    JSONResponse.error(.methodNotAllowed, code: "method_not_allowed", message: "\(path) takes POST with a participant request body")
                }
            }
        }
        for method in [HTTPRequest.Method.post] + otherMethods {
            router.on("/dtx/**", method: method) { request, _ -> Response in
                let known = Self.twoPhaseMessages.map { $0.path(for: .twoPhaseCommit) }.joined(separator: ", ")
                return JSONResponse.error(.notFound, code: "not_found", message: "no participant endpoint at \(request.uri.path); this participant serves \(known)")
            }
        }
    }

    private func respond(to message: ParticipantMessage, request: Request, context: some RequestContext) async -> Response {
        let body: ParticipantRequest
        let ref: BranchRef
        do {
            (body, ref) = try await Self.decode(request, context: context)
        } catch {
            return error.response
        }
        do {
            switch message {
            case .prepare:
                switch try await resourceManager.prepare(ref, operation: body.operation, payload: body.payload) {
                case let .prepared(result): return Self.reply("prepared", result)
                case let .readOnly(result): return Self.reply("read_only", result)
                }
            case .commit:
                try await resourceManager.commit(ref)
                return Self.reply("committed", nil)
            case .rollback:
                try await resourceManager.rollback(ref)
                return Self.reply("rolled_back", nil)
            case .commitOnePhase:
                let result = try await resourceManager.commitOnePhase(ref, operation: body.operation, payload: body.payload)
                return Self.reply("committed", result)
            }
        } catch let error as BusinessError {
            logger.debug("business refusal", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "message": .string(message.rawValue), "code": .string(error.code)])
            return JSONResponse.error(.conflict, code: error.code, message: error.message)
        } catch {
            logger.warning("resource manager failed; the coordinator will retry", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "message": .string(message.rawValue), "error": "\(error)"])
            return JSONResponse.error(.serviceUnavailable, code: "unavailable", message: "\(message.rawValue) failed: \(error); retry later")
        }
    }

    private static func decode(_ request: Request, context: some RequestContext) async throws(Rejection) -> (ParticipantRequest, BranchRef) {
        var request = request
        let buffer: ByteBuffer
        do {
            buffer = try await request.collectBody(upTo: context.maxUploadSize)
        } catch let error as HTTPResponseError where error.status == .contentTooLarge {
            throw Rejection(.contentTooLarge, code: "payload_too_large", message: "the request body is larger than \(context.maxUploadSize) bytes")
        } catch {
            throw Rejection(.badRequest, code: "bad_request", message: "cannot read the request body: \(error)")
        }
        let body: ParticipantRequest
        do {
            body = try ParticipantRequest(fastParsing: Array(buffer.readableBytesView))
                ?? Self.requestDecoder.decode(ParticipantRequest.self, from: Data(buffer.readableBytesView))
        } catch let error as DecodingError {
            throw Rejection(.badRequest, code: "bad_request", message: Self.describe(error, bodyIsEmpty: buffer.readableBytes == 0))
        } catch {
            throw Rejection(.badRequest, code: "bad_request", message: "cannot read the request body: \(error)")
        }
        do {
            _ = try GlobalTransactionID(validating: body.gid)
        } catch {
            throw Rejection(.badRequest, code: "bad_request", message: "invalid 'gid': \(error)")
        }
        guard body.branch >= 0 else {
            throw Rejection(.badRequest, code: "bad_request", message: "invalid 'branch' \(body.branch): branch ids are 0 or more")
        }
        return (body, BranchRef(gid: body.gid, branch: body.branch))
    }

    private static func reply(_ status: String, _ result: JSONValue?) -> Response {
        let body = ParticipantReply(status: status, result: result).jsonBytes()
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// Compares in time independent of where the strings differ, so that the token
    /// cannot be guessed byte by byte from response times.
    private static func matches(_ given: String?, _ expected: [UInt8]) -> Bool {
        guard let given else { return false }
        let bytes = Array(given.utf8)
        guard bytes.count == expected.count else { return false }
        var difference: UInt8 = 0
        for index in bytes.indices { difference |= bytes[index] ^ expected[index] }
        return difference == 0
    }

    private static func describe(_ error: DecodingError, bodyIsEmpty: Bool) -> String {
        let expected = "send a JSON object with 'gid' (string), 'branch' (integer), 'operation' (string) and optionally 'payload'"
        func field(_ path: [any CodingKey]) -> String {
            path.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case let .keyNotFound(key, context):
            return "missing field '\(field(context.codingPath + [key]))'; \(expected)"
        case let .valueNotFound(_, context):
            return "field '\(field(context.codingPath))' is null; \(expected)"
        case let .typeMismatch(_, context) where context.codingPath.isEmpty:
            return "the body is not a JSON object; \(expected)"
        case let .typeMismatch(type, context):
            return "field '\(field(context.codingPath))' must be of type \(type); \(expected)"
        case let .dataCorrupted(context) where context.codingPath.isEmpty:
            return bodyIsEmpty ? "the request body is empty; \(expected)" : "the body is not valid JSON; \(expected)"
        case let .dataCorrupted(context):
            return "field '\(field(context.codingPath))' is invalid: \(context.debugDescription)"
        @unknown default:
            return "cannot read the request body: \(error); \(expected)"
        }
    }
}

/// A request refused before it reaches the resource manager.
struct Rejection: Error {
    var status: HTTPResponse.Status
    var code: String
    var message: String

    init(_ status: HTTPResponse.Status, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    var response: Response { JSONResponse.error(status, code: code, message: message) }
}

/// JSON answers; errors are always `{"error": {"code", "message"}}`.
enum JSONResponse {
    private static let encoder = JSONEncoder.dtx()

    static func error(_ status: HTTPResponse.Status, code: String, message: String) -> Response {
        encode(status, APIErrorBody(code: code, message: message))
    }

    static func encode(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        // Only plain structs of strings and JSON values come here: encoding cannot fail.
        let data = (try? encoder.encode(value)) ?? Data()
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
