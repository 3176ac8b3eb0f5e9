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

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, runs
            case recordSize = "record_size"
            case rawFdatasyncPerSecond = "raw_fdatasync_per_s"
            case rawPreallocatedFdatasyncPerSecond = "raw_preallocated_fdatasync_per_s"
        }
    }

    func validate() throws {
        guard levels != nil else { throw ValidationError("--concurrency takes positive whole numbers separated by commas, e.g. 1,8,64,256") }
        guard records > 0 else { throw ValidationError("--records must be positive") }
        guard (0...(1 << 20)).contains(recordSize) else { throw ValidationError("--record-size must be between 0 and 1048576 bytes") }
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
        print("concurrency  appends/s  ×raw   fsyncs/append  largest group  p50 µs   p99 µs")
        var runs: [Run] = []
        for level in levels! {
            let run = try await measure(concurrency: level, raw: raw)
            runs.append(run)
            print(String(format: "%11d  %9.0f  %5.1f  %13.4f  %13d  %7.0f  %7.0f",
                         run.concurrency, run.appendsPerSecond, run.ratioToRaw, run.fsyncsPerAppend, run.largestGroup,
                         run.p50Microseconds, run.p99Microseconds))
        }
        let report = Report(machine: .current(), recordSize: recordSize, rawFdatasyncPerSecond: raw,
                            rawPreallocatedFdatasyncPerSecond: rawPreallocated, runs: runs)
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
}
