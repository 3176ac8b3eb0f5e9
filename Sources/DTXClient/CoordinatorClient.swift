/// DTXClient: a Swift client of the coordinator API, for applications, the CLI, the
/// participant kit and the examples.
import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import NIOCore
import NIOHTTP1

public enum ClientError: Error, CustomStringConvertible, Sendable {
    /// No connection: the daemon is down or the address is wrong.
    case unreachable(url: String, reason: String)
    /// The daemon answered with an error body.
    case api(status: Int, code: String, message: String)
    /// The daemon answered something this client cannot read.
    case unexpected(status: Int, body: String)
    case invalidURL(String)

    public var description: String {
        switch self {
        case let .unreachable(url, reason): return "cannot reach dtxd at \(url): \(reason)"
        case let .api(status, code, message): return "\(message) (HTTP \(status), \(code))"
        case let .unexpected(status, body): return "unexpected answer from dtxd (HTTP \(status)): \(body.prefix(200))"
        case let .invalidURL(url): return "'\(url)' is not an http:// or https:// URL"
        }
    }

    /// The HTTP status, when the daemon answered.
    public var status: Int? {
        switch self {
        case let .api(status, _, _), let .unexpected(status, _): return status
        default: return nil
        }
    }
}

/// Talks to one dtxd. Safe to share; keep one per process (it pools connections).
public final class CoordinatorClient: Sendable {
    public let baseURL: String
    private let token: String?
    private let http: HTTPClient
    private let ownsHTTPClient: Bool
    private let timeout: TimeAmount

