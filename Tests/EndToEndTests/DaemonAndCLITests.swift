import DTXLog
import Foundation
import Testing

@Suite struct DaemonTests {
    /// The connect timeout to participants is a flag; a value out of range is refused
    /// with the rule, and nothing starts.
    @Test func aConnectTimeoutOutOfRangeIsRefused() async throws {
        let dir = makeTemporaryDirectory("dtxd-connect-timeout")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let refused = try await run("dtxd", ["--data-dir", dir + "/data", "--listen", "127.0.0.1:0", "--connect-timeout", "0"])
        #expect(refused.status == 64, "\(refused)")
        #expect(refused.err.contains("must be seconds from 0.01 to 60, not 0.0"), "\(refused.err)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/data"), "nothing was created")
        let help = try await run("dtxd", ["--help"])
        #expect(help.out.contains("--connect-timeout"))
    }

    @Test func stuckLimitsOutOfRangeAreRefused() async throws {
        let dir = makeTemporaryDirectory("dtxd-stuck-limits")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let attempts = try await run("dtxd", ["--data-dir", dir + "/data", "--listen", "127.0.0.1:0", "--stuck-after", "0"])
        #expect(attempts.status == 64, "\(attempts)")
        #expect(attempts.err.contains("must be a whole number from 1 to 1000, not 0"), "\(attempts.err)")
        let age = try await run("dtxd", ["--data-dir", dir + "/data", "--listen", "127.0.0.1:0", "--stuck-age=-1"])
        #expect(age.status == 64, "\(age)")
        #expect(age.err.contains("seconds from 0 (never) to 2592000"), "\(age.err)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/data"), "nothing was created")
    }

    @Test func dtxdServesHealthRefusesASecondDaemonAndShutsDownCleanlyOnSIGTERM() async throws {
        let dir = makeTemporaryDirectory("dtxd")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let daemon = try ChildProcess("dtxd", ["--data-dir", dir + "/data", "--listen", "127.0.0.1:0"])
        let port = try await daemon.waitForOutput { text -> Int? in
            guard let range = text.range(of: "listening on http://127.0.0.1:") else { return nil }
            return Int(text[range.upperBound...].prefix { $0.isNumber })
        }

        let answer = try await http("GET", "http://127.0.0.1:\(port)/healthz")
        #expect(answer.status == 200)
        let health = try JSONSerialization.jsonObject(with: answer.body) as? [String: Any]
        #expect(health?["status"] as? String == "ok")

        // A second daemon on the same directory is refused, naming the holder.
        let second = try await run("dtxd", ["--data-dir", dir + "/data", "--listen", "127.0.0.1:0"])
        #expect(second.status == 1)
        #expect(second.err.contains("in use by process \(daemon.process.processIdentifier)"))
        // So is the offline CLI.
        let verifyWhileRunning = try await run("dtx", ["wal", "verify", dir + "/data"])
        #expect(verifyWhileRunning.status == 2)
        #expect(verifyWhileRunning.err.contains("locked by a running process \(daemon.process.processIdentifier)"))

        daemon.kill(SIGTERM)
        #expect(try await daemon.waitForExit(seconds: 20) == 0)
        #expect(daemon.process.terminationReason == .exit)
        let verify = try await run("dtx", ["wal", "verify", dir + "/data"])
        #expect(verify.status == 0)
        #expect(verify.out.contains("is intact"))
    }

    @Test func dtxdRejectsBadConfigurationWithAClearMessage() async throws {
        let badListen = try await run("dtxd", ["--listen", "nonsense"])
        #expect(badListen.status != 0)
        #expect(badListen.err.contains("write it as host:port"))
        let help = try await run("dtxd", ["--help"])
        #expect(help.out.contains("DTXD_DATA_DIR") && help.out.contains("DTXD_LISTEN"))
        // Every failpoint the tests (and drivers written from the README) may arm.
        for point in ["before-commit-decision", "after-commit-decision", "after-prepare-sent", "after-abort-decision",
                      "before-pre-commit-decision", "after-pre-commit-decision", "after-pre-commit-acknowledged",
                      "before-delegation", "after-delegation", "after-one-phase-commit", "before-outcome-answer"] {
            #expect(help.out.contains(point), "dtxd --help does not name \(point)")
        }
    }
}

