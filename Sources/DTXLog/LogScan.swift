import Glibc

/// A record as stored: what replay hands to the caller.
public struct LogRecord: Sendable, Equatable {
    public var lsn: UInt64
    public var type: UInt16
    public var payload: [UInt8]

    public init(lsn: UInt64, type: UInt16, payload: [UInt8]) {
        self.lsn = lsn
        self.type = type
        self.payload = payload
    }
}

/// A record together with where it lies, for `dtx wal dump` and checkpoints.
public struct LocatedRecord: Sendable, Equatable {
    public var record: LogRecord
    public var segment: String
    public var offset: Int
    /// Frame size on disk, padding included.
    public var size: Int
    /// True for a copy written forward by a checkpoint (its LSN is the original one).
    public var rewritten: Bool
}

/// The result of reading a log directory without changing it.
public struct LogScan: Sendable {
    public enum Status: Sendable, Equatable {
        case intact
        /// The newest segment ends in a torn write at `offset`, with nothing valid
        /// after it; opening truncates there. Only unacknowledged bytes are lost.
        case tornTail(file: String, offset: Int)
        /// A bad record followed by valid ones, or in an older segment.
        case corrupt(file: String, offset: Int, reason: String)
    }

    public struct Segment: Sendable {
        public var sequence: UInt64
        public var path: String
        public var firstLSN: UInt64
        /// Where the next frame would be written (end of the valid data).
        public var end: Int
        public var fileSize: Int
        /// False when the header itself is torn (only possible for the newest segment).
        public var headerValid: Bool
    }

    public var directory: String
    public var status: Status
    /// Valid segments in order; with a corrupt status, those before the corruption and
    /// the corrupt one itself.
    public var segments: [Segment]
    /// Every valid frame in file order, up to the first bad one.
    public var records: [LocatedRecord]
    /// The LSN the next appended record gets.
    public var nextLSN: UInt64
    /// Leftover `*.wal.tmp` files from a segment creation cut short.
    public var temporaryFiles: [String]
    /// The newest segment files that still carry a spare header: prepared ahead of need
    /// and never switched to durably (a switch writes the segment header, which the sync
    /// acknowledging the first records makes durable; the next segment is switched to
    /// only after this one is sealed). Nothing in them was acknowledged; they are not
    /// `segments`, and opening removes them.
    public var spares: [String] = []

    /// The records in LSN order with checkpoint copies collapsed: what replay sees.
    public var replayRecords: [LogRecord] {
        var seen = Set<UInt64>()
        var result: [LogRecord] = []
        result.reserveCapacity(records.count)
        for located in records where seen.insert(located.record.lsn).inserted {
            result.append(located.record)
        }
        // Checkpoint copies sit after newer records; everything else is already in order.
        if zip(result, result.dropFirst()).contains(where: { $0.lsn > $1.lsn }) {
            result.sort { $0.lsn < $1.lsn }
        }
        return result
    }

    /// Reads every segment of `directory`. Never writes.
    public static func read(directory: String) throws -> LogScan {
        let names = try System.listDirectory(directory)
        var sequences = names.compactMap(LogFormat.segmentSequence(fileName:)).sorted()
        var scan = LogScan(
            directory: directory, status: .intact, segments: [], records: [], nextLSN: 1,
            temporaryFiles: names.filter { $0.hasSuffix(LogFormat.temporarySuffix) }.sorted().map { directory + "/" + $0 }
        )
        while let newest = sequences.last {
            let path = directory + "/" + LogFormat.segmentFileName(newest)
            let head = try System.readPrefix(path, count: LogFormat.segmentHeaderSize)
            guard head.withUnsafeBytes({ LogFormat.isSpareHeader($0, sequence: newest) }) else { break }
            scan.spares.insert(path, at: 0)
            sequences.removeLast()
        }
        for (index, sequence) in sequences.enumerated() {
            let path = directory + "/" + LogFormat.segmentFileName(sequence)
            if index > 0, sequence != sequences[index - 1] + 1 {
                let missing = LogFormat.segmentFileName(sequences[index - 1] + 1)
                scan.status = .corrupt(file: path, offset: 0, reason: "segment \(missing) is missing before it")
                return scan
            }
            let bytes = try System.readFile(path)
            let isNewest = index == sequences.count - 1
            let done = bytes.withUnsafeBytes { raw in
                scan.readSegment(raw, sequence: sequence, path: path, isFirst: index == 0, isNewest: isNewest)
            }
            if !done { return scan }
        }
        return scan
    }

