import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import DTXTestSupport
import Foundation
import Synchronization
import Testing

/// TCC and sagas on a real PostgreSQL server, behind the branch barrier: the business
/// code runs once per phase (also for concurrent duplicates), null compensation, no
/// hanging, refusals roll the barrier row back, row locks of prepared 2PC branches are
/// waited for, and everything survives a new resource manager and a server crash.
@Suite(.serialized, .postgresServer())
struct BarrierTests {
    /// Counts the runs of each phase's business code (committed or not).
    final class Runs: Sendable {
        private let counts = Mutex<[BarrierPhase: Int]>([:])

        func record(_ phase: BarrierPhase) { counts.withLock { $0[phase, default: 0] += 1 } }
        subscript(_ phase: BarrierPhase) -> Int { counts.withLock { $0[phase, default: 0] } }
    }

    /// A bank whose manager serves TCC `reserve` (try: move the amount from the account
    /// into a hold, optionally sleeping `sleep` seconds first; confirm: drop the hold;
    /// cancel: give it back) and saga `book` (action: withdraw; compensate: deposit).
    private static func open(accounts: [Int: Int], runs: Runs, poolSize: Int = 4, lockTimeout: Duration = .seconds(5)) async throws -> Bank {
        let bank = try await Bank.open(accounts: accounts, poolSize: poolSize, lockTimeout: lockTimeout)
        _ = try await bank.observer.withConnection { connection in
            try connection.execute("CREATE TABLE holds (id TEXT PRIMARY KEY, account INTEGER NOT NULL, amount BIGINT NOT NULL)")
        }
        register(bank.manager, runs: runs)
        return bank
    }

    private static func register(_ manager: PostgresResourceManager, runs: Runs) {
        manager.register(
            tcc: "reserve",
            try: { payload, connection in
                runs.record(.try)
                if let sleep = payload?["sleep"]?.doubleValue { try connection.execute("SELECT pg_sleep($1)", [.double(sleep)]) }
                let account = try field(payload, "account"), amount = try field(payload, "amount")
                // The CHECK (balance >= 0) refuses an overdraft: class 23, a refusal.
                let rows = try connection.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1 RETURNING balance", [.int(account), .int(amount)]).rows
                guard let balance = try rows.first?.int("balance") else { throw BusinessError(code: "unknown_account", message: "no account \(account)") }
                try connection.execute("INSERT INTO holds (id, account, amount) VALUES ($1, $2, $3)", [.text(try hold(payload)), .int(account), .int(amount)])
                return .object(["balance": .number(Double(balance))])
            },
            confirm: { payload, connection in
                runs.record(.confirm)
                let removed = try connection.execute("DELETE FROM holds WHERE id = $1", [.text(try hold(payload))]).affectedRows
                return .object(["released": .number(Double(removed))])
            },
            cancel: { payload, connection in
                runs.record(.cancel)
                let rows = try connection.execute("DELETE FROM holds WHERE id = $1 RETURNING account, amount", [.text(try hold(payload))]).rows
                guard let row = rows.first, let account = try row.int("account"), let amount = try row.int("amount") else { return nil }
                try connection.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", [.int(account), .int(amount)])
                return .object(["returned": .number(Double(amount))])
            })
        manager.register(
            saga: "book",
            action: { payload, connection in
                runs.record(.action)
                try connection.execute("UPDATE accounts SET balance = balance - $2 WHERE id = $1", [.int(try field(payload, "account")), .int(try field(payload, "amount"))])
                return .string("booked")
            },
            compensate: { payload, connection in
                runs.record(.compensate)
                try connection.execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1", [.int(try field(payload, "account")), .int(try field(payload, "amount"))])
                return .string("unbooked")
            })
    }

    private static func hold(_ payload: JSONValue?) throws -> String {
        guard let hold = payload?["hold"]?.stringValue else { throw BusinessError(code: "invalid_payload", message: "payload needs a string \"hold\"") }
        return hold
    }

