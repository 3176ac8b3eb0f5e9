@testable import DTXCoordinator
import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Logging
import Testing

/// Participants in process: every PREPARE is answered with a result; COMMIT reaches
/// branch 0 only (branch 1's participant is down), so the transaction stays committing.
private struct HalfDownTransport: Transport {
    func send(_ message: ParticipantMessage, protocol: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        switch (message, request.branch) {
        case (.prepare, _): .done(status: "prepared", result: .object(["reserved": .number(Double(request.branch + 1))]))
        case (.commit, 0): .done(status: "committed", result: nil)
        default: .failed("\(endpoint.name) unreachable: connection refused")
        }
    }

    func shutdown() async {}
}

@Suite struct UnfinishedHistoryTests {
    private static let logger = Logger(label: "unfinished-history-tests")

    /// A transaction still in phase two when dtxd stops shows, after the restart, what it
    /// showed at its decision: its results, attempts and timeline (then "recovered from
    /// the log" and what happens next), not a view rebuilt from its protocol records alone.
    @Test func aDecidedTransactionKeepsItsViewAcrossARestart() async throws {
        let directory = NSTemporaryDirectory() + "/dtx-unfinished-history-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = CoordinatorConfiguration()
        configuration.retryPolicy = RetryPolicy(initialDelay: .seconds(60), maximumDelay: .seconds(60), multiplier: 1, jitter: 0)
        var (log, recovery) = try WriteAheadLog.open(directory: directory)
        let coordinator = try Coordinator(store: WALStore(log: log, records: recovery.records), transport: HalfDownTransport(),
                                          configuration: configuration, logger: Self.logger)
        for name in ["a", "b"] {
            _ = try await coordinator.participants.register(ParticipantRegistration(name: name, url: "http://127.0.0.1:9"))
        }
        let gid = try GlobalTransactionID(validating: "unfinished-1")
        _ = try await coordinator.submit(TransactionSubmission(gid: gid.rawValue, branches: [
            BranchSpec(participant: "a", operation: "debit"), BranchSpec(participant: "b", operation: "credit"),
        ], timeout: 30))
        var before = try coordinator.transaction(gid)
        for _ in 0..<200 where before.branches[1].lastError == nil {
            try await Task.sleep(for: .milliseconds(10))
            before = try coordinator.transaction(gid)
        }
        #expect(before.status == "committing" && before.branches.map(\.state) == ["committed", "committing"])
        await coordinator.shutdown()
        try await log.close()

        (log, recovery) = try WriteAheadLog.open(directory: directory)
        let restarted = try Coordinator(store: WALStore(log: log, records: recovery.records), transport: HalfDownTransport(),
                                        configuration: configuration, logger: Self.logger)
        let after = try restarted.transaction(gid)
        // Times are kept to the millisecond.
        #expect(abs(after.createdAt.timeIntervalSince(before.createdAt)) < 0.001 && after.timeout == before.timeout)
        #expect(after.branches.map(\.result) == [.object(["reserved": .number(1)]), .object(["reserved": .number(2)])])
        #expect(after.branches.map(\.participant) == ["a", "b"])
        let decided = try #require(before.timeline.firstIndex { $0.event == "decided commit" })
        let kept = Array(before.timeline.prefix(through: decided))
        #expect(Array(after.timeline.prefix(kept.count)).map(\.event) == kept.map(\.event))
        #expect(after.timeline.contains { $0.event == "recovered from the log" })
        await restarted.shutdown()
        try await log.close()
    }
}
