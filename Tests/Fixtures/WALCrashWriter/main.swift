// Test fixture: `wal-crash-writer DIR SEED [--die-preparing-spare]` runs 8 concurrent
// writers doing forced appends into the log in DIR (64 KiB segments, a checkpoint
// keeping everything every 100 ms) and, after each append returns, prints "LSN PAYLOAD"
// on one line. A test kills it with SIGKILL at a random moment: every printed LSN must
// be in the log after reopening. With --die-preparing-spare it kills itself instead, the
// moment it sees the log preparing its next segment (a `*.wal.tmp` file), after skipping
// 1 + SEED % 4 such preparations.
import DTXLog
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard (3...4).contains(arguments.count), let seed = UInt64(arguments[2]),
      arguments.count == 3 || arguments[3] == "--die-preparing-spare" else {
    let usage = Array("usage: wal-crash-writer DIR SEED [--die-preparing-spare]\n".utf8)
    _ = usage.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}
let directory = arguments[1]
let (log, _) = try WriteAheadLog.open(directory: directory, configuration: .init(segmentSize: 64 << 10))

/// One write(2) per line, so a kill never leaves half a line that looks whole.
func emit(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
}

/// Names of the files being prepared in the log directory.
func preparing() -> Set<String> {
    guard let dir = opendir(directory) else { return [] }
    defer { closedir(dir) }
    var names: Set<String> = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        if name.hasSuffix(".wal.tmp") { names.insert(name) }
    }
    return names
}

if arguments.count == 4 {
    Task.detached {
        // The first preparation starts at the open, before any append: always skip it.
        var skip = 1 + Int(seed % 4)
        var seen: Set<String> = []
        while true {
            for name in preparing() where seen.insert(name).inserted {
                if skip == 0 { kill(getpid(), SIGKILL) }
                skip -= 1
            }
            usleep(50)
        }
    }
}

try await withThrowingTaskGroup(of: Void.self) { group in
    for writer in 0..<8 {
        group.addTask {
            for i in 0..<50_000 {
                let payload = "s\(seed)-w\(writer)-r\(i)-" + String(repeating: "x", count: (i * 7 + writer) % 200)
                let lsn = try await log.append(type: 1, payload: Array(payload.utf8), forced: true)
                emit("\(lsn) \(payload)")
            }
        }
    }
    group.addTask {
        while true {
            try await Task.sleep(for: .milliseconds(100))
            _ = try await log.checkpoint { _ in true }
        }
    }
    try await group.next()
    group.cancelAll()
}
try await log.close()
