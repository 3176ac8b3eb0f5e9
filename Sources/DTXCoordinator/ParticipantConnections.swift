import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A lean HTTP/1.1 client for the participant protocol over plain `http://`: one pool
/// of keep-alive connections per participant address, one request at a time on each
/// connection, a per-request deadline. It does only what the participant protocol
/// needs (a POST of a small JSON body, a small JSON answer), which is most of what
/// dtxd does per transaction: async-http-client's general machinery cost about a third
/// of the coordinator's CPU time under load.
final class ParticipantConnections: Sendable {
    struct Response: Sendable {
        var status: Int
        var body: [UInt8]
    }

    enum Failure: Error, CustomStringConvertible {
        /// No connection was made (refused, not within the connect timeout, or no slot came
        /// free before the deadline): nothing of the request was written.
        case notConnected(String)
        case timedOut
        /// Closed or broken before any of the answer arrived: the request may be sent again.
        case closed
        /// Broken after part of the answer arrived.
        case brokenAnswer

        var description: String {
            switch self {
            case .notConnected(let why): why
            case .timedOut: "no answer within the request timeout"
            case .closed: "the connection closed before an answer"
            case .brokenAnswer: "the connection broke in the middle of the answer"
            }
        }
    }

    /// Where a participant URL points, parsed once.
    struct Target: Sendable {
        var host: String
        var port: Int
        var basePath: String
        /// host:port, the pool's key and the Host header.
        var authority: String

        init?(url: String) {
            guard url.hasPrefix("http://") else { return nil }
            let rest = url.dropFirst("http://".count)
            let authority = rest.prefix { $0 != "/" }
            var path = String(rest.dropFirst(authority.count))
            while path.hasSuffix("/") { path.removeLast() }
            let host: Substring
            var port = 80
            if authority.hasPrefix("[") {  // [IPv6]:port
                guard let close = authority.firstIndex(of: "]") else { return nil }
                host = authority[authority.index(after: authority.startIndex)..<close]
                let tail = authority[authority.index(after: close)...]
                if !tail.isEmpty {
                    guard tail.hasPrefix(":"), let p = Int(tail.dropFirst()) else { return nil }
                    port = p
                }
            } else if let colon = authority.lastIndex(of: ":") {
                host = authority[..<colon]
                guard let p = Int(authority[authority.index(after: colon)...]) else { return nil }
                port = p
            } else {
                host = authority
            }
            guard !host.isEmpty, (1...65535).contains(port) else { return nil }
            self.host = String(host)
            self.port = port
            self.basePath = path
            self.authority = String(authority)
        }
    }

    private let group: any EventLoopGroup
    private let connectTimeout: TimeAmount
    private let maxConnectionsPerHost: Int
    private let pools = Mutex<[String: HostPool]>([:])
    private let targets = Mutex<[String: Target]>([:])

    init(group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, connectTimeout: TimeAmount = .seconds(1), maxConnectionsPerHost: Int) {
        self.group = group
        self.connectTimeout = connectTimeout
        self.maxConnectionsPerHost = maxConnectionsPerHost
    }

    /// The parsed form of a participant URL, or nil when it is not plain `http://`.
    func target(_ url: String) -> Target? {
        if let cached = targets.withLock({ $0[url] }) { return cached }
        guard let target = Target(url: url) else { return nil }
        targets.withLock { targets in
            if targets.count > 4096 { targets.removeAll() }  // URLs of moved participants
            targets[url] = target
        }
        return target
    }

    /// POSTs a JSON body to `path` under the target. A request that fails on a reused
    /// connection before any answer (the participant closed it while idle) is sent once
    /// more on a new connection; participant messages are idempotent.
    /// `gate`, when given, is asked right before each write: false fails the request unsent.
    func post(_ target: Target, path: String, body: [UInt8], token: String?, sender: String? = nil, gate: (@Sendable () -> Bool)? = nil,
              timeout: TimeAmount) async throws -> Response {
        let pool = pool(for: target)
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: target.basePath + path)
        head.headers.reserveCapacity(4)
        head.headers.add(name: "Host", value: target.authority)
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: String(body.count))
        if let token { head.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let sender { head.headers.add(name: "dtx-node", value: sender) }
        let deadline = NIODeadline.now() + timeout
        var retried = false
        while true {
            let connection: Connection
            let reused: Bool
            do {
                (connection, reused) = try await pool.acquire(deadline: deadline).get()
            } catch {
                throw Failure.notConnected(Self.describeConnectFailure(error))
            }
            do {
                return try await connection.exchange(head: head, body: body, deadline: deadline, gate: gate).get()
            } catch Failure.closed where reused && !retried {
                retried = true
            }
        }
    }

    /// Why a connection was not made, for people.
    private static func describeConnectFailure(_ error: any Error) -> String {
        if let failure = error as? Failure {
            if case .timedOut = failure { return "no connection came free within the request timeout" }
            return failure.description
        }
        if let error = error as? ChannelError, case .connectTimeout(let amount) = error {
            return "no connection within the connect timeout (\(Double(amount.nanoseconds) / 1e9) s)"
        }
        let text = String(describing: error)
        return text.contains("connectionRefused") || text.contains("Connection refused") ? "connection refused" : "no connection: \(text)"
    }

    func shutdown() {
        let all = pools.withLock { pools in
            defer { pools.removeAll() }
            return Array(pools.values)
        }
        all.forEach { $0.closeAll() }
    }

    private func pool(for target: Target) -> HostPool {
        pools.withLock { pools in
            if let pool = pools[target.authority] { return pool }
            let pool = HostPool(target: target, group: group, connectTimeout: connectTimeout, limit: maxConnectionsPerHost)
            pools[target.authority] = pool
            return pool
        }
    }
}

