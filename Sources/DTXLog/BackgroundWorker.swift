#if canImport(Glibc)
import Glibc
#endif

/// A thread of the log's own, by default at a lower scheduling priority, for work the commit path
/// must never wait behind: a checkpoint's reading and filtering and the deleting of the
/// segments it emptied (one worker), preparing the next segment ahead of need (another).
/// Not the flusher (every forced append waits for it) and not Swift's cooperative pool
/// or the daemon's event loops, where a checkpoint of tens of thousands of records held
/// a thread, and every task waiting on it, for seconds. Jobs run one at a time, in order.
final class BackgroundWorker: @unchecked Sendable {
    // Safe: every stored var is only touched with `lock` held.
    private let lock = ConditionLock()
    private var jobs: [@Sendable () -> Void] = []
    private var stopping = false
    private var ended = false

    private let niceness: Int32

    /// - Parameter niceness: nice value of the thread; the default 10 has the scheduler
    ///   give committers the CPU first.
    init(named name: String, niceness: Int32 = 10) {
        self.niceness = niceness
        System.startThread(named: name) { [self] in runLoop() }
    }

    /// Queues `job`; false (and `job` never runs) once the worker is stopping.
    @discardableResult
    func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        lock.withLock {
            guard !stopping else { return false }
            jobs.append(job)
            lock.broadcast()
            return true
        }
    }

    /// Runs `work` on the worker thread and returns its result.
    func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            let queued = submit {
                do {
                    continuation.resume(returning: try work())
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            if !queued { continuation.resume(throwing: LogError.closed) }
        }
    }

    /// Refuses later jobs, lets queued ones finish, and blocks until the thread has run
    /// its last: after this, nothing the worker does can touch the directory. Called on
    /// the log's flusher thread as it closes, never on Swift's cooperative pool.
    func stopAndWait() {
        lock.lock()
        stopping = true
        lock.broadcast()
        while !ended { lock.wait(nanoseconds: 100_000_000) }
        lock.unlock()
    }

    private func runLoop() {
        // On Linux the nice value is a thread's own, and `who` 0 names the calling thread.
        if niceness != 0 { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, niceness) }
        lock.lock()
        while true {
            if jobs.isEmpty {
                if stopping { break }
                lock.wait(nanoseconds: 1_000_000_000)
                continue
            }
            let batch = jobs
            jobs = []
            lock.unlock()
            for job in batch { job() }
            lock.lock()
        }
        ended = true
        lock.broadcast()
        lock.unlock()
    }
}
