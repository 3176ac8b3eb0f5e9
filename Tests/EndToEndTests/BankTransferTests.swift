import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// The bank example end to end: dtxd, an accounts service on SQLite and one on a real
/// PostgreSQL server, as processes, SIGKILLed at failpoints and restarted; the outcome is
/// checked in both databases directly.
@Suite(.serialized, .bankPostgres) struct BankTransferTests {
    private let eu = BankCluster.eu
    private let us = BankCluster.us

    @Test func aTransferCommitsOnBothDatabasesAndARefusedOneRollsBackOnBoth() async throws {
        let bank = try await BankCluster.start("bank-commit")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        try await bank.openAccount(eu, "alice", balance: 10_000)
        try await bank.openAccount(us, "bob", balance: 500)

        // The transfer CLI, as the example's README runs it.
        let moved = try await run("transfer", ["--from", "\(eu):alice", "--to", "\(us):bob", "--amount", "2500", "--gid", "bank-commit", "--url", bank.cluster.url])
        #expect(moved.status == 0, "\(moved.out)\(moved.err)")
        #expect(moved.out.contains("committed: moved 2500 from \(eu):alice to \(us):bob (gid bank-commit"), "\(moved.out)")
        let committed = try await bank.client.transaction("bank-commit")
        #expect(committed.status == "committed")
        #expect(committed.decision == .commit)
        #expect(committed.branches.map(\.participant) == [eu, us])
        #expect(committed.branches.map(\.state) == ["committed", "committed"])
        // The services answer the new balances, and so do the databases themselves.
        #expect(try await bank.balances(eu) == ["alice": 7_500])
        #expect(try await bank.balances(us) == ["bob": 3_000])
        #expect(try await bank.databaseBalances(eu) == ["alice": 7_500])
        #expect(try await bank.databaseBalances(us) == ["bob": 3_000])
        // Each database's own outcome record says committed; nothing is left prepared.
        #expect(try bank.sqliteOutcomes()[BranchKey(gid: "bank-commit", branch: 0)] == "committed")
        #expect(try await bank.pgCommitted() == [BranchKey(gid: "bank-commit", branch: 1)])
        #expect(try bank.sqlitePreparedCount() == 0)
        #expect(try bank.sqliteLockCount() == 0)
        #expect(try await bank.pgPreparedCount() == 0)

        // More than bob has: the debit on PostgreSQL refuses, so the credit on SQLite rolls back too.
        let refused = try await run("transfer", ["--from", "\(us):bob", "--to", "\(eu):alice", "--amount", "999999", "--gid", "bank-refused", "--url", bank.cluster.url])
        #expect(refused.status == 1, "\(refused.out)\(refused.err)")
        #expect(refused.out.contains("rolled back: account bob has too little money for this debit (gid bank-refused)"), "\(refused.out)\(refused.err)")
        #expect(try await eventually { try await bank.client.transaction("bank-refused").status == "aborted" })
        let aborted = try await bank.client.transaction("bank-refused")
        #expect(aborted.decision == .abort)
        #expect(aborted.error?.contains("too little money") == true, "\(String(describing: aborted.error))")
        #expect(aborted.branches[0].state == "voted_no")
        #expect(aborted.branches[0].result?["error"]?["code"]?.stringValue == "insufficient_funds")
        #expect(aborted.branches[1].state == "rolled_back")
        // The CLI's view of it.
        let shown = try await run("dtx", ["show", "bank-refused", "--json", "--url", bank.cluster.url])
        #expect(shown.status == 0, "\(shown.err)")
        let shownJSON = try JSONSerialization.jsonObject(with: Data(shown.out.utf8)) as? [String: Any]
        #expect(shownJSON?["status"] as? String == "aborted")
        #expect(shown.out.contains("insufficient_funds"), "\(shown.out)")

        // Nothing changed anywhere, nothing of it committed, nothing prepared or locked.
        #expect(try await bank.balances(eu) == ["alice": 7_500])
        #expect(try await bank.balances(us) == ["bob": 3_000])
        #expect(try await bank.databaseBalances(eu) == ["alice": 7_500])
        #expect(try await bank.databaseBalances(us) == ["bob": 3_000])
        #expect(try bank.sqliteOutcomes()[BranchKey(gid: "bank-refused", branch: 1)] == "rolled_back")
        #expect(try await !bank.pgCommitted().contains { $0.gid == "bank-refused" })
        #expect(try bank.sqlitePreparedCount() == 0)
        #expect(try bank.sqliteLockCount() == 0)
        #expect(try await bank.pgPreparedCount() == 0)
    }

