import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// Where and how to reach one participant.
public struct ParticipantEndpoint: Sendable, Equatable {
    public var name: String
    public var url: String
    public var token: String?
    /// Serves `POST {base}/dtx/batch`.
    public var batch: Bool

    public init(name: String, url: String, token: String?, batch: Bool = false) {
        self.name = name
        self.url = url
        self.token = token
        self.batch = batch
    }
}

/// How the engine talks to participants. The engine never retries inside a call: a
/// failed delivery becomes an event, and the protocol decides.
public protocol Transport: Sendable {
    func send(_ message: ParticipantMessage, protocol: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse
    func shutdown() async
    /// From now on, a message goes out only while `condition` holds, checked right
    /// before its bytes are written (a cluster node: while its lease is valid, so that a
    /// node paused between deciding to send and sending sends nothing once it wakes
    /// without its lease). A message held back is reported failed.
    func sendOnlyWhile(_ condition: @escaping @Sendable () -> Bool)
    /// The transport a cluster node gives the coordinator of one shard it holds at
    /// `epoch`: itself, unless it marks what that coordinator sends (the simulator does,
    /// to check that no two nodes send phase two for one epoch).
    func scoped(shard: Int, epoch: Int64) -> any Transport
}

extension Transport {
    public func sendOnlyWhile(_ condition: @escaping @Sendable () -> Bool) {}

    public func scoped(shard: Int, epoch: Int64) -> any Transport { self }
}

/// Why a message was not sent: the transport's `sendOnlyWhile` condition did not hold.
struct SendingStopped: Error, CustomStringConvertible {
    var description: String { "this node may no longer send (its lease could have expired)" }
}

/// The participant protocol over HTTP/1.1 with pooled keep-alive connections and a
/// per-request timeout: plain `http://` participants through the lean
/// `ParticipantConnections`, `https://` ones through async-http-client (made on first use).
public final class HTTPTransport: Transport {
    private let connections: ParticipantConnections
    private let tlsClientSlot: Mutex<HTTPClient?> = Mutex(nil)
    private let connectionsPerParticipant: Int
    private let timeout: TimeAmount
    private let templates = Mutex<[String: HTTPClient.Request]>([:])
    private let batchers = Mutex<[String: MessageBatcher]>([:])
    private let batchRequestsInFlight: Int
    /// A cluster node's id, sent as `dtx-node` with every message (participants may log it).
    private let sender: String?
    private let gate = Mutex<StoredFunction<@Sendable () -> Bool>?>(nil)
    private let connectTimeout: Duration

    /// - Parameter batchRequestsInFlight: for a participant that takes batches, how many
    ///   requests may be outstanding before further messages wait and go together in
    ///   the next batch.
    /// - Parameter sender: the cluster node sending (the `dtx-node` header); nil outside a cluster.
    /// `connectTimeout`: how long a connection to a participant may take to be made
    /// (dtxd --connect-timeout); `requestTimeout`: how long an answer may take.
    public init(requestTimeout: Duration = .seconds(10), connectTimeout: Duration = .seconds(1), connectionsPerParticipant: Int = 256,
                batchRequestsInFlight: Int = 4, sender: String? = nil) {
        self.sender = sender
        self.connectionsPerParticipant = connectionsPerParticipant
        self.batchRequestsInFlight = max(1, batchRequestsInFlight)
        self.connectTimeout = connectTimeout
        connections = ParticipantConnections(connectTimeout: TimeAmount(connectTimeout), maxConnectionsPerHost: connectionsPerParticipant)
        timeout = TimeAmount(requestTimeout)
    }

    public func send(_ message: ParticipantMessage, protocol proto: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        guard let route = ParticipantRoute(proto, message) else {
            return .failed("\(proto.rawValue) has no \(message.rawValue) message")
        }
        let body = message == .queryPrepared ? MessageCheckBack.body(gid: request.gid, traceparent: request.traceparent) : request.jsonBytes()
        let response = endpoint.batch && route.batchable
            ? await batcher(for: endpoint).send(path: route.path, body: body)
            : await sendAlone(path: route.path, body: body, to: endpoint)
        return Self.checked(response, route, from: endpoint.name)
    }

    /// A 200 whose `status` the message does not take is no usable answer.
    static func checked(_ response: ParticipantResponse, _ route: ParticipantRoute, from name: String) -> ParticipantResponse {
        guard case .done(let status, _) = response, !route.acceptedStatuses.contains(status) else { return response }
        let expected = route.acceptedStatuses.sorted().joined(separator: " or ")
        return .failed("\(name) answered \(route.path) with status '\(status)', not \(expected)")
    }

    /// One message in its own request.
    func sendAlone(path: String, body: [UInt8], to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        do {
            let (status, data) = try await post(path, body: body, to: endpoint)
            return Self.interpret(status: status, json: try? JSONValue(parsing: data), from: endpoint.name) {
                String(decoding: data.prefix(300), as: UTF8.self)
            }
        } catch {
            return Self.unanswered(error, by: endpoint)
        }
    }

