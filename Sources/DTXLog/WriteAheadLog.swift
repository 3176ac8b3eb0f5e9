/// DTXLog: the coordinator's durable write-ahead log.
///
/// Records are appended lazily or forced. A forced append returns only once its bytes
/// are on disk; concurrent forced appends share one `fdatasync` (group commit). All
/// writes and syncs run on one dedicated thread, never on Swift's cooperative pool.
/// Opening replays the directory, truncates a torn tail and refuses corruption;
/// `checkpoint` copies live records forward so restart cost follows live state.
/// The on-disk format is described in `LogFormat`.
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

public final class WriteAheadLog: Sendable {
    public struct Configuration: Sendable {
        /// Size each new segment is preallocated to.
        public var segmentSize: Int

        /// Group commit window: when the previous sync covered more than one forced
        /// append (there is concurrency), the flusher waits up to this long for more
        /// forced appends before it syncs, so that one fdatasync covers more of them.
        /// Zero syncs at once. A lone committer never waits.
        public var groupCommitDelay: Duration
        /// The window closes early once this many appends wait for the sync.
        public var groupCommitTarget: Int

        public init(segmentSize: Int = 64 << 20, groupCommitDelay: Duration = .zero, groupCommitTarget: Int = 64) {
            self.segmentSize = segmentSize
            self.groupCommitDelay = groupCommitDelay
            self.groupCommitTarget = groupCommitTarget
        }

        /// The largest payload a record can carry with this segment size.
        public var maxPayloadSize: Int {
            segmentSize - LogFormat.segmentHeaderSize - LogFormat.alignedSize(LogFormat.frameHeaderSize)
        }
    }

    /// What opening found and did.
    public struct Recovery: Sendable {
        /// Every record, in LSN order, checkpoint copies collapsed.
        public var records: [LogRecord]
        /// Where a torn tail was cut off, if one was.
        public var truncatedTail: (file: String, offset: Int)?
        /// Removed leftovers: of an interrupted segment creation, and a spare segment
        /// never switched to.
        public var removedFiles: [String]
    }

    public struct Statistics: Sendable, Equatable {
        public var appends: UInt64 = 0
        public var forcedAppends: UInt64 = 0
        public var fsyncs: UInt64 = 0
        /// The most forced appends one fdatasync has released.
        public var largestGroupSize: Int = 0
        public var bytesWritten: UInt64 = 0
        /// Segments the log switched to.
        public var segmentSwitches: UInt64 = 0
        /// Switches that found no spare ready: the flusher, and the forced appends behind
        /// it, waited for the one in preparation or created the segment itself.
        public var switchesWithoutSpare: UInt64 = 0
        /// The longest a switch held the flusher (seal, header or creation), in nanoseconds.
        public var slowestSwitchNanoseconds: UInt64 = 0
        /// Checkpoints that deleted their old segments.
        public var checkpoints: UInt64 = 0
    }

    public struct CheckpointResult: Sendable, Equatable {
        public var segmentsRemoved: Int
        public var recordsRead: Int
        public var recordsKept: Int
    }

    public let directory: String
    private let core: LogCore

    private init(directory: String, core: LogCore) {
        self.directory = directory
        self.core = core
    }

    deinit {
        core.requestStop()
    }

    /// Opens (creating if needed) the log in `directory` and takes its lock.
    /// Throws `LogError.directoryInUse` when another opener holds it and
    /// `LogError.corrupt` (naming file and offset) when the log is damaged beyond a torn tail.
    public static func open(directory: String, configuration: Configuration = .init()) throws -> (log: WriteAheadLog, recovery: Recovery) {
        guard configuration.segmentSize >= 4096, configuration.segmentSize % LogFormat.alignment == 0 else {
            throw LogError.invalidConfiguration("segment size must be a multiple of 8 and at least 4096 bytes, not \(configuration.segmentSize)")
        }
        let existed = System.exists(directory)
        try System.makeDirectory(directory)
        if !existed { try System.fsyncDirectory(System.parentDirectory(of: directory)) }
        let lock = try DirectoryLock(directory: directory)
        do {
            let scan = try LogScan.read(directory: directory)
            if case let .corrupt(file, offset, reason) = scan.status {
                throw LogError.corrupt(file: file, offset: offset, reason: reason)
            }
            let leftovers = scan.temporaryFiles + scan.spares
            for file in leftovers { try System.unlink(file) }
            if !leftovers.isEmpty { try System.fsyncDirectory(directory) }
            let tail = try prepareTail(scan: scan, configuration: configuration)
            var truncated: (String, Int)?
            if case let .tornTail(file, offset) = scan.status { truncated = (file, offset) }
            let core = LogCore(directory: directory, configuration: configuration, lock: lock, tail: tail)
            core.startFlusher()
            let recovery = Recovery(records: scan.replayRecords, truncatedTail: truncated, removedFiles: leftovers)
            return (WriteAheadLog(directory: directory, core: core), recovery)
        } catch {
            lock.release()
            throw error
        }
    }

