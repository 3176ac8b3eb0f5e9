import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXTestSupport
import Testing

/// SIGKILLs the PostgreSQL server between PREPARE and phase two (its own server: the
/// crash would disturb other suites).
@Suite(.serialized, .postgresServer())
struct ServerCrashTests {
    @Test func preparedBranchesSurviveAServerCrashAndFinishAfterTheRestart() async throws {
        let bank = try await Bank.open(accounts: [1: 100, 2: 100])
        let toCommit = BranchRef(gid: "crash-1", branch: 1)
        let toRollBack = BranchRef(gid: "crash-2", branch: 1)
        _ = try await bank.manager.prepare(toCommit, operation: "withdraw", payload: payload(account: 1, amount: 40))
        _ = try await bank.manager.prepare(toRollBack, operation: "withdraw", payload: payload(account: 2, amount: 40))

        try await bank.server.kill()
        // While the server is down, phase two fails with a clear, retryable error.
        let down = try await #require(throws: PostgresError.self) { try await bank.manager.commit(toCommit) }
        #expect(down.code == .connectionFailed)
        #expect(down.message.contains("cannot reconnect"))
        #expect(down.message.contains("127.0.0.1:\(bank.server.port)"))

        try await bank.server.restart()
        // The prepared transactions were recovered from the server's WAL and still hold
        // their rows: another connection sees the old balances.
        #expect(try await bank.preparedTransactions() == [
            preparedName(toCommit, "withdraw", payload(account: 1, amount: 40)),
            preparedName(toRollBack, "withdraw", payload(account: 2, amount: 40)),
        ])
        #expect(Set(try await bank.manager.inDoubt()) == [toCommit, toRollBack])
        #expect(try await bank.balance(1) == 100)
        #expect(try await bank.balance(2) == 100)
        // A repeated PREPARE is still recognised (the branch lock survived the crash).
        #expect(try await bank.manager.prepare(toCommit, operation: "withdraw", payload: payload(account: 1, amount: 40)) == .prepared(result: nil))

        // The same resource manager, whose connections all died, finishes them.
        try await bank.manager.commit(toCommit)
        try await bank.manager.rollback(toRollBack)
        try await bank.manager.commit(toCommit)
        #expect(try await bank.balance(1) == 60)
        #expect(try await bank.balance(2) == 100)
        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.manager.inDoubt() == [])
        await bank.close()
    }

    @Test func aCommittedBranchStaysCommittedAcrossACrash() async throws {
        let bank = try await Bank.open(accounts: [1: 100])
        let ref = BranchRef(gid: "crash-3", branch: 2)
        _ = try await bank.manager.prepare(ref, operation: "withdraw", payload: payload(account: 1, amount: 10))
        try await bank.manager.commit(ref)

        try await bank.server.kill()
        try await bank.server.restart()

        // The outcome record was durable with the commit: a retried COMMIT succeeds and
        // a ROLLBACK is refused.
        try await bank.manager.commit(ref)
        #expect(await businessErrorCode { try await bank.manager.rollback(ref) } == "already_committed")
        #expect(try await bank.balance(1) == 90)
        await bank.close()
    }
}
