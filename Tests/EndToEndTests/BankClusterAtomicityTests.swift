import DTXAPI
import DTXClient
import DTXCore
import DTXTestSupport
import Foundation
import Testing

/// The randomized atomicity run in cluster mode: three dtxd nodes on a PostgreSQL store,
/// the SQLite and PostgreSQL accounts services, rounds of concurrent transfers each sent
/// to a random node, while one node (never all) or one service is SIGKILLed, directly or
/// at a failpoint, and brought back. Then the same invariant as `BankAtomicityTests`,
/// checked through one node, which lists the whole cluster: balances conserved, nothing
/// left prepared, every outcome a caller was told is the one the databases hold.
///
/// `DTX_SEED=<seed> swift test --filter BankClusterAtomicity` replays the plan.
@Suite(.serialized, .bankPostgres) struct BankClusterAtomicityTests {
    static let nodes = 3
    static let rounds = 8
    /// A caller whose call failed (its node died) or was answered 503 (the shard is
    /// between owners) sends the same transfer again, to the next node, for this long:
    /// longer than a lease (2 s) and a node's restart.
    static let resubmitFor = 12.0

    enum Fault: Sendable, CustomStringConvertible {
        case killNode(String)
        /// The node restarted at the round's start with this DTXD_FAILPOINTS point armed.
        case nodeFailpoint(String, String)
        case killService(String)
        case serviceFailpoint(String, String)

        var description: String {
            switch self {
            case .killNode(let id): return "SIGKILL \(id)"
            case let .nodeFailpoint(id, point): return "\(id) armed \(point)"
            case .killService(let name): return "SIGKILL \(name)"
            case let .serviceFailpoint(name, point): return "\(name) armed \(point)=crash"
            }
        }

