import Foundation

/// What the engine and the kit's 3PC branches take from the world besides the network and
/// the store: the time, timers, new tasks and randomness. Production passes the system's
/// (`SystemEnvironment` in DTXAPI); the simulator passes its own, so that one seed is one run.
public protocol EngineEnvironment: Sendable {
    /// The wall-clock time: what views and records show, and what deadlines count in.
    func now() -> Date
    /// Calls `body` once, after `delay`, unless the returned call is cancelled first.
    func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> ScheduledCall
    /// Runs `body` as a new task.
    func spawn(_ body: @escaping @Sendable () async -> Void)
    /// A value in 0..<1 (the jitter of retries).
    func random() -> Double
    /// A clock that only goes forward, from an arbitrary start: what leases are measured on.
    func monotonicNow() -> Duration
    /// Suspends the calling task for `delay`; throws `CancellationError` if it is cancelled.
    func sleep(for delay: Duration) async throws
    /// Runs `body` as a new task, and returns the task.
    func task<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> Task<T, Never>
    /// A name never given before (a process's incarnation).
    func uniqueName() -> String
}

/// A call `EngineEnvironment.schedule` armed.
public struct ScheduledCall: Sendable {
    private let cancelling: @Sendable () -> Void

    public init(cancel: @escaping @Sendable () -> Void) {
        cancelling = cancel
    }

    public func cancel() { cancelling() }
}
