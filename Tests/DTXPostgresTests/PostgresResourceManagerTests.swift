import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXTestSupport
import Foundation
import Testing

@Suite(.serialized, .postgresServer())
struct PostgresResourceManagerTests {
    @Test func preparedWorkIsInvisibleUntilCommitted() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "order-1", branch: 1)

        let outcome = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 30))
        #expect(outcome == .prepared(result: .object(["balance": .number(70)])))
        #expect(try await bank.preparedTransactions() == [preparedName(ref, "withdraw", payload(account: 1, amount: 30))])
        #expect(try await bank.manager.inDoubt() == [ref])
        #expect(try await bank.balance(1) == 100, "another connection must not see prepared work")
        #expect(try await bank.count("dtx_branches") == 0, "the outcome record commits with the branch")

        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 70)
        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.manager.inDoubt() == [])
        let record = try await bank.server.psql("SELECT gid, branch, operation, result, digest FROM dtx_branches", database: bank.database)
        #expect(record == #"order-1|1|withdraw|{"balance":70}|"# + BranchDigest.of(operation: "withdraw", payload: payload(account: 1, amount: 30)))

        // A retried COMMIT finds its outcome record.
        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 70)
        await bank.close()
    }

    @Test func aRepeatedPrepareDoesTheWorkOnce() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "order-2", branch: 3)

        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 30)) == .prepared(result: .object(["balance": .number(70)])))
        // While prepared the first result is not readable (it is inside the prepared
        // transaction): the repeated vote is yes without it.
        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 30)) == .prepared(result: nil))
        #expect(try await bank.preparedTransactions() == [preparedName(ref, "withdraw", payload(account: 1, amount: 30))])

        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 70)
        // After the commit the outcome record answers with the first result.
        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 30)) == .prepared(result: .object(["balance": .number(70)])))
        #expect(try await bank.balance(1) == 70)
        #expect(try await bank.preparedTransactions() == [])
        await bank.close()
    }

    @Test func rollbackUndoesTheWorkAndRefusesALatePrepare() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "order-3", branch: 1)

        _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 30))
        try await bank.manager.rollback(ref)
        #expect(try await bank.balance(1) == 100)
        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.count("dtx_branches") == 0)
        #expect(try await bank.count("dtx_rollbacks") == 1)

        try await bank.manager.rollback(ref)  // idempotent
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 30)) } == "already_rolled_back")
        #expect(await businessErrorCode { try await bank.manager.commit(ref) } == "already_rolled_back")
        #expect(await businessErrorCode { _ = try await bank.manager.commitOnePhase(ref, operation: "withdraw", payload: payload(account: 1, amount: 30)) } == "already_rolled_back")
        #expect(try await bank.balance(1) == 100)
        #expect(try await bank.preparedTransactions() == [])
        await bank.close()
    }

    @Test func rollbackOfAnUnknownBranchSucceedsAndItsPrepareNeverRuns() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "never-prepared", branch: 2)

        // Presumed abort: ROLLBACK may reach a branch before (or instead of) its PREPARE.
        try await bank.manager.rollback(ref)
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 30)) } == "already_rolled_back")
        #expect(try await bank.balance(1) == 100)
        #expect(try await bank.preparedTransactions() == [])
        await bank.close()
    }

    @Test func phaseTwoForABranchWithTheOtherOutcomeIsRefused() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let unknown = BranchRef(gid: "nobody-prepared-this", branch: 1)
        #expect(await businessErrorCode { try await bank.manager.commit(unknown) } == "unknown_branch")

        let committed = BranchRef(gid: "order-4", branch: 1)
        _ = try await bank.manager.prepare(committed, operation: "withdraw", payload: payload(account: 1, amount: 10))
        try await bank.manager.commit(committed)
        #expect(await businessErrorCode { try await bank.manager.rollback(committed) } == "already_committed")
        #expect(try await bank.balance(1) == 90)
        #expect(try await bank.count("dtx_rollbacks") == 0)
        await bank.close()
    }

    @Test func aRefusalLeavesNothingPrepared() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 0])

        // Refused by the operation.
        let poor = BranchRef(gid: "order-5", branch: 1)
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(poor, operation: "withdraw", payload: payload(account: 1, amount: 500)) } == "insufficient_funds")
        // Refused by the table's CHECK constraint: running it again cannot succeed.
        let overdraft = BranchRef(gid: "order-5", branch: 2)
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(overdraft, operation: "transfer", payload: transfer(from: 1, to: 2, 101)) } == "constraint_violation")
        // Refused before touching the database.
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(poor, operation: "launder", payload: nil) } == "unknown_operation")
        #expect(await businessErrorCode { _ = try await bank.manager.prepare(BranchRef(gid: "x'; DROP TABLE accounts; --", branch: 1), operation: "withdraw", payload: payload(account: 1, amount: 1)) } == "invalid_gid")

        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.count("dtx_branches") == 0)
        #expect(try await bank.balance(1) == 100)
        #expect(try await bank.balance(2) == 0)
        #expect(try await bank.openTransactions() == 0)

        // A refusal is not a rollback: the branch may still prepare with other work.
        #expect(try await bank.manager.prepare(poor, operation: "withdraw", payload: payload(account: 1, amount: 50)) == .prepared(result: .object(["balance": .number(50)])))
        try await bank.manager.commit(poor)
        #expect(try await bank.balance(1) == 50)
        await bank.close()
    }

    @Test func commitOnePhaseIsIdempotent() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "single", branch: 1)
        let deposit = JSONValue.object(["account": .number(1), "amount": .number(5)])

        let first = try await bank.manager.commitOnePhase(ref, operation: "deposit", payload: deposit)
        #expect(first == .object(["balance": .number(105)]))
        let second = try await bank.manager.commitOnePhase(ref, operation: "deposit", payload: deposit)
        #expect(second == first)
        #expect(try await bank.balance(1) == 105)
        #expect(try await bank.preparedTransactions() == [])
        // The branch is committed: a PREPARE or COMMIT of it is a duplicate, not new work.
        #expect(try await bank.manager.prepare(ref, operation: "deposit", payload: deposit) == .prepared(result: first))
        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 105)

        let refused = BranchRef(gid: "single-poor", branch: 1)
        #expect(await businessErrorCode { _ = try await bank.manager.commitOnePhase(refused, operation: "withdraw", payload: payload(account: 1, amount: 1000)) } == "insufficient_funds")
        #expect(try await bank.count("dtx_branches") == 1)
        await bank.close()
    }

    @Test func aNewManagerFindsTheOrphansOfAClosedOne() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100, 3: 100])
        let started = Date()
        let first = BranchRef(gid: "svc:order:7", branch: 1)  // colons inside the gid
        let second = BranchRef(gid: "order-8", branch: 12)

        // A service prepares two branches and goes away (pool closed, manager dropped).
        do {
            let pool = try await PostgresPool(bank.server.connectionString(database: bank.database), size: 2, logger: testLogger)
            let manager = try await Bank.makeManager(pool: pool, prefix: "accounts")
            _ = try await manager.prepare(first, operation: "withdraw", payload: payload(account: 1, amount: 10))
            _ = try await manager.prepare(second, operation: "withdraw", payload: payload(account: 2, amount: 20))
            await pool.close()
        }
        // Another resource manager's branch in the same database is not ours.
        _ = try await bank.manager.prepare(BranchRef(gid: "other", branch: 1), operation: "withdraw", payload: payload(account: 3, amount: 1))

        let pool = try await PostgresPool(bank.server.connectionString(database: bank.database), size: 2, logger: testLogger)
        let recovered = try await Bank.makeManager(pool: pool, prefix: "accounts")
        #expect(Set(try await recovered.inDoubt()) == [first, second])
        let orphans = try await recovered.orphans()
        #expect(orphans.map(\.transactionName) == [
            preparedName(first, "withdraw", payload(account: 1, amount: 10), prefix: "accounts"),
            preparedName(second, "withdraw", payload(account: 2, amount: 20), prefix: "accounts"),
        ])
        #expect(orphans.map(\.digest) == [
            BranchDigest.of(operation: "withdraw", payload: payload(account: 1, amount: 10)),
            BranchDigest.of(operation: "withdraw", payload: payload(account: 2, amount: 20)),
        ])
        for orphan in orphans {
            #expect(orphan.owner == "dtx")
            #expect(orphan.preparedAt >= started.addingTimeInterval(-5) && orphan.preparedAt <= Date().addingTimeInterval(5))
        }

        // The participant kit resolves them as the coordinator says.
        try await recovered.commit(first)
        try await recovered.rollback(second)
        #expect(try await recovered.inDoubt() == [])
        #expect(try await bank.balance(1) == 90)
        #expect(try await bank.balance(2) == 100)
        try await bank.manager.rollback(BranchRef(gid: "other", branch: 1))
        #expect(try await bank.preparedTransactions() == [])
        await pool.close()
        await bank.close()
    }

    @Test func aBranchPreparedByAnotherProcessThatExitedIsInDoubt() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        // psql plays a service process: it prepares the branch the way the resource
        // manager does, then exits.
        let ref = BranchRef(gid: "crashed-svc", branch: 4)
        let work = payload(account: 1, amount: 25)
        _ = try await bank.server.psql(
            """
            BEGIN;
            UPDATE accounts SET balance = balance - 25 WHERE id = 1;
            INSERT INTO dtx_branches (gid, branch, operation, result, digest) VALUES ('crashed-svc', 4, 'withdraw', NULL, '\(BranchDigest.of(operation: "withdraw", payload: work))');
            PREPARE TRANSACTION '\(preparedName(ref, "withdraw", work))';
            """, database: bank.database)
        #expect(try await bank.manager.inDoubt() == [ref])
        // A repeated PREPARE waits for the outcome instead of doing the work again.
        #expect(try await bank.manager.prepare(ref, operation: "withdraw", payload: work) == .prepared(result: nil))
        try await bank.manager.commit(ref)
        #expect(try await bank.balance(1) == 75)
        #expect(try await bank.manager.inDoubt() == [])
        await bank.close()
    }
}
