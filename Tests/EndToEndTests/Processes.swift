import Foundation

/// Where `swift build` put the executables: beside the test bundle.
let productsDirectory: String = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return (exe as NSString).deletingLastPathComponent
}()

/// A child process with its output collected line by line.
final class ChildProcess: @unchecked Sendable {
    // Safe: the buffers and `openPipes` are only touched under `lock`.
    let process = Process()
    private let lock = NSLock()
    private var stdoutBuffer = Data()
    private var stderrBuffer = Data()
    private var openPipes = 2

    /// `executable`: one of the package's products, or an absolute path.
    init(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: executable.hasPrefix("/") ? executable : productsDirectory + "/" + executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        // One thread per pipe reads until EOF, so nothing written before exit is missed.
        for (pipe, isStdout) in [(out, true), (err, false)] {
            let handle = pipe.fileHandleForReading
            // Weak, so that dropping the object kills a child a failed test left running.
            Thread.detachNewThread { [weak self] in
                while true {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    self?.received(data, isStdout: isStdout)
                }
                self?.pipeClosed()
            }
        }
        try process.run()
    }

    private func pipeClosed() {
        lock.withLock { openPipes -= 1 }
    }

    private func received(_ data: Data, isStdout: Bool) {
        lock.withLock { isStdout ? stdoutBuffer.append(data) : stderrBuffer.append(data) }
    }

    var stdout: String { lock.withLock { String(decoding: stdoutBuffer, as: UTF8.self) } }
    var stderr: String { lock.withLock { String(decoding: stderrBuffer, as: UTF8.self) } }

    /// Complete lines only: a line cut by a kill is not reported.
    var completeStdoutLines: [String] {
        let text = stdout
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        lines.removeLast()  // empty after a final newline, or a partial line
        return lines
    }

    func kill(_ signal: Int32) { Foundation.kill(process.processIdentifier, signal) }

    /// Waits for exit (at most `seconds`), then drains the pipes.
    @discardableResult
    func waitForExit(seconds: Double = 30) async throws -> Int32 {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning {
            if Date() > deadline {
                kill(SIGKILL)
                throw ProcessError.timedOut("\(process.executableURL!.lastPathComponent) did not exit within \(seconds)s")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        while lock.withLock({ openPipes > 0 }) {
            try await Task.sleep(for: .milliseconds(5))
        }
        return process.terminationStatus
    }

    /// Polls stdout until `predicate` finds what it wants.
    func waitForOutput<T>(seconds: Double = 30, _ predicate: (String) -> T?) async throws -> T {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let found = predicate(stdout) { return found }
            if !process.isRunning, let found = predicate(stdout) { return found }
            if !process.isRunning { throw ProcessError.exited(stdout + stderr) }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ProcessError.timedOut("no expected output within \(seconds)s: \(stdout) \(stderr)")
    }

    deinit {
        if process.isRunning { kill(SIGKILL) }
    }

}

enum ProcessError: Error {
    case timedOut(String)
    case exited(String)
}

/// Runs a command to completion: (status, stdout, stderr).
func run(_ executable: String, _ arguments: [String]) async throws -> (status: Int32, out: String, err: String) {
    let child = try ChildProcess(executable, arguments)
    let status = try await child.waitForExit()
    return (status, child.stdout, child.stderr)
}

func makeTemporaryDirectory(_ name: String) -> String {
    var template = Array((NSTemporaryDirectory() + "/\(name)-XXXXXX").utf8CString)
    return String(cString: mkdtemp(&template)!)
}