@Suite struct WALCommandTests {
    private func makeLog(_ dir: String, records: Int) async throws -> [LocatedRecord] {
        let (log, _) = try WriteAheadLog.open(directory: dir, configuration: .init(segmentSize: 4096))
        for i in 0..<records {
            try await log.append(type: UInt16(i % 3 + 1), payload: Array("{\"n\":\(i),\"pad\":\"\(String(repeating: "p", count: 100))\"}".utf8), forced: i % 5 == 0)
        }
        try await log.close()
        return try LogScan.read(directory: dir).records
    }

    @Test func verifyAndDumpReportAnIntactLog() async throws {
        let dir = makeTemporaryDirectory("walcli")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let records = try await makeLog(dir, records: 80)

        let verify = try await run("dtx", ["wal", "verify", dir])
        #expect(verify.status == 0)
        #expect(verify.out.contains("is intact") && verify.out.contains("80 records, LSN 1…80"))

        let dump = try await run("dtx", ["wal", "dump", dir, "--json"])
        #expect(dump.status == 0)
        let lines = dump.out.split(separator: "\n")
        #expect(lines.count == 80)
        let first = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any]
        #expect(first?["lsn"] as? Int == 1)
        #expect(first?["segment"] as? String == "0000000000000000.wal")
        #expect(first?["offset"] as? Int == records[0].offset)
        #expect(first?["type"] as? Int == 1)
        #expect((first?["summary"] as? String)?.hasPrefix("{\"n\":0") == true)

        let text = try await run("dtx", ["wal", "dump", dir])
        #expect(text.out.split(separator: "\n").first?.hasPrefix("lsn=1 segment=0000000000000000.wal offset=64 type=1") == true)
    }

    @Test func verifyNamesCorruptionAndRepairFixesIt() async throws {
        let dir = makeTemporaryDirectory("walcli")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let records = try await makeLog(dir, records: 80)
        let victim = records[10]
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: victim.segment))
        try handle.seek(toOffset: UInt64(victim.offset + 30))
        try handle.write(contentsOf: Data([0xFF]))
        try handle.close()

        let verify = try await run("dtx", ["wal", "verify", dir])
        #expect(verify.status == 1)
        #expect(verify.err.contains("\(victim.segment) at byte offset \(victim.offset)"))
        let dump = try await run("dtx", ["wal", "dump", dir])
        #expect(dump.status == 1)
        #expect(dump.out.split(separator: "\n").count == 10)

        let repair = try await run("dtx", ["wal", "repair", dir])
        #expect(repair.status == 0)
        #expect(repair.out.contains("truncated \(victim.segment) at byte offset \(victim.offset)"))
        let after = try await run("dtx", ["wal", "verify", dir])
        #expect(after.status == 0)
        #expect(after.out.contains("10 records, LSN 1…10"))
    }

    @Test func verifyAcceptsATornTailAndSaysSo() async throws {
        let dir = makeTemporaryDirectory("walcli")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let records = try await makeLog(dir, records: 30)
        let last = records.last!
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: last.segment))
        try handle.truncate(atOffset: UInt64(last.offset + 5))
        try handle.close()
        let verify = try await run("dtx", ["wal", "verify", dir])
        #expect(verify.status == 0)
        #expect(verify.out.contains("torn tail in \(last.segment) at byte offset \(last.offset)"))
        let missing = try await run("dtx", ["wal", "verify", dir + "/nope"])
        #expect(missing.status == 2)
        #expect(missing.err.contains("No such file or directory"))
    }
}
