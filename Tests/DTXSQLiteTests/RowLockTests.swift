import DTXCore
import DTXParticipant
import DTXSQLite
import DTXTestSupport
import Foundation
import Synchronization
import Testing

/// Rows changed by a prepared branch are held until it ends: other branches are refused,
/// local writes wait; and the guarantee holds under many concurrent branches.
@Suite struct RowLockTests {
    private let holder = BranchRef(gid: "order-1", branch: 1)

    @Test func aBranchTouchingALockedRowIsRefusedNamingTheHolder() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database)
        _ = try await manager.prepare(holder, operation: "transfer", payload: Bank.transfer(1, 2, 30))

        let refusal = await businessError { _ = try await manager.prepare(BranchRef(gid: "order-2", branch: 1), operation: "transfer", payload: Bank.transfer(2, 3, 10)) }
        #expect(refusal?.code == "row_locked")
        #expect(refusal?.message.contains("order-1/1") == true)
        #expect(refusal?.message.contains("accounts") == true)
        #expect(refusal?.message.contains("(2)") == true)
        #expect(await businessError { _ = try await manager.commitOnePhase(BranchRef(gid: "order-3", branch: 1), operation: "deposit", payload: .object(["account": .number(1), "amount": .number(5)])) }?.code == "row_locked")
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)

        // Other rows are free.
        let other = BranchRef(gid: "order-4", branch: 2)
        _ = try await manager.prepare(other, operation: "transfer", payload: Bank.transfer(3, 4, 10))
        #expect(Set(try await manager.inDoubt()) == [holder, other])
        try await manager.commit(other)
        try await manager.commit(holder)
        #expect(try await Bank.balances(manager) == [1: 70, 2: 130, 3: 90, 4: 110])
    }

    @Test func aLocalWriteOnALockedRowWaitsThenFailsClearly() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database, lockWaitTimeout: .milliseconds(200))
        _ = try await manager.prepare(holder, operation: "transfer", payload: Bank.transfer(1, 2, 30))

        let started = ContinuousClock.now
        do {
            try await manager.write { connection in
                try connection.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
            }
            Issue.record("a write on a locked row succeeded")
        } catch let error as SQLiteResourceManagerError {
            #expect(error == .rowLocked(table: "accounts", key: "(1)", gid: "order-1", branch: 1))
            #expect(error.description.contains("in-doubt branch order-1/1"))
            #expect(error.description.contains("waited for that transaction's outcome"))
        }
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])

        // Rows nobody holds are written at once.
        let written = try await manager.write { connection in
            try connection.execute("UPDATE accounts SET balance = balance + 1 WHERE id IN (3, 4)")
        }
        #expect(written == 2)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 101, 4: 101])
    }

    @Test func aWaitingLocalWriteSucceedsOnceTheHolderCommits() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Bank.open(directory.database, lockWaitTimeout: .seconds(10))
        _ = try await manager.prepare(holder, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        let attempts = Atomic<Int>(0)
        let writer = Task {
            try await manager.write { connection in
                attempts.add(1, ordering: .relaxed)
                // Reads the balance the committed transfer left: it runs after the commit.
                return try connection.execute("UPDATE accounts SET balance = balance * 2 WHERE id = 1")
            }
        }
        while attempts.load(ordering: .relaxed) < 2 { try await Task.sleep(for: .milliseconds(5)) }
        try await manager.commit(holder)
        #expect(try await writer.value == 1)
        #expect(try await Bank.balances(manager) == [1: 140, 2: 130, 3: 100, 4: 100])
    }

    @Test func manyConcurrentBranchesAndLocalWritesConserveTheTotal() async throws {
        let directory = try TemporaryDirectory()
        let accounts = 12
        // Local writes wait for rows that 16 busy tasks keep locking; on a loaded machine (the
        // whole suite in parallel on 2 cores) that can take longer than the default 2 s.
        let manager = try await Bank.open(directory.database, accounts: accounts, balance: 1_000, lockWaitTimeout: .seconds(30))
        // Each task runs transfers between random accounts: prepare, then commit or roll
        // back at random; refusals (locked rows, insufficient funds) are expected. Other
        // tasks move money with local writes, which wait for the rows branches hold.
        let tally = Tally()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<4 {
                group.addTask {
                    var random = SeededGenerator(seed: UInt64(task) &+ 1_000)
                    for _ in 0..<25 {
                        let from = Int64.random(in: 1...Int64(accounts), using: &random)
                        let to = from % Int64(accounts) + 1
                        let moved = try await manager.write { connection in
                            try connection.execute("UPDATE accounts SET balance = balance - 1 WHERE id = ? AND balance >= 1", [.integer(from)]) == 1
                                ? try connection.execute("UPDATE accounts SET balance = balance + 1 WHERE id = ?", [.integer(to)])
                                : 0
                        }
                        if moved == 1 { tally.record(from: from, to: to, amount: 1) }
                    }
                }
            }
            for task in 0..<16 {
                group.addTask {
                    var random = SeededGenerator(seed: UInt64(task) &* 7919 &+ 1)
                    for index in 0..<25 {
                        let branch = BranchRef(gid: "tx-\(task)-\(index)", branch: BranchID.random(in: 0..<3, using: &random))
                        let from = Int.random(in: 1...accounts, using: &random)
                        let to = (from % accounts) + 1
                        let amount = Int.random(in: 1...400, using: &random)
                        let commit = Bool.random(using: &random)
                        do {
                            _ = try await manager.prepare(branch, operation: "transfer", payload: Bank.transfer(from, to, amount))
                        } catch let refusal as BusinessError {
                            tally.refusals.withLock { $0[refusal.code, default: 0] += 1 }
                            try await manager.rollback(branch)
                            continue
                        }
                        await Task.yield()
                        if commit {
                            try await manager.commit(branch)
                            tally.record(from: Int64(from), to: Int64(to), amount: Int64(amount))
                        } else {
                            try await manager.rollback(branch)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let balances = try await Bank.balances(manager)
        let deltas = tally.deltas.withLock { $0 }
        #expect(balances.values.reduce(0, +) == Int64(accounts) * 1_000)
        for id in 1...Int64(accounts) {
            #expect(balances[id] == 1_000 + deltas[id, default: 0], "account \(id)")
        }
        #expect(balances.values.allSatisfy { $0 >= 0 })
        #expect(!deltas.isEmpty)
        #expect(try await manager.inDoubt().isEmpty)
        #expect(try await Bank.count("dtx_locks", manager) == 0)
        #expect(try await Bank.count("dtx_outcomes", manager) == 16 * 25)
        let refusals = tally.refusals.withLock { $0 }
        #expect(Set(refusals.keys).isSubset(of: ["row_locked", "insufficient_funds"]))
        #expect(refusals["row_locked", default: 0] > 0)
    }
}

/// What the concurrent branches of a test did.
private final class Tally: Sendable {
    /// The net change of every account by committed transfers.
    let deltas = Mutex<[Int64: Int64]>([:])
    /// Refused prepares, by code.
    let refusals = Mutex<[String: Int]>([:])

    func record(from: Int64, to: Int64, amount: Int64) {
        deltas.withLock { deltas in
            deltas[from, default: 0] -= amount
            deltas[to, default: 0] += amount
        }
    }
}
