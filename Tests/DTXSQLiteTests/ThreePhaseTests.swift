import DTXCore
import DTXParticipant
import DTXSQLite
import Foundation
import Testing

/// The three-phase-commit duties of the SQLite resource manager, on real database files:
/// w (the stored changeset) and p (its `dtx_3pc` row) survive reopening the file, both end
/// in a commit or a rollback, and finished branches answer c or a.
@Suite struct SQLiteThreePhaseTests {
    private let branch = BranchRef(gid: "order-3pc", branch: 1)
    private let peers = [ThreePhasePeer(name: "accounts-a", url: "http://127.0.0.1:1"), ThreePhasePeer(name: "accounts-b", url: nil)]

    @Test func preparedAndPreCommittedBranchesSurviveReopeningAndCommit() async throws {
        let directory = try TemporaryDirectory()
        let first = try await Bank.open(directory.database)
        let other = BranchRef(gid: "order-3pc-2", branch: 0)
        #expect(try await first.canCommit(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30), participants: peers) == .object(["balance": .number(70)]))
        _ = try await first.canCommit(other, operation: "transfer", payload: Bank.transfer(3, 4, 10), participants: peers)
        try await first.preCommit(branch)
        try await first.preCommit(branch)  // idempotent
        #expect(try await Bank.balances(first) == [1: 100, 2: 100, 3: 100, 4: 100])
        await first.close()

        let reopened = try await Bank.open(directory.database)
        #expect(try await reopened.unfinishedThreePhaseBranches() == [
            ThreePhaseBranchRecord(ref: branch, state: .preCommitted, participants: peers),
            ThreePhaseBranchRecord(ref: other, state: .prepared, participants: peers),
        ])
        #expect(try await reopened.inDoubt().isEmpty, "3PC branches are termination's, not 2PC recovery's")
        // A repeated CANCOMMIT answers the stored result and keeps p.
        #expect(try await reopened.canCommit(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30), participants: peers) == .object(["balance": .number(70)]))
        #expect(try await reopened.threePhaseBranch(branch)?.state == .preCommitted)

        try await reopened.commit(branch)
        try await reopened.commit(other)
        #expect(try await Bank.balances(reopened) == [1: 70, 2: 130, 3: 90, 4: 110])
        #expect(try await reopened.unfinishedThreePhaseBranches().isEmpty)
        #expect(try await Bank.count("dtx_3pc", reopened) == 0)
        #expect(try await Bank.count("dtx_prepared", reopened) == 0)
        await reopened.close()

        // A peer asking later reads c, not q.
        let third = try await Bank.open(directory.database)
        #expect(try await third.threePhaseBranch(branch) == ThreePhaseBranchRecord(ref: branch, state: .committed, participants: []))
        try await third.preCommit(branch)  // a late PRECOMMIT of a committed branch changes nothing
        #expect(try await Bank.count("dtx_3pc", third) == 0)
        await third.close()
    }

    @Test func rollbackFromPreparedAndFromPreCommitted() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        let preCommitted = BranchRef(gid: "order-3pc-2", branch: 0)
        _ = try await manager.canCommit(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30), participants: peers)
        _ = try await manager.canCommit(preCommitted, operation: "transfer", payload: Bank.transfer(3, 4, 10), participants: peers)
        try await manager.preCommit(preCommitted)
        try await manager.rollback(branch)
        try await manager.rollback(preCommitted)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_locks", manager) == 0)
        #expect(try await manager.unfinishedThreePhaseBranches().isEmpty)
        await manager.close()

        let reopened = try await Bank.open(directory.database)
        #expect(try await reopened.threePhaseBranch(branch)?.state == .aborted)
        #expect(try await reopened.threePhaseBranch(preCommitted)?.state == .aborted)
        #expect(await businessError { try await reopened.preCommit(branch) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await reopened.canCommit(branch, operation: "transfer", payload: Bank.transfer(1, 2, 30), participants: peers) }?.code == "already_rolled_back")
        await reopened.close()
    }

    @Test func unknownBranchesAreInQAndReadOnlyWorkIsStillPrepared() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        #expect(try await manager.threePhaseBranch(branch) == nil)
        #expect(await businessError { try await manager.preCommit(branch) }?.code == "unknown_branch")
        // A 2PC branch is not pre-committed by a stray PRECOMMIT.
        let twoPhase = BranchRef(gid: "order-2pc", branch: 0)
        _ = try await manager.prepare(twoPhase, operation: "transfer", payload: Bank.transfer(1, 2, 5))
        #expect(await businessError { try await manager.preCommit(twoPhase) }?.code == "unknown_branch")
        #expect(try await manager.inDoubt() == [twoPhase])

        // CANCOMMIT has no read-only vote: work that changes nothing is prepared (w) too.
        #expect(try await manager.canCommit(branch, operation: "balance", payload: .object(["account": .number(3)]), participants: peers) == .number(100))
        #expect(try await manager.threePhaseBranch(branch) == ThreePhaseBranchRecord(ref: branch, state: .prepared, participants: peers))
        try await manager.preCommit(branch)
        try await manager.commit(branch)
        #expect(try await manager.threePhaseBranch(branch)?.state == .committed)
        await manager.close()
    }
}
