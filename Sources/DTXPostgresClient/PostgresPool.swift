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
///
/// Work that finishes prepared transactions (`.finish`: COMMIT PREPARED, ROLLBACK
/// PREPARED) goes before other queued work, and one connection of a pool of two or more
/// is kept for it: a branch's work can wait in the server for a row that a prepared
/// transaction holds, and the COMMIT PREPARED that frees the row must not wait for a
/// connection behind it.
public final class PostgresPool: Sendable {
    /// What a connection is wanted for.
    public enum Use: Sendable {
        /// A branch's work, or anything else that may wait for rows other transactions hold.
        case work
        /// Finishing a prepared transaction: it never waits for another transaction's rows.
        case finish
    }

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
        let queue = JobQueue(workLimit: max(1, size - 1))
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
            queue.close()
            throw error
        }
        self.size = size
        self.queue = queue
        self.workers = workers
        logger.debug("PostgreSQL pool open", metadata: ["connections": .stringConvertible(size)])
    }

    deinit {
        queue.close()
    }

    /// Runs `body` with a connection on that connection's thread. Keep the closure to
    /// database work: it holds the connection (and its thread) until it returns.
    /// - Throws: what `body` throws; `PostgresError` `.connectionFailed` when a broken
    ///   connection cannot be re-established, `.poolClosed` after `close()`.
    public func withConnection<T: Sendable>(for use: Use = .work, _ body: @escaping @Sendable (PostgresConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let job = Job(
                finishes: use == .finish,
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
        queue.close()
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
        var previousFinished: Bool?  // whether the last job was finishing work; nil before the first
        while let job = queue.next(afterFinishing: previousFinished) {
            previousFinished = job.finishes
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
    let finishes: Bool
    let run: @Sendable (PostgresConnection) -> Void
    let fail: @Sendable (any Error) -> Void
}

/// The jobs shared by the connection threads, which block in `next(after:)`: jobs that
/// finish prepared transactions first, then the others in arrival order, of which at
/// most `workLimit` run at once.
private final class JobQueue: @unchecked Sendable {
    // Safe: every field is read and written with `condition` locked.
    private let condition = NSCondition()
    private var finishing: [Job] = []
    private var work: [Job] = []
    private var workRunning = 0
    private let workLimit: Int
    private var closed = false

    init(workLimit: Int) {
        self.workLimit = workLimit
    }

    /// Queues a job; false when the queue is closed.
    func enqueue(_ job: Job) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return false }
        if job.finishes { finishing.append(job) } else { work.append(job) }
        condition.broadcast()
        return true
    }

    /// The next job for a thread whose previous job (if any; `finishes` tells its kind)
    /// is done, waiting for one; nil once the queue is closed and drained.
    func next(afterFinishing previousFinished: Bool?) -> Job? {
        condition.lock()
        defer { condition.unlock() }
        if previousFinished == false {
            workRunning -= 1
            if !work.isEmpty { condition.broadcast() }
        }
        while true {
            if !finishing.isEmpty { return finishing.removeFirst() }
            if !work.isEmpty, workRunning < workLimit {
                workRunning += 1
                return work.removeFirst()
            }
            if closed, finishing.isEmpty, work.isEmpty { return nil }
            condition.wait()
        }
    }

    /// Refuses new jobs; the threads get nil from `next(afterFinishing:)` once the jobs already
    /// queued are done. Closing again does nothing.
    func close() {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        condition.broadcast()
    }
}
