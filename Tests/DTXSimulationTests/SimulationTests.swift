import DTXCoordinator
import DTXSimulation
import Testing

/// The CI budget of the simulator (about a minute and a half of seeds in a debug build, on one
/// core, one test at a time, so that the end-to-end tests beside it keep the other): the
/// engine survives a fixed range of fault schedules, a seed replays exactly, and each
/// classic mistake switched back on is caught within the budget.
@Suite(.serialized) struct SimulationTests {
    @Test func aFixedRangeOfSeedsBreaksNoInvariant() async {
        let report = await SeedRunner(first: 1, count: 2000, jobs: 1).run()
        #expect(report.firstFailure == nil, "\(report.summary)\n\(report.firstFailure?.violations.joined(separator: "\n") ?? "")")
        #expect(report.seeds == 2000)
        // The faults happened: the run is not vacuous.
        #expect(report.faults.coordinatorCrashes > 500 && report.faults.unsyncedRecordsLost > 100)
        #expect(report.faults.participantCrashes > 500 && report.faults.partitions > 500 && report.faults.messagesLost > 1000)
        #expect(report.faults.terminations > 100, "3PC branches terminated among peers: \(report.faults.terminations)")
        #expect(report.committed > 0 && report.committed < report.transactions)
    }

    @Test func aSeedReplaysTheSameTraceByteForByte() {
        let first = Simulation(seed: 77, tracing: true).run()
        let again = Simulation(seed: 77, tracing: true).run()
        #expect(first.trace == again.trace && first.traceDigest == again.traceDigest)
        #expect(first.trace.count > 100)
        #expect(Simulation(seed: 78, tracing: true).run().traceDigest != first.traceDigest)
    }

    /// Seed 640 found that an enlistment whose forced record died with the coordinator
    /// was answered as done: its service never cancelled the Try, and no Cancel came.
    @Test func seedsThatOnceFailedPass() {
        for seed: UInt64 in [640] {
            let result = Simulation(seed: seed).run()
            #expect(result.violations.isEmpty, "seed \(seed): \(result.violations.joined(separator: "\n"))")
        }
    }

    @Test(arguments: SimulatedBug.allCases)
    func eachClassicMistakeIsCaughtWithinTheBudget(_ bug: SimulatedBug) async {
        let report = await SeedRunner(first: 1, count: 4000, jobs: 1, bugs: [bug]).run()
        #expect(report.firstFailure != nil, "\(bug.rawValue) went unnoticed through \(report.seeds) seeds")
    }

    // Cluster mode: three dtxd nodes on one shared store (the in-memory model that
    // ClusterStoreConformanceTests holds to PostgreSQL's rules), with nodes crashed,
    // stopped past their lease and cut off from the store, besides every fault above.
    // The cluster checks: every message came from a node the store had given the shard
    // at that epoch, and before the store gave the next epoch to another; phase two of a
    // transaction and epoch came from one node. (In this suite: one simulation at a time,
    // on one core.)

    @Test func aFixedRangeOfClusterSeedsBreaksNoInvariant() async {
        let report = await SeedRunner(first: 1, count: 300, jobs: 1, cluster: 3).run()
        #expect(report.firstFailure == nil, "\(report.summary)\n\(report.firstFailure?.violations.joined(separator: "\n") ?? "")")
        #expect(report.seeds == 300)
        #expect(report.faults.nodeCrashes > 100 && report.faults.nodePauses > 100 && report.faults.nodeCutOffs > 100, "\(report.summary)")
        #expect(report.committed > 0 && report.committed < report.transactions)
    }

    @Test func aClusterSeedReplaysTheSameTraceByteForByte() {
        let first = Simulation(seed: 77, tracing: true, cluster: 3).run()
        let again = Simulation(seed: 77, tracing: true, cluster: 3).run()
        #expect(first.trace == again.trace && first.traceDigest == again.traceDigest)
        #expect(first.trace.contains { $0.contains("node n") })
    }

    /// Seed 38 found that a node restarting under its id took back only its share of the
    /// shards the store said were its own: the rest, owned by a live node, waited for ever.
    @Test func clusterSeedsThatOnceFailedPass() {
        for seed: UInt64 in [38] {
            let result = Simulation(seed: seed, cluster: 3).run()
            #expect(result.violations.isEmpty, "seed \(seed): \(result.violations.joined(separator: "\n"))")
        }
    }

    @Test(arguments: ClusterBug.allCases)
    func eachClusterMistakeIsCaughtWithinTheBudget(_ bug: ClusterBug) async {
        let report = await SeedRunner(first: 1, count: 500, jobs: 1, cluster: 3, clusterBugs: [bug]).run()
        #expect(report.firstFailure != nil, "\(bug.rawValue) went unnoticed through \(report.seeds) seeds")
    }
}
