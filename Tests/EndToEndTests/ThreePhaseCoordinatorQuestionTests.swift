import DTXAPI
import DTXClient
import DTXCore
@testable import DTXParticipant
import Foundation
import Testing

/// The question a 3PC branch in termination asks dtxd (`GET
/// /v1/transactions/{gid}/state`), asked by the kit's own code for a gid with `:` and
/// `.`. The kit percent-encodes the gid; before dtxd decoded path parameters, it answered
/// `aborted` (presumed abort) for such a gid whatever the transaction's state, so a branch
/// in termination would have rolled back a committed transaction.
@Suite struct ThreePhaseCoordinatorQuestionTests {
    @Test func theKitsStateQuestionNamesTheGidItMeans() async throws {
        let cluster = try Cluster("e2e-3pc-question")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        let gid = "order:3pc.7"
        let view = try await cluster.client.submit(TransactionSubmission(
            gid: gid, protocol: .threePhaseCommit,
            branches: [BranchSpec(participant: "a", operation: "x"), BranchSpec(participant: "b", operation: "y")], wait: true))
        #expect(view.status == "committed")

        let network = ThreePhaseNetwork(coordinatorURL: cluster.url, coordinator: cluster.client, coordinatorToken: nil, peerToken: nil, timeout: .seconds(10))
        #expect(await network.coordinatorState(of: BranchRef(gid: gid, branch: 0)) == .committed)
        #expect(await network.coordinatorState(of: BranchRef(gid: gid, branch: 1)) == .committed)
        #expect(await network.coordinatorState(of: BranchRef(gid: "order:never.seen", branch: 0)) == .aborted, "presumed abort for a valid unknown gid")

        // The peers' question (`GET {base}/dtx/state?gid=…`) carries the encoded gid too.
        let peers = try await network.resolve(["a", "b"])
        let states = await network.peerStates(gid: gid, [0, 1], of: peers)
        #expect(states == [0: .committed, 1: .committed], "\(states)")
    }
}
