@testable import DTXCoordinator
import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Logging
import Synchronization
import Testing

/// Every participant prepares and commits.
private struct AgreeingTransport: Transport {
    func send(_ message: ParticipantMessage, protocol: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        .done(status: message == .prepare ? "prepared" : "committed", result: nil)
    }

    func shutdown() async {}
}

/// The system's timers and tasks, and a wall clock the test moves forward.
private final class MovableClock: EngineEnvironment {
    private let offset = Mutex<TimeInterval>(0)
    private let system = SystemEnvironment()

    func advance(days: Double) { offset.withLock { $0 += days * 86_400 } }
    func now() -> Date { Date().addingTimeInterval(offset.withLock { $0 }) }
    func schedule(after delay: Duration, _ body: @escaping @Sendable () -> Void) -> ScheduledCall { system.schedule(after: delay, body) }
    func spawn(_ body: @escaping @Sendable () async -> Void) { system.spawn(body) }
    func random() -> Double { system.random() }
    func monotonicNow() -> Duration { system.monotonicNow() }
    func sleep(for delay: Duration) async throws { try await system.sleep(for: delay) }
    func task<T: Sendable>(_ body: @escaping @Sendable () async -> T) -> Task<T, Never> { system.task(body) }
    func uniqueName() -> String { system.uniqueName() }
}

@Suite struct HistoryRetentionTests {
    private static let logger = Logger(label: "history-retention-tests")

    /// A finished transaction older than the retention is forgotten (by the next finish,
    /// or by maintenance while nothing happens), and the checkpoint deletes its records:
    /// a restart does not bring it back. Younger ones stay.
    @Test func finishedTransactionsOlderThanTheRetentionAreForgottenAndTheirRecordsDeleted() async throws {
        let directory = NSTemporaryDirectory() + "/dtx-retention-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let clock = MovableClock()
        var configuration = CoordinatorConfiguration()
        configuration.historyRetention = .seconds(7 * 86_400)
        configuration.checkpointInterval = .milliseconds(50)
        var (log, recovery) = try WriteAheadLog.open(directory: directory)
        let coordinator = try Coordinator(store: WALStore(log: log, records: recovery.records), transport: AgreeingTransport(),
                                          configuration: configuration, environment: clock, logger: Self.logger)
        for name in ["a", "b"] {
            _ = try await coordinator.participants.register(ParticipantRegistration(name: name, url: "http://127.0.0.1:9"))
        }
        func run(_ gid: String) async throws {
            let (view, _) = try await coordinator.submit(TransactionSubmission(gid: gid, branches: [
                BranchSpec(participant: "a", operation: "debit"), BranchSpec(participant: "b", operation: "credit"),
            ], timeout: 30, wait: true))
            #expect(view.status == "committed")
        }
        func known(_ gid: String, in coordinator: Coordinator) -> Bool {
            (try? coordinator.transaction(GlobalTransactionID(validating: gid))) != nil
        }
        for gid in ["old-1", "old-2"] { try await run(gid) }
        clock.advance(days: 6)
        try await run("young")
        clock.advance(days: 1.5)
        try await run("new")  // finishing it forgets what finished more than 7 days ago
        #expect(!known("old-1", in: coordinator) && !known("old-2", in: coordinator))
        #expect(known("young", in: coordinator) && known("new", in: coordinator))

        // Nothing happens for another 6 days: maintenance forgets "young" on its own.
        clock.advance(days: 6)
        let maintenance = Task { await coordinator.runMaintenance() }
        for _ in 0..<100 where known("young", in: coordinator) { try await Task.sleep(for: .milliseconds(20)) }
        #expect(!known("young", in: coordinator) && known("new", in: coordinator))
        try await Task.sleep(for: .milliseconds(200))  // its checkpoint
        maintenance.cancel()
        await maintenance.value
        await coordinator.shutdown()
        try await log.close()

        (log, recovery) = try WriteAheadLog.open(directory: directory)
        let restarted = try Coordinator(store: WALStore(log: log, records: recovery.records), transport: AgreeingTransport(),
                                        configuration: configuration, environment: clock, logger: Self.logger)
        #expect(["old-1", "old-2", "young"].allSatisfy { !known($0, in: restarted) }, "the checkpoint deleted their records")
        #expect(known("new", in: restarted))
        await restarted.shutdown()
        try await log.close()
    }

    /// The list shows what the history keeps, newest first, each gid once: not what it
    /// forgot (before and after the forgotten ones are compacted away), and a forgotten
    /// gid submitted again once; pages follow each other without gaps or repeats.
    @Test func theListShowsWhatTheHistoryKeepsNewestFirst() async throws {
        let directory = NSTemporaryDirectory() + "/dtx-list-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = CoordinatorConfiguration()
        configuration.historyLimit = 100
        let (log, recovery) = try WriteAheadLog.open(directory: directory)
        let coordinator = try Coordinator(store: WALStore(log: log, records: recovery.records), transport: AgreeingTransport(),
                                          configuration: configuration, logger: Self.logger)
        _ = try await coordinator.participants.register(ParticipantRegistration(name: "a", url: "http://127.0.0.1:9"))
        func run(_ gid: String) async throws {
            _ = try await coordinator.submit(TransactionSubmission(gid: gid, branches: [BranchSpec(participant: "a", operation: "x")], timeout: 30, wait: true))
        }
        func listed(pageSize: Int) -> [String] {
            var gids: [String] = []
            var query = Coordinator.ListQuery()
            query.limit = pageSize
            while true {
                let page = coordinator.list(query)
                gids += page.transactions.map(\.gid)
                guard let next = page.nextCursor else { return gids }
                query.cursor = UInt64(next)
            }
        }
        // 150 finished: the 50 oldest are forgotten but still linger in the list's index.
        for index in 0..<150 { try await run("t-\(index)") }
        let newest = (50..<150).reversed().map { "t-\($0)" }
        #expect(listed(pageSize: 1000) == newest)
        #expect(listed(pageSize: 7) == newest, "pages of 7 follow each other")
        // A forgotten gid submitted again is a new transaction, listed once, newest.
        try await run("t-3")
        #expect(listed(pageSize: 1000) == ["t-3"] + newest.dropLast())
        // Enough forgotten for the index to be compacted: the same answer.
        for index in 150..<4400 { try await run("t-\(index)") }
        let later = (4300..<4400).reversed().map { "t-\($0)" }
        #expect(listed(pageSize: 1000) == later)
        #expect(listed(pageSize: 13) == later)
        await coordinator.shutdown()
        try await log.close()
    }
}