/// One participant address: idle connections, a count of open ones (bounded), and the
/// requests waiting for a connection when the bound is reached.
private final class HostPool: Sendable {
    private struct State {
        var idle: [Connection] = []
        var open = 0
        var waiters: [EventLoopPromise<(Connection, Bool)>] = []
        var closed = false
    }

    private let target: ParticipantConnections.Target
    private let group: any EventLoopGroup
    private let connectTimeout: TimeAmount
    private let limit: Int
    private let state = Mutex(State())

    init(target: ParticipantConnections.Target, group: any EventLoopGroup, connectTimeout: TimeAmount, limit: Int) {
        self.target = target
        self.group = group
        self.connectTimeout = connectTimeout
        self.limit = limit
    }

    /// A connection for one exchange, and whether it was used before.
    func acquire(deadline: NIODeadline) -> EventLoopFuture<(Connection, Bool)> {
        enum Next { case idle(Connection), connect, wait(EventLoopPromise<(Connection, Bool)>) }
        let loop = group.any()
        while true {
            let next = state.withLock { s -> Next in
                if let connection = s.idle.popLast() { return .idle(connection) }
                if s.open < limit {
                    s.open += 1
                    return .connect
                }
                let promise = loop.makePromise(of: (Connection, Bool).self)
                s.waiters.append(promise)
                return .wait(promise)
            }
            switch next {
            case .idle(let connection):
                // Closed while idle and not yet removed by its close callback: drop it.
                guard connection.channel.isActive else {
                    discard(connection)
                    continue
                }
                return loop.makeSucceededFuture((connection, true))
            case .connect:
                return connect(on: loop).map { ($0, false) }
            case .wait(let promise):
                let timer = loop.scheduleTask(deadline: deadline) {
                    let removed = self.state.withLock { s -> Bool in
                        guard let index = s.waiters.firstIndex(where: { $0.futureResult === promise.futureResult }) else { return false }
                        s.waiters.remove(at: index)
                        return true
                    }
                    if removed { promise.fail(ParticipantConnections.Failure.timedOut) }
                }
                promise.futureResult.whenComplete { _ in timer.cancel() }
                return promise.futureResult
            }
        }
    }

    /// Called on the connection's loop when an exchange ends: a connection still good
    /// for another request goes to a waiter or back to idle; any other is closed.
    func release(_ connection: Connection, reusable: Bool) {
        enum Next { case waiter(EventLoopPromise<(Connection, Bool)>), idle, close }
        let next = !reusable || !connection.channel.isActive ? .close : state.withLock { s -> Next in
            if s.closed { return .close }
            if !s.waiters.isEmpty { return .waiter(s.waiters.removeFirst()) }
            s.idle.append(connection)
            return .idle
        }
        switch next {
        case .waiter(let waiter):
            waiter.succeed((connection, true))
        case .idle:
            break
        case .close:
            connection.channel.close(promise: nil)
            discard(connection)
        }
    }

    /// A connection that will not be used again: its slot goes to the first waiter.
    private func discard(_ connection: Connection) {
        let waiter = state.withLock { s -> EventLoopPromise<(Connection, Bool)>? in
            s.open -= 1
            guard !s.closed, !s.waiters.isEmpty else { return nil }
            s.open += 1
            return s.waiters.removeFirst()
        }
        if let waiter {
            waiter.completeWith(connect(on: waiter.futureResult.eventLoop).map { ($0, false) })
        }
    }

