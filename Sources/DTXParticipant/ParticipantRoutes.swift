import DTXAPI
import DTXCore
import Foundation
import Hummingbird
import Logging
import Tracing

extension ParticipantRoute {
    /// The routes of 2PC, TCC and sagas, which the kit serves here and takes in batches
    /// (3PC's are in ThreePhaseRoutes.swift).
    static let served = all.filter { $0.proto != .threePhaseCommit && $0.proto != .msg }
    static let threePhase = all.filter { $0.proto == .threePhaseCommit }
}

extension ParticipantService {
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
    ///
    /// Also `POST /dtx/batch` (`ParticipantBatch`), which the service registers: several
    /// of these messages in one request, each handled as if posted on its own, all at
    /// once. `RequestFailpointMiddleware` sees only the batch's path, so the batch checks
    /// each message's arrival failpoint in `failpoints` itself.
    public func addRoutes<Context: RequestContext>(to router: some RouterMethods<Context>, failpoints: Failpoints? = nil) {
        let expectedAuthorization = configuration.callbackToken.map { Array("Bearer \($0)".utf8) }
        let unauthorized = Answer.error(.unauthorized, code: "unauthorized", message: "this participant requires 'Authorization: Bearer <token>' with the callback token it registered")
        for route in ParticipantRoute.served {
            let path = RouterPath(route.path)
            router.post(path) { request, context -> Response in
                if let expectedAuthorization, !Self.matches(request.headers[.authorization], expectedAuthorization) {
                    return unauthorized.response
                }
                do throws(Rejection) {
                    let body = try await Self.collectBody(request, context: context)
                    return await self.answer(route, body: body).response
                } catch {
                    return error.response
                }
            }
            Self.refuseOtherMethods(on: route.path, allowing: [.post], router)
        }
        router.post(RouterPath(ParticipantBatch.path)) { request, context -> Response in
            if let expectedAuthorization, !Self.matches(request.headers[.authorization], expectedAuthorization) {
                return unauthorized.response
            }
            do throws(Rejection) {
                let body = try await Self.collectBody(request, context: context)
                return try await self.answerBatch(body, failpoints: failpoints).response
            } catch {
                return error.response
            }
        }
        Self.refuseOtherMethods(on: ParticipantBatch.path, allowing: [.post], router)
        addThreePhaseRoutes(to: router) { request in
            guard let expectedAuthorization, !Self.matches(request.headers[.authorization], expectedAuthorization) else { return nil }
            return JSONResponse.error(.unauthorized, code: "unauthorized", message: "this participant requires 'Authorization: Bearer <token>' with the callback token it registered")
        }
        addMessageRoute(to: router) { request in
            guard let expectedAuthorization, !Self.matches(request.headers[.authorization], expectedAuthorization) else { return nil }
            return unauthorized.response
        }
        let threePhasePaths = threePhase == nil ? [] : ParticipantRoute.threePhase.map(\.path) + [ParticipantRoute.statePath]
        let messagePaths = messageResourceManager == nil ? [] : [ParticipantRoute(.msg, .queryPrepared)!.path]
        let known = (ParticipantRoute.served.filter { servedProtocols.contains($0.proto) }.map(\.path) + threePhasePaths + messagePaths
            + [ParticipantBatch.path]).joined(separator: ", ")
        for method in Self.everyMethod {
            router.on("/dtx/**", method: method) { request, _ -> Response in
                JSONResponse.error(.notFound, code: "not_found", message: "no participant endpoint at \(request.uri.path); this participant serves \(known)")
            }
        }
    }

    /// The methods a client may send (QUERY included, which HTTPTypes does not name).
    static let everyMethod: [HTTPRequest.Method] = [.get, .head, .post, .put, .patch, .delete, .options, .trace, .connect, HTTPRequest.Method("QUERY")!]

    /// Answers every method but `allowed` on `path` with 405 and the `Allow` header.
    static func refuseOtherMethods<Context: RequestContext>(on path: String, allowing allowed: [HTTPRequest.Method], _ router: some RouterMethods<Context>) {
        let list = allowed.map(\.rawValue).joined(separator: ", ")
        for method in everyMethod where !allowed.contains(method) {
            router.on(RouterPath(path), method: method) { request, _ -> Response in
                var response = JSONResponse.error(.methodNotAllowed, code: "method_not_allowed", message: "\(request.method) is not served on \(path); use \(list)")
                response.headers[.allow] = list
                return response
            }
        }
    }

    /// What `message` with the request body `bytes` answers, alone or in a batch.
    private func answer(_ route: ParticipantRoute, body bytes: [UInt8]) async -> Answer {
        await answer(route, Result { () throws(Rejection) in try Self.parse(bytes) })
    }

