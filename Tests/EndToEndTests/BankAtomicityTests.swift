import DTXAPI
import DTXClient
import DTXCore
import DTXTestSupport
import Foundation
import Testing

/// The randomized atomicity run: rounds of concurrent transfers between SQLite and
/// PostgreSQL accounts while dtxd or a service is SIGKILLed (directly or at a failpoint),
/// then every process is brought back and the invariant is checked in both databases.
/// Each restart of dtxd picks, from the seed, whether the last branch decides in one
/// phase (`--last-agent on`) or every branch prepares.
///
/// The seed comes from `DTX_SEED` (else random) and is printed and named in every
/// failure: `DTX_SEED=<seed> swift test --filter BankAtomicity` replays the same plan
/// (transfers, amounts, faults and their moments; the interleaving is the machine's).
@Suite(.serialized, .bankPostgres) struct BankAtomicityTests {
    static let rounds = 10
    static let transfersPerRound = 16
    static let accountsPerSide = 6
    static let openingBalance = 10_000

    /// One planned transfer and what its submit call answered.
    struct Transfer: Sendable {
        var gid: String
        var from: (service: String, account: String)
        var to: (service: String, account: String)
        var amount: Int
        var startDelay: Double
        /// The decision the submit call reported, when it answered.
        var reported: Decision?
        /// The last submit call failed (dtxd down or killed while it waited) and no
        /// resubmission got an answer either.
        var submitError: String?
        /// Why it aborted, from the submit call's answer.
        var abortReason: String?
        /// How many times it was submitted: a client whose call failed submits the same
        /// gid and spec again (which the API promises is safe) until dtxd answers.
        var submits = 0
    }

    enum RoundEvent: Sendable {
        case transfer(Transfer)
        case fault(String)
    }

    /// How long a client keeps resubmitting a transfer whose submit call failed: longer,
    /// in a cluster, than a lease (2 s) and a node's restart.
    static func resubmitFor(_ bank: BankCluster) -> Double { bank.storeURL == nil ? 6 : 12 }

    enum Fault: Sendable, CustomStringConvertible {
        /// SIGKILL dtxd, or one node of a cluster.
        case killCoordinator(String)
        /// dtxd (or the node) restarted at the round's start with this DTXD_FAILPOINTS point armed.
        case coordinatorFailpoint(String, String)
        case killService(String)
        /// A crash failpoint armed on a running service (PUT /test/failpoints).
        case serviceFailpoint(String, String)

        var description: String {
            switch self {
            case .killCoordinator(let id): return "SIGKILL \(id)"
            case let .coordinatorFailpoint(id, point): return "\(id) armed \(point)"
            case .killService(let name): return "SIGKILL \(name)"
            case let .serviceFailpoint(name, point): return "\(name) armed \(point)=crash"
            }
        }

