import Synchronization

// The runner the engine's state machines are driven by, in the coordinator (one per
// transaction) and in the participant kit (one per 3PC branch): a mailbox that feeds a
// machine one input at a time, one-shot replies, and generation-counted timers armed
// through the injected `EngineEnvironment`.

/// Inputs handled one at a time, in arrival order, by whichever task finds nobody handling
/// them: no task of its own and no hop per input. A task that arrives while another
/// drains leaves its input and returns at once.
public final class Mailbox<Input: Sendable>: Sendable {
    private let state = Mutex<(queue: [Input], head: Int, draining: Bool)>(([], 0, false))

    public init() {}

    /// Queues `input`; if nobody is draining, drains the queue through `handle`, each
    /// input's handling finished before the next begins.
    public func deliver(_ input: Input, to handle: (Input) async -> Void) async {
        let drain = state.withLock { s -> Bool in
            s.queue.append(input)
            guard !s.draining else { return false }
            s.draining = true
            return true
        }
        guard drain else { return }
        while let next = state.withLock({ s -> Input? in
            guard s.head < s.queue.count else {
                s.queue.removeAll(keepingCapacity: true)
                s.head = 0
                s.draining = false
                return nil
            }
            defer { s.head += 1 }
            return s.queue[s.head]
        }) {
            await handle(next)
        }
    }
}

/// A value set once (a second `set` is ignored) and awaited: the answer to one request.
public final class OneShot<Value: Sendable>: Sendable {
    private let slot = Mutex<(value: Value?, waiter: CheckedContinuation<Value, Never>?)>((nil, nil))

    public init() {}

    public func set(_ value: Value) {
        let waiter = slot.withLock { s -> CheckedContinuation<Value, Never>? in
            guard s.value == nil else { return nil }
            s.value = value
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: value)
    }

    public var isSet: Bool { slot.withLock { $0.value != nil } }

    /// The value, once set (by one awaiting task).
    public func value() async -> Value {
        await withCheckedContinuation { waiter in
            let ready = slot.withLock { s -> Value? in
                if let value = s.value { return value }
                s.waiter = waiter
                return nil
            }
            if let ready { waiter.resume(returning: ready) }
        }
    }
}

/// Timers by key, at most one armed per key. A timer's firing calls its body only if the
/// timer is still the armed one: a cancel or a re-arm that races with the firing wins.
/// Once closed (the machine finished or halted) nothing is armed any more.
public final class Timers<Key: Hashable & Sendable>: Sendable {
    private struct Armed {
        var call: ScheduledCall
        var generation: UInt64
    }

    private let environment: any EngineEnvironment
    private let state = Mutex<(armed: [Key: Armed], generation: UInt64, closed: Bool)>(([:], 0, false))

    public init(environment: any EngineEnvironment) {
        self.environment = environment
    }

    /// Arms `key` to call `fire` after `delay`, replacing the timer armed for it.
    public func arm(_ key: Key, after delay: Duration, fire: @escaping @Sendable () -> Void) {
        let environment = environment
        // Armed under the lock, so that its firing (which takes the lock) finds it.
        let replaced = state.withLock { s -> ScheduledCall? in
            guard !s.closed else { return nil }
            s.generation += 1
            let generation = s.generation
            let call = environment.schedule(after: delay) { [weak self] in
                if self?.take(key, generation: generation) == true { fire() }
            }
            return s.armed.updateValue(Armed(call: call, generation: generation), forKey: key)?.call
        }
        replaced?.cancel()
    }

    public func cancel(_ key: Key) {
        state.withLock { $0.armed.removeValue(forKey: key) }?.call.cancel()
    }

    /// Cancels and returns the armed keys `matching`, to fire them now.
    public func take(matching: (Key) -> Bool) -> [Key] {
        let taken = state.withLock { s -> [(Key, ScheduledCall)] in
            let keys = s.armed.keys.filter(matching)
            return keys.compactMap { key in s.armed.removeValue(forKey: key).map { (key, $0.call) } }
        }
        taken.forEach { $0.1.cancel() }
        return taken.map(\.0)
    }

    /// Cancels every timer and arms none from now on.
    public func close() {
        let calls = state.withLock { s -> [ScheduledCall] in
            s.closed = true
            defer { s.armed = [:] }
            return s.armed.values.map(\.call)
        }
        calls.forEach { $0.cancel() }
    }

    private func take(_ key: Key, generation: UInt64) -> Bool {
        state.withLock { s in
            guard s.armed[key]?.generation == generation else { return false }
            s.armed[key] = nil
            return true
        }
    }
}
