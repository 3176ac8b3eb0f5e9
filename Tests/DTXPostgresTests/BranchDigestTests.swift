import DTXCore
import DTXParticipant
import DTXPostgres
import DTXTestSupport
import Foundation
import Testing

/// A gid the coordinator lost can come back with other work: a repeated PREPARE (or
/// one-phase commit) of the same branch is a duplicate only when it asks for the same
/// work, which the digest in the prepared transaction's name or in `dtx_branches` tells.
@Suite(.serialized, .postgresServer())
struct BranchDigestTests {
    /// `dtx_branches` as versions before the digest made it.
    static let oldBranchesTable = """
        CREATE TABLE dtx_branches (
            gid TEXT NOT NULL,
            branch BIGINT NOT NULL,
            operation TEXT NOT NULL,
            result TEXT,
            PRIMARY KEY (gid, branch)
        );
        """

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

    @Test func anOutcomeRecordWithoutADigestAcceptsAnyRepeat() async throws {
        // Committed by an older version: its row has no digest, so the work it did is
        // unknown and a repeat is a duplicate, as before.
        let bank = try await Bank.open(accounts: [1: 100])
        _ = try await bank.server.psql(
            "INSERT INTO dtx_branches (gid, branch, operation, result) VALUES ('old', 1, 'withdraw', '{\"balance\":80}')",
            database: bank.database)
        let ref = BranchRef(gid: "old", branch: 1)
        #expect(try await bank.manager.prepare(ref, operation: "deposit", payload: payload(account: 1, amount: 7)) == .prepared(result: .object(["balance": .number(80)])))
        #expect(try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: nil) == .object(["balance": .number(80)]))
        #expect(try await bank.balance(1) == 100)
        await bank.close()
    }

