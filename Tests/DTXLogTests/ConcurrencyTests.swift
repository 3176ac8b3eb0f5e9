import Foundation
import Testing
@testable import DTXLog

@Suite struct ConcurrencyTests {
    @Test func sixtyFourConcurrentForcedAppendersAllSurviveInLSNOrder() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path, configuration: .init(segmentSize: 64 << 10))
        let acknowledged = try await withThrowingTaskGroup(of: [(UInt64, [UInt8])].self) { group in
            for task in 0..<64 {
                group.addTask {
                    var mine: [(UInt64, [UInt8])] = []
                    for i in 0..<40 {
                        let payload = Array("task \(task) record \(i)".utf8)
                        mine.append((try await log.append(type: 7, payload: payload, forced: true), payload))
                    }
                    return mine
                }
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        let stats = log.statistics
        try await log.close()
        #expect(acknowledged.count == 64 * 40)
        #expect(stats.forcedAppends == 64 * 40)
        // Group commit: far fewer syncs than forced appends.
        #expect(stats.fsyncs < stats.forcedAppends)

        let (reopened, recovery) = try WriteAheadLog.open(directory: dir.path)
        #expect(recovery.records.map(\.lsn) == Array(1...UInt64(64 * 40)))
        let byLSN = Dictionary(uniqueKeysWithValues: recovery.records.map { ($0.lsn, $0.payload) })
        for (lsn, payload) in acknowledged {
            #expect(byLSN[lsn] == payload)
        }
        try await reopened.close()
    }

    @Test func theDirectoryLockRefusesASecondOpenerAndNamesTheHolder() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path)
        let error = #expect(throws: LogError.self) { _ = try WriteAheadLog.open(directory: dir.path) }
        #expect(error == .directoryInUse(directory: dir.path, pid: getpid()))
        #expect(error?.description.contains("in use by process \(getpid())") == true)
        #expect(throws: LogError.self) { _ = try LogScan.inspect(directory: dir.path) }
        try await log.close()
        let (again, _) = try WriteAheadLog.open(directory: dir.path)
        try await again.close()
    }

    @Test func lazyRecordsBecomeDurableWithTheNextForcedOne() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path)
        for i in 0..<10 { try log.append(type: 1, payload: [UInt8(i)]) }
        let before = log.statistics.fsyncs
        try await log.append(type: 2, payload: [99], forced: true)
        #expect(log.statistics.fsyncs == before + 1)
        // Read the files while the log is still open: everything up to the forced record is there.
        let scan = try LogScan.read(directory: dir.path)
        #expect(scan.replayRecords.map(\.lsn) == Array(1...11))
        try await log.close()
    }

    /// Concurrent forced appenders cross segment switches while checkpoints run (each
    /// dropping the records a set of them has marked obsolete): after reopening, every
    /// acknowledged record the checkpoints did not drop is there, unchanged.
    @Test func switchesAndCheckpointsUnderConcurrentForcedAppendsLoseNoAcknowledgedRecord() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path, configuration: .init(segmentSize: 16 << 10))
        let writers = 16, perWriter = 150
        // Writer w's records with an even index are obsolete once written: checkpoints drop them.
        let obsolete: @Sendable (LogRecord) -> Bool = { $0.type == 2 }
        let acknowledged = try await withThrowingTaskGroup(of: [LogRecord].self) { group in
            for writer in 0..<writers {
                group.addTask {
                    var mine: [LogRecord] = []
                    for i in 0..<perWriter {
                        let payload = Array("writer \(writer) record \(i) ".utf8) + [UInt8](repeating: UInt8(i % 256), count: i % 97)
                        let type: UInt16 = i % 2 == 0 ? 2 : 1
                        mine.append(LogRecord(lsn: try await log.append(type: type, payload: payload, forced: true), type: type, payload: payload))
                    }
                    return mine
                }
            }
            group.addTask {
                var results: [WriteAheadLog.CheckpointResult] = []
                while results.count < 3 {
                    try await Task.sleep(for: .milliseconds(20))
                    results.append(try await log.checkpoint { !obsolete($0) })
                }
                #expect(results.contains { $0.segmentsRemoved > 0 })
                return []
            }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        let stats = log.statistics
        try await log.close()
        #expect(acknowledged.count == writers * perWriter)
        #expect(stats.segmentSwitches >= 3, "the run crossed \(stats.segmentSwitches) switches")
        #expect(stats.checkpoints >= 2)

        let (reopened, recovery) = try WriteAheadLog.open(directory: dir.path)
        let byLSN = Dictionary(uniqueKeysWithValues: recovery.records.map { ($0.lsn, $0) })
        for record in acknowledged where !obsolete(record) {
            #expect(byLSN[record.lsn] == record, "acknowledged LSN \(record.lsn) lost or changed")
        }
        // Nothing else came back: every record there is one that was appended.
        let appended = Dictionary(uniqueKeysWithValues: acknowledged.map { ($0.lsn, $0) })
        #expect(recovery.records.allSatisfy { appended[$0.lsn] == $0 })
        try await reopened.close()
    }

    /// Once the spare is ready, a switch takes it: no segment is created while appends wait.
    @Test func aSwitchTakesTheSpareWhenItIsReady() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        for round in 1...3 {
            let deadline = ContinuousClock.now + .seconds(10)
            while try LogScan.read(directory: dir.path).spares.isEmpty, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(5))
            }
            let before = log.statistics
            while log.statistics.segmentSwitches == before.segmentSwitches {
                try await log.append(type: 1, payload: [UInt8](repeating: 1, count: 500), forced: true)
            }
            #expect(log.statistics.switchesWithoutSpare == before.switchesWithoutSpare, "round \(round)")
        }
        try await log.close()
        #expect(try LogScan.read(directory: dir.path).spares.isEmpty, "closing removes the spare")
        #expect(try FileManagerNames.wal(in: dir.path).count == LogScan.read(directory: dir.path).segments.count)
    }
}
