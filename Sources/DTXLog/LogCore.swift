#if canImport(Glibc)
import Glibc
#endif

/// The shared state of an open log and its flusher thread.
///
/// Appenders encode frames into `pending` under `lock` and take a ticket (a counter
/// of everything enqueued). The flusher thread takes the whole pending batch, writes
/// it, and — when a forced append or `sync` is waiting — issues one `fdatasync` that
/// makes every ticket in the batch durable, then resumes all covered waiters at once.
///
/// The next segment is prepared ahead of need by a worker of its own (a spare: created,
/// preallocated and made durable with a spare header), so a switch costs the flusher one
/// `fdatasync` sealing the full segment and a 64-byte header write that the next group
/// commit syncs with the first records.
final class LogCore: @unchecked Sendable {
    // Safe: every mutable stored property below is touched only with `lock` held,
    // except those marked "flusher only", which only the flusher thread touches
    // (and `open` before the thread starts).

    struct Tail {
        var fd: Int32
        var path: String
        var sequence: UInt64
        var offset: Int
        var capacity: Int
        var oldestSequence: UInt64
        var nextLSN: UInt64
    }

    /// Bytes for one segment, contiguous from `offset`. `createWithFirstLSN` asks the
    /// flusher to seal the previous segment and create this one first.
    private struct Chunk {
        var sequence: UInt64
        var offset: Int
        var createWithFirstLSN: UInt64?
        var bytes: [UInt8]
    }

    private struct Waiter {
        var ticket: UInt64
        var lsn: UInt64
        var continuation: CheckedContinuation<UInt64, Error>
    }

    private enum State { case open, closing, closed }

    /// Lazy data is written once this much has gathered, or within `lazyDelayNanos`.
    private static let lazyWriteThreshold = 256 << 10
    private static let lazyDelayNanos = 5_000_000
    private static let idleWaitNanos = 1_000_000_000

    let directory: String
    private let segmentSize: Int
    private let groupCommitDelayNanos: UInt64
    private let groupCommitTarget: Int
    private let directoryLock: DirectoryLock
    private let lock = ConditionLock()

    // Guarded by `lock`.
    private var lsnCounter: UInt64
    private var tailSequence: UInt64
    private var tailOffset: Int
    private var tailCapacity: Int
    private var oldestSequence: UInt64
    private var pending: [Chunk] = []
    private var pendingBytes = 0
    private var enqueuedTicket: UInt64 = 0
    private var durableTicket: UInt64 = 0
    private var syncRequestedTicket: UInt64 = 0
    private var waiters: [Waiter] = []
    private var failure: LogError?
    private var state = State.open
    private var closeWaiters: [CheckedContinuation<Void, Error>] = []
    private var checkpointRunning = false
    private var stats = WriteAheadLog.Statistics()
    /// The next segment, ready, and the one being prepared.
    private var spare: (sequence: UInt64, fd: Int32)?
    private var sparePreparing: UInt64?

    // Flusher only.
    private var currentFD: Int32
    private var currentPath: String
    private var currentSequence: UInt64

    /// Prepares spares, so that neither the flusher nor an appender ever waits for a
    /// segment's creation (unless it fills one faster than the disk can prepare one).
    /// Not niced: its work is a few syscalls, and a flusher may wait for it.
    private let spareWorker = BackgroundWorker(named: "log spare", niceness: 0)
    /// Runs checkpoints' reading, filtering and deleting (`WriteAheadLog.checkpoint`).
    let checkpointWorker = BackgroundWorker(named: "log checkpoint")