    /// What `route` answers for its request, read (or refused) from a body or a batch's item;
    /// in a span of the coordinator's trace when the message carries its `traceparent`.
    private func answer(_ route: ParticipantRoute, _ request: Result<(ParticipantRequest, BranchRef), Rejection>) async -> Answer {
        guard case .success(let (body, ref)) = request else { return await work(route, request) }
        return await traced(route, body, ref, status: \.status) { await work(route, request) }
    }

    /// Runs `work` in a span continuing the coordinator's trace, when the message carries
    /// its `traceparent`.
    func traced<Answered: Sendable>(_ route: ParticipantRoute, _ body: ParticipantRequest, _ ref: BranchRef, status: (Answered) -> HTTPResponse.Status,
                                    _ work: () async -> Answered) async -> Answered {
        guard let traceparent = body.traceparent, TraceParent.isSampled(traceparent), let parent = TraceParent.context(traceparent) else { return await work() }
        let span = startSpan("dtx.participant", context: parent, ofKind: .server)
        var attributes = SpanAttributes()
        attributes["dtx.gid"] = ref.gid
        attributes["dtx.branch"] = ref.branch
        attributes["dtx.protocol"] = route.proto.rawValue
        attributes["dtx.message"] = route.message.rawValue
        attributes["dtx.participant"] = configuration.name
        span.attributes = attributes
        let answer = await ServiceContext.withValue(span.context) { await work() }
        let code = Int(status(answer).code)
        span.attributes["http.response.status_code"] = code
        if code >= 500 { span.setStatus(SpanStatus(code: .error)) }
        span.end()
        return answer
    }

