import DTXCoordinator
import DTXLog
import Foundation

/// The coordinator's disk in a run. A record is durable once a sync that started after
/// it was written completes. A crash keeps a random prefix of the unsynced tail (what the
/// system happened to write) and loses the rest; a torn last record is one of those lost,
/// since a reader drops it by its checksum.
final class SimDisk: @unchecked Sendable {
    private(set) var durable: [LogRecord] = []
    private(set) var unsynced: [LogRecord] = []
    private(set) var nextLSN: UInt64 = 1

    func write(type: UInt16, payload: [UInt8]) -> UInt64 {
        defer { nextLSN += 1 }
        unsynced.append(LogRecord(lsn: nextLSN, type: type, payload: payload))
        return nextLSN
    }

    func sync(through lsn: UInt64) {
        let count = unsynced.prefix { $0.lsn <= lsn }.count
        durable += unsynced.prefix(count)
        unsynced.removeFirst(count)
    }

    /// Returns how many unsynced records were lost.
    func crash(_ random: inout SimRandom) -> Int {
        let kept = random.int(0...unsynced.count)
        durable += unsynced.prefix(kept)
        defer { unsynced = [] }
        return unsynced.count - kept
    }

    func compact(keep: (LogRecord) throws -> Bool) rethrows -> (read: Int, kept: Int) {
        let read = durable.count
        durable = try durable.filter(keep)
        return (read, durable.count)
    }
}

struct SimulatedCrash: Error, CustomStringConvertible {
    var description: String { "the coordinator crashed" }
}

/// One coordinator incarnation's store on the disk. Once that coordinator crashes,
/// every call fails and a sync in flight reports failure.
final class SimStore: CoordinatorStore, @unchecked Sendable {
    private let disk: SimDisk
    private let world: World
    private let syncTime: ClosedRange<Int>
    var alive = true

    init(disk: SimDisk, world: World, syncMicroseconds: ClosedRange<Int>) {
        self.disk = disk
        self.world = world
        syncTime = syncMicroseconds
    }

    func recordsAtStart() -> [LogRecord] { disk.durable }

    func append(type: UInt16, payload: [UInt8]) throws {
        guard alive else { throw SimulatedCrash() }
        _ = disk.write(type: type, payload: payload)
    }

    func appendForced(type: UInt16, payload: [UInt8]) async throws -> UInt64 {
        guard alive else { throw SimulatedCrash() }
        let lsn = disk.write(type: type, payload: payload)
        try await sync()
        return lsn
    }

    func sync() async throws {
        guard alive else { throw SimulatedCrash() }
        let through = disk.nextLSN - 1
        let delay = Duration.microseconds(world.rng.int(syncTime))
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            _ = world.schedule(after: delay) { [self] in
                if alive { disk.sync(through: through) }
                done.resume()
            }
        }
        guard alive else { throw SimulatedCrash() }
    }

    func compact(keep: @escaping @Sendable (LogRecord) throws -> Bool) async throws -> CompactionResult {
        guard alive else { throw SimulatedCrash() }
        let (read, kept) = try disk.compact(keep: keep)
        return CompactionResult(recordsRead: read, recordsKept: kept, segmentsRemoved: 0)
    }

    var position: UInt64 { disk.nextLSN }
    var metrics: [StoreMetric] { [] }
}
