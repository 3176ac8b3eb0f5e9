import DTXLog
import Synchronization

/// Where the engine keeps what it must not forget: transactions' records and the
/// participant registry, as typed records with a JSON payload (`LogEntry`,
/// `ParticipantRegistry.RecordType`). The write-ahead log in the data directory is the
/// first implementation (`WALStore`); a store shared by several nodes (PostgreSQL,
/// shards under leases) is the next, and may refuse a forced append as
/// `StoreError.fenced`: another node owns the work now, and the engine stops every
/// driver at once and sends nothing more.
public protocol CoordinatorStore: Sendable {
    /// The records at start, in order (checkpoint copies collapsed): what the engine
    /// replays. Asked once: a store may let them go once handed over.
    func recordsAtStart() -> [LogRecord]

    /// Appends a record that becomes durable with the next forced append or `sync`.
    func append(type: UInt16, payload: [UInt8]) throws

    /// Appends a record and returns once it, and everything appended before it, is
    /// durable. Returns its position, which `recordsAtStart` and `compact` show as the
    /// record's `lsn`.
    @discardableResult
    func appendForced(type: UInt16, payload: [UInt8]) async throws -> UInt64

    /// Returns once everything appended so far is durable.
    func sync() async throws

    /// Keeps the records `keep` answers true for and forgets the rest. `keep` answers
    /// false only for records it knows are obsolete.
    func compact(keep: @escaping @Sendable (LogRecord) throws -> Bool) async throws -> CompactionResult

    /// Grows with every append: compaction skips a store where it has not moved.
    var position: UInt64 { get }

    /// What `/metrics` shows of the store.
    var metrics: [StoreMetric] { get }

    /// Whether this node may still act on what the store holds: write, decide, send. A
    /// shared store answers false once the node's lease could have expired (another
    /// node may be taking its work over); the engine then stops as if fenced.
    var mayAct: Bool { get }
}

extension CoordinatorStore {
    /// A store of this node's own (the log in its data directory) is always its to act on.
    public var mayAct: Bool { true }
}

public enum StoreError: Error, Equatable, CustomStringConvertible {
    /// This node no longer owns what the record is about (its lease was taken over).
    case fenced(String)

    public var description: String {
        switch self {
        case let .fenced(why): "fenced: \(why)"
        }
    }
}

public struct CompactionResult: Sendable, Equatable {
    public var recordsRead: Int
    public var recordsKept: Int
    /// Segments (or the store's own units) freed.
    public var segmentsRemoved: Int

    public init(recordsRead: Int, recordsKept: Int, segmentsRemoved: Int) {
        self.recordsRead = recordsRead
        self.recordsKept = recordsKept
        self.segmentsRemoved = segmentsRemoved
    }
}

/// How a driver that met `StoreError.fenced` tells the coordinator, which then stops
/// every driver at once.
final class FenceSignal: Sendable {
    private let handler = Mutex<StoredFunction<@Sendable () -> Void>?>(nil)

    func onFenced(_ body: @escaping @Sendable () -> Void) {
        handler.withLock { $0 = StoredFunction(body) }
    }

    func raise() {
        handler.withLock { $0 }?.call()
    }
}

/// One gauge of `/metrics`.
public struct StoreMetric: Sendable, Equatable {
    public var name: String
    public var help: String
    public var value: Double

    public init(name: String, help: String, value: Double) {
        self.name = name
        self.help = help
        self.value = value
    }
}

/// The embedded store: the write-ahead log in dtxd's data directory.
public final class WALStore: CoordinatorStore {
    public let log: WriteAheadLog
    /// Handed over once, then let go (they can be many).
    private let records: Mutex<[LogRecord]>

    /// `records`: what opening the log recovered.
    public init(log: WriteAheadLog, records: [LogRecord]) {
        self.log = log
        self.records = Mutex(records)
    }

    public func recordsAtStart() -> [LogRecord] {
        records.withLock { records in
            defer { records = [] }
            return records
        }
    }

    public func append(type: UInt16, payload: [UInt8]) throws {
        try log.append(type: type, payload: payload)
    }

    @discardableResult
    public func appendForced(type: UInt16, payload: [UInt8]) async throws -> UInt64 {
        try await log.append(type: type, payload: payload, forced: true)
    }

    public func sync() async throws {
        try await log.sync()
    }

    public func compact(keep: @escaping @Sendable (LogRecord) throws -> Bool) async throws -> CompactionResult {
        let result = try await log.checkpoint(keep: keep)
        return CompactionResult(recordsRead: result.recordsRead, recordsKept: result.recordsKept, segmentsRemoved: result.segmentsRemoved)
    }

    public var position: UInt64 { log.nextLSN }

    public var metrics: [StoreMetric] {
        let stats = log.statistics
        return [
            StoreMetric(name: "dtx_log_appends", help: "Records appended to the log since start", value: Double(stats.appends)),
            StoreMetric(name: "dtx_log_forced_appends", help: "Forced (durable before return) appends since start", value: Double(stats.forcedAppends)),
            StoreMetric(name: "dtx_log_fsyncs", help: "fdatasync/fsync calls on the log since start", value: Double(stats.fsyncs)),
            StoreMetric(name: "dtx_log_group_commit_largest", help: "Largest number of forced appends covered by one fdatasync", value: Double(stats.largestGroupSize)),
            StoreMetric(name: "dtx_log_segment_switches", help: "Log segments switched to since start", value: Double(stats.segmentSwitches)),
            StoreMetric(name: "dtx_log_switches_without_spare", help: "Segment switches that found no prepared spare and created the segment while commits waited",
                        value: Double(stats.switchesWithoutSpare)),
            StoreMetric(name: "dtx_log_checkpoints", help: "Log checkpoints completed since start", value: Double(stats.checkpoints)),
            StoreMetric(name: "dtx_log_group_commit_average", help: "Forced appends per fdatasync since start",
                        value: stats.fsyncs == 0 ? 0 : Double(stats.forcedAppends) / Double(stats.fsyncs)),
        ]
    }
}

/// A function kept in a `Mutex`. Stored there bare, a closure is converted to and from
/// the lock's generic representation at every `withLock` (its `inout` is written back),
/// and each conversion wraps it in one more thunk: called once per message, the chain
/// grew without end and calls through it took most of a node's CPU. Inside a struct it
/// is stored once, as it is.
public struct StoredFunction<Function: Sendable>: Sendable {
    public let call: Function

    public init(_ call: Function) {
        self.call = call
    }
}