    @Test func theSQLiteServiceKilledBetweenPrepareAndCommitCommitsAfterRestart() async throws {
        let bank = try await BankCluster.start("bank-eu-crash")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        try await bank.openAccount(eu, "alice", balance: 10_000)
        try await bank.openAccount(us, "bob", balance: 1_000)
        try await bank.armFailpoint(eu, "before-commit", "crash")

        let gid = "bank-eu-crash"
        let view = try await bank.client.submit(BankCluster.transfer(gid, from: (us, "bob"), to: (eu, "alice"), amount: 400))
        #expect(view.decision == .commit)
        #expect(try await bank.service(eu)?.waitForExit() == SIGKILL)

        // accounts-eu voted yes and died before applying its branch: the branch is in
        // doubt in its file, the row locked, the balance untouched.
        #expect(try bank.sqlitePrepared() == [BranchKey(gid: gid, branch: 1)])
        #expect(try bank.sqliteLockCount() == 1)
        #expect(try await bank.databaseBalances(eu) == ["alice": 10_000])
        #expect(try bank.sqliteOutcomes()[BranchKey(gid: gid, branch: 1)] == nil)
        // PostgreSQL commits its branch; the coordinator keeps retrying accounts-eu.
        #expect(try await eventually { try await bank.pgCommitted().contains(BranchKey(gid: gid, branch: 0)) })
        #expect(try await bank.databaseBalances(us) == ["bob": 600])
        #expect(try await bank.pgPreparedCount() == 0)
        let stalled = try await bank.client.transaction(gid)
        #expect(stalled.status == "committing")
        #expect(stalled.branches[1].state == "committing")

        try await bank.restartService(eu)
        let done = try await eventually(seconds: 40) {
            guard try bank.sqlitePreparedCount() == 0 else { return false }
            return try await bank.client.transaction(gid).status == "committed"
        }
        #expect(done, "\(bank.logs())")
        #expect(try bank.sqliteOutcomes()[BranchKey(gid: gid, branch: 1)] == "committed")
        #expect(try bank.sqliteLockCount() == 0)
        #expect(try await bank.balances(eu) == ["alice": 10_400])
        #expect(try await bank.balances(us) == ["bob": 600])
        #expect(try await bank.pgPreparedCount() == 0)
    }

    @Test func thePostgresServiceKilledBetweenPrepareAndCommitCommitsAfterRestart() async throws {
        let bank = try await BankCluster.start("bank-us-crash")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        try await bank.openAccount(eu, "alice", balance: 10_000)
        try await bank.openAccount(us, "bob", balance: 1_000)
        try await bank.armFailpoint(us, "before-commit", "crash")

        let gid = "bank-us-crash"
        let transfer = BankCluster.transfer(gid, from: (eu, "alice"), to: (us, "bob"), amount: 700)
        let view = try await bank.client.submit(transfer)
        #expect(view.decision == .commit)
        #expect(try await bank.service(us)?.waitForExit() == SIGKILL)

        // The prepared transaction outlives the service that prepared it.
        #expect(try await bank.pgPreparedNames() == [BankCluster.preparedName(transfer, branch: 1)])
        #expect(try await bank.databaseBalances(us) == ["bob": 1_000])
        #expect(try await !bank.pgCommitted().contains(BranchKey(gid: gid, branch: 1)))
        #expect(try await eventually { try bank.sqliteOutcomes()[BranchKey(gid: gid, branch: 0)] == "committed" })
        #expect(try await bank.databaseBalances(eu) == ["alice": 9_300])
        #expect(try bank.sqlitePreparedCount() == 0)
        let stalled = try await bank.client.transaction(gid)
        #expect(stalled.status == "committing")
        #expect(stalled.branches[1].state == "committing")

        try await bank.restartService(us)
        let done = try await eventually(seconds: 40) {
            guard try await bank.pgPreparedCount() == 0 else { return false }
            return try await bank.client.transaction(gid).status == "committed"
        }
        #expect(done, "\(bank.logs())")
        #expect(try await bank.pgCommitted().contains(BranchKey(gid: gid, branch: 1)))
        #expect(try await bank.balances(us) == ["bob": 1_700])
        #expect(try await bank.balances(eu) == ["alice": 9_300])
        #expect(try bank.sqlitePreparedCount() == 0)
    }

