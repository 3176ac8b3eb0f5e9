import DTXCore
import DTXParticipant
import DTXSQLite
import Foundation
import Synchronization
import Testing

/// TCC and sagas on a real SQLite file, behind the branch barrier: the business code runs
/// once per phase, null compensation, no hanging, refusals roll the barrier row back,
/// in-doubt 2PC branches' row locks are respected, and everything survives a reopen.
@Suite struct BarrierTests {
    private let branch = BranchRef(gid: "order-1", branch: 0)

    /// Counts the runs of each phase's business code (committed or not).
    final class Runs: Sendable {
        private let counts = Mutex<[BarrierPhase: Int]>([:])

        func record(_ phase: BarrierPhase) { counts.withLock { $0[phase, default: 0] += 1 } }
        subscript(_ phase: BarrierPhase) -> Int { counts.withLock { $0[phase, default: 0] } }
    }

    /// The bank with a TCC operation `reserve` (try: take the amount from the account
    /// into a hold; confirm: drop the hold, the money is spent; cancel: give it back) and
    /// a saga operation `book` (action: tag the account; compensate: remove the tag).
    /// Payloads: `{"hold": ID, "account": N, "amount": N}`, `{"tag": NAME, "account": N}`.
    static func open(_ path: String, runs: Runs, lockWaitTimeout: Duration = .seconds(2)) async throws -> SQLiteResourceManager {
        let manager = try await Bank.open(path, lockWaitTimeout: lockWaitTimeout)
        try await manager.write { connection in
            try connection.execute("CREATE TABLE IF NOT EXISTS holds (id TEXT PRIMARY KEY, account INTEGER NOT NULL, amount INTEGER NOT NULL)")
        }
        manager.register(
            tcc: "reserve",
            try: { payload, connection in
                runs.record(.try)
                let hold = try text(payload, "hold"), account = try number(payload, "account"), amount = try number(payload, "amount")
                guard let balance = try connection.query("SELECT balance FROM accounts WHERE id = ?", [.integer(account)]).first?["balance"]?.integerValue else {
                    throw BusinessError(code: "no_such_account", message: "no account \(account)")
                }
                guard balance >= amount else {
                    throw BusinessError(code: "insufficient_funds", message: "account \(account) holds \(balance), less than \(amount)")
                }
                try connection.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", [.integer(amount), .integer(account)])
                try connection.execute("INSERT INTO holds (id, account, amount) VALUES (?, ?, ?)", [.text(hold), .integer(account), .integer(amount)])
                return .object(["hold": .string(hold), "balance": .number(Double(balance - amount))])
            },
            confirm: { payload, connection in
                runs.record(.confirm)
                let removed = try connection.execute("DELETE FROM holds WHERE id = ?", [.text(try text(payload, "hold"))])
                return .object(["released": .number(Double(removed))])
            },
            cancel: { payload, connection in
                runs.record(.cancel)
                let hold = try text(payload, "hold")
                guard let row = try connection.query("SELECT account, amount FROM holds WHERE id = ?", [.text(hold)]).first else { return nil }
                try connection.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", [row.values[1], row.values[0]])
                try connection.execute("DELETE FROM holds WHERE id = ?", [.text(hold)])
                return .object(["returned": row.values[1].integerValue.map { .number(Double($0)) } ?? .null])
            })
        manager.register(
            saga: "book",
            action: { payload, connection in
                runs.record(.action)
                try connection.execute("INSERT INTO tags (name, account) VALUES (?, ?)", [.text(try text(payload, "tag")), .integer(try number(payload, "account"))])
                return .string("booked")
            },
            compensate: { payload, connection in
                runs.record(.compensate)
                try connection.execute("DELETE FROM tags WHERE name = ?", [.text(try text(payload, "tag"))])
                return .string("unbooked")
            })
        return manager
    }

    static func reservation(_ hold: String, account: Int, amount: Int) -> JSONValue {
        .object(["hold": .string(hold), "account": .number(Double(account)), "amount": .number(Double(amount))])
    }

    static func booking(_ tag: String, account: Int) -> JSONValue {
        .object(["tag": .string(tag), "account": .number(Double(account))])
    }

    private static func text(_ payload: JSONValue?, _ field: String) throws -> String {
        guard let value = payload?[field]?.stringValue else { throw BusinessError(code: "bad_payload", message: "\(field) is missing") }
        return value
    }

    private static func number(_ payload: JSONValue?, _ field: String) throws -> Int64 {
        guard let value = payload?[field]?.doubleValue else { throw BusinessError(code: "bad_payload", message: "\(field) is missing") }
        return Int64(value)
    }

