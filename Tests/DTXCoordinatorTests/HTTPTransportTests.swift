@testable import DTXCoordinator
#if canImport(Glibc)
import Glibc
#endif
import DTXAPI
import DTXCore
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing

/// The participant client against a real HTTP/1.1 server on loopback that misbehaves
/// on purpose: it closes kept-alive connections, stays silent, or is not there.
@Suite struct HTTPTransportTests {
    private let request = ParticipantRequest(gid: "g-1", branch: 0, operation: "noop")

    @Test func answersComeBackOverOneKeptAliveConnection() async throws {
        let server = try await TestParticipantServer.start()
        let transport = HTTPTransport(requestTimeout: .seconds(30))
        for _ in 0..<20 {
            let response = await transport.send(.prepare, protocol: .twoPhaseCommit, request: request, to: server.endpoint(path: "/base"))
            #expect(response == .done(status: "prepared", result: .string("/base/dtx/2pc/prepare g-1")))
        }
        #expect(server.connectionsAccepted == 1)
        await transport.shutdown()
        try await server.stop()
    }

    @Test func aKeptAliveConnectionThatBreaksBeforeAnAnswerIsReplacedWithoutAFailure() async throws {
        // The server answers one request per connection and drops the connection when a
        // second request arrives on it: what a participant that closed an idle
        // connection looks like when the close and the request cross.
        let server = try await TestParticipantServer.start(answersPerConnection: 1)
        let transport = HTTPTransport(requestTimeout: .seconds(30))
        for _ in 0..<3 {
            let response = await transport.send(.commit, protocol: .twoPhaseCommit, request: request, to: server.endpoint())
            #expect(response == .done(status: "committed", result: .string("/dtx/2pc/commit g-1")))
        }
        #expect(server.connectionsAccepted == 3)
        await transport.shutdown()
        try await server.stop()
    }

    @Test func aParticipantThatDoesNotAnswerTimesOutAndItsConnectionIsNotReused() async throws {
        let server = try await TestParticipantServer.start()
        // Long enough for the second call on a loaded CI machine; the first waits it out.
        let transport = HTTPTransport(requestTimeout: .seconds(5))
        let silent = ParticipantRequest(gid: "silent", branch: 0, operation: "noop")
        let response = await transport.send(.prepare, protocol: .twoPhaseCommit, request: silent, to: server.endpoint())
        #expect(response == .failed("p at \(server.endpoint().url) unreachable: no answer within the request timeout"))
        // The next request does not read the late answer of the first: it gets a new connection.
        let next = await transport.send(.prepare, protocol: .twoPhaseCommit, request: request, to: server.endpoint())
        #expect(next == .done(status: "prepared", result: .string("/dtx/2pc/prepare g-1")))
        #expect(server.connectionsAccepted == 2)
        await transport.shutdown()
        try await server.stop()
    }

