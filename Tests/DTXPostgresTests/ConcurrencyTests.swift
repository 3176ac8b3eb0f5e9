import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXTestSupport
import Testing

@Suite(.serialized, .postgresServer())
struct ConcurrencyTests {
    /// Eight pairs of accounts; for each pair a task runs global transactions of two
    /// branches (withdraw from one account, deposit to the other), all pairs at once.
    /// Each transaction commits or rolls back (chosen from a seed); some withdrawals
    /// are refused. The total never changes and nothing stays prepared.
    @Test func concurrentTransactionsOnDifferentRowsConserveTheTotal() async throws {
        let pairs = 8, transactionsPerPair = 12
        var accounts: [Int: Int] = [:]
        for id in 0..<(2 * pairs) { accounts[id] = 100 }
        let bank = try await Bank.open(accounts: accounts)
        let manager = bank.manager

        let committed = try await withThrowingTaskGroup(of: Int.self) { group in
            for pair in 0..<pairs {
                group.addTask {
                    var random = SeededGenerator(seed: UInt64(pair))
                    var committed = 0
                    for index in 0..<transactionsPerPair {
                        let gid = "pair\(pair)-tx\(index)"
                        let from = 2 * pair + (index % 2), to = 2 * pair + 1 - (index % 2)
                        let amount = Int.random(in: 1...80, using: &random)
                        let decideCommit = Bool.random(using: &random)
                        let branches = [BranchRef(gid: gid, branch: 1), BranchRef(gid: gid, branch: 2)]
                        async let withdrawal = vote { try await manager.prepare(branches[0], operation: "withdraw", payload: payload(account: from, amount: amount)) }
                        async let deposit = vote { try await manager.prepare(branches[1], operation: "deposit", payload: payload(account: to, amount: amount)) }
                        let votes = try await (withdrawal, deposit)
                        if votes.0 && votes.1 && decideCommit {
                            try await manager.commit(branches[0])
                            try await manager.commit(branches[1])
                            committed += 1
                        } else {
                            try await manager.rollback(branches[0])
                            try await manager.rollback(branches[1])
                        }
                    }
                    return committed
                }
            }
            return try await group.reduce(0, +)
        }

        #expect(try await bank.totalBalance() == 100 * 2 * pairs)
        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.count("dtx_branches") == 2 * committed)
        #expect(committed > 0 && committed < pairs * transactionsPerPair)
        await bank.close()
    }

    /// Many transfers among three accounts through a pool of two connections: PREPAREs
    /// wait for rows held by prepared transactions whose COMMIT needs a connection.
    /// The lock timeout turns that wait into a retry, so everything completes, and the
    /// total is conserved.
    @Test func contendedRowsWithASmallPoolNeitherStallNorLoseMoney() async throws {
        let bank = try await Bank.open(accounts: [1: 300, 2: 300, 3: 300], poolSize: 2, lockTimeout: .milliseconds(50))
        let manager = bank.manager

        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<6 {
                group.addTask {
                    var random = SeededGenerator(seed: 1000 + UInt64(worker))
                    for index in 0..<4 {
                        let ref = BranchRef(gid: "w\(worker)-\(index)", branch: 1)
                        let from = Int.random(in: 1...3, using: &random)
                        let to = from % 3 + 1
                        let payload = transfer(from: from, to: to, Int.random(in: 1...150, using: &random))
                        // The coordinator's part: retry PREPARE until a vote, then
                        // retry phase two until it is done.
                        let yes = try await retrying { try await vote { try await manager.prepare(ref, operation: "transfer", payload: payload) } }
                        if yes {
                            try await retrying { try await manager.commit(ref) }
                        } else {
                            try await retrying { try await manager.rollback(ref) }
                        }
                    }
                }
            }
            try await group.waitForAll()
        }

        #expect(try await bank.totalBalance() == 900)
        #expect(try await bank.preparedTransactions() == [])
        for account in 1...3 { #expect(try await bank.balance(account)! >= 0) }
        await bank.close()
    }
}

/// The case the lock timeout exists for, made deterministic with one connection: a
/// PREPARE waits for a row that a prepared branch holds, and that branch's COMMIT is
/// queued behind the waiting PREPARE.
@Suite(.serialized, .postgresServer())
struct LockTimeoutTests {
    @Test func aPrepareWaitingForAPreparedRowGivesUpSoItsCommitCanRun() async throws {
        let bank = try await Bank.open(accounts: [1: 100], poolSize: 1, lockTimeout: .milliseconds(300))
        let holder = BranchRef(gid: "holder", branch: 1), waiter = BranchRef(gid: "waiter", branch: 1)
        _ = try await bank.manager.prepare(holder, operation: "withdraw", payload: payload(account: 1, amount: 10))

        let manager = bank.manager
        let waiting = Task { try await manager.prepare(waiter, operation: "withdraw", payload: payload(account: 1, amount: 20)) }
        try await Task.sleep(for: .milliseconds(100))  // the PREPARE now waits on the connection
        try await bank.manager.commit(holder)  // queued behind it
        let error = try await #require(throws: PostgresError.self) { try await waiting.value }
        #expect(error.sqlState == "55P03", "lock_timeout")

        // Retried, as the coordinator does, the PREPARE gets the row.
        #expect(try await bank.manager.prepare(waiter, operation: "withdraw", payload: payload(account: 1, amount: 20)) == .prepared(result: .object(["balance": .number(70)])))
        try await bank.manager.commit(waiter)
        #expect(try await bank.balance(1) == 70)
        await bank.close()
    }
}

/// True for a yes-vote, false for a refusal.
private func vote(_ prepare: () async throws -> PrepareOutcome) async throws -> Bool {
    do {
        _ = try await prepare()
        return true
    } catch is BusinessError {
        return false
    }
}

/// Retries `work` after errors that are not business refusals (lock timeouts, busy
/// branches), as the coordinator does, up to a bound.
private func retrying<T>(_ work: () async throws -> T) async throws -> T {
    var attempt = 0
    while true {
        do {
            return try await work()
        } catch let error as PostgresError where attempt < 200 {
            #expect(error.sqlState == "55P03" || error.code == .branchBusy, "unexpected error: \(error)")
            attempt += 1
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}
