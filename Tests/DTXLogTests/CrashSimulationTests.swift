import Foundation
import DTXTestSupport
import Testing
@testable import DTXLog

/// A closed log whose older segments are full and whose newest segment holds a few
/// records, all acknowledged as durable; plus the bytes of every segment.
struct CrashFixture {
    let source: TemporaryDirectory
    let acknowledged: [LogRecord]
    let files: [(name: String, bytes: [UInt8])]
    /// Frames of the newest segment, in order.
    let newestFrames: [LocatedRecord]
    let olderRecordCount: Int

    var newestName: String { files.last!.name }
    var newestBytes: [UInt8] { files.last!.bytes }

    static func make(newestRecords: Int = 6) async throws -> CrashFixture {
        precondition(newestRecords > 0, "the record that opens a segment is always in it")
        let dir = TemporaryDirectory("crash-src")
        let (log, _) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        var rng = SeededGenerator(seed: 42)
        var acknowledged: [LogRecord] = []
        while true {
            let payload = randomPayload(Int.random(in: 60...200, using: &rng), using: &rng)
            let lsn = try await log.append(type: 5, payload: payload, forced: true)
            acknowledged.append(LogRecord(lsn: lsn, type: 5, payload: payload))
            let scan = try LogScan.read(directory: dir.path)
            if scan.segments.count >= 3, scan.records.filter({ $0.segment == scan.segments.last!.path }).count == newestRecords { break }
        }
        try await log.close()
        let scan = try LogScan.read(directory: dir.path)
        let files = try FileManagerNames.wal(in: dir.path).map { ($0, try FileManagerNames.read(dir.file($0))) }
        let newest = scan.records.filter { $0.segment == scan.segments.last!.path }
        return CrashFixture(source: dir, acknowledged: acknowledged, files: files, newestFrames: newest,
                            olderRecordCount: acknowledged.count - newest.count)
    }

    /// Lays the log out in `dir` with the newest segment replaced by `newest`.
    func install(in dir: TemporaryDirectory, newest: [UInt8]) throws {
        try FileManagerNames.removeAll(in: dir.path)
        for (name, bytes) in files.dropLast() { try FileManagerNames.write(dir.file(name), bytes) }
        try FileManagerNames.write(dir.file(newestName), newest)
    }
}

@Suite(.serialized) struct CrashSimulationTests {
    @Test func cuttingTheNewestSegmentAtEveryByteOffsetLeavesExactlyAPrefix() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("crash-cut")
        let end = fixture.newestFrames.last!.offset + fixture.newestFrames.last!.size
        for cut in 0...(end + 16) {
            try fixture.install(in: dir, newest: Array(fixture.newestBytes.prefix(cut)))
            let whole = cut < LogFormat.segmentHeaderSize ? 0 : fixture.newestFrames.filter { $0.offset + $0.size <= cut }.count
            let expected = Array(fixture.acknowledged.prefix(fixture.olderRecordCount + whole))

            let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
            #expect(recovery.records == expected, "cut at \(cut)")
            // The truncated tail must be clean: a new record lands right after the prefix
            // and survives another reopen.
            let lsn = try await log.append(type: 9, payload: Array("after cut \(cut)".utf8), forced: true)
            #expect(lsn == UInt64(expected.count + 1), "cut at \(cut)")
            try await log.close()
            let (again, replay) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
            #expect(replay.records == expected + [LogRecord(lsn: lsn, type: 9, payload: Array("after cut \(cut)".utf8))], "cut at \(cut)")
            try await again.close()
        }
    }

    @Test func flippingEveryBitOfTheFinalRecordLosesOnlyThatRecord() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("crash-flip")
        let final = fixture.newestFrames.last!
        for bit in 0..<(final.size * 8) {
            var bytes = fixture.newestBytes
            bytes[final.offset + bit / 8] ^= UInt8(1 << (bit % 8))
            try fixture.install(in: dir, newest: bytes)
            let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
            #expect(recovery.records == Array(fixture.acknowledged.dropLast()), "bit \(bit) of the final record")
            #expect(recovery.truncatedTail?.offset == final.offset, "bit \(bit)")
            try await log.close()
        }
    }

    @Test func aBadRecordFollowedByAValidOneIsCorruptionNamingFileAndOffset() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("crash-mid")
        let victim = fixture.newestFrames[fixture.newestFrames.count - 2]
        for bit in stride(from: 0, to: victim.size * 8, by: 3) {
            var bytes = fixture.newestBytes
            bytes[victim.offset + bit / 8] ^= UInt8(1 << (bit % 8))
            try fixture.install(in: dir, newest: bytes)
            let path = dir.file(fixture.newestName)
            do {
                _ = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
                Issue.record("bit \(bit): opened a log with a corrupt record before a valid one")
            } catch let LogError.corrupt(file, offset, _) {
                #expect(file == path && offset == victim.offset, "bit \(bit)")
            }
            // Refusing changed nothing.
            #expect(try FileManagerNames.read(path) == bytes, "bit \(bit)")
        }
    }
}

