#if canImport(Glibc)
import Glibc
#endif

/// The explicit repair of a corrupt log: cut at the last good record, keep what was cut.
public struct LogRepair: Sendable, Equatable {
    /// Folder beside the log (inside its directory) that holds everything cut.
    public var savedTo: String
    /// The segment cut short and the offset it now ends at (nil when it was moved whole).
    public var truncatedFile: String?
    public var truncatedAt: Int?
    /// Segments moved whole into `savedTo`.
    public var movedSegments: [String]
    /// Records that remain, in LSN order.
    public var remainingRecords: Int

    /// Repairs the log in `directory` if it is corrupt; returns nil when there is
    /// nothing to repair (a torn tail is handled by a normal open). Takes the directory
    /// lock, so it refuses to run beside a daemon.
    public static func run(directory: String, now: Int = Int(time(nil))) throws -> LogRepair? {
        let lock = try DirectoryLock(directory: directory)
        defer { lock.release() }
        let scan = try LogScan.read(directory: directory)
        guard case let .corrupt(file, offset, _) = scan.status else { return nil }

        let savedTo = directory + "/repair-\(now)"
        try System.makeDirectory(savedTo)
        let sequences = try System.listDirectory(directory).compactMap(LogFormat.segmentSequence(fileName:)).sorted()
        guard let corruptSequence = LogFormat.segmentSequence(fileName: String(file.split(separator: "/").last ?? "")) else {
            throw LogError.corrupt(file: file, offset: offset, reason: "not a segment file name")
        }
        var repair = LogRepair(savedTo: savedTo, truncatedFile: nil, truncatedAt: nil, movedSegments: [], remainingRecords: 0)

        if offset >= LogFormat.segmentHeaderSize {
            // Keep the cut bytes (up to the last non-zero one), then cut the segment.
            let bytes = try System.readFile(file)
            let last = bytes.lastIndex { $0 != 0 }.map { $0 + 1 } ?? offset
            let name = String(file.split(separator: "/").last!)
            try System.writeNewFile(savedTo + "/\(name).from-\(offset)", Array(bytes[offset..<max(offset, last)]))
            let fd = try System.open(file, O_RDWR)
            defer { Glibc.close(fd) }
            try System.truncate(fd, size: offset, path: file)
            try System.preallocate(fd, size: bytes.count, path: file)
            try System.fsync(fd, path: file)
            repair.truncatedFile = file
            repair.truncatedAt = offset
        } else {
            try moveSegment(corruptSequence, from: directory, to: savedTo, into: &repair)
        }
        for sequence in sequences where sequence > corruptSequence {
            try moveSegment(sequence, from: directory, to: savedTo, into: &repair)
        }
        try System.fsyncDirectory(savedTo)
        try System.fsyncDirectory(directory)

        let after = try LogScan.read(directory: directory)
        repair.remainingRecords = after.replayRecords.count
        return repair
    }

    private static func moveSegment(_ sequence: UInt64, from directory: String, to savedTo: String, into repair: inout LogRepair) throws {
        let name = LogFormat.segmentFileName(sequence)
        try System.rename(directory + "/" + name, savedTo + "/" + name)
        repair.movedSegments.append(name)
    }
}

extension LogScan {
    /// Reads a log for inspection (`dtx wal verify`/`dump`): takes the directory lock
    /// for the duration so the answer cannot race a daemon, and says so when one holds it.
    public static func inspect(directory: String) throws -> LogScan {
        guard System.exists(directory) else {
            throw LogError.io(operation: "open log directory", path: directory, errno: ENOENT)
        }
        let lock = try DirectoryLock(directory: directory)
        defer { lock.release() }
        return try read(directory: directory)
    }
}
