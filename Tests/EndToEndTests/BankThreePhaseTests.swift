import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// The bank example in 3PC: a transfer between the SQLite and the PostgreSQL accounts
/// services commits, and when dtxd dies during it and stays dead, the two services finish
/// it by themselves (termination), each database left with nothing prepared.
@Suite(.serialized, .bankPostgres) struct BankThreePhaseTests {
    private let eu = BankCluster.eu
    private let us = BankCluster.us

    init() {
        // Seconds a 3PC branch waits before it acts alone, inherited by the services the
        // clusters start; short, so these tests stay fast.
        setenv("DTX_PARTICIPANT_3PC_TIMEOUT", "1.0", 1)
    }

    /// Starts the bank with alice (SQLite) holding 10 000 and bob (PostgreSQL) 1 000.
    private func start(_ name: String, daemonFailpoints: String? = nil) async throws -> BankCluster {
        let bank = try await BankCluster.start(name, daemonFailpoints: daemonFailpoints)
        try await bank.openAccount(eu, "alice", balance: 10_000)
        try await bank.openAccount(us, "bob", balance: 1_000)
        return bank
    }

    /// Nothing prepared in either database, nor 3PC state left.
    private func nothingPrepared(_ bank: BankCluster) async throws -> Bool {
        let threePhase = try bank.withSQLite { try $0.query("SELECT count(*) AS n FROM dtx_3pc").first?["n"]?.integerValue }
        let postgres = try await bank.pgPreparedCount()
        return try bank.sqlitePreparedCount() == 0 && bank.sqliteLockCount() == 0 && threePhase == 0 && postgres == 0
    }

    /// Submits a 3PC transfer of 400 from alice to bob, and waits for dtxd to die at its failpoint.
    private func transferUntilDtxdDies(_ bank: BankCluster, gid: String) async throws {
        var transfer = BankCluster.transfer(gid, from: (eu, "alice"), to: (us, "bob"), amount: 400)
        transfer.protocol = .threePhaseCommit
        _ = try? await bank.client.submit(transfer)
        #expect(try await bank.cluster.daemon?.waitForExit() == SIGKILL)
    }

    @Test func aThreePhaseTransferCommitsOnBothDatabases() async throws {
        let bank = try await start("bank3-commit")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }

        let moved = try await run("transfer", ["--from", "\(eu):alice", "--to", "\(us):bob", "--amount", "2500", "--protocol", "3pc", "--gid", "bank3-commit", "--url", bank.cluster.url])
        #expect(moved.status == 0, "\(moved.out)\(moved.err)")
        let view = try await bank.client.transaction("bank3-commit")
        #expect(view.protocol == .threePhaseCommit)
        #expect(view.status == "committed")
        #expect(view.branches.map(\.state) == ["committed", "committed"])
        #expect(try await bank.databaseBalances(eu) == ["alice": 7_500])
        #expect(try await bank.databaseBalances(us) == ["bob": 3_500])
        #expect(try bank.sqliteOutcomes()[BranchKey(gid: "bank3-commit", branch: 0)] == "committed")
        #expect(try await bank.pgCommitted() == [BranchKey(gid: "bank3-commit", branch: 1)])
        #expect(try await nothingPrepared(bank))
    }

    /// dtxd dies once the pre-commit is durable and one service acknowledged PRECOMMIT
    /// (p): the other learns p from it, and both commit without dtxd.
    @Test func dtxdDeadAfterAPreCommitBothServicesCommitAlone() async throws {
        let bank = try await start("bank3-kill-p", daemonFailpoints: "after-pre-commit-acknowledged")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }

        try await transferUntilDtxdDies(bank, gid: "bank3-p")

        let done = try await eventually(seconds: 20) {
            let (sqlite, postgres, finished) = (try await bank.databaseBalances(eu), try await bank.databaseBalances(us), try await nothingPrepared(bank))
            return sqlite == ["alice": 9_600] && postgres == ["bob": 1_400] && finished
        }
        #expect(done, "\(bank.logs())")
        #expect(try bank.sqliteOutcomes()[BranchKey(gid: "bank3-p", branch: 0)] == "committed")
        #expect(try await bank.pgCommitted() == [BranchKey(gid: "bank3-p", branch: 1)])
        #expect(!bank.daemonIsRunning)
    }

    /// dtxd dies once the pre-commit is durable but before any PRECOMMIT is sent: both
    /// services are in w, so termination aborts (nobody can have committed), and both
    /// roll back without dtxd instead of staying in doubt as 2PC would.
    @Test func dtxdDeadAfterThePreCommitDecisionBothServicesRollBackAlone() async throws {
        let bank = try await start("bank3-kill-w", daemonFailpoints: "after-pre-commit-decision")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }

        try await transferUntilDtxdDies(bank, gid: "bank3-w")

        let done = try await eventually(seconds: 20) {
            let (rolledBack, finished) = (try await bank.pgRolledBack(), try await nothingPrepared(bank))
            return try bank.sqliteOutcomes()[BranchKey(gid: "bank3-w", branch: 0)] == "rolled_back" && rolledBack.contains(BranchKey(gid: "bank3-w", branch: 1)) && finished
        }
        #expect(done, "\(bank.logs())")
        #expect(try await bank.databaseBalances(eu) == ["alice": 10_000])
        #expect(try await bank.databaseBalances(us) == ["bob": 1_000])
        #expect(try await bank.pgCommitted().isEmpty)
        #expect(!bank.daemonIsRunning)
    }
}