    /// Several messages in one `POST {base}/dtx/batch`; one response per message, in order.
    func sendBatch(_ messages: [(path: String, body: [UInt8])], to endpoint: ParticipantEndpoint) async -> [ParticipantResponse] {
        let status: Int
        let data: [UInt8]
        do {
            (status, data) = try await post(ParticipantBatch.path, body: ParticipantBatch.body(messages), to: endpoint)
        } catch {
            let failure = Self.unanswered(error, by: endpoint)
            return messages.map { _ in failure }
        }
        guard status == 200, let answers = ParticipantBatch.answers(in: data, count: messages.count) else {
            let why = status == 200
                ? "answered a batch of \(messages.count) without one answer per message"
                : "answered a batch with HTTP \(status): \(String(decoding: data.prefix(200), as: UTF8.self))"
            return messages.map { _ in .failed("\(endpoint.name) \(why)") }
        }
        return answers.map { answer in
            guard let status = answer["status"]?.doubleValue.flatMap({ Int(exactly: $0) }) else {
                return .failed("\(endpoint.name) answered a batched message without a status")
            }
            let body = answer["body"]
            return Self.interpret(status: status, json: body, from: endpoint.name) {
                var text = JSONWriter()
                text.value(body ?? .null)
                return String(decoding: text.bytes.prefix(300), as: UTF8.self)
            }
        }
    }

    /// A participant's answer to one message, read as Schemas/participant-api.yaml says.
    static func interpret(status: Int, json: JSONValue?, from name: String, text: () -> String) -> ParticipantResponse {
        switch status {
        case 200:
            guard let status = json?["status"]?.stringValue else {
                return .failed("\(name) answered 200 with a body that is not a participant reply")
            }
            // `"result": null` is the same as no result.
            let result = json?["result"].flatMap { $0 == .null ? nil : $0 }
            return .done(status: status, result: result)
        case 409:
            if let error = json?["error"], let code = error["code"]?.stringValue, let message = error["message"]?.stringValue {
                return .refused(code: code, message: message)
            }
            return .refused(code: "refused", message: text())
        case 425, 503:
            return .failed("\(name) asked to retry later (HTTP \(status))")
        default:
            return .failed("\(name) answered HTTP \(status): \(text().prefix(200))")
        }
    }

    public func sendOnlyWhile(_ condition: @escaping @Sendable () -> Bool) {
        gate.withLock { $0 = StoredFunction(condition) }
    }

    /// POSTs `body` to `path` under the endpoint's URL; the status and body of the answer.
    private func post(_ path: String, body: [UInt8], to endpoint: ParticipantEndpoint) async throws -> (Int, [UInt8]) {
        let gate = gate.withLock { $0 }?.call
        if let target = connections.target(endpoint.url) {
            let response = try await connections.post(target, path: path, body: body, token: endpoint.token, sender: sender, gate: gate, timeout: timeout)
            return (response.status, response.body)
        }
        // The future-based API with a collected body: cheaper per call than the
        // streaming async one, and participant answers are small.
        var http = try template(endpoint.url + path, token: endpoint.token)
        http.body = .bytes(body)
        if let gate, !gate() { throw SendingStopped() }
        let response = try await tlsClient().execute(request: http, deadline: .now() + timeout).get()
        return (Int(response.status.code), response.body.map { Array($0.readableBytesView) } ?? [])
    }

    /// Messages to `endpoint` waiting for a batch (for tests).
    func messagesWaiting(for endpoint: ParticipantEndpoint) -> Int {
        batcher(for: endpoint).waitingCount
    }

    private func batcher(for endpoint: ParticipantEndpoint) -> MessageBatcher {
        let key = endpoint.token.map { endpoint.url + " " + $0 } ?? endpoint.url
        return batchers.withLock { batchers in
            if let batcher = batchers[key] { return batcher }
            if batchers.count > 4096 { batchers.removeAll() }  // URLs of deregistered or moved participants
            let batcher = MessageBatcher(transport: self, endpoint: endpoint, requestsInFlight: batchRequestsInFlight)
            batchers[key] = batcher
            return batcher
        }
    }

    public func shutdown() async {
        connections.shutdown()
        if let client = tlsClientSlot.withLock({ $0 }) { try? await client.shutdown() }
    }

    private func tlsClient() -> HTTPClient {
        tlsClientSlot.withLock { client in
            if let client { return client }
            var configuration = HTTPClient.Configuration()
            configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = connectionsPerParticipant
            configuration.timeout.connect = TimeAmount(connectTimeout)
            let made = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            client = made
            return made
        }
    }