        /// One fault, on one of `coordinators` (dtxd, or the nodes of a cluster: never all).
        static func random(coordinators: [String], using rng: inout SeededGenerator) -> Fault {
            let services = [BankCluster.eu, BankCluster.us]
            let coordinator = coordinators.count == 1 ? coordinators[0] : coordinators.randomElement(using: &rng)!
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: return .killCoordinator(coordinator)
            case 1:
                // The decision points of both ways to commit: every branch prepared
                // (--last-agent off), and the last branch deciding in one phase (on).
                return .coordinatorFailpoint(coordinator, ["before-commit-decision", "after-commit-decision", "after-prepare-sent",
                                                           "before-delegation", "after-delegation", "after-one-phase-commit"].randomElement(using: &rng)!)
            case 2: return .killService(services.randomElement(using: &rng)!)
            default:
                return .serviceFailpoint(services.randomElement(using: &rng)!,
                                         ["prepare", "commit", "rollback", "after-prepare", "before-commit", "commit_one_phase", "after-commit-one-phase"].randomElement(using: &rng)!)
            }
        }
    }

    @Test func transfersUnderRandomCrashesAreAllOrNothingInBothDatabases() async throws {
        let seed = ProcessInfo.processInfo.environment["DTX_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max)
        let tag = "atomicity seed \(seed) (replay: DTX_SEED=\(seed))"
        print(tag)
        let bank: BankCluster
        do {
            bank = try await BankCluster.start("bank-atomicity")
        } catch {
            Issue.record("\(tag): cannot start the cluster: \(error)")
            return
        }
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        await Self.run(bank, seed: seed, rounds: Self.rounds, tag: tag, gidPrefix: "atom")
    }

    /// Rounds of transfers, each sent to a random coordinator (dtxd, or a random node of a
    /// cluster; again to the next one when the call is lost or answered 503), with one
    /// fault per round; every process is brought back after each round; then the invariant.
    static func run(_ bank: BankCluster, seed: UInt64, rounds: Int, tag: String, gidPrefix: String) async {
        var rng = SeededGenerator(seed: seed)
        let started = Date()
        let coordinators = bank.coordinatorIDs
        let logDirectory = NSTemporaryDirectory() + "/bank-\(gidPrefix)-\(seed)"
        let accounts: [String: [String]] = [
            BankCluster.eu: (0..<Self.accountsPerSide).map { "eu\($0)" },
            BankCluster.us: (0..<Self.accountsPerSide).map { "us\($0)" },
        ]
        let openingTotal = 2 * Self.accountsPerSide * Self.openingBalance

        var transfers: [Transfer] = []
        var faultLog: [String] = []
        var passed = false
        do {
            for service in [BankCluster.eu, BankCluster.us] {
                for id in accounts[service]! { try await bank.openAccount(service, id, balance: Self.openingBalance) }
            }
            for round in 0..<rounds {
                // The round's plan, drawn from the seed before anything runs.
                let plan = (0..<Self.transfersPerRound).map { index -> (Transfer, Int) in
                    let eastward = Bool.random(using: &rng)
                    let (fromService, toService) = eastward ? (BankCluster.eu, BankCluster.us) : (BankCluster.us, BankCluster.eu)
                    // About one in five asks more than any account is likely to hold.
                    let amount = Int.random(in: 0..<5, using: &rng) == 0
                        ? Int.random(in: 25_000...40_000, using: &rng) : Int.random(in: 1...3_000, using: &rng)
                    let transfer = Transfer(
                        gid: "\(gidPrefix)-\(seed % 100_000)-r\(round)-t\(index)",
                        from: (fromService, accounts[fromService]!.randomElement(using: &rng)!),
                        to: (toService, accounts[toService]!.randomElement(using: &rng)!),
                        amount: amount, startDelay: Double.random(in: 0...0.8, using: &rng))
                    // The coordinator it is sent to first.
                    return (transfer, coordinators.count == 1 ? 0 : Int.random(in: 0..<coordinators.count, using: &rng))
                }
                let fault = Fault.random(coordinators: coordinators, using: &rng)
                let faultDelay = Double.random(in: 0...0.8, using: &rng)
                let restartDelay = Double.random(in: 0.2...1.0, using: &rng)
                // dtxd restarted in this round prepares every branch, or lets the last one
                // decide (--last-agent); either recovers what the other logged.
                bank.daemonArguments = ["--last-agent", Bool.random(using: &rng) ? "on" : "off"]

                var armed: (id: String, process: ChildProcess)?
                if case let .coordinatorFailpoint(id, point) = fault {
                    try await bank.killCoordinator(id)
                    // A decision point needs the mode that reaches it; after-prepare-sent either.
                    let mode = point.hasSuffix("commit-decision") ? "off" : point.contains("delegation") || point.contains("one-phase") ? "on" : nil
                    try await bank.startCoordinator(id, failpoints: point, arguments: mode.map { ["--last-agent", $0] })
                    armed = bank.coordinatorProcess(id).map { (id, $0) }
                }
                let roundStart = Date()
                let (results, happened) = await withTaskGroup(of: RoundEvent.self) { group in
                    for (transfer, first) in plan {
                        group.addTask {
                            var transfer = transfer
                            try? await Task.sleep(for: .seconds(transfer.startDelay))
                            let giveUp = Date().addingTimeInterval(Self.resubmitFor(bank))
                            var next = first
                            while true {
                                transfer.submits += 1
                                let client = bank.coordinatorClient(coordinators[next % coordinators.count])
                                next += 1
                                do {
                                    let view = try await client.submit(BankCluster.transfer(
                                        transfer.gid, from: transfer.from, to: transfer.to, amount: transfer.amount, timeout: 5))
                                    transfer.reported = view.decision
                                    transfer.abortReason = view.decision == .abort ? Self.abortReason(view) : nil
                                    transfer.submitError = nil
                                    break
                                } catch let error as ClientError where error.status != nil && error.status != 503 {
                                    // dtxd answered with an error other than "retry": not a lost call.
                                    transfer.submitError = "\(error)"
                                    break
                                } catch {
                                    transfer.submitError = "\(error)"
                                    if Date() > giveUp { break }
                                    try? await Task.sleep(for: .milliseconds(300))
                                }
                            }
                            return .transfer(transfer)
                        }
                    }
                    group.addTask {
                        try? await Task.sleep(for: .seconds(faultDelay))
                        func at() -> String { String(format: "%.2f s", Date().timeIntervalSince(roundStart)) }
                        var happened: String
                        if case .coordinatorFailpoint = fault { happened = "\(fault) from the start" } else { happened = "\(fault) at \(at())" }
                        let victim: (coordinator: Bool, name: String)
                        switch fault {
                        case .killCoordinator(let id):
                            try? await bank.killCoordinator(id)
                            victim = (true, id)
                        case let .coordinatorFailpoint(id, _):
                            victim = (true, id)
                        case .killService(let name):
                            try? await bank.killService(name)
                            victim = (false, name)
                        case let .serviceFailpoint(name, point):
                            try? await bank.armFailpoint(name, point, "crash")
                            victim = (false, name)
                        }
                        // The victim comes back while the round's transfers still run
                        // (a failpoint that is never reached leaves it running).
                        let died = await eventually(seconds: 4) { victim.coordinator ? !bank.coordinatorIsRunning(victim.name) : !bank.isRunning(victim.name) }
                        guard died else { return .fault(happened + ", never fired") }
                        happened += ", \(victim.name) dead at \(at())"
                        try? await Task.sleep(for: .seconds(restartDelay))
                        do {
                            if victim.coordinator { try await bank.startCoordinator(victim.name) } else { try await bank.startService(victim.name) }
                            happened += ", back at \(at())"
                        } catch {
                            happened += ", restart failed at \(at()): \(error)"
                        }
                        return .fault(happened)
                    }
                    var done: [Transfer] = []
                    var happened = ""
                    for await event in group {
                        switch event {
                        case .transfer(let transfer): done.append(transfer)
                        case .fault(let text): happened = text
                        }
                    }
                    return (done, happened)
                }
                faultLog.append("round \(round): \(happened)")
                transfers += results

                // Bring back whatever died; disarm what did not fire.
                // (The armed process itself: one started after it died is left alone.)
                if let armed, armed.process.process.isRunning { try await bank.killCoordinator(armed.id) }
                for id in coordinators where !bank.coordinatorIsRunning(id) { try await bank.startCoordinator(id) }
                for service in [BankCluster.eu, BankCluster.us] {
                    if bank.isRunning(service) {
                        if case .serviceFailpoint(service, _) = fault { try await bank.clearFailpoints(service) }
                        try await bank.waitUntilRegistered(service)
                    } else {
                        try await bank.startService(service)
                    }
                }
                let reported = results.map { $0.submitError != nil ? "failed" : ($0.reported?.rawValue ?? "undecided") }
                let resubmitted = results.filter { $0.submits > 1 }.count
                print("\(tag) round \(round): \(happened) (restarts with \(bank.daemonArguments.joined(separator: " "))); answers: \(Dictionary(grouping: reported, by: { $0 }).mapValues(\.count)), \(resubmitted) resubmitted")
            }

            // Everything runs again; wait until nothing is in doubt anywhere.
            let unsettled = await bank.settle(seconds: 90)
            #expect(unsettled == nil, "\(tag): still unfinished after every process came back: \(unsettled ?? "")")
            passed = try await check(bank, transfers: transfers, accounts: accounts, openingTotal: openingTotal, tag: tag) && unsettled == nil
        } catch {
            Issue.record("\(tag): \(error)")
        }
        print("\(tag): \(transfers.count) transfers in \(rounds) rounds on \(coordinators.joined(separator: ", ")), \(String(format: "%.1f", Date().timeIntervalSince(started))) s; faults:\n  " + faultLog.joined(separator: "\n  "))
        if !passed {
            bank.saveLogs(to: logDirectory)
            print("\(tag): process logs saved in \(logDirectory)")
        }
    }

    /// A business refusal's code, else "delivery failed" or "timed out".
    static func abortReason(_ view: TransactionView) -> String? {
        if let code = view.branches.lazy.compactMap({ $0.result?["error"]?["code"]?.stringValue }).first { return code }
        if view.branches.contains(where: { $0.lastError != nil }) { return "delivery failed" }
        if view.timeline.contains(where: { $0.event == "timed out" }) { return "timed out" }
        return view.error
    }

    /// The invariant, checked in both databases against what dtxd says; true when it holds.
    static func check(_ bank: BankCluster, transfers: [Transfer], accounts: [String: [String]], openingTotal: Int, tag: String) async throws -> Bool {
        var violations: [String] = []

        // Nothing prepared or locked anywhere.
        let sqlitePrepared = try bank.sqlitePreparedCount()
        let sqliteLocks = try bank.sqliteLockCount()
        let pgPrepared = try await bank.pgPreparedNames()
        if sqlitePrepared != 0 { violations.append("dtx_prepared holds \(sqlitePrepared) rows") }
        if sqliteLocks != 0 { violations.append("dtx_locks holds \(sqliteLocks) rows") }
        if !pgPrepared.isEmpty { violations.append("pg_prepared_xacts holds \(pgPrepared)") }

        // What each database committed, and what dtxd knows.
        let sqliteOutcomes = try bank.sqliteOutcomes()
        let sqliteCommitted = Set(sqliteOutcomes.filter { $0.value == "committed" }.keys)
        let pgCommitted = try await bank.pgCommitted()
        let known = try await bank.allTransactions()
        let knownByGid = Dictionary(known.map { ($0.gid, $0) }, uniquingKeysWith: { first, _ in first })
        if knownByGid.count != known.count { violations.append("dtxd lists some gid twice") }
        let planned = Dictionary(transfers.map { ($0.gid, $0) }, uniquingKeysWith: { first, _ in first })

        var committedGids: Set<String> = []
        var abortedCount = 0
        var abortReasons: [String: Int] = [:]
        for summary in known {
            guard let transfer = planned[summary.gid] else {
                violations.append("dtxd knows \(summary.gid), which the test never submitted")
                continue
            }
            let view = try await bank.view(summary.gid)
            let branches = view.branches.map { (key: BranchKey(gid: view.gid, branch: $0.id), participant: $0.participant) }
            if branches.map(\.participant) != [transfer.from.service, transfer.to.service] {
                violations.append("\(view.gid): branches \(branches) are not the submitted debit on \(transfer.from.service) and credit on \(transfer.to.service)")
            }
            func committedInItsDatabase(_ branch: (key: BranchKey, participant: String)) -> Bool {
                branch.participant == BankCluster.eu ? sqliteCommitted.contains(branch.key) : pgCommitted.contains(branch.key)
            }
            switch view.status {
            case "committed":
                committedGids.insert(view.gid)
                for branch in branches where !committedInItsDatabase(branch) {
                    violations.append("\(view.gid) is committed at dtxd but branch \(branch.key.branch) is not committed in \(branch.participant)'s database (SQLite outcome \(sqliteOutcomes[branch.key] ?? "none"))")
                }
                if transfer.reported == .abort { violations.append("\(view.gid): submit reported abort, dtxd ended committed") }
            case "aborted":
                abortedCount += 1
                // A view read back from the log after a restart has no answers: use what the submit call saw.
                let reason = Self.abortReason(view) ?? transfer.abortReason ?? "not reported (decided by a restarted dtxd)"
                abortReasons[reason, default: 0] += 1
                for branch in branches where committedInItsDatabase(branch) {
                    violations.append("\(view.gid) is aborted at dtxd but branch \(branch.key.branch) committed in \(branch.participant)'s database")
                }
                if transfer.reported == .commit { violations.append("\(view.gid): submit reported commit, dtxd ended aborted") }
            default:
                violations.append("\(view.gid) ended \(view.status) (decision \(view.decision?.rawValue ?? "none"), heuristic \(view.heuristic)): \(view.branches.map { "\($0.participant) \($0.state) \($0.lastError ?? "")" })")
            }
            if view.heuristic { violations.append("\(view.gid) is marked heuristic") }
        }

        // Transfers dtxd never heard of (their submit failed while it was down): presumed
        // abort, so no trace of them may be committed anywhere.
        let unknown = transfers.filter { knownByGid[$0.gid] == nil }
        for transfer in unknown {
            if transfer.submitError == nil { violations.append("\(transfer.gid): submit answered but dtxd does not know it") }
            if transfer.reported == .commit { violations.append("\(transfer.gid): submit reported commit but dtxd does not know it") }
        }
        // Every committed branch in either database belongs to a transaction dtxd committed.
        for key in sqliteCommitted.union(pgCommitted) where !committedGids.contains(key.gid) {
            violations.append("\(key) is committed in a database, but dtxd says \(knownByGid[key.gid]?.status ?? "nothing (unknown gid)")")
        }

        // Balances: each account is its opening balance moved by exactly the committed transfers.
        var expected: [String: Int] = [:]
        for (_, ids) in accounts { for id in ids { expected[id] = Self.openingBalance } }
        for transfer in transfers where committedGids.contains(transfer.gid) {
            expected[transfer.from.account]! -= transfer.amount
            expected[transfer.to.account]! += transfer.amount
        }
        let actual = try await bank.databaseBalances(BankCluster.eu).merging(try await bank.databaseBalances(BankCluster.us)) { $1 }
        let served = try await bank.balances(BankCluster.eu).merging(try await bank.balances(BankCluster.us)) { $1 }
        let total = actual.values.reduce(0, +)
        #expect(total == openingTotal, "\(tag): the total across both databases is \(total), not \(openingTotal)")
        #expect(served == actual, "\(tag): the services report \(served), the databases hold \(actual)")
        for (account, balance) in expected.sorted(by: { $0.key < $1.key }) where actual[account] != balance {
            violations.append("account \(account) holds \(actual[account].map(String.init) ?? "nothing"), the committed transfers leave \(balance)")
        }
        if expected.values.contains(where: { $0 < 0 }) { violations.append("the committed transfers overdraw an account: \(expected)") }

        let failedSubmits = transfers.filter { $0.submitError != nil }.count
        for transfer in transfers where transfer.submitError != nil {
            print("\(tag): \(transfer.gid) got no answer after \(transfer.submits) submits (\(knownByGid[transfer.gid]?.status ?? "unknown to dtxd")): \(transfer.submitError!)")
        }
        print("\(tag): \(committedGids.count) committed, \(abortedCount) aborted, \(unknown.count) unknown to dtxd, \(failedSubmits) submits failed; total \(total); aborts by reason: \(abortReasons)")
        #expect(violations.isEmpty, "\(tag): \(violations.count) atomicity violations:\n\(violations.joined(separator: "\n"))")
        // A run where nothing committed or nothing aborted would not have tested much.
        #expect(!committedGids.isEmpty, "\(tag): no transfer committed")
        #expect(abortedCount > 0, "\(tag): no transfer aborted")
        return violations.isEmpty && total == openingTotal && served == actual && !committedGids.isEmpty && abortedCount > 0
    }
}
