#if canImport(Glibc)
import Glibc
#endif

/// Everything that can go wrong with a log, in words an operator can act on.
public enum LogError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Another process holds the directory's lock.
    case directoryInUse(directory: String, pid: Int32?)
    /// A bad record that is not a torn tail: opening refuses, repair is explicit.
    case corrupt(file: String, offset: Int, reason: String)
    /// A system call failed.
    case io(operation: String, path: String, errno: Int32)
    case recordTooLarge(size: Int, limit: Int)
    case invalidConfiguration(String)
    case closed
    case checkpointInProgress
    /// A write or sync failed earlier; the log refuses further appends because the
    /// kernel may already have dropped the unsynced pages.
    case failed(String)

    public var description: String {
        switch self {
        case let .directoryInUse(directory, pid):
            let holder = pid.map { "process \($0)" } ?? "another process"
            return "data directory \(directory) is in use by \(holder) (lock file \(directory)/LOCK); stop that process or choose another directory"
        case let .corrupt(file, offset, reason):
            return "corrupt log: \(file) at byte offset \(offset): \(reason). Nothing was changed; inspect it with `dtx wal dump`, and `dtx wal repair` truncates at the last good record and keeps the cut bytes beside the log"
        case let .io(operation, path, code):
            return "\(operation) \(path): \(String(cString: strerror(code))) (errno \(code))"
        case let .recordTooLarge(size, limit):
            return "record of \(size) bytes exceeds the limit of \(limit) bytes for this segment size"
        case let .invalidConfiguration(message):
            return "invalid log configuration: \(message)"
        case .closed:
            return "the log is closed"
        case .checkpointInProgress:
            return "a checkpoint is already running"
        case let .failed(message):
            return "the log has failed and accepts no more records: \(message)"
        }
    }
}