    private func work(_ route: ParticipantRoute, _ request: Result<(ParticipantRequest, BranchRef), Rejection>) async -> Answer {
        if route.proto != .twoPhaseCommit, !servedProtocols.contains(route.proto) {
            let served = servedProtocols.map(\.rawValue).joined(separator: ", ")
            return .error(.notFound, code: "protocol_not_served", message: "\(ProtocolNotServed(transactionProtocol: route.proto)); it serves \(served)")
        }
        let message = route.message
        let body: ParticipantRequest
        let ref: BranchRef
        do {
            (body, ref) = try request.get()
        } catch {
            return error.answer
        }
        func barrier(_ phase: BarrierPhase) async throws -> Answer {
            let result = try await perform(phase, ref, operation: body.operation, payload: body.payload)
            return Self.reply(phase.replyStatus, result)
        }
        do {
            if let phase = BarrierPhase(rawValue: message.rawValue) { return try await barrier(phase) }
            switch message {
            case .prepare:
                switch try await resourceManager.prepare(ref, operation: body.operation, payload: body.payload) {
                case let .prepared(result): return Self.reply(route.doneStatus, result)
                case let .readOnly(result): return Self.reply("read_only", result)
                }
            case .commit:
                try await resourceManager.commit(ref)
            case .rollback:
                try await resourceManager.rollback(ref)
            default:  // commit_one_phase: the served routes hold no other message
                let result = try await resourceManager.commitOnePhase(ref, operation: body.operation, payload: body.payload)
                return Self.reply(route.doneStatus, result)
            }
            return Self.reply(route.doneStatus, nil)
        } catch let error as BusinessError {
            logger.debug("business refusal", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "message": .string(message.rawValue), "code": .string(error.code)])
            return .error(.conflict, code: error.code, message: error.message)
        } catch {
            logger.warning("resource manager failed; the coordinator will retry", metadata: ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch), "message": .string(message.rawValue), "error": "\(error)"])
            return .error(.serviceUnavailable, code: "unavailable", message: "\(message.rawValue) failed: \(error); retry later")
        }
    }

    /// The answer to `POST /dtx/batch`: each message answered as if posted alone, all at
    /// once (so that a resource manager can share work between them, e.g. one commit).
    private func answerBatch(_ bytes: [UInt8], failpoints: Failpoints?) async throws(Rejection) -> Answer {
        let expected = "send {\"messages\": [{\"path\": \"/dtx/2pc/commit\", \"request\": {…}}, …]} with 1 to \(ParticipantBatch.maximumMessages) messages"
        guard let parsed = try? JSONValue(parsing: bytes) else {
            throw Rejection(.badRequest, code: "bad_request", message: bytes.isEmpty ? "the request body is empty; \(expected)" : "the body is not valid JSON; \(expected)")
        }
        guard case .array(let messages)? = parsed["messages"], (1...ParticipantBatch.maximumMessages).contains(messages.count) else {
            throw Rejection(.badRequest, code: "bad_request", message: "'messages' must be an array of 1 to \(ParticipantBatch.maximumMessages) messages; \(expected)")
        }
        // The batch's own shape is checked whole; what each item asks is its own path's business.
        if let index = messages.firstIndex(where: { $0["path"]?.stringValue == nil || $0["request"] == nil }) {
            throw Rejection(.badRequest, code: "bad_request", message: "messages[\(index)] must be an object with 'path' (a string) and 'request'; \(expected)")
        }
        let answers = await withTaskGroup(of: (Int, Answer).self) { group in
            for (index, item) in messages.enumerated() {
                group.addTask { (index, await self.answerBatched(item, failpoints: failpoints)) }
            }
            var answers = [Answer?](repeating: nil, count: messages.count)
            for await (index, answer) in group { answers[index] = answer }
            return answers
        }
        return Answer(status: .ok, body: ParticipantBatch.answers(answers.map { (Int($0!.status.code), $0!.body) }))
    }

    /// One message of a batch: its arrival failpoint, then what its own path answers.
    private func answerBatched(_ item: JSONValue, failpoints: Failpoints?) async -> Answer {
        guard let path = item["path"]?.stringValue, let route = ParticipantRoute(path: path), ParticipantRoute.served.contains(route) else {
            let known = ParticipantRoute.served.map(\.path).joined(separator: ", ")
            return .error(.notFound, code: "not_found", message: "a batched message's 'path' must be one of \(known)")
        }
        if let failpoints {
            do {
                try await failpoints.reach(FailpointName(arrivalOf: route))
            } catch let error as BusinessError {
                return .error(.conflict, code: error.code, message: error.message)
            } catch {
                return .error(.serviceUnavailable, code: "unavailable", message: "\(error); retry later")
            }
        }
        return await answer(route, Result { () throws(Rejection) in try Self.parse(item["request"]!) })
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

    static func collectBody(_ request: Request, context: some RequestContext) async throws(Rejection) -> [UInt8] {
        var request = request
        do {
            return Array(try await request.collectBody(upTo: context.maxUploadSize).readableBytesView)
        } catch let error as HTTPResponseError where error.status == .contentTooLarge {
            throw Rejection(.contentTooLarge, code: "payload_too_large", message: "the request body is larger than \(context.maxUploadSize) bytes")
        } catch {
            throw Rejection(.badRequest, code: "bad_request", message: "cannot read the request body: \(error)")
        }
    }

    static func parse(_ bytes: [UInt8]) throws(Rejection) -> (ParticipantRequest, BranchRef) {
        try check(Result { () throws(UnreadableJSON) in try ParticipantRequest(json: bytes) })
    }

    static func parse(_ parsed: JSONValue) throws(Rejection) -> (ParticipantRequest, BranchRef) {
        try check(Result { () throws(UnreadableJSON) in try ParticipantRequest(json: parsed) })
    }

    /// The request read, with its gid, branch and participant names as the contract allows them.
    private static func check(_ read: Result<ParticipantRequest, UnreadableJSON>) throws(Rejection) -> (ParticipantRequest, BranchRef) {
        let body: ParticipantRequest
        switch read {
        case .success(let request): body = request
        case .failure(let error): throw Rejection(.badRequest, code: "bad_request", message: error.message)
        }
        do {
            _ = try GlobalTransactionID(validating: body.gid)
        } catch {
            throw Rejection(.badRequest, code: "bad_request", message: "invalid 'gid': \(error)")
        }
        guard (0...Int(Int32.max)).contains(body.branch) else {
            throw Rejection(.badRequest, code: "bad_request", message: "invalid 'branch' \(body.branch): branch ids are 0 to 2147483647")
        }
        if let names = body.participants, let bad = names.first(where: { !ParticipantName.isValid($0) }) {
            throw Rejection(.badRequest, code: "bad_request", message: "invalid 'participants': '\(bad)' is not a participant name (\(ParticipantName.rule))")
        }
        return (body, BranchRef(gid: body.gid, branch: body.branch))
    }

    static func reply(_ status: String, _ result: JSONValue?) -> Answer {
        Answer(status: .ok, body: ParticipantReply(status: status, result: result).jsonBytes())
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

    var response: Response { answer.response }
    var answer: Answer { .error(status, code: code, message: message) }
}

/// A status and JSON body: the answer to one participant message, alone or in a batch.
struct Answer: Sendable {
    var status: HTTPResponse.Status
    var body: [UInt8]

    static func error(_ status: HTTPResponse.Status, code: String, message: String) -> Answer {
        Answer(status: status, body: JSONResponse.bytes(APIErrorBody(code: code, message: message)))
    }

    var response: Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// JSON answers; errors are always `{"error": {"code", "message"}}`.
enum JSONResponse {
    private static let encoder = JSONEncoder.dtx()

    static func error(_ status: HTTPResponse.Status, code: String, message: String) -> Response {
        encode(status, APIErrorBody(code: code, message: message))
    }

    static func encode(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        Answer(status: status, body: bytes(value)).response
    }

    static func bytes(_ value: some Encodable) -> [UInt8] {
        // Only plain structs of strings and JSON values come here: encoding cannot fail.
        Array((try? encoder.encode(value)) ?? Data())
    }
}