    /// Makes the newest segment ready for appends: cuts a torn tail, restores a torn
    /// header, creates the first segment of an empty directory.
    private static func prepareTail(scan: LogScan, configuration: Configuration) throws -> LogCore.Tail {
        guard let newest = scan.segments.last, newest.headerValid else {
            let sequence = scan.segments.last?.sequence ?? 0
            let fd = try createSegment(directory: scan.directory, sequence: sequence, firstLSN: scan.nextLSN, size: configuration.segmentSize, replacing: scan.segments.last != nil)
            return LogCore.Tail(fd: fd, path: scan.directory + "/" + LogFormat.segmentFileName(sequence), sequence: sequence,
                                offset: LogFormat.segmentHeaderSize, capacity: configuration.segmentSize,
                                oldestSequence: scan.segments.first?.sequence ?? sequence, nextLSN: scan.nextLSN)
        }
        let fd = try System.open(newest.path, O_RDWR)
        do {
            let capacity = max(newest.fileSize, configuration.segmentSize)
            if case .tornTail = scan.status {
                try System.truncate(fd, size: newest.end, path: newest.path)
            }
            try System.preallocate(fd, size: capacity, path: newest.path)
            try System.fdatasync(fd, path: newest.path)
            return LogCore.Tail(fd: fd, path: newest.path, sequence: newest.sequence, offset: newest.end, capacity: capacity,
                                oldestSequence: scan.segments[0].sequence, nextLSN: scan.nextLSN)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Creates a segment durably: header and preallocation in a temporary file, synced,
    /// renamed into place, directory synced. Returns a descriptor open for writing.
    /// Without `firstLSN` it gets a spare header (see `LogScan.spares`).
    static func createSegment(directory: String, sequence: UInt64, firstLSN: UInt64?, size: Int, replacing: Bool = false) throws -> Int32 {
        let path = directory + "/" + LogFormat.segmentFileName(sequence)
        let temporary = path + ".tmp"
        if System.exists(temporary) { try System.unlink(temporary) }
        let fd = try System.open(temporary, O_RDWR | O_CREAT | O_EXCL)
        do {
            try System.preallocate(fd, size: size, path: temporary)
            let header = firstLSN.map { LogFormat.encodeSegmentHeader(sequence: sequence, firstLSN: $0) } ?? LogFormat.encodeSpareHeader(sequence: sequence)
            try header.withUnsafeBytes { try System.pwriteAll(fd, $0, at: 0, path: temporary) }
            try System.fsync(fd, path: temporary)
            if !replacing, System.exists(path) {
                throw LogError.io(operation: "create segment", path: path, errno: EEXIST)
            }
            try System.rename(temporary, path)
            try System.fsyncDirectory(directory)
            return fd
        } catch {
            Glibc.close(fd)
            _ = Glibc.unlink(temporary)
            throw error
        }
    }

    /// Appends a record without waiting for it to reach the disk. It becomes durable
    /// with the next forced append or `sync()`; the flusher writes it out within a few
    /// milliseconds. Returns its LSN.
    @discardableResult
    public func append(type: UInt16, payload: [UInt8]) throws -> UInt64 {
        try core.enqueue(type: type, flags: 0, originalLSN: nil, payload: payload, forced: false).lsn
    }

    /// Appends a record; when `forced`, returns only once it (and everything before it)
    /// is durable.
    @discardableResult
    public func append(type: UInt16, payload: [UInt8], forced: Bool) async throws -> UInt64 {
        guard forced else { return try append(type: type, payload: payload) }
        return try await withCheckedThrowingContinuation { continuation in
            core.enqueueForced(type: type, payload: payload, continuation: continuation)
        }
    }

    /// Returns once every record appended so far is durable.
    public func sync() async throws {
        try await core.waitDurable(ticket: nil)
    }

    public var statistics: Statistics { core.statistics }

    /// The LSN the next appended record will get.
    public var nextLSN: UInt64 { core.nextLSN }

    /// Copies the records for which `keep` returns true forward into a new segment and
    /// deletes every older segment. `keep` must answer false only for records it knows
    /// are obsolete (e.g. of an ended transaction): anything it drops is gone.
    /// A crash at any point leaves either the old segments or the copies (or both,
    /// which replay collapses).
    ///
    /// Reading the old segments (one at a time), `keep`, and deleting them run on the
    /// log's background thread (`BackgroundWorker`): a forced append waits for none of
    /// it. The copies are appended a slice (`checkpointSlice` bytes) at a time, each slice
    /// made durable before the next, so a group commit carries at most one slice of them.
    public func checkpoint(keep: @escaping @Sendable (LogRecord) throws -> Bool) async throws -> CheckpointResult {
        guard let (boundary, oldest, ticket) = try core.beginCheckpoint() else {
            return CheckpointResult(segmentsRemoved: 0, recordsRead: 0, recordsKept: 0)
        }
        defer { core.endCheckpoint() }
        try await core.waitDurable(ticket: ticket)

        let directory = directory
        let worker = core.checkpointWorker
        var read = 0, kept = 0, slice = 0
        let seen = Mutex(Set<UInt64>())
        for sequence in oldest..<boundary {
            let path = directory + "/" + LogFormat.segmentFileName(sequence)
            let (count, records) = try await worker.run { () throws -> (Int, [LogRecord]) in
                let located = try LogScan.readSealedSegment(path: path, sequence: sequence)
                let records = try located.lazy.map(\.record).filter { record in
                    try seen.withLock { $0.insert(record.lsn).inserted } && keep(record)
                }
                return (located.count, records)
            }
            read += count
            for record in records {
                let (_, copied) = try core.enqueue(type: record.type, flags: LogFormat.flagRewritten, originalLSN: record.lsn,
                                                   payload: record.payload, forced: false)
                kept += 1
                slice += LogFormat.frameSize(payloadCount: record.payload.count)
                if slice >= Self.checkpointSlice {
                    try await core.waitDurable(ticket: copied)
                    slice = 0
                }
            }
        }
        try await core.waitDurable(ticket: nil)
        try await worker.run {
            for sequence in oldest..<boundary {
                try System.unlink(directory + "/" + LogFormat.segmentFileName(sequence))
            }
            try System.fsyncDirectory(directory)
        }
        core.segmentsRemoved(upTo: boundary)
        return CheckpointResult(segmentsRemoved: Int(boundary - oldest), recordsRead: read, recordsKept: kept)
    }

    /// Bytes of checkpoint copies one group commit carries at most. 16 KiB rather than
    /// 64: the slowest 100 ms windows of `dtx-bench wal --timeline` fall inside
    /// checkpoints, and rose from 47-55 % of the median to 60-69 % (INTERNALS.md).
    static let checkpointSlice = 16 << 10

    /// Writes and syncs everything appended, stops the flusher and the background threads
    /// and releases the directory lock. Appends after this throw `LogError.closed`.
    public func close() async throws {
        try await core.close()
    }
}
extension LogScan {
    /// The records of a segment that a rotation has sealed; any flaw is corruption.
    static func readSealedSegment(path: String, sequence: UInt64) throws -> [LocatedRecord] {
        let bytes = try System.readFile(path)
        var scan = LogScan(directory: System.parentDirectory(of: path), status: .intact, segments: [], records: [], nextLSN: 1, temporaryFiles: [])
        let ok = bytes.withUnsafeBytes { scan.readSegment($0, sequence: sequence, path: path, isFirst: true, isNewest: false) }
        if !ok, case let .corrupt(file, offset, reason) = scan.status {
            throw LogError.corrupt(file: file, offset: offset, reason: reason)
        }
        return scan.records
    }
}