    init(directory: String, configuration: WriteAheadLog.Configuration, lock: DirectoryLock, tail: Tail) {
        self.directory = directory
        self.segmentSize = configuration.segmentSize
        let (seconds, attoseconds) = configuration.groupCommitDelay.components
        self.groupCommitDelayNanos = UInt64(max(0, seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
        self.groupCommitTarget = max(1, configuration.groupCommitTarget)
        self.directoryLock = lock
        self.lsnCounter = tail.nextLSN
        self.tailSequence = tail.sequence
        self.tailOffset = tail.offset
        self.tailCapacity = tail.capacity
        self.oldestSequence = tail.oldestSequence
        self.currentFD = tail.fd
        self.currentPath = tail.path
        self.currentSequence = tail.sequence
    }

    var nextLSN: UInt64 { lock.withLock { lsnCounter } }
    var statistics: WriteAheadLog.Statistics { lock.withLock { stats } }

    // MARK: Appending

    /// Enqueues one frame; `originalLSN` is set for checkpoint copies. Call with `lock` not held.
    func enqueue(type: UInt16, flags: UInt16, originalLSN: UInt64?, payload: [UInt8], forced: Bool) throws -> (lsn: UInt64, ticket: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        return try enqueueLocked(type: type, flags: flags, originalLSN: originalLSN, payload: payload, forced: forced)
    }

    func enqueueForced(type: UInt16, payload: [UInt8], continuation: CheckedContinuation<UInt64, Error>) {
        lock.lock()
        do {
            let (lsn, ticket) = try enqueueLocked(type: type, flags: 0, originalLSN: nil, payload: payload, forced: true)
            waiters.append(Waiter(ticket: ticket, lsn: lsn, continuation: continuation))
            lock.unlock()
        } catch {
            lock.unlock()
            continuation.resume(throwing: error)
        }
    }

    private func enqueueLocked(type: UInt16, flags: UInt16, originalLSN: UInt64?, payload: [UInt8], forced: Bool) throws -> (lsn: UInt64, ticket: UInt64) {
        if let failure { throw failure }
        guard state == .open else { throw LogError.closed }
        let size = LogFormat.frameSize(payloadCount: payload.count)
        let limit = segmentSize - LogFormat.segmentHeaderSize
        guard size <= limit else { throw LogError.recordTooLarge(size: payload.count, limit: limit - LogFormat.frameHeaderSize) }
        if tailOffset + size > tailCapacity { rotateLocked() }
        let lsn: UInt64
        if let originalLSN {
            lsn = originalLSN
        } else {
            lsn = lsnCounter
            lsnCounter += 1
        }
        if pending.last?.sequence != tailSequence {
            pending.append(Chunk(sequence: tailSequence, offset: tailOffset, createWithFirstLSN: nil, bytes: []))
        }
        payload.withUnsafeBytes { raw in
            LogFormat.appendFrame(to: &pending[pending.count - 1].bytes, lsn: lsn, type: type, flags: flags, payload: raw)
        }
        tailOffset += size
        pendingBytes += size
        enqueuedTicket += 1
        stats.appends += 1
        if forced {
            stats.forcedAppends += 1
            syncRequestedTicket = enqueuedTicket
            lock.signal()
        } else if pendingBytes == size || pendingBytes >= Self.lazyWriteThreshold {
            // The first lazy frame starts the flusher's short delay; a large batch
            // is written at once.
            lock.signal()
        }
        return (lsn, enqueuedTicket)
    }

    private func rotateLocked() {
        tailSequence += 1
        tailOffset = LogFormat.segmentHeaderSize
        tailCapacity = segmentSize
        pending.append(Chunk(sequence: tailSequence, offset: tailOffset, createWithFirstLSN: lsnCounter, bytes: []))
        enqueuedTicket += 1
    }

    /// Waits until `ticket` (default: everything enqueued so far) is durable.
    func waitDurable(ticket: UInt64?) async throws {
        _ = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<UInt64, Error>) in
            lock.lock()
            let target = ticket ?? enqueuedTicket
            if durableTicket >= target {
                lock.unlock()
                continuation.resume(returning: 0)
            } else if failure != nil || state == .closed {
                let error = failure ?? .closed
                lock.unlock()
                continuation.resume(throwing: error)
            } else {
                syncRequestedTicket = max(syncRequestedTicket, target)
                // Keep waiters ordered by ticket: a sync may ask for less than the newest.
                let index = waiters.lastIndex { $0.ticket <= target }.map { $0 + 1 } ?? 0
                waiters.insert(Waiter(ticket: target, lsn: 0, continuation: continuation), at: index)
                lock.signal()
                lock.unlock()
            }
        }
    }

    // MARK: Checkpoint support