    /// The orphan scan: accounts-us dies right after PREPARE TRANSACTION, before its vote
    /// reaches dtxd. The coordinator aborts (the vote never came), and the prepared
    /// transaction sits in pg_prepared_xacts, holding bob's row, until the restarted
    /// service finds it and resolves it (its in-doubt recovery asks dtxd: aborted; or
    /// dtxd's own ROLLBACK retry arrives first: the end state is the same).
    @Test func aPreparedTransactionOrphanedByACrashIsRolledBackAfterRestart() async throws {
        let bank = try await BankCluster.start("bank-orphan")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        try await bank.openAccount(eu, "alice", balance: 10_000)
        try await bank.openAccount(us, "bob", balance: 1_000)
        try await bank.armFailpoint(us, "after-prepare", "crash")

        let gid = "bank-orphan"
        let transfer = BankCluster.transfer(gid, from: (eu, "alice"), to: (us, "bob"), amount: 300)
        let view = try await bank.client.submit(transfer)
        #expect(view.decision == .abort)
        #expect(try await bank.service(us)?.waitForExit() == SIGKILL)

        let orphan = BankCluster.preparedName(transfer, branch: 1)
        #expect(try await bank.pgPreparedNames() == [orphan])
        #expect(try await bank.databaseBalances(us) == ["bob": 1_000])
        // The SQLite branch is rolled back; the PostgreSQL one waits for its service.
        #expect(try await eventually { try bank.sqliteOutcomes()[BranchKey(gid: gid, branch: 0)] == "rolled_back" })
        #expect(try bank.sqlitePreparedCount() == 0)
        #expect(try await bank.databaseBalances(eu) == ["alice": 10_000])
        let pending = try await bank.client.transaction(gid)
        #expect(pending.status == "aborting")
        #expect(pending.decision == .abort)
        #expect(try await bank.client.outcome(gid: gid, branch: 1) == "aborted")
        // Still there a while later: nobody else may resolve it.
        try await Task.sleep(for: .seconds(1.5))
        #expect(try await bank.pgPreparedNames() == [orphan])

        try await bank.restartService(us)
        let resolved = try await eventually(seconds: 40) { try await bank.pgPreparedCount() == 0 }
        #expect(resolved, "\(bank.logs())")
        #expect(try await eventually { try await bank.client.transaction(gid).status == "aborted" })
        #expect(try await bank.pgRolledBack().contains(BranchKey(gid: gid, branch: 1)))
        #expect(try await !bank.pgCommitted().contains { $0.gid == gid })
        #expect(try await bank.balances(us) == ["bob": 1_000])
        #expect(try await bank.balances(eu) == ["alice": 10_000])
        // Which path resolved it (for the record; both are correct).
        let byScan = bank.service(us)?.stderr.contains("rolled back in-doubt branch") ?? false
        print("orphan \(orphan) resolved by \(byScan ? "the service's in-doubt scan" : "dtxd's ROLLBACK retry")")
        // bob's row is free again: a new transfer to him commits.
        let after = try await bank.client.submit(BankCluster.transfer("bank-orphan-after", from: (eu, "alice"), to: (us, "bob"), amount: 50))
        #expect(after.decision == .commit)
        #expect(try await eventually { try await bank.balances(us) == ["bob": 1_050] })
    }

    @Test func dtxdKilledAfterTheCommitDecisionCommitsInBothDatabasesAfterRestart() async throws {
        let bank = try await BankCluster.start("bank-dtxd-crash", daemonFailpoints: "after-commit-decision")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        try await bank.openAccount(eu, "alice", balance: 10_000)
        try await bank.openAccount(us, "bob", balance: 1_000)

        let gid = "bank-dtxd-crash"
        let transfer = BankCluster.transfer(gid, from: (eu, "alice"), to: (us, "bob"), amount: 1_200)
        _ = try? await bank.client.submit(transfer)
        #expect(try await bank.cluster.daemon?.waitForExit() == SIGKILL)

        // Both voted yes and neither was told: both in doubt, both balances untouched,
        // and they stay so while dtxd is down (services ask every second).
        for _ in 0..<2 {
            #expect(try bank.sqlitePrepared() == [BranchKey(gid: gid, branch: 0)])
            #expect(try await bank.pgPreparedNames() == [BankCluster.preparedName(transfer, branch: 1)])
            #expect(try await bank.databaseBalances(eu) == ["alice": 10_000])
            #expect(try await bank.databaseBalances(us) == ["bob": 1_000])
            try await Task.sleep(for: .seconds(1.5))
        }

        try await bank.startDaemon()
        let done = try await eventually(seconds: 40) {
            guard try bank.sqlitePreparedCount() == 0 else { return false }
            return try await bank.pgPreparedCount() == 0
        }
        #expect(done, "\(bank.logs())")
        #expect(try await eventually { try await bank.client.transaction(gid).status == "committed" })
        #expect(try bank.sqliteOutcomes()[BranchKey(gid: gid, branch: 0)] == "committed")
        #expect(try await bank.pgCommitted().contains(BranchKey(gid: gid, branch: 1)))
        #expect(try await bank.balances(eu) == ["alice": 8_800])
        #expect(try await bank.balances(us) == ["bob": 2_200])
        #expect(try bank.sqliteLockCount() == 0)
    }
}