    /// Requests differ only in their body: the parsed URL and headers are made once per
    /// participant URL and token.
    private func template(_ url: String, token: String?) throws -> HTTPClient.Request {
        let key = token.map { url + " " + $0 } ?? url
        if let cached = templates.withLock({ $0[key] }) { return cached }
        var headers: HTTPHeaders = ["Content-Type": "application/json"]
        if let token { headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let sender { headers.add(name: "dtx-node", value: sender) }
        let request = try HTTPClient.Request(url: url, method: .POST, headers: headers)
        templates.withLock { templates in
            if templates.count > 4096 { templates.removeAll() }  // URLs of deregistered or moved participants
            templates[key] = request
        }
        return request
    }

    /// A request that got no answer: `undelivered` when it certainly never left (no
    /// connection was made), `failed` otherwise.
    private static func unanswered(_ error: any Error, by endpoint: ParticipantEndpoint) -> ParticipantResponse {
        let text = "\(endpoint.name) at \(endpoint.url) unreachable: \(describe(error))"
        if case .notConnected? = error as? ParticipantConnections.Failure { return .undelivered(text) }
        if let error = error as? HTTPClientError, [.connectTimeout, .getConnectionFromPoolTimeout].contains(error) { return .undelivered(text) }
        return isRefusedConnection(error) ? .undelivered(text) : .failed(text)
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError, error == .deadlineExceeded { return "no answer within the request timeout" }
        if let error = error as? ParticipantConnections.Failure { return error.description }
        return isRefusedConnection(error) ? "connection refused" : String(describing: error)
    }

    private static func isRefusedConnection(_ error: any Error) -> Bool {
        let text = String(describing: error)
        return text.contains("connectionRefused") || text.contains("Connection refused")
    }
}

/// The messages that finish branches (`finishesABranch`) to one participant that takes
/// batches. While fewer than
/// `requestsInFlight` requests are outstanding, a message goes alone at once; beyond
/// that it waits, and when a request comes back, every waiting message (up to
/// `ParticipantBatch.maximumMessages`, and 256 KiB) goes in the next request. No timer: a message
/// waits only while the participant is busy answering others.
final class MessageBatcher: Sendable {
    private struct Waiting {
        var path: String
        var body: [UInt8]
        var continuation: CheckedContinuation<ParticipantResponse, Never>
    }

    private struct State {
        var inFlight = 0
        var waiting: [Waiting] = []
    }

    private static let maximumBatchBytes = 256 << 10
    private let transport: HTTPTransport
    private let endpoint: ParticipantEndpoint
    private let requestsInFlight: Int
    private let state = Mutex(State())

    init(transport: HTTPTransport, endpoint: ParticipantEndpoint, requestsInFlight: Int) {
        self.transport = transport
        self.endpoint = endpoint
        self.requestsInFlight = requestsInFlight
    }

    var waitingCount: Int { state.withLock { $0.waiting.count } }

    func send(path: String, body: [UInt8]) async -> ParticipantResponse {
        let goesNow = state.withLock { state -> Bool in
            guard state.inFlight < requestsInFlight else { return false }
            state.inFlight += 1
            return true
        }
        if goesNow {
            let response = await transport.sendAlone(path: path, body: body, to: endpoint)
            sendWaiting()
            return response
        }
        return await withCheckedContinuation { continuation in
            let goesNow = state.withLock { state -> Bool in
                // A request may have come back since: then this message takes its place.
                if state.inFlight < requestsInFlight {
                    state.inFlight += 1
                    return true
                }
                state.waiting.append(Waiting(path: path, body: body, continuation: continuation))
                return false
            }
            if goesNow {
                Task {
                    continuation.resume(returning: await transport.sendAlone(path: path, body: body, to: endpoint))
                    sendWaiting()
                }
            }
        }
    }

    /// Called when a request came back: the waiting messages go next, as one batch, on
    /// this request's slot; with none waiting the slot is freed.
    private func sendWaiting() {
        let batch = state.withLock { state -> [Waiting] in
            guard !state.waiting.isEmpty else {
                state.inFlight -= 1
                return []
            }
            // Up to 256 messages and, past the first, 256 KiB of bodies: well under a
            // participant's request size limit (Hummingbird's default is 2 MiB).
            var count = 0
            var bytes = 0
            for waiting in state.waiting.prefix(ParticipantBatch.maximumMessages) {
                bytes += waiting.body.count
                if count > 0, bytes > Self.maximumBatchBytes { break }
                count += 1
            }
            defer { state.waiting.removeFirst(count) }
            return Array(state.waiting.prefix(count))
        }
        guard !batch.isEmpty else { return }
        Task {
            if batch.count == 1 {
                batch[0].continuation.resume(returning: await transport.sendAlone(path: batch[0].path, body: batch[0].body, to: endpoint))
            } else {
                let responses = await transport.sendBatch(batch.map { ($0.path, $0.body) }, to: endpoint)
                for (waiting, response) in zip(batch, responses) { waiting.continuation.resume(returning: response) }
            }
            sendWaiting()
        }
    }
}
