@testable import DTXCoordinator
import DTXAPI
import DTXCore
import DTXLog
import Foundation
import Logging
import Testing

/// The registry across checkpoints and restarts, with a real log in a temporary directory.
@Suite struct RegistryCheckpointTests {
    private static let logger = Logger(label: "registry-checkpoint-tests")

    /// Runs `before` on a coordinator over a new log, then `after` on one started again
    /// from that log.
    private static func acrossARestart(
        _ before: (WriteAheadLog, Coordinator) async throws -> Void, then after: (Coordinator) throws -> Void
    ) async throws {
        let directory = NSTemporaryDirectory() + "/dtx-registry-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for run in 0..<2 {
            let (log, recovery) = try WriteAheadLog.open(directory: directory)
            let coordinator = try Coordinator(store: WALStore(log: log, records: recovery.records), transport: HTTPTransport(), logger: logger)
            do {
                if run == 0 { try await before(log, coordinator) } else { try after(coordinator) }
            } catch {
                await coordinator.shutdown()
                try await log.close()
                throw error
            }
            await coordinator.shutdown()
            try await log.close()
        }
    }

    private static func registration(_ url: String, name: String = "svc") -> ParticipantRegistration {
        ParticipantRegistration(name: name, url: url, protocols: [.twoPhaseCommit])
    }

    /// The record `register` writes for `url`, without the change to memory that follows.
    private static func registrationRecord(_ url: String) -> [UInt8] {
        ParticipantRegistry.registrationRecord(.init(name: "svc", url: url, protocols: [.twoPhaseCommit], token: nil,
                                                     registeredAt: Date(), lastSeen: nil, lsn: 0))
    }

    /// `register` makes its record durable before it changes memory. A checkpoint that
    /// reads the new record in between keeps it: the next start lists the new URL.
    @Test func aCheckpointBetweenARegistrationsRecordAndMemoryKeepsTheNewURL() async throws {
        try await Self.acrossARestart { log, coordinator in
            _ = try await coordinator.participants.register(Self.registration("http://127.0.0.1:1001"))
            // The moment in between: the record of the move is in the log, memory has the old URL.
            try await coordinator.registry.changing {
                try await log.append(type: ParticipantRegistry.RecordType.registered.rawValue, payload: Self.registrationRecord("http://127.0.0.1:1002"), forced: true)
                #expect(try coordinator.participants.participant("svc").url == "http://127.0.0.1:1001")
                let result = try await coordinator.checkpoint()
                #expect(result.segmentsRemoved == 1)
            }
        } then: { coordinator throws in
            #expect(try coordinator.participants.participant("svc").url == "http://127.0.0.1:1002")
        }
    }

    /// A first registration of a name, caught between its durable record and memory:
    /// memory has nothing for the name, and the checkpoint keeps the record all the same.
    @Test func aCheckpointDuringAFirstRegistrationKeepsIt() async throws {
        try await Self.acrossARestart { log, coordinator in
            _ = try await coordinator.participants.register(Self.registration("http://127.0.0.1:1000", name: "other"))
            try await coordinator.registry.changing {
                try await log.append(type: ParticipantRegistry.RecordType.registered.rawValue, payload: Self.registrationRecord("http://127.0.0.1:1001"), forced: true)
                #expect(throws: CoordinatorError.self) { try coordinator.participants.participant("svc") }
                _ = try await coordinator.checkpoint()
            }
        } then: { coordinator throws in
            #expect(coordinator.participants.all().map(\.name) == ["other", "svc"])
        }
    }

    /// Likewise a deregistration whose record is durable while memory still lists the participant.
    @Test func aCheckpointBetweenADeregistrationsRecordAndMemoryKeepsItGone() async throws {
        try await Self.acrossARestart { log, coordinator in
            _ = try await coordinator.participants.register(Self.registration("http://127.0.0.1:1001"))
            try await coordinator.registry.changing {
                try await log.append(type: ParticipantRegistry.RecordType.deregistered.rawValue, payload: ParticipantRegistry.deregistrationRecord("svc"), forced: true)
                _ = try await coordinator.checkpoint()
            }
        } then: { coordinator throws in
            #expect(coordinator.participants.all().isEmpty)
        }
    }

    /// Outside such a moment only the current registration survives a checkpoint:
    /// older URLs and finished deregistrations are dropped.
    @Test func aCheckpointKeepsOnlyTheCurrentRegistration() async throws {
        try await Self.acrossARestart { _, coordinator in
            _ = try await coordinator.participants.register(Self.registration("http://127.0.0.1:1001"))
            _ = try await coordinator.participants.register(Self.registration("http://127.0.0.1:1002"))
            _ = try await coordinator.participants.register(Self.registration("http://127.0.0.1:1003", name: "gone"))
            try await coordinator.participants.deregister("gone")
            let result = try await coordinator.checkpoint()
            #expect(result.recordsRead == 4)
            #expect(result.recordsKept == 1)
        } then: { coordinator throws in
            #expect(coordinator.participants.all().map(\.url) == ["http://127.0.0.1:1002"])
        }
    }
}