    private static func reservation(_ hold: String, account: Int, amount: Int, sleep: Double? = nil) -> JSONValue {
        var fields: [String: JSONValue] = ["hold": .string(hold), "account": .number(Double(account)), "amount": .number(Double(amount))]
        if let sleep { fields["sleep"] = .number(sleep) }
        return .object(fields)
    }

    /// The branch's barrier rows, `op` → `null_compensation`.
    private static func barrier(_ bank: Bank, _ branch: BranchRef) async throws -> [String: Bool] {
        try await bank.observer.withConnection { connection in
            var rows: [String: Bool] = [:]
            for row in try connection.execute("SELECT op, null_compensation FROM dtx_barrier WHERE gid = $1 AND branch = $2", [.text(branch.gid), .int(branch.branch)]).rows {
                if let op = try row.string("op") { rows[op] = try row.bool("null_compensation") }
            }
            return rows
        }
    }

    private let branch = BranchRef(gid: "order-1", branch: 0)

    @Test func repeatedTryConfirmAndCancelRunTheBusinessOnce() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 30)
        #expect(try await bank.manager.try(branch, operation: "reserve", payload: payload) == .object(["balance": .number(70)]))
        #expect(try await bank.manager.try(branch, operation: "reserve", payload: payload) == .object(["balance": .number(70)]))
        #expect(runs[.try] == 1)
        #expect(try await bank.balance(1) == 70)
        #expect(try await bank.manager.confirm(branch, operation: "reserve", payload: payload) == .object(["released": .number(1)]))
        #expect(try await bank.manager.confirm(branch, operation: "reserve", payload: payload) == .object(["released": .number(1)]))
        #expect(runs[.confirm] == 1)
        #expect(await businessErrorCode { _ = try await bank.manager.cancel(branch, operation: "reserve", payload: payload) } == "already_confirmed")
        #expect(runs[.cancel] == 0)
        #expect(try await bank.balance(1) == 70)
        #expect(try await bank.count("holds") == 0)
        #expect(try await Self.barrier(bank, branch) == ["try": false, "confirm": false])
        let stored = try await bank.server.psql("SELECT op, operation, result, digest FROM dtx_barrier WHERE op = 'try'", database: bank.database)
        #expect(stored == #"try|reserve|{"balance":70}|"# + BranchDigest.of(operation: "reserve", payload: payload))
        // Ordinary committed transactions: nothing prepared, no 2PC records, no session left open.
        #expect(try await bank.preparedTransactions() == [])
        #expect(try await bank.count("dtx_branches") == 0)
        #expect(try await bank.openTransactions() == 0)
        await bank.close()
    }

    @Test func aTryThenItsCancelGivesTheMoneyBack() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 40)
        _ = try await bank.manager.try(branch, operation: "reserve", payload: payload)
        #expect(try await bank.manager.cancel(branch, operation: "reserve", payload: payload) == .object(["returned": .number(40)]))
        #expect(try await bank.manager.cancel(branch, operation: "reserve", payload: payload) == .object(["returned": .number(40)]))
        #expect(runs[.cancel] == 1)
        #expect(try await bank.balance(1) == 100)
        #expect(await businessErrorCode { _ = try await bank.manager.confirm(branch, operation: "reserve", payload: payload) } == "already_cancelled")
        #expect(await businessErrorCode { _ = try await bank.manager.cancel(branch, operation: "reserve", payload: Self.reservation("h1", account: 1, amount: 41)) } == "branch_mismatch")
        #expect(await businessErrorCode { _ = try await bank.manager.confirm(BranchRef(gid: "never", branch: 1), operation: "reserve", payload: payload) } == "unknown_branch")
        await bank.close()
    }

    @Test func aCancelBeforeItsTryDoesNothingAndTheLateTryIsRefused() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 30)
        #expect(try await bank.manager.cancel(branch, operation: "reserve", payload: payload) == nil)
        #expect(try await bank.manager.cancel(branch, operation: "reserve", payload: payload) == nil)
        #expect(runs[.cancel] == 0)
        #expect(try await Self.barrier(bank, branch) == ["cancel": true])
        let late = try await #require(throws: BusinessError.self) { try await bank.manager.try(branch, operation: "reserve", payload: payload) }
        #expect(late.code == "already_cancelled")
        #expect(late.message.contains("order-1/0"))
        #expect(runs[.try] == 0)
        #expect(try await bank.balance(1) == 100)
        #expect(try await Self.barrier(bank, branch) == ["cancel": true])
        await bank.close()
    }

    @Test func aRefusedTryRollsBackItsBarrierRowAndItsCancelIsANullCompensation() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 500)
        #expect(await businessErrorCode { _ = try await bank.manager.try(branch, operation: "reserve", payload: payload) } == "constraint_violation")
        #expect(try await bank.count("dtx_barrier") == 0)
        #expect(try await bank.count("holds") == 0)
        #expect(try await bank.manager.cancel(branch, operation: "reserve", payload: payload) == nil)
        #expect(runs[.cancel] == 0)
        #expect(await businessErrorCode { _ = try await bank.manager.try(branch, operation: "reserve", payload: payload) } == "already_cancelled")
        #expect(runs[.try] == 1)

        // A closure that writes, then refuses: its writes and the barrier row roll back.
        bank.manager.register(
            saga: "half",
            action: { _, connection in
                try connection.execute("UPDATE accounts SET balance = 0 WHERE id = 1")
                throw BusinessError(code: "changed_my_mind", message: "refused after writing")
            },
            compensate: { _, _ in nil })
        let step = BranchRef(gid: "saga-1", branch: 2)
        #expect(await businessErrorCode { _ = try await bank.manager.action(step, operation: "half", payload: nil) } == "changed_my_mind")
        #expect(await businessErrorCode { _ = try await bank.manager.action(step, operation: "nothing", payload: nil) } == "unknown_operation")
        #expect(try await bank.balance(1) == 100)
        #expect(try await Self.barrier(bank, step) == [:])
        #expect(try await bank.openTransactions() == 0)
        await bank.close()
    }

    @Test func aCompensateBeforeItsActionDoesNothingAndTheLateActionIsRefused() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs)
        let step = BranchRef(gid: "trip-1", branch: 1)
        let booking = payload(account: 1, amount: 25)
        #expect(try await bank.manager.compensate(step, operation: "book", payload: booking) == nil)
        #expect(await businessErrorCode { _ = try await bank.manager.action(step, operation: "book", payload: booking) } == "already_compensated")
        #expect(runs[.action] == 0 && runs[.compensate] == 0)
        #expect(try await bank.balance(1) == 100)
        #expect(try await Self.barrier(bank, step) == ["compensate": true])

        let done = BranchRef(gid: "trip-2", branch: 0)
        #expect(try await bank.manager.action(done, operation: "book", payload: booking) == .string("booked"))
        #expect(try await bank.manager.action(done, operation: "book", payload: booking) == .string("booked"))
        #expect(try await bank.balance(1) == 75)
        #expect(try await bank.manager.compensate(done, operation: "book", payload: booking) == .string("unbooked"))
        #expect(try await bank.manager.compensate(done, operation: "book", payload: booking) == .string("unbooked"))
        #expect(runs[.action] == 1 && runs[.compensate] == 1)
        #expect(try await bank.balance(1) == 100)
        await bank.close()
    }

    @Test func concurrentDuplicateTriesRunTheBusinessOnce() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs, poolSize: 4)
        // The business sleeps, so that the duplicates arrive while the first runs.
        let payload = Self.reservation("h1", account: 1, amount: 10, sleep: 0.3)
        let results = try await withThrowingTaskGroup(of: JSONValue?.self) { group in
            for _ in 0..<4 {
                group.addTask { try await bank.manager.try(branch, operation: "reserve", payload: payload) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results == Array(repeating: .object(["balance": .number(90)]), count: 4))
        #expect(runs[.try] == 1)
        #expect(try await bank.balance(1) == 90)
        #expect(try await bank.count("holds") == 1)
        await bank.close()
    }

    @Test func aCancelArrivingWhileItsTryRunsWaitsAndUndoesIt() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs, poolSize: 2)
        let payload = Self.reservation("h1", account: 1, amount: 10, sleep: 0.4)
        let trying = Task { try await bank.manager.try(branch, operation: "reserve", payload: payload) }
        while runs[.try] == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // The try holds the branch: the cancel waits for it, sees it, and undoes it —
        // rather than recording a null compensation that would leave the money held.
        #expect(try await bank.manager.cancel(branch, operation: "reserve", payload: payload) == .object(["returned": .number(10)]))
        #expect(try await trying.value == .object(["balance": .number(90)]))
        #expect(try await bank.balance(1) == 100)
        #expect(try await Self.barrier(bank, branch) == ["try": false, "cancel": false])
        await bank.close()
    }

    @Test func aPhaseWaitsForRowsOfAPreparedBranchThenFailsToBeRetried() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100, 2: 100], runs: runs, lockTimeout: .milliseconds(200))
        let holder = BranchRef(gid: "xa-1", branch: 1)
        _ = try await bank.manager.prepare(holder, operation: "withdraw", payload: payload(account: 1, amount: 30))

        let started = ContinuousClock.now
        let waited = try await #require(throws: PostgresError.self) {
            try await bank.manager.try(branch, operation: "reserve", payload: Self.reservation("h1", account: 1, amount: 10))
        }
        #expect(waited.sqlState == "55P03")
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        #expect(try await bank.count("dtx_barrier") == 0)

        // Once the prepared branch commits, the retried try runs on the committed balance.
        try await bank.manager.commit(holder)
        #expect(try await bank.manager.try(branch, operation: "reserve", payload: Self.reservation("h1", account: 1, amount: 10)) == .object(["balance": .number(60)]))
        #expect(try await bank.balance(1) == 60)
        await bank.close()
    }

    @Test func theBarrierSurvivesANewResourceManagerAndAServerCrash() async throws {
        let runs = Runs()
        let bank = try await Self.open(accounts: [1: 100], runs: runs)
        let payload = Self.reservation("h1", account: 1, amount: 30)
        let cancelled = BranchRef(gid: "order-2", branch: 1)
        _ = try await bank.manager.try(branch, operation: "reserve", payload: payload)
        _ = try await bank.manager.cancel(cancelled, operation: "reserve", payload: payload)

        try await bank.server.kill()
        try await bank.server.restart()

        let manager = try await Bank.makeManager(pool: bank.pool)
        Self.register(manager, runs: runs)
        #expect(try await manager.try(branch, operation: "reserve", payload: payload) == .object(["balance": .number(70)]))
        #expect(runs[.try] == 1)
        #expect(await businessErrorCode { _ = try await manager.try(cancelled, operation: "reserve", payload: payload) } == "already_cancelled")
        _ = try await manager.confirm(branch, operation: "reserve", payload: payload)
        #expect(runs[.confirm] == 1)
        #expect(try await bank.balance(1) == 70)

        // A confirm whose operation is not registered is retried, not refused.
        let bare = try await Bank.makeManager(pool: bank.pool)
        let ghost = BranchRef(gid: "order-3", branch: 0)
        _ = try await manager.try(ghost, operation: "reserve", payload: Self.reservation("h3", account: 1, amount: 1))
        await #expect(throws: UnregisteredBarrierOperation(phase: .confirm, operation: "reserve", branch: ghost)) {
            _ = try await bare.confirm(ghost, operation: "reserve", payload: Self.reservation("h3", account: 1, amount: 1))
        }
        await bank.close()
    }
}
