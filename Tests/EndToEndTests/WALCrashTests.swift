import DTXLog
import DTXTestSupport
import Foundation
import Testing

@Suite(.serialized) struct WALCrashTests {
    /// A real process doing forced appends is SIGKILLed at a random moment; every LSN it
    /// printed (it prints only after the append returned) must be in the log, unchanged.
    @Test(arguments: [11, 22, 33, 44, 55] as [UInt64])
    func everyAcknowledgedRecordSurvivesSIGKILL(seed: UInt64) async throws {
        let dir = makeTemporaryDirectory("walcrash")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = SeededGenerator(seed: seed)
        let writer = try ChildProcess("wal-crash-writer", [dir, "\(seed)"])
        // Wait for the first acknowledgements, then kill at a random later moment.
        _ = try await writer.waitForOutput { $0.contains("\n") ? true : nil }
        try await Task.sleep(for: .milliseconds(Int.random(in: 20...400, using: &rng)))
        writer.kill(SIGKILL)
        try await writer.waitForExit()
        #expect(writer.process.terminationReason == .uncaughtSignal)

        let acknowledged = writer.completeStdoutLines.map { line -> (UInt64, String) in
            let space = line.firstIndex(of: " ")!
            return (UInt64(line[..<space])!, String(line[line.index(after: space)...]))
        }
        #expect(acknowledged.count > 0, "seed \(seed)")
        let (log, recovery) = try WriteAheadLog.open(directory: dir)
        let byLSN = Dictionary(uniqueKeysWithValues: recovery.records.map { ($0.lsn, String(decoding: $0.payload, as: UTF8.self)) })
        for (lsn, payload) in acknowledged {
            #expect(byLSN[lsn] == payload, "seed \(seed): acknowledged LSN \(lsn) lost or changed")
        }
        // Whatever survived is a gap-free prefix of the LSN sequence.
        #expect(recovery.records.map(\.lsn) == (0..<UInt64(recovery.records.count)).map { $0 + 1 })
        try await log.close()
    }
}