    /// - Parameters:
    ///   - baseURL: e.g. `http://127.0.0.1:7070`.
    ///   - token: bearer token, when the daemon requires one.
    ///   - httpClient: share an existing client; by default the client makes (and shuts down) its own.
    ///   - timeout: per-request timeout.
    public init(baseURL: String, token: String? = nil, httpClient: HTTPClient? = nil, timeout: Duration = .seconds(90)) throws {
        var base = baseURL
        while base.hasSuffix("/") { base.removeLast() }
        guard let url = URL(string: base), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
            throw ClientError.invalidURL(baseURL)
        }
        self.baseURL = base
        self.token = token
        if let httpClient {
            http = httpClient
            ownsHTTPClient = false
        } else {
            var configuration = HTTPClient.Configuration()
            configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 128
            // A refused connection is retried until this passes: keep "cannot reach" quick.
            configuration.timeout.connect = .seconds(1)
            http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            ownsHTTPClient = true
        }
        self.timeout = TimeAmount(timeout)
    }

    /// Shuts down the HTTP client this object made (a shared one is left alone).
    public func shutdown() async throws {
        if ownsHTTPClient { try await http.shutdown() }
    }

    // MARK: Participants

    @discardableResult
    public func register(_ registration: ParticipantRegistration) async throws -> ParticipantInfo {
        try await call(.POST, "/v1/participants", body: registration)
    }

    public func participants() async throws -> [ParticipantInfo] {
        let list: ParticipantList = try await call(.GET, "/v1/participants")
        return list.participants
    }

    public func participant(_ name: String) async throws -> ParticipantInfo {
        try await call(.GET, "/v1/participants/\(PathSegment.encode(name))")
    }

    @discardableResult
    public func heartbeat(_ name: String) async throws -> ParticipantInfo {
        try await call(.POST, "/v1/participants/\(PathSegment.encode(name))/heartbeat")
    }

    public func deregister(_ name: String) async throws {
        try await callWithoutAnswer(.DELETE, "/v1/participants/\(PathSegment.encode(name))")
    }

    // MARK: Transactions

    public func submit(_ submission: TransactionSubmission) async throws -> TransactionView {
        try await call(.POST, "/v1/transactions", body: submission)
    }

    public func transaction(_ gid: String) async throws -> TransactionView {
        try await call(.GET, "/v1/transactions/\(PathSegment.encode(gid))")
    }

    public struct ListFilter: Sendable {
        public var status: String?
        public var `protocol`: TransactionProtocol?
        public var participant: String?
        /// Only transactions created at least this many seconds ago.
        public var olderThan: Double?
        public var limit: Int?
        public var cursor: String?

        public init(status: String? = nil, protocol: TransactionProtocol? = nil, participant: String? = nil, olderThan: Double? = nil, limit: Int? = nil, cursor: String? = nil) {
            self.status = status
            self.protocol = `protocol`
            self.participant = participant
            self.olderThan = olderThan
            self.limit = limit
            self.cursor = cursor
        }
    }

    public func transactions(_ filter: ListFilter = .init()) async throws -> TransactionList {
        var query: [(String, String)] = []
        if let status = filter.status { query.append(("status", status)) }
        if let proto = filter.protocol { query.append(("protocol", proto.rawValue)) }
        if let participant = filter.participant { query.append(("participant", participant)) }
        if let olderThan = filter.olderThan { query.append(("olderThan", String(olderThan))) }
        if let limit = filter.limit { query.append(("limit", String(limit))) }
        if let cursor = filter.cursor { query.append(("cursor", cursor)) }
        let suffix = query.isEmpty ? "" : "?" + query.map { "\($0.0)=\(PathSegment.encode($0.1))" }.joined(separator: "&")
        return try await call(.GET, "/v1/transactions" + suffix)
    }

    /// Outcome of a transaction for a participant's in-doubt branch: `committed`,
    /// `aborted` (also for a gid the coordinator does not know) or `pending`.
    public func outcome(gid: String, branch: BranchID? = nil) async throws -> String {
        let suffix = branch.map { "?branch=\($0)" } ?? ""
        let answer: OutcomeAnswer = try await call(.GET, "/v1/transactions/\(PathSegment.encode(gid))/outcome" + suffix)
        return answer.outcome
    }

    public func enlist(gid: String, _ request: EnlistRequest) async throws -> EnlistAnswer {
        try await call(.POST, "/v1/transactions/\(PathSegment.encode(gid))/branches", body: request)
    }

    public func commit(gid: String, reason: String? = nil, wait: Bool = false, operator name: String? = nil) async throws -> TransactionView {
        try await call(.POST, "/v1/transactions/\(PathSegment.encode(gid))/commit", body: ResolveRequest(reason: reason, wait: wait, operator: name))
    }

    public func abort(gid: String, reason: String? = nil, wait: Bool = false, operator name: String? = nil) async throws -> TransactionView {
        try await call(.POST, "/v1/transactions/\(PathSegment.encode(gid))/abort", body: ResolveRequest(reason: reason, wait: wait, operator: name))
    }

    /// Declares how a branch ended (`committed` or `aborted`) after an operator settled it
    /// outside dtx; the reason is kept in the transaction's audit.
    public func resolveBranch(gid: String, branch: BranchID, outcome: String, reason: String, operator name: String? = nil) async throws -> TransactionView {
        try await call(.POST, "/v1/transactions/\(PathSegment.encode(gid))/branches/\(branch)/resolve", body: BranchResolution(outcome: outcome, reason: reason, operator: name))
    }

    /// Sends every pending delivery of the transaction now; the reason is kept in its audit.
    public func retry(gid: String, reason: String, operator name: String? = nil) async throws -> TransactionView {
        try await call(.POST, "/v1/transactions/\(PathSegment.encode(gid))/retry", body: RetryRequest(reason: reason, operator: name))
    }

    /// With a reason, each transaction retried keeps an audit record of it.
    public func recover(reason: String? = nil, operator name: String? = nil) async throws -> RecoveryReport {
        guard let reason else { return try await call(.POST, "/v1/admin/recover") }
        return try await call(.POST, "/v1/admin/recover", body: RetryRequest(reason: reason, operator: name))
    }

    public func health() async throws -> HealthAnswer {
        try await call(.GET, "/healthz")
    }

    /// The cluster as the node at `baseURL` sees it (a dtxd on its own log answers 404 `not_a_cluster`).
    public func cluster() async throws -> ClusterStatus {
        try await call(.GET, "/v1/cluster")
    }

    // MARK: Plumbing

    private struct Empty: Encodable {}

    private func call<Answer: Decodable>(_ method: HTTPMethod, _ path: String) async throws -> Answer {
        try await call(method, path, body: Optional<Empty>.none)
    }

    private func call<Answer: Decodable, Body: Encodable>(_ method: HTTPMethod, _ path: String, body: Body?) async throws -> Answer {
        let (status, bytes) = try await send(method, path, body: body)
        guard (200..<300).contains(status) else { throw Self.failure(status: status, bytes: bytes) }
        do {
            return try JSONDecoder.dtx().decode(Answer.self, from: bytes)
        } catch {
            throw ClientError.unexpected(status: status, body: String(decoding: bytes, as: UTF8.self))
        }
    }

    private func callWithoutAnswer(_ method: HTTPMethod, _ path: String) async throws {
        let (status, bytes) = try await send(method, path, body: Optional<Empty>.none)
        guard (200..<300).contains(status) else { throw Self.failure(status: status, bytes: bytes) }
    }

    private static func failure(status: Int, bytes: Data) -> ClientError {
        if let body = try? JSONDecoder().decode(APIErrorBody.self, from: bytes) {
            return .api(status: status, code: body.error.code, message: body.error.message)
        }
        return .unexpected(status: status, body: String(decoding: bytes, as: UTF8.self))
    }

    private func send<Body: Encodable>(_ method: HTTPMethod, _ path: String, body: Body?) async throws -> (Int, Data) {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONEncoder.dtx().encode(body)))
        }
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: timeout)
        } catch let error as HTTPClientError where error == .deadlineExceeded {
            throw ClientError.unreachable(url: baseURL, reason: "no answer within the request timeout")
        } catch {
            throw ClientError.unreachable(url: baseURL, reason: Self.describe(error))
        }
        let buffer = try await response.body.collect(upTo: 64 << 20)
        return (Int(response.status.code), Data(buffer.readableBytesView))
    }

    private static func describe(_ error: Error) -> String {
        let text = String(describing: error)
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        return text
    }
}
