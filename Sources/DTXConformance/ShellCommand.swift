#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A command run by `/bin/sh -c`, spawned and reaped with POSIX calls.
enum ShellCommand {
    struct SpawnFailed: Error, CustomStringConvertible {
        var errno: Int32
        var description: String { "cannot run /bin/sh: \(String(cString: strerror(errno)))" }
    }

    /// Runs `command` with standard input from /dev/null and its output (both streams)
    /// in the file `output`; its exit status, or nil when it ran longer than `seconds`
    /// (it is then killed).
    static func run(_ command: String, environment: [String: String], output: String, seconds: Double) async throws -> Int32? {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of this process's descriptors reaches the command, and so none
        // reaches the participant it starts, which outlives this process: whoever waits
        // for this process's pipes to close (a test, a shell) is not kept waiting.
        for descriptor in openDescriptors() where descriptor > 2 {
            posix_spawn_file_actions_addclose(&actions, descriptor)
        }
        let arguments = ["/bin/sh", "-c", command]
        let variables = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let spawned = withCStrings(arguments) { argv in
            withCStrings(variables) { envp in
                posix_spawn(&pid, "/bin/sh", &actions, nil, argv, envp)
            }
        }
        guard spawned == 0 else { throw SpawnFailed(errno: spawned) }
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while true {
            var status: Int32 = 0
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid {
                // Exited normally: the status is in bits 8-15; killed by a signal: 128 + signal.
                return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            }
            if reaped == -1, errno == ECHILD { return 0 }  // reaped by someone else: it ended, status unknown
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                return nil
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// This process's open file descriptors (from /proc/self/fd, or nothing elsewhere).
    private static func openDescriptors() -> [Int32] {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        let own = dirfd(directory)
        var descriptors: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let descriptor = Int32(name), descriptor != own { descriptors.append(descriptor) }
        }
        return descriptors
    }

    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return pointers.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}
