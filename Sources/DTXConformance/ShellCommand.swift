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

    private static func withCStrings<R>(_ strings: [String], _ body: (UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
        var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return pointers.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }
}
