import ArgumentParser
import DTXLog
import Foundation

/// Forced appends per second at several concurrencies against the raw rate of a plain
/// write+fdatasync loop in the same directory, measured in the same run.
struct WALBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wal",
        abstract: "Group commit: forced appends/s, fsyncs per append and latency vs a raw fdatasync loop."
    )

    @Option(help: "Directory to put the raw file and the logs in (created if missing).")
    var dir: String

    @Option(help: "Comma-separated numbers of concurrent appenders.")
    var concurrency: String = "1,8,64,256"

    @Option(help: "Forced appends per concurrency level (the raw loop does min(this, 5000) writes).")
    var records: Int = 20_000

    @Option(name: .customLong("record-size"), help: "Payload bytes per record.")
    var recordSize: Int = 128

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    @Flag(help: "Keep the log files in --dir after the run.")
    var keep = false

    @Option(help: "Seconds. Instead of the sweep, run the first concurrency level this long twice, in turns: once with small segments and periodic checkpoints, once crossing neither; report throughput and the slowest append per 100 ms.")
    var timeline: Double?

    @Option(name: .customLong("segment-size"), help: "MiB per segment in the timeline's switching run (small, so that it switches often), as dtxd's --segment-size.")
    var segmentSizeMiB: Int = 1

    @Option(name: .customLong("checkpoint-every"), help: "Seconds between checkpoints in the timeline's switching run.")
    var checkpointEvery: Double = 2

    @Option(help: "Records each checkpoint keeps (the newest), as a coordinator keeps its unfinished and remembered transactions.")
    var live: Int = 50_000

    struct Run: Codable {
        var concurrency: Int
        var records: Int
        var appendsPerSecond: Double
        var fsyncs: UInt64
        var fsyncsPerAppend: Double
        var largestGroup: Int
        var p50Microseconds: Double
        var p99Microseconds: Double
        var ratioToRaw: Double

        enum CodingKeys: String, CodingKey {
            case concurrency, records, fsyncs
            case appendsPerSecond = "appends_per_s"
            case fsyncsPerAppend = "fsyncs_per_append"
            case largestGroup = "largest_group"
            case p50Microseconds = "p50_us"
            case p99Microseconds = "p99_us"
            case ratioToRaw = "ratio_to_raw"
        }
    }

    struct Report: Codable {
        var benchmark = "wal"
        var machine: Machine
        var recordSize: Int
        var rawFdatasyncPerSecond: Double
        var rawPreallocatedFdatasyncPerSecond: Double
        var runs: [Run]
        var timeline: TimelineReport?

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, runs, timeline
            case recordSize = "record_size"
            case rawFdatasyncPerSecond = "raw_fdatasync_per_s"
            case rawPreallocatedFdatasyncPerSecond = "raw_preallocated_fdatasync_per_s"
        }
    }

    struct TimelineReport: Codable {
        var concurrency: Int
        var seconds: Double
        var segmentSize: Int
        var checkpointEverySeconds: Double
        var liveRecords: Int
        /// Small segments and checkpoints.
        var switching: Timeline
        /// One large segment, no checkpoint: the same load crossing nothing.
        var steady: Timeline
        var p99Ratio: Double

        enum CodingKeys: String, CodingKey {
            case concurrency, seconds, switching, steady
            case segmentSize = "segment_size"
            case checkpointEverySeconds = "checkpoint_every_s"
            case liveRecords = "live_records"
            case p99Ratio = "p99_switching_over_steady"
        }
    }

    func validate() throws {
        guard levels != nil else { throw ValidationError("--concurrency takes positive whole numbers separated by commas, e.g. 1,8,64,256") }
        guard records > 0 else { throw ValidationError("--records must be positive") }
        guard (0...(1 << 20)).contains(recordSize) else { throw ValidationError("--record-size must be between 0 and 1048576 bytes") }
        if let timeline, !(timeline >= 1 && timeline <= 3600) { throw ValidationError("--timeline takes seconds from 1 to 3600") }
        guard (1...1024).contains(segmentSizeMiB) else { throw ValidationError("--segment-size takes MiB from 1 to 1024, as dtxd's") }
        guard checkpointEvery >= 0.1 else { throw ValidationError("--checkpoint-every takes seconds, at least 0.1") }
        guard live >= 0 else { throw ValidationError("--live must be 0 or more") }
    }

    private var levels: [Int]? {
        let values = concurrency.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) > 0 }) else { return nil }
        return values.map { $0! }
    }

    func run() async throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let raw = try rawFdatasyncRate(count: min(records, 5000), preallocated: false)
        let rawPreallocated = try rawFdatasyncRate(count: min(records, 5000), preallocated: true)
        print(String(format: "raw write+fdatasync (%d bytes), appending: %.0f/s; into a preallocated file: %.0f/s (×raw below is vs appending)",
                     recordSize, raw, rawPreallocated))
        var runs: [Run] = []
        var timelineReport: TimelineReport?
        if let timeline {
            timelineReport = try await measureTimeline(concurrency: levels![0], seconds: timeline)
        }
        if timeline == nil { print("concurrency  appends/s  ×raw   fsyncs/append  largest group  p50 µs   p99 µs") }
        for level in timeline == nil ? levels! : [] {
            let run = try await measure(concurrency: level, raw: raw)
            runs.append(run)
            print(String(format: "%11d  %9.0f  %5.1f  %13.4f  %13d  %7.0f  %7.0f",
                         run.concurrency, run.appendsPerSecond, run.ratioToRaw, run.fsyncsPerAppend, run.largestGroup,
                         run.p50Microseconds, run.p99Microseconds))
        }
        let report = Report(machine: .current(), recordSize: recordSize, rawFdatasyncPerSecond: raw,
                            rawPreallocatedFdatasyncPerSecond: rawPreallocated, runs: runs, timeline: timelineReport)
        if let json {
            try writeJSON(report, to: json)
            print("wrote \(json)")
        }
    }

    /// A plain loop: write `recordSize` bytes, fdatasync, repeat. Appending grows the
    /// file (so each sync also persists its size); the preallocated variant writes into
    /// space reserved up front, as the log's segments do.
    private func rawFdatasyncRate(count: Int, preallocated: Bool) throws -> Double {
        let path = dir + "/raw-fdatasync.dat"
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw ValidationError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer {
            close(fd)
            if !keep { unlink(path) }
        }
        let payload = [UInt8](repeating: 0xAB, count: max(recordSize, 1))
        if preallocated {
            posix_fallocate(fd, 0, off_t(count * payload.count))
            fsync(fd)
        }
        let clock = ContinuousClock()
        let start = clock.now
        for i in 0..<count {
            _ = payload.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(i * payload.count)) }
            fdatasync(fd)
        }
        return Double(count) / (clock.now - start).seconds
    }

    private func measure(concurrency: Int, raw: Double) async throws -> Run {
        let logDir = dir + "/wal-c\(concurrency)"
        try? FileManager.default.removeItem(atPath: logDir)
        let (log, _) = try WriteAheadLog.open(directory: logDir)
        let payload = [UInt8](repeating: 0x5A, count: recordSize)
        let perTask = max(records / concurrency, 1)
        let total = perTask * concurrency
        let clock = ContinuousClock()
        let before = log.statistics
        let start = clock.now
        let latencies = try await withThrowingTaskGroup(of: [Double].self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    var samples: [Double] = []
                    samples.reserveCapacity(perTask)
                    for _ in 0..<perTask {
                        let t0 = clock.now
                        try await log.append(type: 1, payload: payload, forced: true)
                        samples.append((clock.now - t0).seconds * 1e6)
                    }
                    return samples
                }
            }
            return try await group.reduce(into: [Double]()) { $0 += $1 }
        }
        let elapsed = (clock.now - start).seconds
        let stats = log.statistics
        try await log.close()
        if !keep { try? FileManager.default.removeItem(atPath: logDir) }
        let sorted = latencies.sorted()
        let fsyncs = stats.fsyncs - before.fsyncs
        let rate = Double(total) / elapsed
        return Run(concurrency: concurrency, records: total, appendsPerSecond: rate, fsyncs: fsyncs,
                   fsyncsPerAppend: Double(fsyncs) / Double(total), largestGroup: stats.largestGroupSize,
                   p50Microseconds: percentile(sorted, 50), p99Microseconds: percentile(sorted, 99), ratioToRaw: rate / raw)
    }

    /// The timeline: the switching run and the steady one, each `seconds` long.
    private func measureTimeline(concurrency: Int, seconds: Double) async throws -> TimelineReport {
        let segmentSize = segmentSizeMiB << 20
        print("timeline: \(concurrency) appenders, \(seconds) s each; switching: \(segmentSizeMiB) MiB segments, a checkpoint every \(checkpointEvery) s keeping \(live) records")
        let switching = try await timelineRun(concurrency: concurrency, seconds: seconds, segmentSize: segmentSize, checkpoints: true)
        let steady = try await timelineRun(concurrency: concurrency, seconds: seconds, segmentSize: 1 << 30, checkpoints: false)
        let ratio = Timeline.printComparison(switching: switching, steady: steady)
        return TimelineReport(concurrency: concurrency, seconds: seconds, segmentSize: segmentSize, checkpointEverySeconds: checkpointEvery,
                              liveRecords: live, switching: switching, steady: steady, p99Ratio: ratio)
    }

    private enum TimelineEvent: Sendable {
        case completions([(at: Double, latency: Double)])
        case switches([Double])
        case checkpoints([(start: Double, end: Double)])
    }

    private func timelineRun(concurrency: Int, seconds: Double, segmentSize: Int, checkpoints: Bool) async throws -> Timeline {
        let logDir = dir + "/wal-timeline-\(checkpoints ? "switching" : "steady")"
        try? FileManager.default.removeItem(atPath: logDir)
        let (log, _) = try WriteAheadLog.open(directory: logDir, configuration: .init(segmentSize: segmentSize))
        let payload = [UInt8](repeating: 0x5A, count: recordSize)
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + .milliseconds(Int64(seconds * 1000))
        let every = Duration.milliseconds(Int64(checkpointEvery * 1000))
        let live = UInt64(live)
        var completions: [(at: Double, latency: Double)] = []
        var switches: [Double] = []
        var checkpointSpans: [(start: Double, end: Double)] = []
        try await withThrowingTaskGroup(of: TimelineEvent.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    var samples: [(at: Double, latency: Double)] = []
                    while clock.now < deadline {
                        let t0 = clock.now
                        try await log.append(type: 1, payload: payload, forced: true)
                        let t1 = clock.now
                        samples.append(((t1 - start).seconds, (t1 - t0).seconds))
                    }
                    return .completions(samples)
                }
            }
            group.addTask {
                // Segment switches, seen within a millisecond.
                var seen = log.statistics.segmentSwitches
                var times: [Double] = []
                while clock.now < deadline {
                    try await Task.sleep(for: .milliseconds(1))
                    let created = log.statistics.segmentSwitches
                    if created > seen {
                        times += Array(repeating: (clock.now - start).seconds, count: Int(created - seen))
                        seen = created
                    }
                }
                return .switches(times)
            }
            if checkpoints {
                group.addTask {
                    var spans: [(start: Double, end: Double)] = []
                    while clock.now + every < deadline {
                        try await Task.sleep(for: every)
                        let begun = (clock.now - start).seconds
                        let newest = log.nextLSN
                        _ = try await log.checkpoint { $0.lsn + live >= newest }
                        spans.append((begun, (clock.now - start).seconds))
                    }
                    return .checkpoints(spans)
                }
            }
            for try await event in group {
                switch event {
                case .completions(let samples): completions += samples
                case .switches(let times): switches += times
                case .checkpoints(let spans): checkpointSpans += spans
                }
            }
        }
        let stats = log.statistics
        try await log.close()
        if !keep { try? FileManager.default.removeItem(atPath: logDir) }
        var timeline = Timeline(duration: seconds, completions: completions, switches: switches, switchesWithoutSpare: Int(stats.switchesWithoutSpare),
                                checkpoints: checkpointSpans)
        timeline.slowestSwitchMilliseconds = Double(stats.slowestSwitchNanoseconds) / 1e6
        return timeline
    }
}
