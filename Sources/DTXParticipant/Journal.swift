import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A journal file could not be read or written durably.
public struct JournalError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var reason: String

    public var description: String { "journal \(path): \(reason)" }
}

/// The file an `InMemoryResourceManager` keeps its ledger in: the whole state as JSON,
/// replaced atomically and durably on each change.
final class Journal: Sendable {
    /// The whole ledger.
    struct Contents: Codable, Sendable {
        var branches: [InMemoryResourceManager.BranchRecord]
        var barriers: [InMemoryResourceManager.BarrierRecord]
        /// Msg: each message's local outcome, oldest first.
        var messages: [InMemoryResourceManager.MessageRecord]
    }

    let path: String
    /// Serializes writes, and runs their fsyncs off the concurrency pool's threads.
    private let queue: DispatchQueue

    init(path: String) {
        self.path = path
        queue = DispatchQueue(label: "dtx.participant.journal")
    }

    /// The records in the journal. A journal that does not exist yet is created empty,
    /// so that a path that cannot be written fails now rather than on the first vote.
    func load() throws(JournalError) -> Contents {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch CocoaError.fileReadNoSuchFile {
            let empty = Contents(branches: [], barriers: [], messages: [])
            try store(empty)
            return empty
        } catch {
            throw JournalError(path: path, reason: "cannot read it: \(error)")
        }
        do {
            return try JSONDecoder().decode(Contents.self, from: data)
        } catch {
            throw JournalError(path: path, reason: "not a valid journal (\(error)); restore it from a backup or remove it to start with no branches")
        }
    }

    /// Runs `work` on the journal's serial queue.
    func serialize<R: Sendable>(_ work: @escaping @Sendable () throws -> R) async throws -> R {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Result { try work() }) }
        }
    }

    /// Replaces the journal with `contents`, durably: once this returns the new contents
    /// survive a crash, and a crash before leaves the old contents whole.
    func store(_ contents: Contents) throws(JournalError) {
        let data: Data
        do {
            data = try JSONEncoder().encode(contents)
        } catch {
            throw JournalError(path: path, reason: "cannot encode the ledger: \(error)")
        }
        let temporary = path + ".tmp"
        try writeAndSync(data, to: temporary)
        guard rename(temporary, path) == 0 else { throw failure("rename \(temporary) over it") }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let directoryDescriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryDescriptor >= 0 else { throw failure("open its directory \(directory)") }
        defer { close(directoryDescriptor) }
        guard fsync(directoryDescriptor) == 0 else { throw failure("fsync its directory \(directory)") }
    }

    private func writeAndSync(_ data: Data, to file: String) throws(JournalError) {
        let descriptor = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw failure("create \(file)") }
        defer { close(descriptor) }
        var offset = 0
        while offset < data.count {
            let written = data.withUnsafeBytes { bytes in
                write(descriptor, bytes.baseAddress.map { $0 + offset }, bytes.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw failure("write \(file)")
            }
            offset += written
        }
        guard fsync(descriptor) == 0 else { throw failure("fsync \(file)") }
    }

    /// An error for the failed system call, with `errno`'s explanation.
    private func failure(_ action: String) -> JournalError {
        JournalError(path: path, reason: "cannot \(action): \(String(cString: strerror(errno)))")
    }
}
