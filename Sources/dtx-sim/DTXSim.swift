import ArgumentParser
import DTXCoordinator
import DTXSimulation
import Foundation

@main
struct DTXSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dtx-sim",
        abstract: "Runs dtx's engine through seeded fault schedules on simulated time and checks atomicity, durability, presumed abort and liveness.",
        discussion: """
        Each seed is one run: a workload of the five protocols, lost, duplicated and delayed \
        messages, partitions, crashes of the coordinator (losing unsynced records) and of \
        participants, operator calls; then everything heals and the run must settle. The same \
        seed replays the same run: --seed N prints its trace and the trace's digest.
        """
    )

    @Option(help: "Replay one seed and print its trace.")
    var seed: UInt64?

    @Option(help: "How many seeds to run (from --first).")
    var seeds = 1000

    @Option(help: "The first seed of --seeds.")
    var first: UInt64 = 1

    @Option(help: "Runs in parallel (threads).")
    var jobs = 1

    @Option(help: "Stop starting seeds after this many seconds of wall time.")
    var budget: Double?

    @Option(help: "Switch on a classic mistake the simulator must catch: \(SimulatedBug.allCases.map(\.rawValue).joined(separator: ", ")).")
    var bug: [String] = []

    @Option(help: "Cluster mode: this many dtxd nodes (2 to 5) on one shared store, with node crashes, nodes stopped past their lease and nodes cut off from the store.")
    var cluster: Int?

    @Option(name: .customLong("cluster-bug"), help: "With --cluster, switch on a mistake the simulator must catch: \(ClusterBug.allCases.map(\.rawValue).joined(separator: ", ")).")
    var clusterBug: [String] = []

    mutating func validate() throws {
        guard jobs >= 1 else { throw ValidationError("--jobs must be at least 1") }
        guard seeds >= 1 else { throw ValidationError("--seeds must be at least 1") }
        if let budget, !(budget > 0) { throw ValidationError("--budget takes a number of seconds above 0, e.g. --budget 600") }
        for name in bug where SimulatedBug(rawValue: name) == nil {
            throw ValidationError("unknown bug '\(name)': choose from \(SimulatedBug.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if let cluster, !(2...5).contains(cluster) { throw ValidationError("--cluster takes 2 to 5 nodes, not \(cluster)") }
        for name in clusterBug where ClusterBug(rawValue: name) == nil {
            throw ValidationError("unknown cluster bug '\(name)': choose from \(ClusterBug.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        if !clusterBug.isEmpty, cluster == nil { throw ValidationError("--cluster-bug needs --cluster N") }
    }

    func run() async throws {
        let bugs = Set(bug.compactMap(SimulatedBug.init(rawValue:)))
        let clusterBugs = Set(clusterBug.compactMap(ClusterBug.init(rawValue:)))
        if let seed {
            let result = Simulation(seed: seed, bugs: bugs, tracing: true, cluster: cluster, clusterBugs: clusterBugs).run()
            result.trace.forEach { print($0) }
            print(String(format: "seed %llu: %d transactions (%d committed), %.1f s simulated, trace digest %016llx",
                         result.seed, result.transactions, result.committed, result.simulatedSeconds, result.traceDigest))
            print("faults: \(result.faults)")
            if result.violations.isEmpty {
                print("no violations")
            } else {
                result.violations.forEach { print("VIOLATION \($0)") }
                throw ExitCode(1)
            }
            return
        }
        let report = await SeedRunner(first: first, count: seeds, jobs: jobs, budget: budget, bugs: bugs, cluster: cluster, clusterBugs: clusterBugs).run()
        print(report.summary)
        if let failed = report.firstFailure {
            // Replayed with its trace: the same run, so the same events.
            let traced = Simulation(seed: failed.seed, bugs: bugs, tracing: true, cluster: cluster, clusterBugs: clusterBugs).run()
            print("seed \(failed.seed) failed; the last events of its run:")
            traced.trace.suffix(40).forEach { print("  \($0)") }
            failed.violations.prefix(10).forEach { print("VIOLATION \($0)") }
            print("replay it: dtx-sim --seed \(failed.seed)\(bug.map { " --bug \($0)" }.joined())\(cluster.map { " --cluster \($0)" } ?? "")\(clusterBug.map { " --cluster-bug \($0)" }.joined())")
            throw ExitCode(1)
        }
    }
}
