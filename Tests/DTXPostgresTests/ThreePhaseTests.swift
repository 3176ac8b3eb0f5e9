import DTXCore
import DTXParticipant
import DTXPostgres
import DTXTestSupport
import Foundation
import Testing

/// The three-phase-commit duties of the PostgreSQL resource manager: w (the prepared
/// transaction) and p (its committed `dtx_3pc_state` row) survive a new pool (a restarted
/// service), both end in a commit or a rollback, and finished branches answer c or a.
@Suite(.serialized, .postgresServer())
struct PostgresThreePhaseTests {
    private let peers = [ThreePhasePeer(name: "accounts-a", url: "http://127.0.0.1:1"), ThreePhasePeer(name: "accounts-b", url: nil)]

    @Test func preparedAndPreCommittedBranchesSurviveANewPoolAndCommit() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100])
        let preCommitted = BranchRef(gid: "order-3pc-1", branch: 0)
        let prepared = BranchRef(gid: "order-3pc-2", branch: 1)
        #expect(try await bank.manager.canCommit(preCommitted, operation: "withdraw", payload: payload(account: 1, amount: 30), participants: peers) == .object(["balance": .number(70)]))
        _ = try await bank.manager.canCommit(prepared, operation: "withdraw", payload: payload(account: 2, amount: 10), participants: peers)
        try await bank.manager.preCommit(preCommitted)
        try await bank.manager.preCommit(preCommitted)  // idempotent
        #expect(try await bank.balance(1) == 100)
        await bank.pool.close()

        try await withPool(bank.server.connectionString(database: bank.database), size: 2) { pool in
            let manager = try await Bank.makeManager(pool: pool)
            // Oldest prepared first.
            #expect(try await manager.unfinishedThreePhaseBranches() == [
                ThreePhaseBranchRecord(ref: preCommitted, state: .preCommitted, participants: peers),
                ThreePhaseBranchRecord(ref: prepared, state: .prepared, participants: peers),
            ])
            #expect(try await manager.inDoubt().isEmpty, "3PC branches are termination's, not 2PC recovery's")
            // A repeated CANCOMMIT is a yes again and keeps p.
            _ = try await manager.canCommit(preCommitted, operation: "withdraw", payload: payload(account: 1, amount: 30), participants: peers)
            #expect(try await manager.threePhaseBranch(preCommitted)?.state == .preCommitted)

            try await manager.commit(preCommitted)
            try await manager.commit(prepared)
            #expect(try await manager.unfinishedThreePhaseBranches().isEmpty)
            // A peer asking later reads c, not q; a late PRECOMMIT changes nothing.
            #expect(try await manager.threePhaseBranch(preCommitted) == ThreePhaseBranchRecord(ref: preCommitted, state: .committed, participants: []))
            try await manager.preCommit(preCommitted)
        }
        #expect(try await bank.balance(1) == 70)
        #expect(try await bank.balance(2) == 90)
        #expect(try await bank.preparedTransactions() == [])
        await bank.observer.close()
    }

    @Test func rollbackFromPreparedAndFromPreCommitted() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100])
        let prepared = BranchRef(gid: "order-3pc-3", branch: 0)
        let preCommitted = BranchRef(gid: "order-3pc-4", branch: 0)
        _ = try await bank.manager.canCommit(prepared, operation: "withdraw", payload: payload(account: 1, amount: 30), participants: peers)
        _ = try await bank.manager.canCommit(preCommitted, operation: "withdraw", payload: payload(account: 2, amount: 30), participants: peers)
        try await bank.manager.preCommit(preCommitted)
        try await bank.manager.rollback(prepared)
        try await bank.manager.rollback(preCommitted)
        #expect(try await bank.balance(1) == 100)
        #expect(try await bank.balance(2) == 100)
        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.manager.unfinishedThreePhaseBranches().isEmpty)
        #expect(try await bank.manager.threePhaseBranch(prepared)?.state == .aborted)
        #expect(try await bank.manager.threePhaseBranch(preCommitted)?.state == .aborted)
        #expect(await businessErrorCode { try await bank.manager.preCommit(prepared) } == "already_rolled_back")
        #expect(await businessErrorCode { _ = try await bank.manager.canCommit(prepared, operation: "withdraw", payload: payload(account: 1, amount: 30), participants: peers) } == "already_rolled_back")
        await bank.close()
    }

    @Test func unknownAndRefusedBranchesAreInQ() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "order-3pc-5", branch: 0)
        #expect(try await bank.manager.threePhaseBranch(ref) == nil)
        #expect(await businessErrorCode { try await bank.manager.preCommit(ref) } == "unknown_branch")

        // A no-vote leaves a state row without a prepared transaction: still q, and a
        // PRECOMMIT cannot turn it into p.
        #expect(await businessErrorCode { _ = try await bank.manager.canCommit(ref, operation: "withdraw", payload: payload(account: 1, amount: 500), participants: peers) } == "insufficient_funds")
        #expect(try await bank.manager.threePhaseBranch(ref) == nil)
        #expect(await businessErrorCode { try await bank.manager.preCommit(ref) } == "unknown_branch")
        #expect(try await bank.manager.unfinishedThreePhaseBranches().isEmpty)

        // A 2PC branch stays the in-doubt recovery's and is not pre-committed by a stray PRECOMMIT.
        let twoPhase = BranchRef(gid: "order-2pc", branch: 0)
        _ = try await bank.manager.prepare(twoPhase, operation: "withdraw", payload: payload(account: 1, amount: 5))
        #expect(try await bank.manager.inDoubt() == [twoPhase])
        #expect(await businessErrorCode { try await bank.manager.preCommit(twoPhase) } == "unknown_branch")
        #expect(try await bank.manager.unfinishedThreePhaseBranches().isEmpty)
        try await bank.manager.rollback(twoPhase)
        await bank.close()
    }
}
