import DTXCore
import Foundation
import Synchronization
import Testing

/// Time that moves only when the test says so: `advance` fires the calls that are due.
private final class ManualEnvironment: EngineEnvironment {
    private let state = Mutex<(now: Duration, pending: [(at: Duration, id: Int, body: @Sendable () -> Void)], cancelled: Set<Int>, next: Int)>((.zero, [], [], 0))

    func now() -> Date {
        let elapsed = state.withLock { $0.now }.components
        return Date(timeIntervalSince1970: Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18)
    }

    func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> ScheduledCall {
        let id = state.withLock { s -> Int in
            s.next += 1
            s.pending.append((s.now + delay, s.next, body))
            return s.next
        }
        return ScheduledCall { [weak self] in _ = self?.state.withLock { $0.cancelled.insert(id) } }
    }

    func spawn(_ body: @escaping @Sendable () async -> Void) { Task(operation: body) }

    func random() -> Double { 0.5 }

    func monotonicNow() -> Duration { state.withLock { $0.now } }

    func sleep(for delay: Duration) async throws {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            _ = schedule(after: delay) { continuation.resume() }
        }
    }

    func task<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> Task<T, Never> { Task(operation: body) }

    func uniqueName() -> String { UUID().uuidString }

    /// Moves time on by `duration` and runs what fell due, in order.
    func advance(_ duration: Duration) {
        let due = state.withLock { s -> [@Sendable () -> Void] in
            s.now += duration
            let now = s.now
            let ready = s.pending.filter { $0.at <= now && !s.cancelled.contains($0.id) }.sorted { ($0.at, $0.id) < ($1.at, $1.id) }
            s.pending.removeAll { $0.at <= now }
            return ready.map(\.body)
        }
        due.forEach { $0() }
    }
}

/// Records the order inputs were handled in, and how many were ever handled at once.
private final class Seen: Sendable {
    let state = Mutex<(order: [Int], inside: Int, most: Int)>(([], 0, 0))

    func handle(_ n: Int) async {
        state.withLock { s in
            s.inside += 1
            s.most = max(s.most, s.inside)
        }
        await Task.yield()
        state.withLock { s in
            s.order.append(n)
            s.inside -= 1
        }
    }
}

@Suite struct RunnerTests {
    @Test func aMailboxHandlesOneInputAtATimeInArrivalOrder() async {
        let mailbox = Mailbox<Int>()
        let seen = Seen()
        await withTaskGroup(of: Void.self) { group in
            for n in 0..<200 {
                group.addTask { await mailbox.deliver(n) { await seen.handle($0) } }
            }
        }
        let result = seen.state.withLock { $0 }
        #expect(result.most == 1)
        #expect(result.order.count == 200)
        // One deliverer after another: what one task delivered is handled in its order.
        var sequential: [Int] = []
        let second = Mailbox<Int>()
        for n in 0..<5 { await second.deliver(n) { sequential.append($0) } }
        #expect(sequential == [0, 1, 2, 3, 4])
    }

    @Test func aOneShotKeepsItsFirstValue() async {
        let shot = OneShot<String>()
        #expect(!shot.isSet)
        async let waited = shot.value()
        shot.set("first")
        shot.set("second")
        #expect(await waited == "first")
        #expect(await shot.value() == "first")
        #expect(shot.isSet)
    }

    @Test func timersFireOnceUnlessCancelledReArmedOrClosed() {
        let environment = ManualEnvironment()
        let timers = Timers<String>(environment: environment)
        let fired = Mutex<[String]>([])
        func arm(_ key: String, _ seconds: Int, as label: String) {
            timers.arm(key, after: .seconds(seconds)) { fired.withLock { $0.append(label) } }
        }
        arm("a", 1, as: "a1")
        arm("b", 1, as: "b1")
        arm("c", 1, as: "c1")
        arm("a", 2, as: "a2")  // replaces a1
        timers.cancel("b")
        environment.advance(.seconds(1))
        #expect(fired.withLock { $0 } == ["c1"])
        environment.advance(.seconds(1))
        #expect(fired.withLock { $0 } == ["c1", "a2"])
        environment.advance(.seconds(5))
        #expect(fired.withLock { $0 } == ["c1", "a2"])  // each fires once

        arm("x", 1, as: "x")
        arm("y", 1, as: "y")
        #expect(timers.take { $0 == "x" } == ["x"])
        #expect(timers.take { $0 == "x" } == [])
        timers.close()
        arm("z", 1, as: "z")  // closed: not armed
        environment.advance(.seconds(1))
        #expect(fired.withLock { $0 } == ["c1", "a2"])
    }
}
