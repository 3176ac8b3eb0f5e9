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
}
