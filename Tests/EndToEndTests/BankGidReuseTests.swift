import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// A gid dtxd has forgotten, reused with another spec, must not commit the old branch's
/// work under the new transaction.
///
/// dtxd logs a transaction's begin lazily and sends PREPARE before it is durable
/// (presumed abort): a crash in that window (SIGKILL within the flusher's few
/// milliseconds, or a power loss before the next forced write) leaves participants with
/// a prepared branch of a gid dtxd does not know. Submitting that gid again with another
/// spec is then accepted as a new transaction (the gid_conflict check only sees gids
/// dtxd knows). These tests leave the prepared branch the way such a crash does, by
/// sending the lost incarnation's PREPARE straight to the service, then submit the gid
/// with another amount.
@Suite(.serialized, .bankPostgres) struct BankGidReuseTests {
    private let eu = BankCluster.eu
    private let us = BankCluster.us

    private func reuse(preparedOn service: String, branch: Int, operation: String, account: String, gid: String) async throws -> BankCluster {
        let bank = try await BankCluster.start(gid)
        try await bank.openAccount(eu, "alice", balance: 10_000)
        try await bank.openAccount(us, "bob", balance: 1_000)
        // The PREPARE of the lost first incarnation: 100.
        let prepared = try await http("POST", bank.url(service)! + "/dtx/2pc/prepare",
                                      body: #"{"gid":"\#(gid)","branch":\#(branch),"operation":"\#(operation)","payload":{"account":"\#(account)","amount":100}}"#)
        #expect(prepared.status == 200)
        #expect(try await bank.client.outcome(gid: gid) == "aborted")  // presumed abort: dtxd never heard of it
        // The gid again, now for 5000.
        _ = try await bank.client.submit(BankCluster.transfer(gid, from: (eu, "alice"), to: (us, "bob"), amount: 5_000))
        let unsettled = await bank.settle(seconds: 30)
        #expect(unsettled == nil, "\(unsettled ?? "")")
        return bank
    }

    @Test func aSQLiteBranchPreparedForAnotherAmountIsNotCommittedUnderTheReusedGid() async throws {
        let bank = try await reuse(preparedOn: eu, branch: 0, operation: "debit", account: "alice", gid: "bank-reuse-eu")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        let alice = try await bank.databaseBalances(eu)["alice"]!
        let bob = try await bank.databaseBalances(us)["bob"]!
        let status = try await bank.client.transaction("bank-reuse-eu").status
        // Either the transfer of 5000 happened on both sides, or nothing happened.
        #expect(alice + bob == 11_000, "money created or destroyed: alice \(alice), bob \(bob), dtxd says \(status)")
        #expect([alice, bob] == [5_000, 6_000] || [alice, bob] == [10_000, 1_000], "alice \(alice), bob \(bob), dtxd says \(status)")
    }

    @Test func aPostgresBranchPreparedForAnotherAmountIsNotCommittedUnderTheReusedGid() async throws {
        let bank = try await reuse(preparedOn: us, branch: 1, operation: "credit", account: "bob", gid: "bank-reuse-us")
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        let alice = try await bank.databaseBalances(eu)["alice"]!
        let bob = try await bank.databaseBalances(us)["bob"]!
        let status = try await bank.client.transaction("bank-reuse-us").status
        #expect(alice + bob == 11_000, "money created or destroyed: alice \(alice), bob \(bob), dtxd says \(status)")
        #expect([alice, bob] == [5_000, 6_000] || [alice, bob] == [10_000, 1_000], "alice \(alice), bob \(bob), dtxd says \(status)")
    }
}