    /// Seals the current segment by rotating. Returns the first segment the checkpoint
    /// keeps, the oldest one it may delete and the ticket covering the rotation; nil
    /// when there is nothing to compact.
    func beginCheckpoint() throws -> (boundary: UInt64, oldest: UInt64, ticket: UInt64)? {
        try lock.withLock {
            if let failure { throw failure }
            guard state == .open else { throw LogError.closed }
            guard !checkpointRunning else { throw LogError.checkpointInProgress }
            if tailSequence == oldestSequence, tailOffset == LogFormat.segmentHeaderSize { return nil }
            checkpointRunning = true
            if tailOffset != LogFormat.segmentHeaderSize { rotateLocked() }
            syncRequestedTicket = max(syncRequestedTicket, enqueuedTicket)
            lock.signal()
            return (tailSequence, oldestSequence, enqueuedTicket)
        }
    }

    func endCheckpoint() {
        lock.withLock { checkpointRunning = false }
    }

    func segmentsRemoved(upTo boundary: UInt64) {
        lock.withLock {
            oldestSequence = boundary
            stats.checkpoints += 1
        }
    }

    // MARK: Flusher thread

    func startFlusher() {
        lock.withLock { requestSpareLocked(currentSequence + 1) }
        System.startThread(named: "log flusher") { [self] in runFlusher() }
    }

    private func runFlusher() {
        lock.lock()
        var lazyWaited = false
        /// Forced appends the previous sync covered: more than one means concurrency.
        var previousGroup = 0
        /// When the current sync was first wanted (0: not yet), for the group commit window.
        var syncWantedAt: UInt64 = 0
        while true {
            let mustSync = syncRequestedTicket > durableTicket
            if mustSync && state == .open && groupCommitDelayNanos > 0 && previousGroup > 1 && waiters.count < groupCommitTarget {
                let now = System.monotonicNanoseconds()
                if syncWantedAt == 0 { syncWantedAt = now }
                let elapsed = now - syncWantedAt
                if elapsed < groupCommitDelayNanos {
                    lock.wait(nanoseconds: Int(groupCommitDelayNanos - elapsed))
                    continue
                }
            }
            if !mustSync && state == .open {
                if pending.isEmpty {
                    lazyWaited = false
                    lock.wait(nanoseconds: Self.idleWaitNanos)
                    continue
                }
                if !lazyWaited && pendingBytes < Self.lazyWriteThreshold {
                    lazyWaited = true
                    lock.wait(nanoseconds: Self.lazyDelayNanos)
                    continue
                }
            }
            lazyWaited = false
            if pending.isEmpty && !mustSync {
                break  // closing, and everything is written and synced
            }
            let batch = pending
            pending = []
            pendingBytes = 0
            let target = enqueuedTicket
            let syncing = mustSync || state != .open
            lock.unlock()

            var outcome: LogError?
            var written = 0
            var switches = 0
            var withoutSpare = 0
            var slowestSwitch: UInt64 = 0
            do {
                for chunk in batch {
                    if let firstLSN = chunk.createWithFirstLSN {
                        let begun = System.monotonicNanoseconds()
                        if try !sealAndSwitch(sequence: chunk.sequence, firstLSN: firstLSN) { withoutSpare += 1 }
                        slowestSwitch = max(slowestSwitch, System.monotonicNanoseconds() - begun)
                        switches += 1
                    }
                    try chunk.bytes.withUnsafeBytes { try System.pwriteAll(currentFD, $0, at: chunk.offset, path: currentPath) }
                    written += chunk.bytes.count
                }
                if syncing { try System.fdatasync(currentFD, path: currentPath) }
            } catch let error as LogError {
                outcome = error
            } catch {
                outcome = .failed("\(error)")
            }

            lock.lock()
            stats.bytesWritten += UInt64(written)
            stats.segmentSwitches += UInt64(switches)
            stats.switchesWithoutSpare += UInt64(withoutSpare)
            stats.slowestSwitchNanoseconds = max(stats.slowestSwitchNanoseconds, slowestSwitch)
            var resumed: [Waiter] = []
            if let outcome {
                // After a failed write or fsync the page cache can no longer be trusted:
                // fail every waiter and every later append.
                failure = .failed(outcome.description)
                resumed = waiters
                waiters = []
            } else if syncing {
                stats.fsyncs += 1
                durableTicket = target
                let covered = waiters.prefix { $0.ticket <= target }.count
                resumed = Array(waiters.prefix(covered))
                waiters.removeFirst(covered)
                // Sync waiters carry LSN 0; only forced appends count as the group.
                let group = resumed.reduce(0) { $0 + ($1.lsn != 0 ? 1 : 0) }
                stats.largestGroupSize = max(stats.largestGroupSize, group)
                previousGroup = group
                syncWantedAt = 0
            }
            if !resumed.isEmpty {
                let error = failure
                lock.unlock()
                for waiter in resumed {
                    if let error { waiter.continuation.resume(throwing: error) } else { waiter.continuation.resume(returning: waiter.lsn) }
                }
                lock.lock()
            }
            if failure != nil { break }
        }
        // Closing (or failed): release the directory and wake whoever waits.
        let remaining = waiters
        waiters = []
        let closers = closeWaiters
        closeWaiters = []
        let error = failure
        state = .closed
        lock.unlock()

        // Nothing of the workers may touch the directory once another opener can take it:
        // a checkpoint's deleting ends first. The spare is not needed: remove it, so that
        // a closed log is only its segments (an open after a crash removes a leftover one
        // the same way).
        checkpointWorker.stopAndWait()
        spareWorker.stopAndWait()
        if let spare = lock.withLock({ spare }) {
            Glibc.close(spare.fd)
            _ = Glibc.unlink(directory + "/" + LogFormat.segmentFileName(spare.sequence))
        }
        Glibc.close(currentFD)
        directoryLock.release()
        for waiter in remaining { waiter.continuation.resume(throwing: error ?? LogError.closed) }
        for closer in closers {
            if let error { closer.resume(throwing: error) } else { closer.resume() }
        }
    }