@Suite struct CorruptionTests {
    @Test func corruptionInAnOlderSegmentIsRefusedAndRepairKeepsTheCutBytes() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("corrupt-old")
        try fixture.install(in: dir, newest: fixture.newestBytes)
        let scan = try LogScan.read(directory: dir.path)
        let oldest = scan.segments[0]
        let victims = scan.records.filter { $0.segment == oldest.path }
        let victim = victims[victims.count / 2]
        var bytes = try FileManagerNames.read(oldest.path)
        bytes[victim.offset + LogFormat.frameHeaderSize + 3] ^= 0x40
        try FileManagerNames.write(oldest.path, bytes)

        let error = #expect(throws: LogError.self) {
            _ = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        }
        #expect(error == .corrupt(file: oldest.path, offset: victim.offset, reason: "record checksum mismatch"))
        #expect(error?.description.contains("\(oldest.path) at byte offset \(victim.offset)") == true)
        #expect(try LogScan.inspect(directory: dir.path).status == .corrupt(file: oldest.path, offset: victim.offset, reason: "record checksum mismatch"))

        let repair = try #require(try LogRepair.run(directory: dir.path, now: 1234))
        #expect(repair.truncatedFile == oldest.path && repair.truncatedAt == victim.offset)
        #expect(repair.movedSegments == fixture.files.dropFirst().map(\.name))
        let lastData = bytes.lastIndex { $0 != 0 }! + 1
        let name = String(oldest.path.split(separator: "/").last!)
        #expect(try FileManagerNames.read(repair.savedTo + "/\(name).from-\(victim.offset)") == Array(bytes[victim.offset..<lastData]))
        for moved in repair.movedSegments {
            #expect(try FileManagerNames.read(repair.savedTo + "/" + moved) == fixture.files.first { $0.name == moved }!.bytes)
        }

        let kept = victims.firstIndex(of: victim)!
        let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        #expect(recovery.records == Array(fixture.acknowledged.prefix(kept)))
        #expect(try await log.append(type: 1, payload: [1], forced: true) == UInt64(kept + 1))
        try await log.close()
        #expect(try LogRepair.run(directory: dir.path) == nil)
    }

    @Test func aMissingMiddleSegmentIsCorruption() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("corrupt-gap")
        try fixture.install(in: dir, newest: fixture.newestBytes)
        try FileManager.default.removeItem(atPath: dir.file(fixture.files[1].name))
        #expect(throws: LogError.self) { _ = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments) }
        guard case let .corrupt(file, _, reason) = try LogScan.inspect(directory: dir.path).status else {
            Issue.record("a gap was not reported")
            return
        }
        #expect(file == dir.file(fixture.files[2].name))
        #expect(reason.contains(fixture.files[1].name))
    }

    @Test func aTornNewestSegmentHeaderIsRecreated() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("torn-header")
        for cut in [0, 10, 63] {
            try fixture.install(in: dir, newest: Array(fixture.newestBytes.prefix(cut)))
            let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
            #expect(recovery.records == Array(fixture.acknowledged.prefix(fixture.olderRecordCount)))
            #expect(try await log.append(type: 1, payload: [], forced: true) == UInt64(fixture.olderRecordCount + 1))
            try await log.close()
            #expect(try LogScan.read(directory: dir.path).status == .intact)
        }
    }
}

/// What a crash can leave of the next segments, prepared ahead of need (spares) or
/// switched to without the segment header reaching the disk: nothing in them was
/// acknowledged.
@Suite struct SpareSegmentTests {
    private func sequence(after fixture: CrashFixture, _ offset: UInt64 = 1) -> UInt64 {
        LogFormat.segmentSequence(fileName: fixture.newestName)! + offset
    }

