import DTXCoordinator
import Foundation
import Synchronization

/// Runs many seeds, `jobs` at a time, each on a thread of its own (never on the
/// cooperative pool: a run keeps its thread busy until it ends; each run is
/// single-threaded and shares nothing), and sums them up. Stops at the first failing seed.
public struct SeedRunner: Sendable {
    public var first: UInt64
    public var count: Int
    public var jobs: Int
    /// Wall-clock seconds after which no new seed starts.
    public var budget: Double?
    public var bugs: Set<SimulatedBug>
    /// Cluster mode: this many nodes (nil: one coordinator), and mistakes switched on.
    public var cluster: Int?
    public var clusterBugs: Set<ClusterBug>

    public init(first: UInt64, count: Int, jobs: Int, budget: Double? = nil, bugs: Set<SimulatedBug> = [], cluster: Int? = nil, clusterBugs: Set<ClusterBug> = []) {
        self.first = first
        self.count = count
        self.jobs = jobs
        self.budget = budget
        self.bugs = bugs
        self.cluster = cluster
        self.clusterBugs = clusterBugs
    }

    public struct Report: Sendable {
        public var seeds = 0
        public var transactions = 0
        public var committed = 0
        public var faults = Simulation.Faults()
        public var wallSeconds = 0.0
        public var simulatedSeconds = 0.0
        public var firstFailure: Simulation.Result?

        public var summary: String {
            let rate = wallSeconds > 0 ? Double(transactions) / wallSeconds : 0
            return String(format: "%d seeds, %d transactions (%d committed) in %.1f s of wall time: %.0f transactions/s, %.0f simulated s; ",
                          seeds, transactions, committed, wallSeconds, rate, simulatedSeconds)
                + "faults: \(faults.coordinatorCrashes) coordinator crashes (\(faults.unsyncedRecordsLost) unsynced records lost), \(faults.participantCrashes) participant crashes, \(faults.partitions) partitions, \(faults.messagesLost) messages lost, \(faults.messagesDuplicated) duplicated, \(faults.operatorCalls) operator calls (\(faults.heuristicOutcomes) heuristic outcomes), \(faults.terminations) 3PC terminations among peers; "
                + (faults.nodeCrashes + faults.nodePauses + faults.nodeCutOffs > 0 ? "cluster: \(faults.nodeCrashes) node crashes, \(faults.nodePauses) nodes stopped, \(faults.nodeCutOffs) cut off from the store; " : "")
                + (firstFailure == nil ? "0 violations" : "seed \(firstFailure!.seed) FAILED")
        }
    }

    public func run() async -> Report {
        let started = Date()
        let progress = Progress(threads: jobs)
        let deadline = budget.map { started.addingTimeInterval($0) }
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            for _ in 0..<jobs {
                let thread = Thread { [self] in
                    runSeeds(progress, deadline: deadline)
                    if progress.threadEnded() { done.resume() }
                }
                thread.stackSize = 8 << 20
                thread.start()
            }
        }
        var final = progress.report.withLock { $0 }
        final.wallSeconds = Date().timeIntervalSince(started)
        return final
    }

    private func runSeeds(_ progress: Progress, deadline: Date?) {
        while let index = progress.next.withLock({ n -> Int? in
            guard n < count else { return nil }
            defer { n += 1 }
            return n
        }) {
            guard deadline.map({ Date() < $0 }) ?? true, progress.report.withLock({ $0.firstFailure == nil }) else { return }
            let result = Simulation(seed: first + UInt64(index), bugs: bugs, cluster: cluster, clusterBugs: clusterBugs).run()
            progress.report.withLock { r in
                r.seeds += 1
                r.transactions += result.transactions
                r.committed += result.committed
                r.simulatedSeconds += result.simulatedSeconds
                r.faults.add(result.faults)
                if !result.violations.isEmpty, r.firstFailure.map({ result.seed < $0.seed }) ?? true { r.firstFailure = result }
            }
        }
    }

    /// What the threads share.
    private final class Progress: Sendable {
        let next = Mutex(0)
        let report = Mutex(Report())
        private let running: Mutex<Int>

        init(threads: Int) {
            running = Mutex(threads)
        }

        /// True for the last thread to end.
        func threadEnded() -> Bool {
            running.withLock { n in
                n -= 1
                return n == 0
            }
        }
    }
}

extension Simulation.Faults {
    mutating func add(_ other: Self) {
        coordinatorCrashes += other.coordinatorCrashes
        unsyncedRecordsLost += other.unsyncedRecordsLost
        participantCrashes += other.participantCrashes
        partitions += other.partitions
        messagesLost += other.messagesLost
        messagesDuplicated += other.messagesDuplicated
        operatorCalls += other.operatorCalls
        heuristicOutcomes += other.heuristicOutcomes
        terminations += other.terminations
        nodeCrashes += other.nodeCrashes
        nodePauses += other.nodePauses
        nodeCutOffs += other.nodeCutOffs
    }
}
