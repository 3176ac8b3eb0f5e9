import DTXCoordinator
import DTXCore
import Foundation
import Logging
import Metrics
import Synchronization

/// Writes the node's transaction records to the store, in batches: every record
/// appended while a batch commits goes into the next one, so the forced writes of
/// concurrent transactions share one store commit (group commit) and lazy records ride
/// along (or go within `lazyDelay`). The store writes a batch only for the shards this
/// node still owns at the epoch it acquired them (`ClusterStore.write`). Records of a
/// shard found moved on are fenced: not written, and their waiters told so.
final class RecordWriter: Sendable {
    private struct Waiter {
        var shard: Int
        var epoch: Int64
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var pending: [StoreRecord] = []
        var waiters: [Waiter] = []
        var idle: CheckedContinuation<Void, Never>?
        var nextSeq: Int64 = 1
        var closed = false
        /// Lazy records have waited `lazyDelay`: the next batch takes them with no waiter.
        var lazyDue = false
        var lastBatchWaiters = 0
        /// (shard, epoch) pairs a batch found fenced: a later flush for them fails too.
        var fenced: Set<ShardEpoch> = []
        var statistics = Statistics()

        mutating func takeIdle() -> CheckedContinuation<Void, Never>? {
            defer { idle = nil }
            return idle
        }
    }

    struct Statistics: Sendable {
        var commits = 0
        var records = 0
        var forcedWaits = 0
        var fencedBatches = 0
        var failedBatches = 0
    }

    /// The time of each batch's PostgreSQL commit (`/metrics`: a histogram).
    static let commitTimerLabel = "dtx_store_commit_duration_seconds"
    private let commitTimer = Metrics.Timer(label: RecordWriter.commitTimerLabel)

    private let store: any ClusterStore
    private let environment: any EngineEnvironment
    private let node: String
    /// Names this process's records (with `seq`): a batch repeated after a lost
    /// connection inserts nothing twice.
    private let writer: String
    private let lease: NodeLease
    private let lazyDelay: Duration
    private let groupDelay: Duration
    private let onFenced: @Sendable (Set<ShardEpoch>) -> Void
    private let logger: Logger
    private let state = Mutex(State())

    init(store: any ClusterStore, environment: any EngineEnvironment, node: String, writer: String, lease: NodeLease, lazyDelay: Duration, groupDelay: Duration,
         onFenced: @escaping @Sendable (Set<ShardEpoch>) -> Void, logger: Logger) {
        self.groupDelay = groupDelay
        self.store = store
        self.environment = environment
        self.node = node
        self.writer = writer
        self.lease = lease
        self.lazyDelay = lazyDelay
        self.onFenced = onFenced
        self.logger = logger
    }

    var statistics: Statistics { state.withLock { $0.statistics } }

    /// Queues a record; returns its sequence number. Durable with the next flush.
    func append(shard: Int, epoch: Int64, gid: String, type: UInt16, payload: String) -> Int64 {
        state.withLock { s in
            defer { s.nextSeq += 1 }
            s.pending.append(StoreRecord(shard: shard, epoch: epoch, gid: gid, type: type, payload: payload, seq: s.nextSeq))
            return s.nextSeq
        }
    }