    @Test func moreConcurrentRequestsThanConnectionsWaitForOne() async throws {
        let server = try await TestParticipantServer.start()
        let transport = HTTPTransport(requestTimeout: .seconds(30), connectionsPerParticipant: 2)
        let endpoint = server.endpoint()
        let request = request
        let responses = await withTaskGroup(of: ParticipantResponse.self) { group in
            for _ in 0..<40 {
                group.addTask { await transport.send(.rollback, protocol: .twoPhaseCommit, request: request, to: endpoint) }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(responses.count == 40)
        #expect(responses.allSatisfy { $0 == .done(status: "rolled_back", result: .string("/dtx/2pc/rollback g-1")) })
        #expect(server.connectionsAccepted <= 2)
        await transport.shutdown()
        try await server.stop()
    }

    @Test func aStatusTheMessageDoesNotTakeIsNoUsableAnswerAndANullResultIsNone() {
        let route = ParticipantRoute(.twoPhaseCommit, .commit)!
        let wrong = HTTPTransport.checked(.done(status: "prepared", result: nil), route, from: "p")
        #expect(wrong == .failed("p answered /dtx/2pc/commit with status 'prepared', not committed"))
        let prepare = ParticipantRoute(.twoPhaseCommit, .prepare)!
        #expect(HTTPTransport.checked(.done(status: "read_only", result: nil), prepare, from: "p") == .done(status: "read_only", result: nil))
        let answer = HTTPTransport.interpret(status: 200, json: .object(["status": .string("committed"), "result": .null]), from: "p") { "" }
        #expect(answer == .done(status: "committed", result: nil))
    }

    @Test func anAbsentParticipantIsAnUndeliveredMessageNamingTheAddress() async throws {
        let server = try await TestParticipantServer.start()
        let endpoint = server.endpoint()
        try await server.stop()
        let transport = HTTPTransport(requestTimeout: .seconds(30))
        let response = await transport.send(.prepare, protocol: .twoPhaseCommit, request: request, to: endpoint)
        #expect(response == .undelivered("p at \(endpoint.url) unreachable: connection refused"))
        await transport.shutdown()
    }

    /// A listener whose accept queue is full drops the connection attempt: after the
    /// connect timeout the message is reported undelivered (nothing was written), not
    /// failed, so that the engine may send a work message again.
    @Test func aConnectionNotMadeWithinTheConnectTimeoutIsUndelivered() async throws {
        let listener = try FullListener()
        defer { listener.close() }
        let transport = HTTPTransport(requestTimeout: .seconds(2), connectTimeout: .milliseconds(300))
        let endpoint = ParticipantEndpoint(name: "p", url: "http://127.0.0.1:\(listener.port)", token: nil)
        let request = request
        let responses = await withTaskGroup(of: ParticipantResponse.self) { group in
            for _ in 0..<8 {
                group.addTask { await transport.send(.prepare, protocol: .twoPhaseCommit, request: request, to: endpoint) }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        // The few connections the kernel queued are made and then never answered.
        let undelivered = responses.filter { if case .undelivered(let why) = $0 { why.contains("connect timeout") } else { false } }
        #expect(undelivered.count >= 4, "\(responses)")
        await transport.shutdown()
    }

    /// With a participant that takes batches: beyond the requests in flight, messages
    /// that finish branches wait and go together; each gets its own answer. Work
    /// (prepare) always goes alone.
    @Test func finishingMessagesBeyondTheRequestsInFlightGoTogetherInOneBatch() async throws {
        let server = try await TestParticipantServer.start()
        let transport = HTTPTransport(requestTimeout: .seconds(30), batchRequestsInFlight: 1)
        let endpoint = server.endpoint(path: "/base", batch: true)
        // One slow commit holds the only request in flight while 40 more arrive.
        async let slow = transport.send(.commit, protocol: .twoPhaseCommit, request: ParticipantRequest(gid: "slow", branch: 0, operation: "noop"), to: endpoint)
        try await server.waitUntilReceived(1)
        let responses = await withTaskGroup(of: (Int, ParticipantResponse).self) { group in
            for index in 0..<40 {
                group.addTask {
                    let gid = index == 7 ? "refuse" : "g-\(index)"
                    let message: ParticipantMessage = index % 2 == 0 ? .commit : .rollback
                    return (index, await transport.send(message, protocol: .twoPhaseCommit, request: ParticipantRequest(gid: gid, branch: 0, operation: "noop"), to: endpoint))
                }
            }
            var responses: [Int: ParticipantResponse] = [:]
            for await (index, response) in group { responses[index] = response }
            return responses
        }
        #expect(await slow == .done(status: "committed", result: .string("/base/dtx/2pc/commit slow")))
        for index in 0..<40 where index != 7 {
            let path = index % 2 == 0 ? "/base/dtx/2pc/commit" : "/base/dtx/2pc/rollback"
            #expect(responses[index] == .done(status: index % 2 == 0 ? "committed" : "rolled_back", result: .string("\(path) g-\(index)")))
        }
        #expect(responses[7] == .refused(code: "refused_by_test", message: "no"))
        // The slow commit, the batch, and alone any message whose task started only
        // after the batch had left (on a loaded machine).
        #expect(server.batchesReceived == 1)
        #expect(server.requestsReceived < 10)

        // Prepares go alone even while a commit is in flight.
        let before = server.requestsReceived
        async let slowAgain = transport.send(.commit, protocol: .twoPhaseCommit, request: ParticipantRequest(gid: "slow", branch: 1, operation: "noop"), to: endpoint)
        try await server.waitUntilReceived(before + 1)
        await withTaskGroup(of: Void.self) { group in
            for index in 0..<5 {
                group.addTask {
                    let response = await transport.send(.prepare, protocol: .twoPhaseCommit, request: ParticipantRequest(gid: "p-\(index)", branch: 0, operation: "noop"), to: endpoint)
                    #expect(response == .done(status: "prepared", result: .string("/base/dtx/2pc/prepare p-\(index)")))
                }
            }
        }
        _ = await slowAgain
        #expect(server.requestsReceived == before + 6)
        #expect(server.batchesReceived == 1)
        await transport.shutdown()
        try await server.stop()
    }

    /// A batch that fails whole fails each of its messages, as a failed delivery.
    @Test func aBatchThatFailsWholeFailsEachMessage() async throws {
        let server = try await TestParticipantServer.start()
        let transport = HTTPTransport(requestTimeout: .seconds(30), batchRequestsInFlight: 1)
        let endpoint = server.endpoint(batch: true)
        // A held confirm takes the only request in flight until all three wait behind it.
        async let held = transport.send(.confirm, protocol: .tcc, request: ParticipantRequest(gid: "hold", branch: 0, operation: "noop"), to: endpoint)
        try await server.waitUntilReceived(1)
        let responses = try await withThrowingTaskGroup(of: ParticipantResponse.self) { group in
            for gid in ["a", "fail-batch", "b"] {
                group.addTask { await transport.send(.confirm, protocol: .tcc, request: ParticipantRequest(gid: gid, branch: 0, operation: "noop"), to: endpoint) }
            }
            let deadline = ContinuousClock.now + .seconds(10)
            while transport.messagesWaiting(for: endpoint) < 3 {
                guard ContinuousClock.now < deadline else { throw TestServerError("the three confirms did not queue within 10 s") }
                try await Task.sleep(for: .milliseconds(5))
            }
            server.releaseHeld()
            return try await group.reduce(into: []) { $0.append($1) }
        }
        _ = await held
        #expect(responses.count == 3)
        for response in responses {
            guard case .failed(let reason) = response else {
                Issue.record("not a failed delivery: \(response)")
                continue
            }
            #expect(reason.contains("HTTP 500"))
        }
        #expect(server.batchesReceived == 1)
        await transport.shutdown()
        try await server.stop()
    }

    @Test func participantURLsAreParsedOnceIntoHostPortAndPath() {
        let plain = ParticipantConnections.Target(url: "http://127.0.0.1:9101")
        #expect(plain?.host == "127.0.0.1")
        #expect(plain?.port == 9101)
        #expect(plain?.basePath == "")
        let based = ParticipantConnections.Target(url: "http://accounts.internal/svc/")
        #expect(based?.host == "accounts.internal")
        #expect(based?.port == 80)
        #expect(based?.basePath == "/svc")
        #expect(based?.authority == "accounts.internal")
        let ipv6 = ParticipantConnections.Target(url: "http://[::1]:8080/p")
        #expect(ipv6?.host == "::1")
        #expect(ipv6?.port == 8080)
        #expect(ipv6?.basePath == "/p")
        // Not for the lean client: TLS, and addresses that do not parse.
        for url in ["https://example.com", "http://:80", "http://host:0", "http://host:99999", "http://host:x", "http://[::1"] {
            #expect(ParticipantConnections.Target(url: url) == nil, "\(url)")
        }
    }
}

/// A minimal participant: answers every POST with `{"status":<the message's word>,"result":"<uri> <gid>"}`,
/// except a request for gid `silent`, which it never answers.
private final class TestParticipantServer: Sendable {
    private let channel: any Channel
    private let accepted: Counter
    private let requests: Counter
    private let batches: Counter
    private let held: Held

    var connectionsAccepted: Int { accepted.value }
    var port: Int { channel.localAddress?.port ?? 0 }

    func endpoint(path: String = "", batch: Bool = false) -> ParticipantEndpoint {
        ParticipantEndpoint(name: "p", url: "http://127.0.0.1:\(port)\(path)", token: nil, batch: batch)
    }

    private init(channel: any Channel, accepted: Counter, requests: Counter, batches: Counter, held: Held) {
        self.channel = channel
        self.accepted = accepted
        self.requests = requests
        self.batches = batches
        self.held = held
    }

    static func start(answersPerConnection: Int = .max) async throws -> TestParticipantServer {
        let counter = Counter()
        let requests = Counter()
        let batches = Counter()
        let held = Held()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                counter.increment()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Responder(answers: answersPerConnection, requests: requests, batches: batches, held: held))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TestParticipantServer(channel: channel, accepted: counter, requests: requests, batches: batches, held: held)
    }

    func stop() async throws {
        try await channel.close()
    }

    /// Counts accepted connections.
    private final class Counter: Sendable {
        private let count = Mutex(0)
        var value: Int { count.withLock { $0 } }
        func increment() { count.withLock { $0 += 1 } }
    }

    /// The answers to gid `hold`, kept until `releaseHeld()`.
    private final class Held: Sendable {
        private let promises = Mutex<[EventLoopPromise<Void>]>([])
        func add(_ promise: EventLoopPromise<Void>) { promises.withLock { $0.append(promise) } }
        func release() { promises.withLock { held in defer { held = [] }; return held }.forEach { $0.succeed() } }
    }

    /// Sends the answers held so far.
    func releaseHeld() { held.release() }

    /// Requests received, and how many of them were batches.
    var requestsReceived: Int { requests.value }
    var batchesReceived: Int { batches.value }

    /// Returns once `count` requests have arrived: a slow one is then surely in flight
    /// (a fixed sleep is not enough on a loaded machine).
    func waitUntilReceived(_ count: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while requestsReceived < count {
            guard ContinuousClock.now < deadline else { throw TestServerError("only \(requestsReceived) of \(count) requests arrived within 10 s") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Answers every message with `prepared` and a result naming the path and gid; gid
    /// `silent` gets no answer, `slow` its answer after 300 ms, `hold` when the test
    /// releases it, `refuse` a 409. A batch
    /// (`/dtx/batch`) gets one such answer per message, or 500 whole when a message has
    /// gid `fail-batch`.
    private final class Responder: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        private var remaining: Int
        private var uri = ""
        private var body: [UInt8] = []

        private let requests: Counter
        private let batches: Counter
        private let held: Held

        init(answers: Int, requests: Counter, batches: Counter, held: Held) {
            remaining = answers
            self.requests = requests
            self.batches = batches
            self.held = held
        }

        private static func answer(path: String, request: JSONValue?) -> (Int, JSONValue) {
            let gid = request?["gid"]?.stringValue ?? ""
            if gid == "refuse" { return (409, .object(["error": .object(["code": .string("refused_by_test"), "message": .string("no")])])) }
            // The word the path's message is answered with when done.
            let route = path.range(of: "/dtx/").flatMap { ParticipantRoute(path: String(path[$0.lowerBound...])) }
            return (200, .object(["status": .string(route?.doneStatus ?? "prepared"), "result": .string("\(path) \(gid)")]))
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                uri = head.uri
                body = []
            case .body(let buffer):
                body += buffer.readableBytesView
            case .end:
                guard remaining > 0 else {
                    context.close(promise: nil)
                    return
                }
                remaining -= 1
                requests.increment()
                let request = try? JSONValue(parsing: body)
                let gid = request?["gid"]?.stringValue ?? ""
                if gid == "silent" { return }
                let status: Int
                let answer: JSONValue
                if uri.hasSuffix("/dtx/batch"), case .array(let messages)? = request?["messages"] {
                    batches.increment()
                    let base = String(uri.dropLast("/dtx/batch".count))
                    if messages.contains(where: { $0["request"]?["gid"]?.stringValue == "fail-batch" }) {
                        (status, answer) = (500, .object([:]))
                    } else {
                        status = 200
                        answer = .object(["answers": .array(messages.map { message in
                            let (status, body) = Self.answer(path: base + (message["path"]?.stringValue ?? ""), request: message["request"])
                            return .object(["status": .number(Double(status)), "body": body])
                        })])
                    }
                } else {
                    (status, answer) = Self.answer(path: uri, request: request)
                }
                var json = JSONWriter()
                json.value(answer)
                var head = HTTPResponseHead(version: .http1_1, status: .init(statusCode: status))
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: String(json.bytes.count))
                let bytes = json.bytes
                let send = {
                    context.write(self.wrapOutboundOut(.head(head)), promise: nil)
                    context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: bytes)))), promise: nil)
                    context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
                }
                if gid == "slow" {
                    context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(300), send)
                } else if gid == "hold" {
                    let released = context.eventLoop.makePromise(of: Void.self)
                    released.futureResult.assumeIsolated().whenSuccess { send() }
                    held.add(released)
                } else {
                    send()
                }
            }
        }
    }
}

private struct TestServerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A TCP listener with the smallest accept queue that never accepts: once the queue is
/// full, the kernel drops further connection attempts (what a participant with a small
/// listen backlog does under load).
private struct FullListener {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 0) == 0 else { throw POSIXFailure(errno: errno) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(fd) }
}

private struct POSIXFailure: Error {
    var errno: Int32
}