    /// A spare as the log prepares it, with `frames` written after its header.
    private func spare(_ sequence: UInt64, frames: ClosedRange<UInt64>? = nil) -> [UInt8] {
        var bytes = LogFormat.encodeSpareHeader(sequence: sequence)
        for lsn in frames.map(Array.init) ?? [] {
            [UInt8](repeating: 0x33, count: 40).withUnsafeBytes { LogFormat.appendFrame(to: &bytes, lsn: lsn, type: 1, flags: 0, payload: $0) }
        }
        return bytes + [UInt8](repeating: 0, count: 4096 - bytes.count)
    }

    @Test func aSpareBehindATornTailIsRemovedAndTheTailCut() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("spare-torn")
        let final = fixture.newestFrames.last!
        try fixture.install(in: dir, newest: Array(fixture.newestBytes.prefix(final.offset + final.size / 2)))
        let sparePath = dir.file(LogFormat.segmentFileName(sequence(after: fixture)))
        try FileManagerNames.write(sparePath, spare(sequence(after: fixture)))

        let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        #expect(recovery.records == Array(fixture.acknowledged.dropLast()))
        #expect(recovery.truncatedTail?.file == dir.file(fixture.newestName))
        #expect(recovery.removedFiles == [sparePath])
        #expect(try await log.append(type: 1, payload: [7], forced: true) == UInt64(fixture.acknowledged.count))
        try await log.close()
        let (again, replay) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        #expect(replay.records == Array(fixture.acknowledged.dropLast()) + [LogRecord(lsn: UInt64(fixture.acknowledged.count), type: 1, payload: [7])])
        try await again.close()
    }

    @Test func switchesWhoseHeaderNeverReachedTheDiskAreDroppedWithTheirRecords() async throws {
        // The flusher wrote the segment header and records into the spare; the power loss
        // kept the records' bytes but not the header's, and the next spare was ready too.
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("spare-headerless")
        let next = UInt64(fixture.acknowledged.count + 1)
        for spares in 1...2 {
            try fixture.install(in: dir, newest: fixture.newestBytes)
            var paths: [String] = []
            for offset in 1...UInt64(spares) {
                paths.append(dir.file(LogFormat.segmentFileName(sequence(after: fixture, offset))))
                try FileManagerNames.write(paths.last!, spare(sequence(after: fixture, offset), frames: offset == 1 ? next...(next + 2) : nil))
            }
            let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
            #expect(recovery.records == fixture.acknowledged, "\(spares) spares")
            #expect(recovery.removedFiles == paths, "\(spares) spares")
            #expect(try await log.append(type: 1, payload: [], forced: true) == next, "\(spares) spares")
            try await log.close()
        }
    }

    @Test func aSparePreparationCutShortLeavesATemporaryFileThatIsRemoved() async throws {
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("spare-tmp")
        try fixture.install(in: dir, newest: fixture.newestBytes)
        let temporary = dir.file(LogFormat.segmentFileName(sequence(after: fixture)) + ".tmp")
        try FileManagerNames.write(temporary, [UInt8](repeating: 0, count: 1000))
        let (log, recovery) = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments)
        #expect(recovery.records == fixture.acknowledged)
        #expect(recovery.removedFiles == [temporary])
        try await log.close()
    }

    @Test func aSpareHeaderInFrontOfASegmentIsCorruption() async throws {
        // Only the newest files can be spares.
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("spare-middle")
        try fixture.install(in: dir, newest: fixture.newestBytes)
        let middle = dir.file(fixture.files[1].name)
        var bytes = try FileManagerNames.read(middle)
        bytes.replaceSubrange(0..<LogFormat.segmentHeaderSize, with: LogFormat.encodeSpareHeader(sequence: LogFormat.segmentSequence(fileName: fixture.files[1].name)!))
        try FileManagerNames.write(middle, bytes)
        #expect(throws: LogError.self) { _ = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments) }
        #expect(try FileManagerNames.read(middle) == bytes, "refusing changed nothing")
    }

    @Test func aZeroedHeaderBeforeValidRecordsIsCorruptionNotASpare() async throws {
        // Acknowledged records behind a damaged header are reported, never dropped.
        let fixture = try await CrashFixture.make()
        let dir = TemporaryDirectory("zeroed-header")
        var bytes = fixture.newestBytes
        bytes.replaceSubrange(0..<LogFormat.segmentHeaderSize, with: repeatElement(0, count: LogFormat.segmentHeaderSize))
        try fixture.install(in: dir, newest: bytes)
        #expect(throws: LogError.self) { _ = try WriteAheadLog.open(directory: dir.path, configuration: smallSegments) }
        #expect(try FileManagerNames.read(dir.file(fixture.newestName)) == bytes, "refusing changed nothing")
    }
}