    /// Returns once every record appended before the call is written; throws
    /// `StoreError.fenced` when the shard's records were refused (it moved to another
    /// node) or could not be written while this node's lease held.
    func flush(shard: Int, epoch: Int64) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let (closed, wake) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
                if s.closed { return (true, nil) }
                s.waiters.append(Waiter(shard: shard, epoch: epoch, continuation: continuation))
                s.statistics.forcedWaits += 1
                return (false, s.takeIdle())
            }
            if closed { continuation.resume(throwing: StoreError.fenced("the node's store writer is closed")) }
            wake?.resume()
        }
    }

    /// Writes batches until `close`.
    func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.flushLazyRecords() }
            while let (batch, waiters) = await nextBatch() {
                await write(batch, waiters)
            }
            group.cancelAll()
        }
    }

    /// The process died: what is queued is lost, its waiters are told so, and nothing
    /// more is written.
    func abandon() {
        let (waiters, wake) = state.withLock { s in
            s.closed = true
            s.pending = []
            defer { s.waiters = [] }
            return (s.waiters, s.takeIdle())
        }
        for waiter in waiters { waiter.continuation.resume(throwing: StoreError.fenced("the node crashed")) }
        wake?.resume()
    }

    /// Refuses further flushes once what is queued is written.
    func close() {
        let wake = state.withLock { s in
            s.closed = true
            return s.takeIdle()
        }
        wake?.resume()
    }

    private func nextBatch() async -> ([StoreRecord], [Waiter])? {
        // While others are committing too (the last batch carried several forced writes),
        // a forced write waits `groupDelay` for more to share its commit, as the log's
        // group commit does.
        if groupDelay > .zero, state.withLock({ $0.lastBatchWaiters > 1 && !$0.closed }) {
            try? await environment.sleep(for: groupDelay)
        }
        while true {
            let taken: ([StoreRecord], [Waiter])?? = state.withLock { s in
                if !s.waiters.isEmpty || ((s.closed || s.lazyDue) && !s.pending.isEmpty) {
                    defer { s.pending = []; s.waiters = []; s.lazyDue = false }
                    s.lastBatchWaiters = s.waiters.count
                    return (s.pending, s.waiters)
                }
                return s.closed ? .some(nil) : nil
            }
            if let taken { return taken }
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s in
                    if !s.waiters.isEmpty || s.closed || (s.lazyDue && !s.pending.isEmpty) { return true }
                    s.idle = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        }
    }

    /// Lazy records wait at most `lazyDelay` for a forced write to carry them.
    private func flushLazyRecords() async {
        while !Task.isCancelled {
            try? await environment.sleep(for: lazyDelay)
            let wake = state.withLock { s -> CheckedContinuation<Void, Never>? in
                guard !s.pending.isEmpty else { return nil }
                s.lazyDue = true
                return s.takeIdle()
            }
            wake?.resume()
        }
    }

    private func write(_ batch: [StoreRecord], _ waiters: [Waiter]) async {
        var failure: (any Error)?
        var refused: Set<ShardEpoch> = []
        if !batch.isEmpty {
            switch await commit(batch) {
            case .success(let held):
                refused = Set(batch.map { ShardEpoch(shard: $0.shard, epoch: $0.epoch) }).subtracting(held)
            case .failure(let error):
                failure = error
                refused = Set(batch.map { ShardEpoch(shard: $0.shard, epoch: $0.epoch) })
            }
        }
        let fenced = state.withLock { s in
            s.fenced.formUnion(refused)
            if failure != nil { s.statistics.failedBatches += 1 } else if !refused.isEmpty { s.statistics.fencedBatches += 1 }
            return s.fenced
        }
        for waiter in waiters {
            if fenced.contains(ShardEpoch(shard: waiter.shard, epoch: waiter.epoch)) {
                let why = failure.map { "the store could not be written while this node's lease held: \($0)" }
                    ?? "shard \(waiter.shard) moved to another node (its epoch is past \(waiter.epoch))"
                waiter.continuation.resume(throwing: StoreError.fenced(why))
            } else {
                waiter.continuation.resume()
            }
        }
        if !refused.isEmpty { onFenced(refused) }
    }

    /// One store commit; repeated after a lost connection while the lease holds.
    private func commit(_ batch: [StoreRecord]) async -> Result<Set<ShardEpoch>, any Error> {
        var attempt = 0
        while true {
            let started = environment.monotonicNow()
            do {
                let held = try await store.write(batch, node: node, writer: writer)
                commitTimer.recordSeconds((environment.monotonicNow() - started).apiSeconds)
                state.withLock { s in
                    s.statistics.commits += 1
                    s.statistics.records += batch.count
                }
                return .success(held)
            } catch let error as ClusterStoreError {
                attempt += 1
                guard lease.isValid else { return .failure(error) }
                if attempt == 1 || attempt % 20 == 0 {
                    logger.warning("the store is unreachable; retrying the batch while the lease holds", metadata: ["error": "\(error)", "records": "\(batch.count)"])
                }
                try? await environment.sleep(for: .milliseconds(min(50 * attempt, 250)))
            } catch {
                logger.error("a batch of records was refused by the store", metadata: ["error": "\(error)", "records": "\(batch.count)"])
                return .failure(error)
            }
        }
    }
}
