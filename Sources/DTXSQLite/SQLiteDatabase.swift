import CSQLite
import Dispatch
import Foundation
import Synchronization

/// A database file served by one dedicated thread.
///
/// SQLite calls block (on locks, on fsync), so they must stay off Swift's cooperative
/// thread pool. The database owns a thread that opens the connection and runs jobs on
/// it one at a time, in the order they were submitted, like a serial executor: `run`
/// enqueues a job and suspends the calling task until it is done. Dropping the database
/// lets the thread finish the queued jobs, close the connection and exit.
public final class SQLiteDatabase: Sendable {
    /// The database file.
    public let path: String
    private let jobs = JobQueue()

    /// Opens (creating if needed) the database file at `path` on a new thread.
    /// - Parameter busyTimeout: how long a statement waits for another process's write
    ///   lock before failing as busy.
    /// - Throws: `SQLiteError` when the file cannot be opened or put in WAL mode.
    public init(path: String, busyTimeout: Duration = .seconds(5)) async throws {
        self.path = path
        let thread = Thread { [jobs] in
            Self.serve(jobs) { try SQLiteConnection(path: path, busyTimeout: busyTimeout) }
            jobs.stopped()
        }
        thread.start()
        // The first job reports whether the connection opened. It names the thread (for
        // debuggers and `top -H`): Foundation on Linux names the system thread only from
        // the thread itself once `start()` has returned.
        try await run { _ in Thread.current.name = "dtx-sqlite" }
    }

    deinit {
        jobs.close()
    }

    /// Jobs waiting for the thread (for tests that need several jobs in one group).
    var queuedJobs: Int { jobs.pendingCount }

    /// Runs `body` with the connection on the database's thread.
    ///
    /// With `sharingCommit`, the transactions `body` runs (through
    /// `SQLiteConnection.transaction`) may share one COMMIT, so one fsync, with the other
    /// such jobs queued at the same time: the thread opens one transaction for them, runs
    /// each job's transaction as a savepoint in it, commits once, and only then returns
    /// to their callers. A job that throws rolls back its own savepoint only; a COMMIT
    /// that fails fails every job of the group with its error, including jobs that threw
    /// (none of them is then committed, and what they read may be gone). A job
    /// that does not share a commit runs after the group before it has committed.
    /// - Throws: what `body` throws; `SQLiteError` when the database could not be opened
    ///   or is closed, or when the shared COMMIT failed.
    public func run<T: Sendable>(sharingCommit: Bool = false, _ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        let path = path
        return try await withCheckedThrowingContinuation { continuation in
            let accepted = jobs.submit(JobQueue.Job(sharesCommit: sharingCommit) { opened in
                let result = Result { try body(opened.get()) }
                return { commitFailure in
                    // A failed shared COMMIT fails every job of the group, those that threw
                    // too: what they saw (e.g. another job's uncommitted outcome record,
                    // read as `already_committed`) may never have been committed.
                    if let commitFailure {
                        continuation.resume(throwing: commitFailure)
                    } else {
                        continuation.resume(with: result)
                    }
                }
            })
            if !accepted {
                continuation.resume(throwing: SQLiteError(code: SQLITE_MISUSE, message: "database \(path) is closed"))
            }
        }
    }

    /// Finishes the queued jobs, closes the connection and stops the thread. Later calls
    /// to `run` fail.
    public func close() async {
        jobs.close()
        await jobs.waitUntilStopped()
    }

    /// The thread's work: opens the connection and runs jobs until the queue closes.
    /// The connection is closed when this returns.
    private static func serve(_ jobs: JobQueue, open: () throws -> SQLiteConnection) {
        let opened = Result { try open() }
        var group = CommitGroup()
        var last = false
        while !last {
            let batch: [JobQueue.Job]
            (batch, last) = jobs.next()
            for job in batch {
                guard job.sharesCommit, case .success(let connection) = opened else {
                    group.commit()
                    job.run(opened)(nil)
                    continue
                }
                group.run(job, on: connection)
            }
            group.commit()
        }
    }
}

/// The jobs that share the transaction the database's thread holds open, and their
/// callers, answered once it commits.
private struct CommitGroup {
    private var connection: SQLiteConnection?
    private var waiting: [JobQueue.Finish] = []

    mutating func run(_ job: JobQueue.Job, on connection: SQLiteConnection) {
        if self.connection == nil {
            do {
                try connection.execute("BEGIN IMMEDIATE")
                connection.sharesCommit = true
                self.connection = connection
            } catch {
                // Could not take the write lock (busy): the job runs alone, and its own
                // BEGIN reports the reason.
                job.run(.success(connection))(nil)
                return
            }
        }
        let finish = job.run(.success(connection))
        if connection.isInTransaction {
            waiting.append(finish)
        } else {
            // An error made SQLite roll back the whole transaction: the jobs before
            // this one lost their work with it.
            end(failure: SQLiteError(code: SQLITE_ABORT, message: "the transaction shared with other jobs was rolled back by an error in another job; nothing of this job was committed"))
            finish(nil)
        }
    }

    /// Commits the group and answers its callers.
    mutating func commit() {
        guard let connection else { return }
        do {
            try connection.execute("COMMIT")
            end(failure: nil)
        } catch {
            connection.rollback()
            end(failure: error)
        }
    }

    private mutating func end(failure: (any Error)?) {
        connection?.sharesCommit = false
        connection = nil
        let answered = waiting
        waiting = []
        for finish in answered { finish(failure) }
    }
}

/// The jobs waiting for a database's thread.
private final class JobQueue: Sendable {
    struct Job: Sendable {
        /// Whether the job may share its COMMIT with other jobs.
        var sharesCommit: Bool
        /// Runs the job and returns how to answer its caller.
        var run: @Sendable (Result<SQLiteConnection, any Error>) -> Finish
    }

    /// Answers a job's caller: given nil once what it wrote is committed, or why it
    /// could not be.
    typealias Finish = @Sendable ((any Error)?) -> Void

    private struct State {
        var pending: [Job] = []
        var closed = false
        var stopped = false
        var stopWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    /// Signalled once per submitted job and once on close.
    private let wakeUp = DispatchSemaphore(value: 0)

    var pendingCount: Int { state.withLock { $0.pending.count } }

    /// Queues `job`; false if the queue is closed.
    func submit(_ job: Job) -> Bool {
        let accepted = state.withLock { state in
            if state.closed { return false }
            state.pending.append(job)
            return true
        }
        if accepted { wakeUp.signal() }
        return accepted
    }

    /// Refuses further jobs; those already queued still run.
    func close() {
        state.withLock { $0.closed = true }
        wakeUp.signal()
    }

    /// Blocks until jobs are queued or the queue closes, and takes the queued jobs.
    /// - Returns: the jobs, and whether they are the last (the queue is closed).
    func next() -> (jobs: [Job], last: Bool) {
        while true {
            wakeUp.wait()
            let (batch, closed) = state.withLock { state in
                let batch = state.pending
                state.pending = []
                return (batch, state.closed)
            }
            if closed || !batch.isEmpty { return (batch, closed) }
        }
    }

    /// Called by the thread after it closed the connection.
    func stopped() {
        let waiters = state.withLock { state in
            state.stopped = true
            let waiters = state.stopWaiters
            state.stopWaiters = []
            return waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func waitUntilStopped() async {
        await withCheckedContinuation { continuation in
            let stopped = state.withLock { state in
                if !state.stopped { state.stopWaiters.append(continuation) }
                return state.stopped
            }
            if stopped { continuation.resume() }
        }
    }
}
