import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXTestSupport
import Foundation
import Testing

/// A gid the coordinator lost can come back with other work: a repeated PREPARE (or
/// one-phase commit) of the same branch is a duplicate only when it asks for the same
/// work, which the digest in the prepared transaction's name or in `dtx_branches` tells.
@Suite(.serialized, .postgresServer())
struct BranchDigestTests {
    @Test func aRepeatOfTheSameWorkIsADuplicate() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "same-work", branch: 1)
        let work = payload(account: 1, amount: 30)
        let digest = BranchDigest.of(operation: "withdraw", payload: work)

        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: work) == .prepared(result: .object(["balance": .number(70)])))
        #expect(try await bank.preparedTransactions() == ["dtx:same-work:1:\(digest)"])
        #expect(try await bank.manager.orphans().map(\.digest) == [digest])
        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: work) == .prepared(result: nil))
        // The same work in one phase waits (is retried) until the branch is decided.
        let busy = try await #require(throws: PostgresError.self) { _ = try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: work) }
        #expect(busy.code == .branchBusy)
        #expect(try await bank.preparedTransactions() == ["dtx:same-work:1:\(digest)"])

        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 70)
        #expect(try await bank.server.psql("SELECT digest FROM dtx_branches", database: bank.database) == digest)
        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: work) == .prepared(result: .object(["balance": .number(70)])))
        #expect(try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: work) == .object(["balance": .number(70)]))
        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 70)
        #expect(try await bank.preparedTransactions() == [])
        await bank.close()
    }

    @Test func otherWorkForAPreparedBranchIsRefusedAndTheBranchCommitsItsOwnWork() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100])
        let ref = BranchRef(gid: "reused", branch: 1)
        let first = payload(account: 1, amount: 30)
        _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: first)
        let name = preparedName(ref, "withdraw", first)

        // The coordinator lost the gid and a new transaction reuses it with other work.
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 50)) } == "branch_mismatch")
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "deposit", payload: first) } == "branch_mismatch")
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: nil) } == "branch_mismatch")
        #expect(await businessErrorCode { _ = try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: payload(account: 2, amount: 30)) } == "branch_mismatch")
        // Nothing changed: the first branch is still prepared, with its own work.
        #expect(try await bank.preparedTransactions() == [name])
        #expect(try await bank.manager.inDoubt() == [ref])
        #expect(try await bank.balance(1) == 100)
        #expect(try await bank.balance(2) == 100)
        #expect(try await bank.openTransactions() == 0)

        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 70, "the commit applies the work the branch was prepared for")
        #expect(try await bank.balance(2) == 100)
        #expect(try await bank.server.psql("SELECT operation, digest FROM dtx_branches", database: bank.database)
            == "withdraw|" + BranchDigest.of(operation: "withdraw", payload: first))
        await bank.close()
    }

    @Test func otherWorkForABranchPreparedWithoutItsLockIsRefused() async throws {
        // A process that exited prepared the branch under the current name format; no
        // lock on the branch stays (psql took none), so the repeat reads the name inside
        // its own branch transaction.
        let ref = BranchRef(gid: "crashed-svc", branch: 2)
        let work = payload(account: 1, amount: 25)
        let bank = try await Bank.open(accounts: [1: 100])
        _ = try await bank.server.psql(
            """
            BEGIN;
            UPDATE accounts SET balance = balance - 25 WHERE id = 1;
            INSERT INTO dtx_branches (gid, branch, operation, result, digest) VALUES ('crashed-svc', 2, 'withdraw', NULL, '\(BranchDigest.of(operation: "withdraw", payload: work))');
            PREPARE TRANSACTION '\(preparedName(ref, "withdraw", work))';
            """, database: bank.database)
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 26)) } == "branch_mismatch")
        #expect(await businessErrorCode { _ = try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: payload(account: 1, amount: 26)) } == "branch_mismatch")
        #expect(await businessErrorCode { _ = try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: work) } == "already_prepared")
        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: work) == .prepared(result: nil))
        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 75)
        await bank.close()
    }

    @Test func otherWorkForACommittedBranchIsRefused() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let twoPhase = BranchRef(gid: "done", branch: 1)
        _ = try await bank.manager.prepare(twoPhase, operation: "withdraw", payload: payload(account: 1, amount: 30))
        try await bank.manager.commit(twoPhase)
        let onePhase = BranchRef(gid: "done-1pc", branch: 4)
        _ = try await bank.manager.commitOnePhase(onePhase, operation: "deposit", payload: payload(account: 1, amount: 5))
        #expect(try await bank.balance(1) == 75)

        for ref in [twoPhase, onePhase] {
            #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 50)) } == "branch_mismatch")
            #expect(await businessErrorCode { _ = try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: payload(account: 1, amount: 50)) } == "branch_mismatch")
        }
        // The same work is still a duplicate.
        #expect(try await bank.manager.prepare(onePhase, operation: "deposit", payload: payload(account: 1, amount: 5)) == .prepared(result: .object(["balance": .number(75)])))
        #expect(try await bank.manager.commitOnePhase(twoPhase, operation: "withdraw", payload: payload(account: 1, amount: 30)) == .object(["balance": .number(70)]))

        #expect(try await bank.balance(1) == 75)
        #expect(try await bank.count("dtx_branches") == 2)
        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.openTransactions() == 0)
        await bank.close()
    }

    @Test func theOrphanScanTellsApartGidsWithColons() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100, 3: 100])
        // Branches whose names start like others': gid `a:1`, branches 2 and 3
        // (`dtx:a:1:2:…`, `dtx:a:1:3:…`) and gid `a`, branch 1 (`dtx:a:1:…`). Another
        // resource manager prepares them, so that this one finds each name by its branch.
        let a12 = BranchRef(gid: "a:1", branch: 2), a13 = BranchRef(gid: "a:1", branch: 3), a1 = BranchRef(gid: "a", branch: 1)
        let other = try await Bank.makeManager(pool: bank.pool)
        _ = try await other.prepare(a12, operation: "withdraw", payload: payload(account: 2, amount: 20))
        _ = try await other.prepare(a13, operation: "withdraw", payload: payload(account: 3, amount: 30))
        _ = try await other.prepare(a1, operation: "withdraw", payload: payload(account: 1, amount: 10))

        let orphans = try await bank.manager.orphans()
        #expect(orphans.map(\.ref) == [a12, a13, a1])
        #expect(orphans.map(\.transactionName) == [
            preparedName(a12, "withdraw", payload(account: 2, amount: 20)),
            preparedName(a13, "withdraw", payload(account: 3, amount: 30)),
            preparedName(a1, "withdraw", payload(account: 1, amount: 10)),
        ])
        #expect(orphans.map(\.digest) == [
            BranchDigest.of(operation: "withdraw", payload: payload(account: 2, amount: 20)),
            BranchDigest.of(operation: "withdraw", payload: payload(account: 3, amount: 30)),
            BranchDigest.of(operation: "withdraw", payload: payload(account: 1, amount: 10)),
        ])
        #expect(Set(try await bank.manager.inDoubt()) == [a12, a13, a1])

        // A repeat reads its own branch's name, not one that starts the same way.
        #expect(try await bank.manager.prepare(a1, operation: "withdraw", payload: payload(account: 1, amount: 10)) == .prepared(result: nil))
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(a1, operation: "withdraw", payload: payload(account: 2, amount: 20)) } == "branch_mismatch")

        // COMMIT and ROLLBACK find each branch's own prepared transaction.
        try await bank.manager.commit(a1)
        try await bank.manager.rollback(a12)
        #expect(try await bank.balance(1) == 90)
        #expect(try await bank.balance(2) == 100)
        #expect(try await bank.balance(3) == 100)
        #expect(try await bank.manager.inDoubt() == [a13])

        try await bank.manager.commit(a13)
        #expect(try await bank.balance(3) == 70)
        #expect(try await bank.preparedTransactions() == [])

        // Phase two is idempotent and answers from the outcome records.
        try await bank.manager.commit(a1)
        try await bank.manager.commit(a13)
        try await bank.manager.rollback(a12)
        #expect(await businessErrorCode { try await bank.manager.rollback(a1) } == "already_committed")
        #expect(await businessErrorCode { try await bank.manager.commit(a12) } == "already_rolled_back")
        await bank.close()
    }
}