    /// The branch's barrier rows as `op` → `null_compensation`.
    static func barrier(_ manager: SQLiteResourceManager, _ branch: BranchRef) async throws -> [String: Bool] {
        try await manager.read { connection in
            var rows: [String: Bool] = [:]
            for row in try connection.query("SELECT op, null_compensation FROM dtx_barrier WHERE gid = ? AND branch = ?", [.text(branch.gid), .integer(Int64(branch.branch))]) {
                if let op = row["op"]?.textValue { rows[op] = row["null_compensation"]?.integerValue == 1 }
            }
            return rows
        }
    }

    // MARK: Idempotency

    @Test func repeatedTryConfirmAndCancelRunTheBusinessOnce() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let manager = try await Self.open(directory.database, runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 30)
        let tried = try await manager.try(branch, operation: "reserve", payload: payload)
        #expect(tried == .object(["hold": .string("h1"), "balance": .number(70)]))
        #expect(try await manager.try(branch, operation: "reserve", payload: payload) == tried)
        #expect(runs[.try] == 1)
        #expect(try await Bank.balances(manager)[1] == 70)

        let confirmed = try await manager.confirm(branch, operation: "reserve", payload: payload)
        #expect(confirmed == .object(["released": .number(1)]))
        #expect(try await manager.confirm(branch, operation: "reserve", payload: payload) == confirmed)
        #expect(runs[.confirm] == 1)
        #expect(await businessError { _ = try await manager.cancel(branch, operation: "reserve", payload: payload) }?.code == "already_confirmed")
        #expect(runs[.cancel] == 0)
        #expect(try await Bank.balances(manager) == [1: 70, 2: 100, 3: 100, 4: 100])
        #expect(try await Bank.count("holds", manager) == 0)
        #expect(try await Self.barrier(manager, branch) == ["try": false, "confirm": false])
        // TCC leaves no 2PC state behind.
        #expect(try await Bank.count("dtx_prepared", manager) == 0)
        #expect(try await Bank.count("dtx_outcomes", manager) == 0)
    }

    @Test func aTryThenItsCancelGivesTheMoneyBack() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let manager = try await Self.open(directory.database, runs: runs)
        let payload = Self.reservation("h1", account: 2, amount: 40)
        _ = try await manager.try(branch, operation: "reserve", payload: payload)
        #expect(try await manager.cancel(branch, operation: "reserve", payload: payload) == .object(["returned": .number(40)]))
        #expect(try await manager.cancel(branch, operation: "reserve", payload: payload) == .object(["returned": .number(40)]))
        #expect(runs[.cancel] == 1)
        #expect(try await Bank.balances(manager)[2] == 100)
        #expect(await businessError { _ = try await manager.confirm(branch, operation: "reserve", payload: payload) }?.code == "already_cancelled")
        #expect(try await Self.barrier(manager, branch) == ["try": false, "cancel": false])
    }

    // MARK: Null compensation and no hanging

    @Test func aCancelBeforeItsTryDoesNothingAndTheLateTryIsRefused() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let manager = try await Self.open(directory.database, runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 30)
        #expect(try await manager.cancel(branch, operation: "reserve", payload: payload) == nil)
        #expect(runs[.cancel] == 0)
        #expect(try await Self.barrier(manager, branch) == ["cancel": true])

        let late = await businessError { _ = try await manager.try(branch, operation: "reserve", payload: payload) }
        #expect(late?.code == "already_cancelled")
        #expect(late?.message.contains("order-1/0") == true)
        #expect(runs[.try] == 0)
        #expect(try await Bank.balances(manager)[1] == 100)
        #expect(try await Bank.count("holds", manager) == 0)
        #expect(try await Self.barrier(manager, branch) == ["cancel": true])
    }

    @Test func aRefusedTryRollsBackAndItsCancelIsANullCompensation() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let manager = try await Self.open(directory.database, runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 500)
        #expect(await businessError { _ = try await manager.try(branch, operation: "reserve", payload: payload) }?.code == "insufficient_funds")
        #expect(try await Bank.count("dtx_barrier", manager) == 0)
        // The coordinator cancels every branch, this one too: nothing to give back.
        #expect(try await manager.cancel(branch, operation: "reserve", payload: payload) == nil)
        #expect(runs[.cancel] == 0)
        #expect(try await Self.barrier(manager, branch) == ["cancel": true])
        // A retried try (its first answer was lost) is refused now.
        #expect(await businessError { _ = try await manager.try(branch, operation: "reserve", payload: payload) }?.code == "already_cancelled")
        #expect(runs[.try] == 1)
        #expect(try await Bank.balances(manager)[1] == 100)
    }

    @Test func aCompensateBeforeItsActionDoesNothingAndTheLateActionIsRefused() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let manager = try await Self.open(directory.database, runs: runs)
        let step = BranchRef(gid: "trip-1", branch: 2)
        let payload = Self.booking("seat-7", account: 1)
        #expect(try await manager.compensate(step, operation: "book", payload: payload) == nil)
        #expect(await businessError { _ = try await manager.action(step, operation: "book", payload: payload) }?.code == "already_compensated")
        #expect(runs[.action] == 0 && runs[.compensate] == 0)
        #expect(try await Bank.count("tags", manager) == 0)
        #expect(try await Self.barrier(manager, step) == ["compensate": true])

        // A step that ran: its action once, its compensation once.
        let done = BranchRef(gid: "trip-2", branch: 0)
        let other = Self.booking("seat-8", account: 2)
        #expect(try await manager.action(done, operation: "book", payload: other) == .string("booked"))
        #expect(try await manager.action(done, operation: "book", payload: other) == .string("booked"))
        #expect(try await Bank.count("tags", manager) == 1)
        #expect(try await manager.compensate(done, operation: "book", payload: other) == .string("unbooked"))
        #expect(try await manager.compensate(done, operation: "book", payload: other) == .string("unbooked"))
        #expect(runs[.action] == 1 && runs[.compensate] == 1)
        #expect(try await Bank.count("tags", manager) == 0)
    }

    // MARK: Refusals roll the barrier row back

    @Test func aFailingBusinessClosureRollsBackItsWritesAndItsBarrierRow() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Self.open(directory.database, runs: Runs())
        manager.register(
            tcc: "half",
            try: { payload, connection in
                try connection.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
                throw BusinessError(code: "changed_my_mind", message: "refused after writing")
            },
            confirm: { _, _ in nil }, cancel: { _, _ in nil })
        manager.register(
            saga: "overdraw",
            action: { _, connection in
                try connection.execute("UPDATE accounts SET balance = balance - 1000 WHERE id = 2")
                return nil
            },
            compensate: { _, _ in nil })
        manager.register(
            saga: "broken",
            action: { _, connection in
                try connection.execute("UPDATE accounts SET balance = 0 WHERE id = 3")
                try connection.execute("UPDATE no_such_table SET x = 1")
                return nil
            },
            compensate: { _, _ in nil })
        manager.register(
            tcc: "sneaky",
            try: { _, connection in
                try connection.execute("DELETE FROM dtx_barrier")
                return nil
            },
            confirm: { _, _ in nil }, cancel: { _, _ in nil })

        #expect(await businessError { _ = try await manager.try(branch, operation: "half", payload: nil) }?.code == "changed_my_mind")
        #expect(await businessError { _ = try await manager.action(BranchRef(gid: "s", branch: 1), operation: "overdraw", payload: nil) }?.code == "constraint_violation")
        #expect(await businessError { _ = try await manager.try(BranchRef(gid: "t", branch: 1), operation: "sneaky", payload: nil) }?.code == "reserved_table")
        await #expect(throws: SQLiteError.self) { _ = try await manager.action(BranchRef(gid: "b", branch: 1), operation: "broken", payload: nil) }
        #expect(await businessError { _ = try await manager.try(branch, operation: "unregistered", payload: nil) }?.code == "unknown_operation")
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])
        #expect(try await Bank.count("dtx_barrier", manager) == 0)
        // Each can still be cancelled or compensated (null compensation).
        #expect(try await manager.cancel(branch, operation: "half", payload: nil) == nil)
        #expect(try await manager.compensate(BranchRef(gid: "b", branch: 1), operation: "broken", payload: nil) == nil)
        #expect(try await manager.cancel(BranchRef(gid: "u", branch: 1), operation: "unregistered", payload: nil) == nil)
        #expect(try await Bank.count("dtx_barrier", manager) == 3)
    }

    @Test func messagesNamingOtherWorkThanTheTryAreRefused() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Self.open(directory.database, runs: Runs())
        _ = try await manager.try(branch, operation: "reserve", payload: Self.reservation("h1", account: 1, amount: 10))
        let other = Self.reservation("h1", account: 1, amount: 99)
        #expect(await businessError { _ = try await manager.try(branch, operation: "reserve", payload: other) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.confirm(branch, operation: "reserve", payload: other) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.cancel(branch, operation: "reserve", payload: other) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.confirm(BranchRef(gid: "never", branch: 0), operation: "reserve", payload: other) }?.code == "unknown_branch")
        #expect(try await Self.barrier(manager, branch) == ["try": false])
    }

    // MARK: Concurrency and in-doubt 2PC branches

    @Test func concurrentDuplicateTriesRunTheBusinessOnce() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let manager = try await Self.open(directory.database, runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 25)
        let results = try await withThrowingTaskGroup(of: JSONValue?.self) { group in
            for _ in 0..<12 {
                group.addTask { try await manager.try(branch, operation: "reserve", payload: payload) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 12)
        #expect(Set(results.map { $0 ?? .null }) == [.object(["hold": .string("h1"), "balance": .number(75)])])
        #expect(runs[.try] == 1)
        #expect(try await Bank.balances(manager)[1] == 75)

        // And two managers (two connections, as two processes would) on the same file.
        let second = try await Self.open(directory.database, runs: runs)
        let saga = BranchRef(gid: "trip", branch: 1)
        async let first = manager.action(saga, operation: "book", payload: Self.booking("t", account: 1))
        async let other = second.action(saga, operation: "book", payload: Self.booking("t", account: 1))
        #expect(try await [first, other] == [.string("booked"), .string("booked")])
        #expect(runs[.action] == 1)
        await second.close()
    }

    @Test func aPhaseTouchingARowOfAnInDoubtBranchWaitsThenFailsClearly() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let manager = try await Self.open(directory.database, runs: runs, lockWaitTimeout: .milliseconds(200))
        let holder = BranchRef(gid: "xa-1", branch: 1)
        _ = try await manager.prepare(holder, operation: "transfer", payload: Bank.transfer(1, 2, 30))

        let started = ContinuousClock.now
        do {
            _ = try await manager.try(branch, operation: "reserve", payload: Self.reservation("h1", account: 1, amount: 10))
            Issue.record("a try on a locked row succeeded")
        } catch let error as SQLiteResourceManagerError {
            #expect(error == .rowLocked(table: "accounts", key: "(1)", gid: "xa-1", branch: 1))
        }
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        #expect(runs[.try] >= 1)  // run and rolled back, possibly several times
        #expect(try await Bank.count("dtx_barrier", manager) == 0)
        #expect(try await Bank.count("holds", manager) == 0)
        #expect(try await Bank.balances(manager) == [1: 100, 2: 100, 3: 100, 4: 100])

        // Rows the branch does not hold are free.
        _ = try await manager.try(BranchRef(gid: "order-2", branch: 0), operation: "reserve", payload: Self.reservation("h2", account: 3, amount: 10))
        #expect(try await Bank.balances(manager)[3] == 90)
        try await manager.rollback(holder)
    }

    @Test func aWaitingTryCommitsOnceTheInDoubtBranchCommits() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await Self.open(directory.database, runs: Runs(), lockWaitTimeout: .seconds(10))
        let holder = BranchRef(gid: "xa-1", branch: 1)
        _ = try await manager.prepare(holder, operation: "transfer", payload: Bank.transfer(1, 2, 30))
        let payload = Self.reservation("h1", account: 1, amount: 60)
        let waiting = Task { try await manager.try(branch, operation: "reserve", payload: payload) }
        try await Task.sleep(for: .milliseconds(50))
        try await manager.commit(holder)
        // It ran after the commit: it saw 70, not 100.
        #expect(try await waiting.value == .object(["hold": .string("h1"), "balance": .number(10)]))
        #expect(try await Bank.balances(manager) == [1: 10, 2: 130, 3: 100, 4: 100])
    }

    // MARK: Restart

    @Test func theBarrierSurvivesAReopen() async throws {
        let directory = try TemporaryDirectory()
        let runs = Runs()
        let payload = Self.reservation("h1", account: 1, amount: 30)
        let cancelled = BranchRef(gid: "order-2", branch: 1)
        do {
            let manager = try await Self.open(directory.database, runs: runs)
            _ = try await manager.try(branch, operation: "reserve", payload: payload)
            _ = try await manager.cancel(cancelled, operation: "reserve", payload: payload)
            await manager.close()
        }
        let reopened = try await Self.open(directory.database, runs: runs)
        // The repeated try answers the stored result; its confirm runs once.
        #expect(try await reopened.try(branch, operation: "reserve", payload: payload) == .object(["hold": .string("h1"), "balance": .number(70)]))
        #expect(runs[.try] == 1)
        _ = try await reopened.confirm(branch, operation: "reserve", payload: payload)
        #expect(runs[.confirm] == 1)
        // The null compensation's marker still refuses the late try.
        #expect(await businessError { _ = try await reopened.try(cancelled, operation: "reserve", payload: payload) }?.code == "already_cancelled")
        #expect(try await Bank.balances(reopened)[1] == 70)
        await reopened.close()

        // A confirm whose operation is no longer registered is retried, not refused.
        let bare = try await SQLiteResourceManager(path: directory.database)
        let ghost = BranchRef(gid: "order-3", branch: 0)
        let again = try await Self.open(directory.database, runs: runs)
        _ = try await again.try(ghost, operation: "reserve", payload: Self.reservation("h3", account: 4, amount: 1))
        await again.close()
        await #expect(throws: UnregisteredBarrierOperation(phase: .confirm, operation: "reserve", branch: ghost)) {
            _ = try await bare.confirm(ghost, operation: "reserve", payload: Self.reservation("h3", account: 4, amount: 1))
        }
        await bare.close()
    }
}