    /// Flusher only: syncs the current segment (so no older segment ever has an
    /// unsynced tail) and switches to the next one: the spare when it is ready (its
    /// header is written now and becomes durable with the batch's sync), else a segment
    /// created here. Returns whether a spare was ready.
    private func sealAndSwitch(sequence: UInt64, firstLSN: UInt64) throws -> Bool {
        try System.fdatasync(currentFD, path: currentPath)
        let path = directory + "/" + LogFormat.segmentFileName(sequence)
        var waited = false
        let ready: Int32? = lock.withLock {
            // One being prepared will be ready sooner than a new one would be.
            while sparePreparing != nil {
                waited = true
                lock.wait(nanoseconds: 10_000_000)
            }
            defer { spare = nil }
            return spare?.fd
        }
        let fd: Int32
        if let ready {
            let header = LogFormat.encodeSegmentHeader(sequence: sequence, firstLSN: firstLSN)
            do {
                try header.withUnsafeBytes { try System.pwriteAll(ready, $0, at: 0, path: path) }
            } catch {
                Glibc.close(ready)
                throw error
            }
            fd = ready
        } else {
            // Only a spare can lie at this name: the flusher alone switches segments.
            fd = try WriteAheadLog.createSegment(directory: directory, sequence: sequence, firstLSN: firstLSN, size: segmentSize, replacing: true)
        }
        Glibc.close(currentFD)
        currentFD = fd
        currentPath = path
        currentSequence = sequence
        lock.withLock { requestSpareLocked(sequence + 1) }
        return ready != nil && !waited
    }

    /// Has the spare worker prepare segment `sequence`. Call with `lock` held.
    private func requestSpareLocked(_ sequence: UInt64) {
        guard state == .open, spare == nil, sparePreparing == nil else { return }
        sparePreparing = sequence
        let queued = spareWorker.submit { [self] in
            // A failure leaves no spare; the flusher then creates the segment itself
            // and reports what fails. A closing log needs none.
            let open = lock.withLock { state == .open }
            let fd = open ? try? WriteAheadLog.createSegment(directory: directory, sequence: sequence, firstLSN: nil, size: segmentSize, replacing: true) : nil
            lock.withLock {
                sparePreparing = nil
                if let fd { spare = (sequence, fd) }
                lock.signal()
            }
        }
        if !queued { sparePreparing = nil }
    }

    // MARK: Closing

    func close() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            lock.lock()
            switch state {
            case .closed:
                lock.unlock()
                continuation.resume()
            case .open, .closing:
                state = .closing
                syncRequestedTicket = max(syncRequestedTicket, enqueuedTicket)
                closeWaiters.append(continuation)
                lock.signal()
                lock.unlock()
            }
        }
    }

    /// Asks the flusher to write, sync and stop without waiting (the log was dropped).
    func requestStop() {
        lock.withLock {
            if state == .open {
                state = .closing
                syncRequestedTicket = max(syncRequestedTicket, enqueuedTicket)
            }
            lock.signal()
        }
    }
}

