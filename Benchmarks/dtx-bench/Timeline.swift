import Foundation

/// Throughput and latency per 100 ms window over a run, to see what a segment switch or
/// a checkpoint does to the commit path (the tail a whole-run p99 averages away).
struct Timeline: Codable {
    static let windowSeconds = 0.1

    struct Window: Codable {
        /// Start of the window, seconds from the start of the run.
        var at: Double
        var completed: Int
        var maxLatencyMilliseconds: Double
        /// Segments the log created and checkpoints that ran (in part) in this window.
        var segmentSwitches: Int
        var checkpoints: Int

        enum CodingKeys: String, CodingKey {
            case at, completed
            case maxLatencyMilliseconds = "max_latency_ms"
            case segmentSwitches = "segment_switches"
            case checkpoints
        }
    }

    var windows: [Window]
    /// Median completions per window.
    var medianPerWindow: Double
    /// The smallest window over the median (1 = never below the median's rate).
    var lowestWindowRatio: Double
    /// The longest run of consecutive windows below 20% of the median rate, in seconds.
    var worstDipSeconds: Double
    var worstDipAt: Double?
    var segmentSwitches: Int
    /// Switches that found no spare segment ready (the log created one while commits waited).
    var switchesWithoutSpare: Int
    /// The longest a switch held the log's flusher (WAL runs only).
    var slowestSwitchMilliseconds: Double?
    var checkpoints: Int
    var p99Milliseconds: Double
    var maxLatencyMilliseconds: Double

    enum CodingKeys: String, CodingKey {
        case windows
        case medianPerWindow = "median_per_window"
        case lowestWindowRatio = "lowest_window_ratio"
        case worstDipSeconds = "worst_dip_s"
        case worstDipAt = "worst_dip_at_s"
        case segmentSwitches = "segment_switches"
        case switchesWithoutSpare = "switches_without_spare"
        case slowestSwitchMilliseconds = "slowest_switch_ms"
        case checkpoints
        case p99Milliseconds = "p99_ms"
        case maxLatencyMilliseconds = "max_latency_ms"
    }

    /// - Parameters:
    ///   - completions: (seconds from start when the operation completed, its latency in seconds).
    ///   - switches, checkpoints: seconds from start at which each happened (a checkpoint
    ///     as its start and end).
    init(duration: Double, completions: [(at: Double, latency: Double)], switches: [Double], switchesWithoutSpare: Int,
         checkpoints: [(start: Double, end: Double)]) {
        let count = max(Int((duration / Self.windowSeconds).rounded(.up)), 1)
        var windows = (0..<count).map { Window(at: Double($0) * Self.windowSeconds, completed: 0, maxLatencyMilliseconds: 0, segmentSwitches: 0, checkpoints: 0) }
        func index(_ at: Double) -> Int { min(max(Int(at / Self.windowSeconds), 0), count - 1) }
        for completion in completions {
            let i = index(completion.at)
            windows[i].completed += 1
            windows[i].maxLatencyMilliseconds = max(windows[i].maxLatencyMilliseconds, completion.latency * 1000)
        }
        for at in switches { windows[index(at)].segmentSwitches += 1 }
        for checkpoint in checkpoints {
            for i in index(checkpoint.start)...index(checkpoint.end) { windows[i].checkpoints += 1 }
        }
        // The last window is usually partial: leave it out of the rates.
        let full = count > 2 ? Array(windows.dropLast()) : windows
        let rates = full.map { Double($0.completed) }.sorted()
        let median = rates.isEmpty ? 0 : rates[rates.count / 2]
        var worst = 0, worstStart: Int?, run = 0
        for (i, window) in full.enumerated() {
            if Double(window.completed) < 0.2 * median {
                run += 1
                if run > worst { worst = run; worstStart = i - run + 1 }
            } else {
                run = 0
            }
        }
        let latencies = completions.map { $0.latency * 1000 }.sorted()
        self.windows = windows
        medianPerWindow = median
        lowestWindowRatio = median > 0 ? (rates.first ?? 0) / median : 0
        worstDipSeconds = Double(worst) * Self.windowSeconds
        worstDipAt = worstStart.map { Double($0) * Self.windowSeconds }
        segmentSwitches = switches.count
        self.switchesWithoutSpare = switchesWithoutSpare
        self.checkpoints = checkpoints.count
        p99Milliseconds = percentile(latencies, 99)
        maxLatencyMilliseconds = latencies.last ?? 0
    }

    /// Prints both runs and the ratio of their p99s; returns the ratio (0 without a steady p99).
    static func printComparison(switching: Timeline, steady: Timeline) -> Double {
        print("  switching: " + switching.summary)
        print("  steady:    " + steady.summary)
        let ratio = steady.p99Milliseconds > 0 ? switching.p99Milliseconds / steady.p99Milliseconds : 0
        print(String(format: "  p99 switching / steady: %.2f", ratio))
        return ratio
    }

    /// One line for the table.
    var summary: String {
        String(format: "median %.0f/100ms, lowest window %.0f%% of it, worst dip %.1f s%@, p99 %.2f ms, max %.1f ms, %d switches (%d without a spare), %d checkpoints",
               medianPerWindow, lowestWindowRatio * 100, worstDipSeconds, worstDipAt.map { String(format: " at %.1f s", $0) } ?? "",
               p99Milliseconds, maxLatencyMilliseconds, segmentSwitches, switchesWithoutSpare, checkpoints)
            + (slowestSwitchMilliseconds.map { String(format: ", slowest switch %.1f ms", $0) } ?? "")
    }
}
