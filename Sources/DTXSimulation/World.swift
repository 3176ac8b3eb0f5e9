import DTXCore
import Foundation
import Synchronization

/// Simulated time, timers and tasks for one run. Every task of the run prefers this
/// executor, which runs jobs one at a time in the order they were enqueued, on the
/// thread that called `run`; timers fire in order of (time, arming order). Nothing here
/// reads the real clock or the system's randomness: one seed is one run.
final class World: TaskExecutor, EngineEnvironment, @unchecked Sendable {
    static let epoch = Date(timeIntervalSince1970: 1_800_000_000)

    private(set) var time: Duration = .zero
    private var jobs: [UnownedJob] = []
    private var nextJob = 0
    private var timers = TimerHeap()
    private var armed: UInt64 = 0
    var rng: SimRandom
    /// The readable trace, kept only when asked for (a failing seed is replayed with it).
    let tracing: Bool
    private(set) var trace: [String] = []
    /// FNV-1a over every trace line: two runs of a seed print the same digest.
    private(set) var traceDigest: UInt64 = 0xcbf2_9ce4_8422_2325

    init(seed: UInt64, tracing: Bool) {
        rng = SimRandom(seed: seed)
        self.tracing = tracing
    }

    // MARK: TaskExecutor

    func enqueue(_ job: consuming ExecutorJob) {
        jobs.append(UnownedJob(job))
    }

    // MARK: EngineEnvironment

    func now() -> Date { Self.epoch.addingTimeInterval(time.apiSeconds) }

    func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> ScheduledCall {
        let timer = SimTimer(body)
        armed += 1
        timers.push(TimerHeap.Entry(at: time + max(delay, .zero), order: armed, timer: timer))
        return ScheduledCall { timer.cancelled = true }
    }

    func spawn(_ body: @escaping @Sendable () async -> Void) {
        Task(executorPreference: self) { await body() }
    }

    func random() -> Double { rng.unit() }

    func monotonicNow() -> Duration { time }

    func sleep(for delay: Duration) async throws {
        let sleeper = Sleeper()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                sleeper.start(continuation)
                let call = schedule(after: delay) { sleeper.finish(nil) }
                sleeper.armed(call)
            }
        } onCancel: {
            sleeper.finish(CancellationError())
        }
    }

    func task<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> Task<T, Never> {
        Task(executorPreference: self) { await body() }
    }

    func uniqueName() -> String { String(rng.next(), radix: 16) }

    /// Suspends the calling task for `delay` of simulated time.
    func sleep(_ delay: Duration) async {
        await withCheckedContinuation { (resume: CheckedContinuation<Void, Never>) in
            _ = schedule(after: delay) { resume.resume() }
        }
    }

    // MARK: Running

    /// Runs ready jobs, then the next timer, and so on, until `done()` holds (asked
    /// whenever no job is ready) or the next timer lies beyond `limit`. Returns whether
    /// `done()` held.
    @discardableResult
    func run(until limit: Duration, done: () -> Bool = { false }) -> Bool {
        while true {
            while nextJob < jobs.count {
                let job = jobs[nextJob]
                nextJob += 1
                job.runSynchronously(on: asUnownedTaskExecutor())
                if nextJob >= 4096 {
                    jobs.removeFirst(nextJob)
                    nextJob = 0
                }
            }
            if done() { return true }
            guard let next = timers.peek, next.at <= limit else {
                time = max(time, limit)
                return false
            }
            timers.pop()
            time = next.at
            if !next.timer.cancelled { next.timer.body() }
        }
    }

    /// Drops whatever is still scheduled, so that nothing of a run outlives it (the
    /// timers' closures hold the run).
    func discard() {
        timers = TimerHeap()
        jobs = []
        nextJob = 0
    }

    func note(_ line: @autoclosure () -> String) {
        guard tracing else { return }
        let text = "\(String(format: "%10.3f", time.apiSeconds)) \(line())"
        for byte in text.utf8 {
            traceDigest = (traceDigest ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        trace.append(text)
    }
}

/// One cancellable sleep: resumed once, by its timer or by cancellation (which may come
/// before the timer is armed).
private final class Sleeper: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Void, any Error>?
        var call: ScheduledCall?
        var outcome: (any Error)??
    }

    private let state = Mutex(State())

    func start(_ continuation: CheckedContinuation<Void, any Error>) {
        let early = state.withLock { s -> (any Error)?? in
            if let outcome = s.outcome { return outcome }
            s.continuation = continuation
            return nil
        }
        if let early { early.map { continuation.resume(throwing: $0) } ?? continuation.resume() }
    }

    func armed(_ call: ScheduledCall) {
        let finished = state.withLock { s in
            s.call = call
            return s.outcome != nil
        }
        if finished { call.cancel() }
    }

    func finish(_ error: (any Error)?) {
        let (continuation, call) = state.withLock { s -> (CheckedContinuation<Void, any Error>?, ScheduledCall?) in
            guard s.outcome == nil else { return (nil, nil) }
            s.outcome = .some(error)
            defer { s.continuation = nil }
            return (s.continuation, s.call)
        }
        call?.cancel()
        guard let continuation else { return }
        if let error { continuation.resume(throwing: error) } else { continuation.resume() }
    }
}

final class SimTimer: @unchecked Sendable {
    var cancelled = false
    let body: @Sendable () -> Void

    init(_ body: @escaping @Sendable () -> Void) {
        self.body = body
    }
}

/// A binary min-heap of timers by (time, arming order).
struct TimerHeap {
    struct Entry {
        var at: Duration
        var order: UInt64
        var timer: SimTimer

        func precedes(_ other: Entry) -> Bool { at < other.at || (at == other.at && order < other.order) }
    }

    private var items: [Entry] = []

    var peek: Entry? { items.first }

    mutating func push(_ entry: Entry) {
        items.append(entry)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].precedes(items[parent]) else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() {
        guard !items.isEmpty else { return }
        items.swapAt(0, items.count - 1)
        items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var first = parent
            if left < items.count, items[left].precedes(items[first]) { first = left }
            if right < items.count, items[right].precedes(items[first]) { first = right }
            guard first != parent else { return }
            items.swapAt(parent, first)
            parent = first
        }
    }
}

/// SplitMix64: small, fast, and the same sequence on every machine.
struct SimRandom {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// In 0..<1.
    mutating func unit() -> Double { Double(next() >> 11) * 0x1p-53 }

    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
    }

    mutating func chance(_ probability: Double) -> Bool { unit() < probability }

    mutating func milliseconds(_ range: ClosedRange<Int>) -> Duration { .milliseconds(int(range)) }

    mutating func pick<T>(_ items: [T]) -> T { items[int(0...items.count - 1)] }
}
