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

        try await checkEveryAcknowledgedRecordSurvives(writer, dir: dir, seed: seed)
    }

    /// The writer kills itself the moment it sees the log preparing its next segment,
    /// with forced appends and checkpoints in flight: no acknowledged record is lost,
    /// and the leftover `.wal.tmp` (and the spare) go at the open.
    @Test func aSIGKILLWhileTheNextSegmentIsPreparedLosesNoAcknowledgedRecord() async throws {
        var leftovers = 0
        for seed in [1, 2, 3, 4, 5, 6] as [UInt64] {
            let dir = makeTemporaryDirectory("walspare")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let writer = try ChildProcess("wal-crash-writer", [dir, "\(seed)", "--die-preparing-spare"])
            try await writer.waitForExit()
            #expect(writer.process.terminationReason == .uncaughtSignal, "seed \(seed)")
            // A spare nearly always exists; a `.wal.tmp` only while one is being prepared.
            if try FileManager.default.contentsOfDirectory(atPath: dir).contains(where: { $0.hasSuffix(".wal.tmp") }) { leftovers += 1 }
            try await checkEveryAcknowledgedRecordSurvives(writer, dir: dir, seed: seed)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).allSatisfy { !$0.hasSuffix(".wal.tmp") })
        }
        print("SIGKILL while preparing the next segment: \(leftovers) of 6 kills left a .wal.tmp behind")
        // The kill follows the sight of a preparation by microseconds; it must have cut
        // one short at least once in six.
        #expect(leftovers > 0)
    }

    private func checkEveryAcknowledgedRecordSurvives(_ writer: ChildProcess, dir: String, seed: UInt64) async throws {
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
        // Appends go on where the survivors end.
        #expect(try await log.append(type: 1, payload: [], forced: true) == UInt64(recovery.records.count + 1))
        try await log.close()
    }
}
