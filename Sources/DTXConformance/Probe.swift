import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// One request the run sent and what came back: what a failed duty shows.
public struct Exchange: Sendable, Codable, Equatable {
    public var method: String
    public var path: String
    /// The request body as text; nil without one.
    public var request: String?
    /// The answer's HTTP status; nil when none came (the error is in `answer`).
    public var status: Int?
    public var answer: String

    public var description: String {
        "→ \(method) \(path)\(request.map { " \($0)" } ?? "")\n← \(status.map(String.init) ?? "no answer") \(answer)"
    }
}

/// A participant's answer to one request, read as the contract says.
struct Answer: Sendable {
    var status: Int?
    var headers: HTTPHeaders
    var body: [UInt8]

    var json: JSONValue? { try? JSONValue(parsing: body) }
    /// The `status` of a 200's `ParticipantReply`.
    var reply: String? { json?["status"]?.stringValue }
    var result: JSONValue? { json?["result"] }
    /// The `error.code` of an `Error` body.
    var errorCode: String? { json?["error"]?["code"]?.stringValue }
    /// An `Error` body: `error.code` and `error.message`, both non-empty strings.
    var hasErrorBody: Bool {
        guard let error = json?["error"], let code = error["code"]?.stringValue, let message = error["message"]?.stringValue else { return false }
        return !code.isEmpty && !message.isEmpty
    }
    /// Not done, and to be asked again: 425 or 503.
    var asksToRetry: Bool { status == 425 || status == 503 }
}

/// Why a duty failed: what was expected, and the exchanges that showed it.
struct DutyFailure: Error {
    var message: String
}

/// The participant, as the run reaches it, and the exchanges of the duty being checked.
final class Probe: Sendable {
    let base: String
    private let token: String?
    private let http: HTTPClient
    private let timeout: TimeAmount
    private let trace = Mutex<[Exchange]>([])

    init(base: String, token: String?, http: HTTPClient, timeout: Duration) {
        var base = base
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
        self.token = token
        self.http = http
        self.timeout = TimeAmount(timeout)
    }

    /// The exchanges since the last call, cleared.
    func takeTrace() -> [Exchange] {
        trace.withLock { trace in
            defer { trace = [] }
            return trace
        }
    }

    /// One request; a transport failure is an answer without a status.
    /// `traced`: kept among the exchanges a failure shows.
    func call(_ method: HTTPMethod, _ path: String, body: [UInt8]? = nil, authorization: String?? = .none, traced: Bool = true) async -> Answer {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let bearer: String? = switch authorization {
        case .none: token.map { "Bearer \($0)" }
        case .some(let given): given
        }
        if let bearer { request.headers.add(name: "Authorization", value: bearer) }
        let answer: Answer
        do {
            let response = try await http.execute(request, timeout: timeout)
            let bytes = try await response.body.collect(upTo: 4 << 20)
            answer = Answer(status: Int(response.status.code), headers: response.headers, body: Array(bytes.readableBytesView))
        } catch {
            let why = (error as? HTTPClientError) == .deadlineExceeded ? "no answer within \(timeout.nanoseconds / 1_000_000_000) s" : "\(error)"
            answer = Answer(status: nil, headers: [:], body: Array(why.utf8))
        }
        let exchange = Exchange(method: method.rawValue, path: path, request: body.map { String(decoding: $0.prefix(600), as: UTF8.self) },
                                status: answer.status, answer: String(decoding: answer.body.prefix(600), as: UTF8.self))
        if traced { trace.withLock { $0.append(exchange) } }
        return answer
    }

    /// `POST {base}/dtx/{protocol}/{message}` with the request body the coordinator sends.
    func send(_ message: ParticipantMessage, _ proto: TransactionProtocol, _ request: ParticipantRequest, traced: Bool = true) async -> Answer {
        guard let route = ParticipantRoute(proto, message) else { preconditionFailure("\(proto) has no \(message)") }
        return await call(.POST, route.path, body: request.jsonBytes(), traced: traced)
    }
}