    private func connect(on loop: any EventLoop) -> EventLoopFuture<Connection> {
        let future = ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(ExchangeHandler())
                }
            }
            .connect(host: target.host, port: target.port)
            .flatMapThrowing { channel -> Connection in
                let handler: ExchangeHandler
                do {
                    handler = try channel.pipeline.syncOperations.handler(type: ExchangeHandler.self)
                } catch {
                    channel.close(promise: nil)
                    throw error
                }
                let connection = Connection(channel: channel, handler: handler, pool: self)
                channel.closeFuture.whenComplete { _ in self.closedWhileIdle(connection) }
                return connection
            }
        future.whenFailure { _ in
            let waiter = self.state.withLock { s -> EventLoopPromise<(Connection, Bool)>? in
                s.open -= 1
                // The waiters are for this address too: they fail as this connect did,
                // rather than each waiting for its deadline.
                return s.waiters.isEmpty ? nil : s.waiters.removeFirst()
            }
            if let waiter {
                waiter.completeWith(future.map { ($0, false) })
            }
        }
        return future
    }

    /// An idle connection the participant closed: it leaves the pool.
    private func closedWhileIdle(_ connection: Connection) {
        let wasIdle = state.withLock { s -> Bool in
            guard let index = s.idle.firstIndex(where: { $0 === connection }) else { return false }
            s.idle.remove(at: index)
            return true
        }
        if wasIdle { discard(connection) }
    }

    func closeAll() {
        let (idle, waiters) = state.withLock { s in
            s.closed = true
            defer { s.idle = []; s.waiters = [] }
            return (s.idle, s.waiters)
        }
        idle.forEach { $0.channel.close(promise: nil) }
        waiters.forEach { $0.fail(ParticipantConnections.Failure.closed) }
    }
}

/// A channel and its exchange handler. The handler is only touched on the channel's
/// event loop, which is what makes sharing this object across threads sound.
private final class Connection: @unchecked Sendable {
    let channel: any Channel
    private let handler: ExchangeHandler
    private let pool: HostPool

    init(channel: any Channel, handler: ExchangeHandler, pool: HostPool) {
        self.channel = channel
        self.handler = handler
        self.pool = pool
    }

    /// `gate` is asked on the loop right before the request is written: false fails it unsent.
    func exchange(head: HTTPRequestHead, body: [UInt8], deadline: NIODeadline, gate: (@Sendable () -> Bool)? = nil) -> EventLoopFuture<ParticipantConnections.Response> {
        let loop = channel.eventLoop
        let promise = loop.makePromise(of: ParticipantConnections.Response.self)
        loop.execute { [self] in
            if let gate, !gate() {
                pool.release(self, reusable: true)
                promise.fail(SendingStopped())
                return
            }
            let timer = loop.scheduleTask(deadline: deadline) { [self] in
                handler.fail(ParticipantConnections.Failure.timedOut)
            }
            handler.begin(promise: promise, timer: timer) { [self] reusable in
                pool.release(self, reusable: reusable)
            }
            var buffer = channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            channel.write(HTTPClientRequestPart.body(.byteBuffer(buffer)), promise: nil)
            channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        }
        return promise.futureResult
    }
}

/// Collects one response per request; every path out of an exchange (answer, error,
/// close, deadline) completes the promise once and gives the connection back once.
private final class ExchangeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private struct Exchange {
        var promise: EventLoopPromise<ParticipantConnections.Response>
        var timer: Scheduled<Void>
        var done: (Bool) -> Void
        var status = 0
        var keepAlive = true
        var body: [UInt8] = []
    }

    private var exchange: Exchange?
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func begin(promise: EventLoopPromise<ParticipantConnections.Response>, timer: Scheduled<Void>, done: @escaping (Bool) -> Void) {
        guard context?.channel.isActive == true else {
            timer.cancel()
            done(false)
            promise.fail(ParticipantConnections.Failure.closed)
            return
        }
        exchange = Exchange(promise: promise, timer: timer, done: done)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard exchange != nil else { return }  // nothing asked: ignore
        switch unwrapInboundIn(data) {
        case .head(let head):
            exchange!.status = Int(head.status.code)
            exchange!.keepAlive = head.isKeepAlive
        case .body(let buffer):
            exchange!.body.append(contentsOf: buffer.readableBytesView)
        case .end:
            let finished = exchange!
            exchange = nil
            finished.timer.cancel()
            finished.done(finished.keepAlive)
            finished.promise.succeed(.init(status: finished.status, body: finished.body))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(ParticipantConnections.Failure.closed)
        context.fireChannelInactive()
    }

    /// Ends the exchange in progress, if any, with an error; the connection is closed.
    func fail(_ error: any Error) {
        guard let failed = exchange else { return }
        exchange = nil
        failed.timer.cancel()
        context?.close(promise: nil)
        failed.done(false)
        // Only a request that got none of its answer may be sent again.
        if case ParticipantConnections.Failure.timedOut = error {
            failed.promise.fail(error)
        } else {
            failed.promise.fail(failed.status == 0 ? ParticipantConnections.Failure.closed : ParticipantConnections.Failure.brokenAnswer)
        }
    }
}
