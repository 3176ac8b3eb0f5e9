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

    private static func open(_ directory: String) throws -> (WriteAheadLog, Coordinator) {
        let (log, recovery) = try WriteAheadLog.open(directory: directory)
        return (log, try Coordinator(log: log, records: recovery.records, transport: HTTPTransport(), logger: logger))
    }

    private static func temporaryDirectory() -> String {
        NSTemporaryDirectory() + "/dtx-registry-\(UUID().uuidString)"
    }

    private static func registration(_ url: String) -> ParticipantRegistration {
        ParticipantRegistration(name: "svc", url: url, protocols: [.twoPhaseCommit])
    }

    /// `register` makes its record durable before it changes memory. A checkpoint that
    /// reads the new record in between keeps it: the next start lists the new URL.
    @Test func aCheckpointBetweenARegistrationsRecordAndMemoryKeepsTheNewURL() async throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let (log, coordinator) = try Self.open(directory)
            _ = try await coordinator.register(Self.registration("http://127.0.0.1:1001"))
            // The moment in between: the record of the move is in the log, memory has the old URL.
            let moved = ParticipantRegistry.Entry(name: "svc", url: "http://127.0.0.1:1002", protocols: [.twoPhaseCommit], token: nil,
                                                  registeredAt: Date(), lastSeen: nil, lsn: 0)
            try await log.append(type: ParticipantRegistry.RecordType.registered.rawValue, payload: ParticipantRegistry.registrationRecord(moved), forced: true)
            #expect(try coordinator.participant("svc").url == "http://127.0.0.1:1001")
            let result = try await coordinator.checkpoint()
            #expect(result.segmentsRemoved == 1)
            await coordinator.shutdown()
            try await log.close()
        }
        let (log, coordinator) = try Self.open(directory)
        #expect(try coordinator.participant("svc").url == "http://127.0.0.1:1002")
        await coordinator.shutdown()
        try await log.close()
    }

    /// Likewise a deregistration whose record is durable while memory still lists the participant.
    @Test func aCheckpointBetweenADeregistrationsRecordAndMemoryKeepsItGone() async throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let (log, coordinator) = try Self.open(directory)
            _ = try await coordinator.register(Self.registration("http://127.0.0.1:1001"))
            try await log.append(type: ParticipantRegistry.RecordType.deregistered.rawValue, payload: ParticipantRegistry.deregistrationRecord("svc"), forced: true)
            _ = try await coordinator.checkpoint()
            await coordinator.shutdown()
            try await log.close()
        }
        let (log, coordinator) = try Self.open(directory)
        #expect(coordinator.participants().isEmpty)
        await coordinator.shutdown()
        try await log.close()
    }

    /// A first registration of a name, caught between its durable record and memory:
    /// memory has nothing for the name, and the checkpoint keeps the record all the same.
    @Test func aCheckpointDuringAFirstRegistrationKeepsIt() async throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let (log, coordinator) = try Self.open(directory)
            _ = try await coordinator.register(ParticipantRegistration(name: "other", url: "http://127.0.0.1:1000", protocols: [.twoPhaseCommit]))
            let fresh = ParticipantRegistry.Entry(name: "svc", url: "http://127.0.0.1:1001", protocols: [.twoPhaseCommit], token: nil,
                                                  registeredAt: Date(), lastSeen: nil, lsn: 0)
            try await coordinator.registry.changing {
                try await log.append(type: ParticipantRegistry.RecordType.registered.rawValue, payload: ParticipantRegistry.registrationRecord(fresh), forced: true)
                #expect(throws: CoordinatorError.self) { try coordinator.participant("svc") }
                _ = try await coordinator.checkpoint()
            }
            await coordinator.shutdown()
            try await log.close()
        }
        let (log, coordinator) = try Self.open(directory)
        #expect(coordinator.participants().map(\.name) == ["other", "svc"])
        await coordinator.shutdown()
        try await log.close()
    }

    /// Outside such a moment only the current registration survives a checkpoint:
    /// older URLs and finished deregistrations are dropped.
    @Test func aCheckpointKeepsOnlyTheCurrentRegistration() async throws {
        let directory = Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let (log, coordinator) = try Self.open(directory)
            _ = try await coordinator.register(Self.registration("http://127.0.0.1:1001"))
            _ = try await coordinator.register(Self.registration("http://127.0.0.1:1002"))
            _ = try await coordinator.register(ParticipantRegistration(name: "gone", url: "http://127.0.0.1:1003", protocols: [.twoPhaseCommit]))
            try await coordinator.deregister("gone")
            let result = try await coordinator.checkpoint()
            #expect(result.recordsRead == 4)
            #expect(result.recordsKept == 1)
            await coordinator.shutdown()
            try await log.close()
        }
        let (log, coordinator) = try Self.open(directory)
        #expect(coordinator.participants().map(\.url) == ["http://127.0.0.1:1002"])
        await coordinator.shutdown()
        try await log.close()
    }
}
