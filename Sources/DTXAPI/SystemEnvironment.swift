import DTXCore
import Foundation
import NIOCore
import NIOPosix

/// The world as production sees it: the system clock, event-loop timers (no task and no
/// dispatch timer per armed timer), tasks on the global executor, the system's randomness.
public struct SystemEnvironment: EngineEnvironment {
    public init() {}

    public func now() -> Date { Date() }

    public func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> ScheduledCall {
        let scheduled = MultiThreadedEventLoopGroup.singleton.next().scheduleTask(in: TimeAmount(delay), body)
        return ScheduledCall { scheduled.cancel() }
    }

    public func spawn(_ body: @escaping @Sendable () async -> Void) {
        Task(operation: body)
    }

    public func random() -> Double { Double.random(in: 0..<1) }

    private static let start = ContinuousClock.now

    public func monotonicNow() -> Duration { ContinuousClock.now - Self.start }

    public func sleep(for delay: Duration) async throws { try await Task.sleep(for: delay) }

    public func task<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> Task<T, Never> { Task(operation: body) }

    public func uniqueName() -> String { UUID().uuidString.lowercased() }
}
