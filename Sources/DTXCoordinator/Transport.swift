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

    public init(name: String, url: String, token: String?) {
        self.name = name
        self.url = url
        self.token = token
    }
}

/// How the engine talks to participants. The engine never retries inside a call: a
/// failed delivery becomes an event, and the protocol decides.
public protocol Transport: Sendable {
    func send(_ message: ParticipantMessage, protocol: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse
    func shutdown() async
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

    public init(requestTimeout: Duration = .seconds(10), connectionsPerParticipant: Int = 256) {
        self.connectionsPerParticipant = connectionsPerParticipant
        connections = ParticipantConnections(maxConnectionsPerHost: connectionsPerParticipant)
        let (seconds, attoseconds) = requestTimeout.components
        timeout = .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    public func send(_ message: ParticipantMessage, protocol proto: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        do {
            let status: Int
            let data: [UInt8]
            if let target = connections.target(endpoint.url) {
                let response = try await connections.post(target, path: message.path(for: proto), body: Self.encode(request), token: endpoint.token, timeout: timeout)
                (status, data) = (response.status, response.body)
            } else {
                // The future-based API with a collected body: cheaper per call than the
                // streaming async one, and participant answers are small.
                var http = try template(endpoint.url + message.path(for: proto), token: endpoint.token)
                http.body = .bytes(Self.encode(request))
                let response = try await tlsClient().execute(request: http, deadline: .now() + timeout).get()
                (status, data) = (Int(response.status.code), response.body.map { Array($0.readableBytesView) } ?? [])
            }
            let json = try? JSONValue(parsing: data)
            switch status {
            case 200:
                guard let status = json?["status"]?.stringValue else {
                    return .failed("\(endpoint.name) answered 200 with a body that is not a participant reply")
                }
                return .done(status: status, result: json?["result"])
            case 409:
                if let error = json?["error"], let code = error["code"]?.stringValue, let message = error["message"]?.stringValue {
                    return .refused(code: code, message: message)
                }
                return .refused(code: "refused", message: String(decoding: data.prefix(300), as: UTF8.self))
            case 425, 503:
                return .failed("\(endpoint.name) asked to retry later (HTTP \(status))")
            default:
                return .failed("\(endpoint.name) answered HTTP \(status): \(String(decoding: data.prefix(200), as: UTF8.self))")
            }
        } catch {
            return .failed("\(endpoint.name) at \(endpoint.url) unreachable: \(Self.describe(error))")
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
            configuration.timeout.connect = .seconds(1)
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
        let request = try HTTPClient.Request(url: url, method: .POST, headers: headers)
        templates.withLock { templates in
            if templates.count > 4096 { templates.removeAll() }  // URLs of deregistered or moved participants
            templates[key] = request
        }
        return request
    }

    /// The `ParticipantRequest` body, written directly (it is on every message's path).
    static func encode(_ request: ParticipantRequest) -> [UInt8] {
        var json = JSONWriter()
        json.member("{\"branch\":", request.branch)
        json.member(",\"gid\":", request.gid)
        json.member(",\"operation\":", request.operation)
        if let participants = request.participants {
            json.member(",\"participants\":", .array(participants.map { .string($0) }))
        }
        if let payload = request.payload {
            json.member(",\"payload\":", payload)
        }
        json.raw("}")
        return json.bytes
    }

    private static func describe(_ error: Error) -> String {
        if let error = error as? HTTPClientError, error == .deadlineExceeded { return "no answer within the request timeout" }
        if let error = error as? ParticipantConnections.Failure { return error.description }
        let text = String(describing: error)
        return text.contains("connectionRefused") || text.contains("Connection refused") ? "connection refused" : text
    }
}
