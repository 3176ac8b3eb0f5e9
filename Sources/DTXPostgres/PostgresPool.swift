import Dispatch
import Foundation
import Logging
import Synchronization

/// A fixed set of PostgreSQL connections, each owned by its own thread.
///
/// libpq calls block, so they never run on Swift's cooperative thread pool (which has
/// one thread per core): `withConnection` queues the work, the next free connection
/// thread runs it, and the calling task resumes when it is done. Before each use a
/// connection the server closed (a restart, a terminated backend) is re-established,
/// and a transaction a closure left open is rolled back.
public final class PostgresPool: Sendable {
    /// Number of connections (and threads).
    public let size: Int
    private let queue: JobQueue
    private let workers: DispatchGroup

    /// Opens `size` connections and waits until all are established.
    /// - Throws: `PostgresError` (`.connectionFailed`, `.authenticationFailed`) when a
    ///   connection cannot be opened; no connection stays open then.
    public init(_ connectionString: String, size: Int = 4, logger: Logger) async throws {
        guard size >= 1 else {
            throw PostgresError(code: .invalidConfiguration, message: "a PostgreSQL pool needs at least one connection; size was \(size)")
        }
        let queue = JobQueue()
        let workers = DispatchGroup()
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<size {
                    group.addTask {
                        try await withCheckedThrowingContinuation { (connected: CheckedContinuation<Void, any Error>) in
                            workers.enter()
                            let thread = Thread {
                                Self.work(connectionString, queue: queue, logger: logger, connected: connected)
                                workers.leave()
                            }
                            thread.name = "dtx-postgres-\(index)"
                            thread.start()
                        }
                    }
                }
                try await group.waitForAll()
            }
        } catch {
            queue.close(workers: size)
            throw error
        }
        self.size = size
        self.queue = queue
        self.workers = workers
        logger.debug("PostgreSQL pool open", metadata: ["connections": .stringConvertible(size)])
    }

    deinit {
        queue.close(workers: size)
    }

    /// Runs `body` with a connection on that connection's thread. Keep the closure to
    /// database work: it holds the connection (and its thread) until it returns.
    /// - Throws: what `body` throws; `PostgresError` `.connectionFailed` when a broken
    ///   connection cannot be re-established, `.poolClosed` after `close()`.
    public func withConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let job = Job(
                run: { connection in continuation.resume(with: Result { try body(connection) }) },
                fail: { error in continuation.resume(throwing: error) })
            if !queue.enqueue(job) {
                continuation.resume(throwing: PostgresError(code: .poolClosed, message: "the PostgreSQL pool is closed; open a new one"))
            }
        }
    }

    /// Finishes the queued work, closes every connection and waits for the threads to
    /// end. Later calls to `withConnection` throw `.poolClosed`.
    public func close() async {
        queue.close(workers: size)
        await withCheckedContinuation { continuation in
            workers.notify(queue: .global()) { continuation.resume() }
        }
    }

    /// The life of one connection thread: connect, then run jobs until the queue closes.
    private static func work(_ connectionString: String, queue: JobQueue, logger: Logger, connected: CheckedContinuation<Void, any Error>) {
        let connection: PostgresConnection
        do {
            connection = try PostgresConnection(connectionString, logger: logger)
        } catch {
            connected.resume(throwing: error)
            return
        }
        connected.resume()
        while let job = queue.next() {
            do {
                try connection.reconnectIfBroken()
            } catch {
                logger.error("cannot reconnect to PostgreSQL", metadata: ["error": "\(error)"])
                job.fail(error)
                continue
            }
            job.run(connection)
            if connection.isInTransaction {
                logger.warning("a pooled connection was returned inside a transaction; rolling it back")
                connection.rollbackIfInTransaction()
            }
        }
    }
}

/// Work for a connection thread: `run` with the connection, or `fail` when there is
/// no usable connection.
private struct Job: Sendable {
    let run: @Sendable (PostgresConnection) -> Void
    let fail: @Sendable (any Error) -> Void
}

/// First-in first-out jobs shared by the connection threads, which block in `next()`.
private final class JobQueue: Sendable {
    private struct State {
        /// Two-stack queue: jobs are appended to `incoming` and taken from `outgoing`.
        var incoming: [Job] = []
        var outgoing: [Job] = []
        var closed = false
    }

    private let state = Mutex(State())
    /// One signal per queued job, plus one per thread when the queue closes.
    private let signals = DispatchSemaphore(value: 0)

    /// Queues a job; false when the queue is closed.
    func enqueue(_ job: Job) -> Bool {
        let accepted = state.withLock { state in
            guard !state.closed else { return false }
            state.incoming.append(job)
            return true
        }
        if accepted { signals.signal() }
        return accepted
    }

    /// The next job, waiting for one; nil once the queue is closed and drained.
    func next() -> Job? {
        signals.wait()
        return state.withLock { state in
            if state.outgoing.isEmpty {
                state.outgoing = state.incoming.reversed()
                state.incoming.removeAll()
            }
            return state.outgoing.popLast()
        }
    }

    /// Refuses new jobs; each of `workers` threads gets nil from `next()` once the jobs
    /// already queued are taken. Closing again does nothing.
    func close(workers: Int) {
        let wasClosed = state.withLock { state in
            defer { state.closed = true }
            return state.closed
        }
        guard !wasClosed else { return }
        for _ in 0..<workers { signals.signal() }
    }
}
