#if canImport(Glibc)
import Glibc
#endif

/// An exclusive `flock` on `DIR/LOCK`, holding the owner's pid so that a second
/// opener can say who has the directory. `flock` (not `fcntl`) locks belong to the
/// open file, so a second open in the same process is refused too.
final class DirectoryLock: Sendable {
    let directory: String
    private let fd: Int32

    init(directory: String) throws {
        self.directory = directory
        let path = directory + "/LOCK"
        let fd = try System.open(path, O_RDWR | O_CREAT)
        // A hold by no live pid is transient: an owner between flock and writing its pid
        // or releasing, or a child forked by the owner and not yet exec'd (it shares the
        // open file until exec closes it). Wait that out briefly; a live owner is named at once.
        var tries = 0
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            let holder = Self.readPID(fd)
            let holderAlive = holder.map { kill($0, 0) == 0 || errno != ESRCH } ?? false
            if code == EWOULDBLOCK, !holderAlive, tries < 100 {
                tries += 1
                usleep(10_000)
                continue
            }
            Glibc.close(fd)
            if code == EWOULDBLOCK {
                throw LogError.directoryInUse(directory: directory, pid: holder)
            }
            throw LogError.io(operation: "flock", path: path, errno: code)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.fd = fd
    }

    /// Releases the lock; the pid is cleared so a stale file names nobody.
    func release() {
        _ = ftruncate(fd, 0)
        Glibc.close(fd)
    }

    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buffer[0..<n].prefix { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self))
    }
}
