import DTXAPI
import DTXCore
import Foundation
import Hummingbird
import Logging

/// A message of the participant protocol that this kit serves, at
/// `POST /dtx/<protocol>/<message>`. The kit's own list (not `ParticipantMessage`), so
/// that the routes name exactly what they serve.
enum ServedMessage: String, CaseIterable, Sendable {
    case prepare, commit, rollback
    case commitOnePhase = "commit_one_phase"
    case `try`, confirm, cancel
    case action, compensate

    var transactionProtocol: TransactionProtocol {
        barrierPhase?.transactionProtocol ?? .twoPhaseCommit
    }

    /// The TCC or saga phase, nil for a 2PC message.
    var barrierPhase: BarrierPhase? { BarrierPhase(rawValue: rawValue) }

    var path: String { "/dtx/\(transactionProtocol.rawValue)/\(rawValue)" }

    /// The failpoint checked when this message arrives.
    var arrivalFailpoint: FailpointName {
        switch self {
        case .prepare: .prepare
        case .commit: .commit
        case .rollback: .rollback
        case .commitOnePhase: .commitOnePhase
        case .try: .try
        case .confirm: .confirm
        case .cancel: .cancel
        case .action: .action
        case .compensate: .compensate
        }
    }

    private static let byPath = Dictionary(uniqueKeysWithValues: allCases.map { ($0.path, $0) })

    /// The message posted to `path`, if any.
    init?(path: String) {
        guard let message = Self.byPath[path] else { return nil }
        self = message
    }
}

extension ParticipantService {
    /// Shared by all requests: its options never change, and decoding is thread-safe.
    private static let requestDecoder = JSONDecoder.dtx()

    /// Adds the participant protocol's routes: for 2PC `POST /dtx/2pc/prepare`,
    /// `/commit`, `/rollback` and `/commit_one_phase`; for TCC `POST /dtx/tcc/try`,
    /// `/confirm` and `/cancel`; for sagas `POST /dtx/saga/action` and `/compensate`.
    /// Each takes a `ParticipantRequest` and answers 200 with a `ParticipantReply`, 409
    /// for a `BusinessError`, 400 for a malformed request, 401 without the callback
    /// token (when one is configured) and 503 when the resource manager failed otherwise
    /// (the coordinator retries). The TCC and saga paths answer 404
    /// (`protocol_not_served`) when the resource manager does not serve the protocol.
    /// With a resource manager that serves 3PC, also its routes (`addThreePhaseRoutes`).
    /// Any other path under `/dtx` answers 404, and another method on these paths 405.
    public func addRoutes<Context: RequestContext>(to router: some RouterMethods<Context>) {
        let expectedAuthorization = configuration.callbackToken.map { Array("Bearer \($0)".utf8) }
        let otherMethods: [HTTPRequest.Method] = [.get, .head, .put, .patch, .delete]
        for message in ServedMessage.allCases {
            let path = RouterPath(message.path)
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
        addThreePhaseRoutes(to: router) { request in
            guard let expectedAuthorization, !Self.matches(request.headers[.authorization], expectedAuthorization) else { return nil }
            return JSONResponse.error(.unauthorized, code: "unauthorized", message: "this participant requires 'Authorization: Bearer <token>' with the callback token it registered")
        }
        let threePhasePaths = threePhase == nil ? [] : ThreePhaseMessage.allCases.map(\.path) + [ThreePhaseMessage.statePath]
        let known = (ServedMessage.allCases.filter { servedProtocols.contains($0.transactionProtocol) }.map(\.path) + threePhasePaths).joined(separator: ", ")
        for method in [HTTPRequest.Method.post] + otherMethods {
            router.on("/dtx/**", method: method) { request, _ -> Response in
                JSONResponse.error(.notFound, code: "not_found", message: "no participant endpoint at \(request.uri.path); this participant serves \(known)")
            }
        }
    }

    private func respond(to message: ServedMessage, request: Request, context: some RequestContext) async -> Response {
        if let phase = message.barrierPhase, !servedProtocols.contains(phase.transactionProtocol) {
            let served = servedProtocols.map(\.rawValue).joined(separator: ", ")
            return JSONResponse.error(.notFound, code: "protocol_not_served", message: "\(ProtocolNotServed(transactionProtocol: phase.transactionProtocol)); it serves \(served)")
        }
        let body: ParticipantRequest
        let ref: BranchRef
        do {
            (body, ref) = try await Self.decode(request, context: context)
        } catch {
            return error.response
        }
        func barrier(_ phase: BarrierPhase) async throws -> Response {
            let result = try await perform(phase, ref, operation: body.operation, payload: body.payload)
            return Self.reply(phase.replyStatus, result)
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
            case .try: return try await barrier(.try)
            case .confirm: return try await barrier(.confirm)
            case .cancel: return try await barrier(.cancel)
            case .action: return try await barrier(.action)
            case .compensate: return try await barrier(.compensate)
            }
        } catch let error as BusinessError {
            logger.debug("business refusal", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "message": .string(message.rawValue), "code": .string(error.code)])
            return JSONResponse.error(.conflict, code: error.code, message: error.message)
        } catch {
            logger.warning("resource manager failed; the coordinator will retry", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "message": .string(message.rawValue), "error": "\(error)"])
            return JSONResponse.error(.serviceUnavailable, code: "unavailable", message: "\(message.rawValue) failed: \(error); retry later")
        }
    }

    /// Runs a TCC or saga phase on the resource manager.
    /// - Throws: `ProtocolNotServed` when it does not serve the phase's protocol; what
    ///   the resource manager throws.
    private func perform(_ phase: BarrierPhase, _ ref: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        switch phase {
        case .try, .confirm, .cancel:
            guard let tcc = tccResourceManager else { throw ProtocolNotServed(transactionProtocol: .tcc) }
            switch phase {
            case .try: return try await tcc.try(ref, operation: operation, payload: payload)
            case .confirm: return try await tcc.confirm(ref, operation: operation, payload: payload)
            default: return try await tcc.cancel(ref, operation: operation, payload: payload)
            }
        case .action, .compensate:
            guard let saga = sagaResourceManager else { throw ProtocolNotServed(transactionProtocol: .saga) }
            return phase == .action
                ? try await saga.action(ref, operation: operation, payload: payload)
                : try await saga.compensate(ref, operation: operation, payload: payload)
        }
    }

    static func decode(_ request: Request, context: some RequestContext) async throws(Rejection) -> (ParticipantRequest, BranchRef) {
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

    static func reply(_ status: String, _ result: JSONValue?) -> Response {
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
