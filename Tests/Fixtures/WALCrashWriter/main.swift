// Test fixture: `wal-crash-writer DIR SEED` runs 8 concurrent writers doing forced
// appends into the log in DIR and, after each append returns, prints "LSN PAYLOAD" on
// one line. A test kills it with SIGKILL at a random moment: every printed LSN must
// be in the log after reopening.
import DTXLog
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 3, let seed = UInt64(arguments[2]) else {
    let usage = Array("usage: wal-crash-writer DIR SEED\n".utf8)
    _ = usage.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}
let (log, _) = try WriteAheadLog.open(directory: arguments[1], configuration: .init(segmentSize: 64 << 10))

/// One write(2) per line, so a kill never leaves half a line that looks whole.
func emit(_ line: String) {
    var bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeMutableBytes { write(1, $0.baseAddress, $0.count) }
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
    try await group.waitForAll()
}
try await log.close()
