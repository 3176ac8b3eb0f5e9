import DTXCore
import DTXParticipant
import DTXSQLite
import Foundation
import Testing

/// A repeated PREPARE or one-phase commit of a (gid, branch) is a duplicate only when it
/// asks for the same work: a gid the coordinator lost and reused with another spec must
/// not get the old branch's work committed under it.
@Suite struct BranchDigestTests {
    private let branch = BranchRef(gid: "order-1", branch: 1)

    @Test func aRepeatedPrepareForOtherWorkIsRefusedAndTheFirstWorkCommits() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let outcome = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        #expect(try await Self.digests("dtx_prepared", manager) == [BranchDigest.of(operation: "transfer", payload: Bank.transfer(1, 2, 30))])

        // The same work again: a duplicate.
        #expect(try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == outcome)
        // Another payload, another operation: refused.
        let otherAmount = await businessError { _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 40)) }
        #expect(otherAmount?.code == "branch_mismatch")
        #expect(otherAmount?.message.contains("order-1/1") == true)
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "deposit", payload: Bank.transfer(1, 2, 30)) }?.code == "branch_mismatch")
        // A one-phase commit asking for other work does not commit the prepared branch.
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(3, 4, 30)) }?.code == "branch_mismatch")

        // Nothing changed: still prepared, its locks and changeset kept, rows untouched.
        #expect(try await manager.inDoubt() == [branch])
        #expect(try await Bank.count("dtx_prepared", manager) == 1)
        #expect(try await Bank.count("dtx_locks", manager) == 2)
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
        await manager.close()

        // The digest is durable; committing applies the FIRST work.
        let reopened = try await Bank.open(directory.database)
        #expect(await businessError { _ = try await reopened.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 40)) }?.code == "branch_mismatch")
        try await reopened.commit(branch)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await Self.digests("dtx_outcomes", reopened) == [BranchDigest.of(operation: "transfer", payload: Bank.transfer(1, 2, 30))])
    }

    @Test func aCommittedBranchRefusesARepeatAskingForOtherWork() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let outcome = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        try await manager.commit(branch)

        // The same work: answered as before (the vote, the result), nothing done again.
        #expect(try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == outcome)
        #expect(try await manager.commitOnePhase(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30)) == .object(["balance": .number(70)]))
        // Other work: refused.
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(1, 2, 40)) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "deposit", payload: .object(["account": .number(1), "amount": .number(5)])) }?.code == "branch_mismatch")
        #expect(try await Bank.balances(manager) == [1: 70, 2: 130, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_outcomes", manager) == 1)
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.count("dtx_locks", manager) == 0)

        // A one-phase commit stores its digest too.
        let single = BranchRef(gid: "order-2", branch: 1)
        let result = try await manager.commitOnePhase(single, operation: "transfer", payload: Bank.transfer(3, 4, 10))
        #expect(result == .object(["balance": .number(90)]))
        await manager.close()
        let reopened = try await Bank.open(directory.database)
        #expect(try await reopened.commitOnePhase(single, operation: "transfer", payload: Bank.transfer(3, 4, 10)) == result)
        #expect(await businessError { _ = try await reopened.commitOnePhase(single, operation: "transfer", payload: Bank.transfer(3, 4, 20)) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await reopened.prepare(single, operation: "transfer", payload: Bank.transfer(3, 4, 20)) }?.code == "branch_mismatch")
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 90, 4: 110])

        // A rolled-back branch refuses as before, whatever the work.
        let rolledBack = BranchRef(gid: "order-3", branch: 1)
        _ = try await reopened.prepare(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 5))
        try await reopened.rollback(rolledBack)
        #expect(await businessError { _ = try await reopened.prepare(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 5)) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await reopened.prepare(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 6)) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await reopened.commitOnePhase(rolledBack, operation: "transfer", payload: Bank.transfer(1, 2, 6)) }?.code == "already_rolled_back")
    }

    /// The `digest` column of every row of `table`.
    private static func digests(_ table: String, _ manager: SQLiteResourceManager) async throws -> [String?] {
        try await manager.read { connection in
            try connection.query("SELECT digest FROM \(table) ORDER BY gid, branch").map { $0.values[0].textValue }
        }
    }
}