    /// Reads one segment into `self`; returns false once the status is corrupt.
    mutating func readSegment(_ bytes: UnsafeRawBufferPointer, sequence: UInt64, path: String, isFirst: Bool, isNewest: Bool) -> Bool {
        var segment = Segment(sequence: sequence, path: path, firstLSN: nextLSN, end: LogFormat.segmentHeaderSize, fileSize: bytes.count, headerValid: true)
        switch LogFormat.decodeSegmentHeader(bytes) {
        case let .failure(problem):
            // A newest segment whose header is cut or damaged, with nothing valid after
            // it, never held an acknowledged record: it is a torn creation.
            if isNewest, Self.firstValidFrame(bytes, from: LogFormat.segmentHeaderSize) == nil {
                segment.headerValid = false
                segment.end = 0
                segments.append(segment)
                if bytes.contains(where: { $0 != 0 }) { status = .tornTail(file: path, offset: 0) }
                return true
            }
            status = .corrupt(file: path, offset: 0, reason: problem.reason)
            return false
        case let .success(header):
            guard header.sequence == sequence else {
                status = .corrupt(file: path, offset: 16, reason: "header names segment \(header.sequence), not the file's \(sequence)")
                return false
            }
            if !isFirst, header.firstLSN != nextLSN {
                status = .corrupt(file: path, offset: 24, reason: "segment starts at LSN \(header.firstLSN) but the previous one ends before LSN \(nextLSN)")
                return false
            }
            segment.firstLSN = header.firstLSN
            nextLSN = header.firstLSN
        }
        segments.append(segment)

        var offset = LogFormat.segmentHeaderSize
        while true {
            switch LogFormat.decodeFrame(bytes, at: offset) {
            case let .frame(lsn, type, flags, payloadRange, next):
                let rewritten = flags & LogFormat.flagRewritten != 0
                if rewritten ? lsn >= nextLSN : lsn != nextLSN {
                    let expected = rewritten ? "below \(nextLSN)" : "\(nextLSN)"
                    status = .corrupt(file: path, offset: offset, reason: "record has LSN \(lsn) where \(expected) was expected")
                    return false
                }
                let record = LogRecord(lsn: lsn, type: type, payload: Array(bytes[payloadRange]))
                records.append(LocatedRecord(record: record, segment: path, offset: offset, size: next - offset, rewritten: rewritten))
                if !rewritten { nextLSN = lsn + 1 }
                offset = next
                segments[segments.count - 1].end = offset
            case let stop:
                var reason = ""
                if case let .invalid(why) = stop { reason = why }
                let dirt = Self.firstNonZero(bytes, from: offset)
                if !isNewest {
                    // An older segment was synced before the next one received a byte:
                    // everything after its last frame must still be zeros.
                    if let dirt {
                        let why = reason.isEmpty ? "zero frame in a sealed (older) segment followed by non-zero bytes at offset \(dirt)" : reason
                        status = .corrupt(file: path, offset: offset, reason: why)
                        return false
                    }
                    return true
                }
                // The usual case: the preallocated rest of the segment is all zeros.
                guard dirt != nil else { return true }
                if let valid = Self.firstValidFrame(bytes, from: offset + LogFormat.alignment) {
                    status = .corrupt(file: path, offset: offset, reason: (reason.isEmpty ? "zero frame" : reason) + ", followed by a valid record at offset \(valid)")
                    return false
                }
                status = .tornTail(file: path, offset: offset)
                return true
            }
        }
    }

    /// 64 KiB of zeros to compare against.
    private static let zeros = [UInt8](repeating: 0, count: 1 << 16)

    /// The offset of the first non-zero byte at or after `start`, or nil.
    static func firstNonZero(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard let base = bytes.baseAddress else { return nil }
        var offset = start
        while offset < bytes.count {
            let count = min(zeros.count, bytes.count - offset)
            let differs = zeros.withUnsafeBytes { memcmp(base + offset, $0.baseAddress!, count) != 0 }
            if differs {
                return (offset..<(offset + count)).first { bytes[$0] != 0 }
            }
            offset += count
        }
        return nil
    }

    /// The first aligned offset at or after `start` that holds a valid frame.
    static func firstValidFrame(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
        var offset = (start + LogFormat.alignment - 1) & ~(LogFormat.alignment - 1)
        while offset + LogFormat.frameHeaderSize <= bytes.count {
            // A frame starts with its non-zero length: skip runs of zeros at memcmp speed.
            guard let nonZero = firstNonZero(bytes, from: offset) else { return nil }
            offset = max(offset, nonZero & ~(LogFormat.alignment - 1))
            guard offset + LogFormat.frameHeaderSize <= bytes.count else { return nil }
            // Cheap filters first (plausible length, zero reserved word), then the CRC.
            let length = Int(bytes.loadLE(UInt32.self, at: offset))
            if length >= LogFormat.frameHeaderSize, offset + LogFormat.alignedSize(length) <= bytes.count,
               bytes.loadLE(UInt32.self, at: offset + 20) == 0,
               case .frame = LogFormat.decodeFrame(bytes, at: offset) {
                return offset
            }
            offset += LogFormat.alignment
        }
        return nil
    }
}