        static func random(using rng: inout SeededGenerator) -> Fault {
            let services = [BankCluster.eu, BankCluster.us]
            let node = "n\(Int.random(in: 0..<BankClusterAtomicityTests.nodes, using: &rng))"
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: return .killNode(node)
            case 1:
                return .nodeFailpoint(node, ["before-commit-decision", "after-commit-decision", "after-prepare-sent",
                                             "before-delegation", "after-delegation", "after-one-phase-commit"].randomElement(using: &rng)!)
            case 2: return .killService(services.randomElement(using: &rng)!)
            default:
                return .serviceFailpoint(services.randomElement(using: &rng)!,
                                         ["prepare", "commit", "rollback", "after-prepare", "before-commit", "commit_one_phase"].randomElement(using: &rng)!)
            }
        }
    }

    @Test func transfersAcrossNodesUnderRandomKillsAreAllOrNothing() async throws {
        typealias Transfer = BankAtomicityTests.Transfer
        let seed = ProcessInfo.processInfo.environment["DTX_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64.max)
        let tag = "cluster atomicity seed \(seed) (replay: DTX_SEED=\(seed))"
        print(tag)
        var rng = SeededGenerator(seed: seed)
        let started = Date()
        let bank: BankCluster
        do {
            bank = try await BankCluster.startCluster("bank-cluster-atomicity", nodes: Self.nodes)
        } catch {
            Issue.record("\(tag): cannot start the cluster: \(error)")
            return
        }
        defer { bank.stopProcesses(); Task { await bank.shutdown() } }
        let nodeIDs = bank.nodeIDs
        let accounts: [String: [String]] = [
            BankCluster.eu: (0..<BankAtomicityTests.accountsPerSide).map { "eu\($0)" },
            BankCluster.us: (0..<BankAtomicityTests.accountsPerSide).map { "us\($0)" },
        ]
        let openingTotal = 2 * BankAtomicityTests.accountsPerSide * BankAtomicityTests.openingBalance
        var transfers: [Transfer] = []
        var faultLog: [String] = []
        var passed = false
        do {
            for service in [BankCluster.eu, BankCluster.us] {
                for id in accounts[service]! { try await bank.openAccount(service, id, balance: BankAtomicityTests.openingBalance) }
            }
            for round in 0..<Self.rounds {
                let plan = (0..<BankAtomicityTests.transfersPerRound).map { index -> (Transfer, Int) in
                    let eastward = Bool.random(using: &rng)
                    let (fromService, toService) = eastward ? (BankCluster.eu, BankCluster.us) : (BankCluster.us, BankCluster.eu)
                    let amount = Int.random(in: 0..<5, using: &rng) == 0
                        ? Int.random(in: 25_000...40_000, using: &rng) : Int.random(in: 1...3_000, using: &rng)
                    let transfer = Transfer(
                        gid: "catom-\(seed % 100_000)-r\(round)-t\(index)",
                        from: (fromService, accounts[fromService]!.randomElement(using: &rng)!),
                        to: (toService, accounts[toService]!.randomElement(using: &rng)!),
                        amount: amount, startDelay: Double.random(in: 0...0.8, using: &rng))
                    return (transfer, Int.random(in: 0..<nodeIDs.count, using: &rng))  // the node it is sent to first
                }
                let fault = Fault.random(using: &rng)
                let faultDelay = Double.random(in: 0...0.8, using: &rng)
                let restartDelay = Double.random(in: 0.2...1.0, using: &rng)
                bank.daemonArguments = ["--last-agent", Bool.random(using: &rng) ? "on" : "off"]

                var armedNode: String?
                if case let .nodeFailpoint(id, point) = fault {
                    try await bank.killNode(id)
                    let mode = point.hasSuffix("commit-decision") ? "off" : point.contains("delegation") || point.contains("one-phase") ? "on" : nil
                    try await bank.startNode(id, failpoints: point, arguments: mode.map { ["--last-agent", $0] })
                    armedNode = id
                }
                let roundStart = Date()
                let (results, happened) = await withTaskGroup(of: BankAtomicityTests.RoundEvent.self) { group in
                    for (transfer, firstNode) in plan {
                        group.addTask {
                            var transfer = transfer
                            try? await Task.sleep(for: .seconds(transfer.startDelay))
                            let giveUp = Date().addingTimeInterval(Self.resubmitFor)
                            var node = firstNode
                            while true {
                                transfer.submits += 1
                                guard let client = bank.nodeClient(nodeIDs[node % nodeIDs.count]) else { break }
                                node += 1
                                do {
                                    let view = try await client.submit(BankCluster.transfer(
                                        transfer.gid, from: transfer.from, to: transfer.to, amount: transfer.amount, timeout: 5))
                                    transfer.reported = view.decision
                                    transfer.abortReason = view.decision == .abort ? BankAtomicityTests.abortReason(view) : nil
                                    transfer.submitError = nil
                                    break
                                } catch let error as ClientError where error.status != nil && error.status != 503 {
                                    // An answer other than "retry": not a lost call.
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
                        if case .nodeFailpoint = fault { happened = "\(fault) from the start" } else { happened = "\(fault) at \(at())" }
                        let victim: (node: Bool, name: String)
                        switch fault {
                        case .killNode(let id):
                            try? await bank.killNode(id)
                            victim = (true, id)
                        case let .nodeFailpoint(id, _):
                            victim = (true, id)
                        case .killService(let name):
                            try? await bank.killService(name)
                            victim = (false, name)
                        case let .serviceFailpoint(name, point):
                            try? await bank.armFailpoint(name, point, "crash")
                            victim = (false, name)
                        }
                        let died = await eventually(seconds: 4) { victim.node ? !bank.nodeIsRunning(victim.name) : !bank.isRunning(victim.name) }
                        guard died else { return .fault(happened + ", never fired") }
                        happened += ", dead at \(at())"
                        try? await Task.sleep(for: .seconds(restartDelay))
                        do {
                            if victim.node { try await bank.startNode(victim.name) } else { try await bank.startService(victim.name) }
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
                if let armedNode, bank.nodeIsRunning(armedNode) { try await bank.killNode(armedNode) }
                for id in nodeIDs where !bank.nodeIsRunning(id) { try await bank.startNode(id) }
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
                print("\(tag) round \(round): \(happened) (nodes restart with \(bank.daemonArguments.joined(separator: " "))); answers: \(Dictionary(grouping: reported, by: { $0 }).mapValues(\.count)), \(resubmitted) resubmitted")
            }

            let unsettled = await bank.settle(seconds: 90)
            #expect(unsettled == nil, "\(tag): still unfinished after every process came back: \(unsettled ?? "")")
            passed = try await BankAtomicityTests().check(bank, transfers: transfers, accounts: accounts, openingTotal: openingTotal, tag: tag) && unsettled == nil
        } catch {
            Issue.record("\(tag): \(error)")
        }
        print("\(tag): \(transfers.count) transfers in \(Self.rounds) rounds on \(Self.nodes) nodes, \(String(format: "%.1f", Date().timeIntervalSince(started))) s; faults:\n  " + faultLog.joined(separator: "\n  "))
        if !passed {
            let directory = NSTemporaryDirectory() + "/bank-cluster-atomicity-\(seed)"
            bank.saveLogs(to: directory)
            print("\(tag): process logs saved in \(directory)")
        }
    }
}
