#if canImport(Glibc)
import Glibc
#endif

/// A thread of the log's own, at a lower scheduling priority, for work the commit path
/// must never wait behind: a checkpoint's reading, filtering and copying, and deleting
/// the segments it emptied. Not the flusher (every forced append waits for it) and not
/// Swift's cooperative pool or the daemon's event loops, where a checkpoint of tens of
/// thousands of records held a thread, and every task waiting on it, for seconds.
/// Jobs run one at a time, in order.
final class BackgroundWorker: @unchecked Sendable {
    // Safe: `jobs` and `stopping` are only touched with `lock` held.
    private let lock = ConditionLock()
    private var jobs: [@Sendable () -> Void] = []
    private var stopping = false

    /// Nice value of the thread: the scheduler gives committers the CPU first.
    private static let niceness: Int32 = 10

    init() {
        System.startThread(named: "log background") { [self] in runLoop() }
    }

    /// Runs `work` on the worker thread and returns its result.
    func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            lock.lock()
            guard !stopping else {
                lock.unlock()
                continuation.resume(throwing: LogError.closed)
                return
            }
            jobs.append {
                do {
                    continuation.resume(returning: try work())
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            lock.signal()
            lock.unlock()
        }
    }

    /// Lets queued jobs finish, then ends the thread; later `run` calls throw `LogError.closed`.
    func stop() {
        lock.withLock {
            stopping = true
            lock.signal()
        }
    }

    private func runLoop() {
        // On Linux the nice value is a thread's own, and `who` 0 names the calling thread.
        _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, Self.niceness)
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
        lock.unlock()
    }
}
