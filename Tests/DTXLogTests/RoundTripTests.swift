import DTXTestSupport
import Testing
@testable import DTXLog

@Suite struct RoundTripTests {
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomSequencesSurviveReopenAcrossSegmentsAndCheckpoints(seed: UInt64) async throws {
        var rng = SeededGenerator(seed: seed)
        let dir = TemporaryDirectory()
        var expected: [UInt64: LogRecord] = [:]

        for round in 0..<6 {
            let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
            #expect(recovery.records == expected.values.sorted { $0.lsn < $1.lsn }, "seed \(seed) round \(round)")
            for _ in 0..<Int.random(in: 20...120, using: &rng) {
                let payload = randomPayload(Int.random(in: 0...700, using: &rng), using: &rng)
                let type = UInt16.random(in: 1...9, using: &rng)
                let lsn = try await log.append(type: type, payload: payload, forced: Bool.random(using: &rng))
                expected[lsn] = LogRecord(lsn: lsn, type: type, payload: payload)
                if Int.random(in: 0..<40, using: &rng) == 0 {
                    // Drop a random half of what is there; the checkpoint must keep the rest.
                    var dropped = Set<UInt64>()
                    for lsn in expected.keys where Bool.random(using: &rng) { dropped.insert(lsn) }
                    let droppedNow = dropped
                    let result = try await log.checkpoint { !droppedNow.contains($0.lsn) }
                    for lsn in dropped { expected[lsn] = nil }
                    #expect(result.recordsKept <= expected.count)
                }
            }
            try await log.close()
        }
        let scan = try LogScan.inspect(directory: dir.path)
        #expect(scan.status == .intact)
        #expect(scan.replayRecords == expected.values.sorted { $0.lsn < $1.lsn })
    }

    @Test func checkpointDeletesSegmentsThatHoldNothingLive() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        var live: [LogRecord] = []
        for i in 0..<200 {
            let payload = Array("record \(i)".utf8) + [UInt8](repeating: 7, count: 100)
            let lsn = try await log.append(type: 1, payload: payload, forced: i % 10 == 0)
            if i % 50 == 0 { live.append(LogRecord(lsn: lsn, type: 1, payload: payload)) }
        }
        let before = try segmentCount(dir)
        let liveLSNs = Set(live.map(\.lsn))
        let result = try await log.checkpoint { liveLSNs.contains($0.lsn) }
        #expect(result.recordsKept == live.count)
        // The checkpoint seals the current segment too, so every one of them goes.
        #expect(result.segmentsRemoved == before)
        #expect(log.statistics.checkpoints == 1)
        #expect(log.statistics.segmentSwitches >= UInt64(before), "every rotation, the checkpoint's included, switched to a segment")
        #expect(try segmentCount(dir) == 1)
        // Appends continue with the next LSN after a checkpoint.
        let next = try await log.append(type: 2, payload: [1, 2, 3], forced: true)
        #expect(next == 201)
        try await log.close()

        let (reopened, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        #expect(recovery.records == live + [LogRecord(lsn: 201, type: 2, payload: [1, 2, 3])])
        #expect(reopened.nextLSN == 202)
        try await reopened.close()
    }

    @Test func aCrashMidCheckpointLeavesDuplicatesThatReplayCollapses() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        var records: [LogRecord] = []
        for i in 0..<60 {
            let payload = [UInt8](repeating: UInt8(i), count: 90)
            let lsn = try await log.append(type: 3, payload: payload, forced: false)
            records.append(LogRecord(lsn: lsn, type: 3, payload: payload))
        }
        try await log.sync()
        // Simulate the copies having been written but the old segments not yet deleted:
        // save the old segments, checkpoint, then put them back.
        let saved = TemporaryDirectory()
        try dir.copyFiles(to: saved)
        _ = try await log.checkpoint { _ in true }
        try await log.close()
        for name in try FileManagerNames.wal(in: saved.path) where !FileManagerNames.exists(dir.file(name)) {
            try FileManagerNames.copy(saved.file(name), dir.file(name))
        }
        let (reopened, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        #expect(recovery.records == records)
        try await reopened.close()
    }

    @Test func recordsLargerThanASegmentAreRefused() async throws {
        let dir = TemporaryDirectory()
        let (log, _) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        #expect(throws: LogError.self) {
            try log.append(type: 1, payload: [UInt8](repeating: 0, count: 5000))
        }
        #expect(try log.append(type: 1, payload: [UInt8](repeating: 1, count: smallSegments.maxPayloadSize)) == 1)
        try await log.close()
        #expect(throws: LogError.closed) { try log.append(type: 1, payload: []) }
    }

    /// Segments, not counting the spare an open log prepares ahead of need.
    private func segmentCount(_ dir: TemporaryDirectory) throws -> Int {
        try LogScan.read(directory: dir.path).segments.count
    }
}