    @Test func theOrphanScanReadsBothNameFormatsAndPhaseTwoFindsEither() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100, 3: 100, 4: 100])
        // Branches an older version prepared (names without a digest), one of them with
        // colons in its gid, as psql plays them.
        _ = try await bank.server.psql(
            """
            BEGIN;
            UPDATE accounts SET balance = balance - 10 WHERE id = 1;
            INSERT INTO dtx_branches (gid, branch, operation, result) VALUES ('g', 0, 'withdraw', NULL);
            PREPARE TRANSACTION 'dtx:g:0';
            BEGIN;
            UPDATE accounts SET balance = balance - 20 WHERE id = 2;
            INSERT INTO dtx_branches (gid, branch, operation, result) VALUES ('a:1', 3, 'withdraw', NULL);
            PREPARE TRANSACTION 'dtx:a:1:3';
            """, database: bank.database)
        // Branches of this version, whose names start like others': gid `a`, branch 1
        // and gid `a:1`, branch 2.
        let a1 = BranchRef(gid: "a", branch: 1), a12 = BranchRef(gid: "a:1", branch: 2)
        _ = try await bank.manager.prepare(a1, operation: "withdraw", payload: payload(account: 3, amount: 30))
        _ = try await bank.manager.prepare(a12, operation: "withdraw", payload: payload(account: 4, amount: 40))
        let g0 = BranchRef(gid: "g", branch: 0), a13 = BranchRef(gid: "a:1", branch: 3)

        let orphans = try await bank.manager.orphans()
        #expect(orphans.map(\.ref) == [g0, a13, a1, a12])
        #expect(orphans.map(\.transactionName) == [
            "dtx:g:0", "dtx:a:1:3",
            preparedName(a1, "withdraw", payload(account: 3, amount: 30)),
            preparedName(a12, "withdraw", payload(account: 4, amount: 40)),
        ])
        #expect(orphans.map(\.digest) == [
            nil, nil,
            BranchDigest.of(operation: "withdraw", payload: payload(account: 3, amount: 30)),
            BranchDigest.of(operation: "withdraw", payload: payload(account: 4, amount: 40)),
        ])
        #expect(Set(try await bank.manager.inDoubt()) == [g0, a13, a1, a12])

        // An old name's digest is unknown: a repeat is a duplicate whatever its work.
        #expect(try await bank.manager.prepare(g0, operation: "deposit", payload: payload(account: 1, amount: 99)) == .prepared(result: nil))
        #expect(await businessErrorCode { _ = try await bank.manager.commitOnePhase(g0, operation: "deposit", payload: nil) } == "already_prepared")

        // COMMIT and ROLLBACK find each branch's own prepared transaction.
        try await bank.manager.commit(g0)
        try await bank.manager.rollback(a13)
        #expect(try await bank.balance(1) == 90)
        #expect(try await bank.balance(2) == 100)
        #expect(try await bank.balance(3) == 100)
        #expect(try await bank.balance(4) == 100)
        #expect(try await bank.manager.inDoubt() == [a1, a12])

        try await bank.manager.commit(a1)
        #expect(try await bank.balance(3) == 70)
        #expect(try await bank.balance(4) == 100)
        try await bank.manager.rollback(a12)
        #expect(try await bank.balance(4) == 100)
        #expect(try await bank.preparedTransactions() == [])

        // Phase two is idempotent and answers from the outcome records.
        try await bank.manager.commit(g0)
        try await bank.manager.commit(a1)
        try await bank.manager.rollback(a13)
        #expect(await businessErrorCode { try await bank.manager.rollback(g0) } == "already_committed")
        #expect(await businessErrorCode { try await bank.manager.commit(a12) } == "already_rolled_back")
        await bank.close()
    }

    @Test func anOlderTableGainsTheDigestColumn() async throws {
        let bank = try await Bank.open(
            accounts: [1: 100],
            setUp: [Self.oldBranchesTable + "INSERT INTO dtx_branches (gid, branch, operation, result) VALUES ('before', 1, 'withdraw', NULL);"])
        #expect(try await bank.server.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'dtx_branches' AND column_name = 'digest'", database: bank.database) == "1")

        let ref = BranchRef(gid: "after", branch: 1)
        _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 10))
        try await bank.manager.commit(ref)
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 11)) } == "branch_mismatch")
        #expect(try await bank.manager.prepare(BranchRef(gid: "before", branch: 1), operation: "deposit", payload: nil) == .prepared(result: nil))
        #expect(try await bank.balance(1) == 90)
        await bank.close()
    }

    @Test func anOlderTableLockedByABranchInDoubtDoesNotStopTheStart() async throws {
        // The older version left a branch prepared: it holds a lock on dtx_branches
        // until it is resolved, so the column cannot be added yet. The resource manager
        // starts anyway (resolving the branch needs it) and records no digests.
        let bank = try await Bank.open(
            accounts: [1: 100, 2: 100], lockTimeout: .milliseconds(200),
            setUp: [Self.oldBranchesTable, """
                BEGIN;
                UPDATE accounts SET balance = balance - 10 WHERE id = 1;
                INSERT INTO dtx_branches (gid, branch, operation, result) VALUES ('in-doubt', 0, 'withdraw', NULL);
                PREPARE TRANSACTION 'dtx:in-doubt:0';
                """])
        let columns = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'dtx_branches' AND column_name = 'digest'"
        #expect(try await bank.server.psql(columns, database: bank.database) == "0")

        let old = BranchRef(gid: "in-doubt", branch: 0)
        #expect(try await bank.manager.inDoubt() == [old])
        let ref = BranchRef(gid: "new", branch: 1)
        _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 2, amount: 5))
        // While prepared the digest is in the name.
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 2, amount: 6)) } == "branch_mismatch")
        try await bank.manager.commit(ref)
        try await bank.manager.commit(old)
        #expect(try await bank.balance(1) == 90)
        #expect(try await bank.balance(2) == 95)

        // Nothing locks the table any more: the next start adds the column.
        let manager = try await Bank.makeManager(pool: bank.pool)
        #expect(try await bank.server.psql(columns, database: bank.database) == "1")
        #expect(try await manager.prepare(ref, operation: "withdraw", payload: payload(account: 2, amount: 6)) == .prepared(result: .object(["balance": .number(95)])), "committed without a digest: a duplicate")
        await bank.close()
    }
}
