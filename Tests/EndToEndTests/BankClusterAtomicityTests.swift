import DTXTestSupport
import Foundation
import Testing

/// The randomized atomicity run in cluster mode: three dtxd nodes on a PostgreSQL store,
/// the SQLite and PostgreSQL accounts services, rounds of concurrent transfers each sent
/// to a random node, while one node (never all) or one service is SIGKILLed, directly or
/// at a failpoint, and brought back. Then the same invariant as `BankAtomicityTests`,
/// checked through one node, which lists the whole cluster: balances conserved, nothing
/// left prepared, every outcome a caller was told is the one the databases hold.
///
/// `DTX_SEED=<seed> swift test --filter BankClusterAtomicity` replays the plan.
@Suite(.serialized, .bankPostgres) struct BankClusterAtomicityTests {
    @Test func transfersAcrossNodesUnderRandomKillsAreAllOrNothing() async throws {
        let seed = ProcessInfo.processInfo.environment["DTX_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max)
        let tag = "cluster atomicity seed \(seed) (replay: DTX_SEED=\(seed))"
        print(tag)
        let bank: BankCluster
        do {
            bank = try await BankCluster.startCluster("bank-cluster-atomicity", nodes: 3)
        } catch {
            Issue.record("\(tag): cannot start the cluster: \(error)")
            return
        }
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        await BankAtomicityTests.run(bank, seed: seed, rounds: 8, tag: tag, gidPrefix: "catom")
    }
}
