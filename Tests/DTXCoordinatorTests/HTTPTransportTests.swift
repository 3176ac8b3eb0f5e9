@testable import DTXCoordinator
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
        let transport = HTTPTransport(requestTimeout: .seconds(5))
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
        let transport = HTTPTransport(requestTimeout: .seconds(5))
        for _ in 0..<3 {
            let response = await transport.send(.commit, protocol: .twoPhaseCommit, request: request, to: server.endpoint())
            #expect(response == .done(status: "prepared", result: .string("/dtx/2pc/commit g-1")))
        }
        #expect(server.connectionsAccepted == 3)
        await transport.shutdown()
        try await server.stop()
    }

    @Test func aParticipantThatDoesNotAnswerTimesOutAndItsConnectionIsNotReused() async throws {
        let server = try await TestParticipantServer.start()
        // Long enough for the second call on a loaded CI machine; the first waits it out.
        let transport = HTTPTransport(requestTimeout: .seconds(2))
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
        let transport = HTTPTransport(requestTimeout: .seconds(5), connectionsPerParticipant: 2)
        let endpoint = server.endpoint()
        let request = request
        let responses = await withTaskGroup(of: ParticipantResponse.self) { group in
            for _ in 0..<40 {
                group.addTask { await transport.send(.rollback, protocol: .twoPhaseCommit, request: request, to: endpoint) }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(responses.count == 40)
        #expect(responses.allSatisfy { $0 == .done(status: "prepared", result: .string("/dtx/2pc/rollback g-1")) })
        #expect(server.connectionsAccepted <= 2)
        await transport.shutdown()
        try await server.stop()
    }

    @Test func anAbsentParticipantIsAFailedDeliveryNamingTheAddress() async throws {
        let server = try await TestParticipantServer.start()
        let endpoint = server.endpoint()
        try await server.stop()
        let transport = HTTPTransport(requestTimeout: .seconds(5))
        let response = await transport.send(.prepare, protocol: .twoPhaseCommit, request: request, to: endpoint)
        #expect(response == .failed("p at \(endpoint.url) unreachable: connection refused"))
        await transport.shutdown()
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

/// A minimal participant: answers every POST with `{"status":"prepared","result":"<uri> <gid>"}`,
/// except a request for gid `silent`, which it never answers.
private final class TestParticipantServer: Sendable {
    private let channel: any Channel
    private let accepted: Counter

    var connectionsAccepted: Int { accepted.value }
    var port: Int { channel.localAddress?.port ?? 0 }

    func endpoint(path: String = "") -> ParticipantEndpoint {
        ParticipantEndpoint(name: "p", url: "http://127.0.0.1:\(port)\(path)", token: nil)
    }

    private init(channel: any Channel, accepted: Counter) {
        self.channel = channel
        self.accepted = accepted
    }

    static func start(answersPerConnection: Int = .max) async throws -> TestParticipantServer {
        let counter = Counter()
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                counter.increment()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Responder(answers: answersPerConnection))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TestParticipantServer(channel: channel, accepted: counter)
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

    private final class Responder: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        private var remaining: Int
        private var uri = ""
        private var body: [UInt8] = []

        init(answers: Int) { remaining = answers }

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
                let gid = (try? JSONValue(parsing: body))?["gid"]?.stringValue ?? ""
                if gid == "silent" { return }
                var json = JSONWriter()
                json.member("{\"status\":\"prepared\",\"result\":", .string("\(uri) \(gid)"))
                json.raw("}")
                var head = HTTPResponseHead(version: .http1_1, status: .ok)
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: String(json.bytes.count))
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: json.bytes)))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
