@testable import DTXCoordinator
import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Logging
import Synchronization
import Testing

/// A WAL store that, once `fence()` is called, refuses forced appends as a store shared
/// by several nodes does when another node has taken this one's lease.
private final class FencingStore: CoordinatorStore {
    let wal: WALStore
    private let fencedOff = Mutex(false)

    init(_ wal: WALStore) { self.wal = wal }

    func fence() { fencedOff.withLock { $0 = true } }

    func recordsAtStart() -> [LogRecord] { wal.recordsAtStart() }
    func append(type: UInt16, payload: [UInt8]) throws { try wal.append(type: type, payload: payload) }
    func appendForced(type: UInt16, payload: [UInt8]) async throws -> UInt64 {
        if fencedOff.withLock({ $0 }) { throw StoreError.fenced("lease taken over by node-2") }
        return try await wal.appendForced(type: type, payload: payload)
    }
    func sync() async throws {
        if fencedOff.withLock({ $0 }) { throw StoreError.fenced("lease taken over by node-2") }
        try await wal.sync()
    }
    func compact(keep: @escaping @Sendable (LogRecord) throws -> Bool) async throws -> CompactionResult { try await wal.compact(keep: keep) }
    var position: UInt64 { wal.position }
    var metrics: [StoreMetric] { wal.metrics }
}

@Suite struct FencingTests {
    private static let logger = Logger(label: "fencing-tests")

    /// A forced append refused as fenced stops the coordinator: the submission that met it
    /// is refused 503 `log_unavailable` and its transaction halts, saying why; later
    /// submissions get 503 `fenced`; and what the store
    /// refused was never written, so a restart does not know the transaction.
    @Test func aFencedForcedAppendStopsTheCoordinator() async throws {
        let directory = NSTemporaryDirectory() + "/dtx-fencing-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var (log, recovery) = try WriteAheadLog.open(directory: directory)
        let store = FencingStore(WALStore(log: log, records: recovery.records))
        let coordinator = try Coordinator(store: store, transport: HTTPTransport(), logger: Self.logger)
        _ = try await coordinator.participants.register(ParticipantRegistration(name: "svc", url: "http://127.0.0.1:9", protocols: [.tcc]))
        let branches = [BranchSpec(participant: "svc", operation: "reserve")]

        store.fence()
        #expect(!coordinator.isFenced)
        let unwritten = await #expect(throws: CoordinatorError.self) {
            _ = try await coordinator.submit(TransactionSubmission(gid: "t-fenced", protocol: .tcc, branches: branches))
        }
        #expect(unwritten?.kind == .unavailable && unwritten?.code == "log_unavailable")
        let view = try coordinator.transaction(try GlobalTransactionID(validating: "t-fenced"))
        #expect(view.error?.contains("fenced: lease taken over by node-2") == true, "\(view.error ?? "no error")")
        #expect(coordinator.isFenced)
        let refused = await #expect(throws: CoordinatorError.self) {
            _ = try await coordinator.submit(TransactionSubmission(gid: "t-after", protocol: .tcc, branches: branches))
        }
        #expect(refused?.kind == .unavailable && refused?.code == "fenced")
        await coordinator.shutdown()
        try await log.close()

        (log, recovery) = try WriteAheadLog.open(directory: directory)
        let restarted = try Coordinator(store: WALStore(log: log, records: recovery.records), transport: HTTPTransport(), logger: Self.logger)
        #expect(restarted.outcome(gid: try GlobalTransactionID(validating: "t-fenced"), branch: nil).outcome == "aborted")
        #expect(throws: CoordinatorError.self) { _ = try restarted.transaction(try GlobalTransactionID(validating: "t-fenced")) }
        await restarted.shutdown()
        try await log.close()
    }
}
