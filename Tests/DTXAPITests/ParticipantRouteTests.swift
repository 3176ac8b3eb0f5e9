import DTXAPI
import DTXCore
import Foundation
import Testing

@Suite struct ParticipantRouteTests {
    /// The contract's message paths, in its order (Schemas/participant-api.yaml).
    private func contractPaths() throws -> [String] {
        let schema = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Schemas/participant-api.yaml")
        let text = try String(contentsOf: schema, encoding: .utf8)
        return text.split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("  /dtx/"), line.hasSuffix(":") else { return nil }
            return String(line.dropFirst(2).dropLast())
        }
    }

    @Test func theRoutesAreTheContractsMessagesInItsOrder() throws {
        let paths = try contractPaths().filter { $0 != ParticipantBatch.path && $0 != ParticipantRoute.statePath }
        #expect(ParticipantRoute.all.map(\.path) == paths)
        #expect(try contractPaths().contains(ParticipantRoute.statePath))
        #expect(try contractPaths().contains(ParticipantBatch.path))
    }

    @Test func aRouteIsFoundByItsPathAndOnlyForAProtocolThatSendsItsMessage() {
        for route in ParticipantRoute.all { #expect(ParticipantRoute(path: route.path) == route) }
        #expect(ParticipantRoute(path: "/dtx/2pc/try") == nil)
        #expect(ParticipantRoute(path: "/dtx/state") == nil)
        #expect(ParticipantRoute(.tcc, .prepare) == nil)
        #expect(ParticipantRoute(.threePhaseCommit, .rollback)?.path == "/dtx/3pc/rollback")
        #expect(ParticipantRoute(.twoPhaseCommit, .rollback)?.doneStatus == "rolled_back")
        #expect(ParticipantRoute(.threePhaseCommit, .rollback)?.doneStatus == "aborted")
        #expect(ParticipantRoute(.tcc, .try)?.doneStatus == "tried")
        #expect(ParticipantRoute(.saga, .action)?.doneStatus == "done")
        #expect(ParticipantRoute.all.filter(\.batchable).map(\.path) == ["/dtx/2pc/commit", "/dtx/2pc/rollback", "/dtx/tcc/confirm", "/dtx/tcc/cancel", "/dtx/saga/compensate"])
    }
}
