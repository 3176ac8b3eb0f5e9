import ArgumentParser
import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import NIOCore
import Synchronization

/// `dtx-bench console`: how fast dtxd answers what the web console asks for, with many
/// finished transactions in its history: fills a fresh dtxd (`--history-max` above the
/// count) with committed 2PC transactions on two no-op participants, then times each of
/// the console's requests one after another (the list page's first page, unfiltered and
/// under each filter; a transaction's page; the counts; the page's files).
struct ConsoleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Latency of the web console's requests with many finished transactions in dtxd's history."
    )

    @Option(help: "Finished transactions to fill dtxd's history with.")
    var transactions = 100_000

    @Option(help: "Concurrent clients filling it.")
    var concurrency = 64

    @Option(help: "Times each request is timed.")
    var repeats = 50

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    func validate() throws {
        guard (1...10_000_000).contains(transactions) else { throw ValidationError("--transactions must be 1 to 10000000") }
        guard (1...1024).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 1024") }
        guard (1...100_000).contains(repeats) else { throw ValidationError("--repeats must be 1 to 100000") }
    }

    struct Timing: Codable {
        var request: String
        var p50Milliseconds: Double
        var p99Milliseconds: Double
        var maxMilliseconds: Double
        var bytes: Int

        enum CodingKeys: String, CodingKey {
            case request, bytes
            case p50Milliseconds = "p50_ms"
            case p99Milliseconds = "p99_ms"
            case maxMilliseconds = "max_ms"
        }
    }

    struct Report: Codable {
        var benchmark = "console"
        var machine: Machine
        var finishedTransactions: Int
        var fillSeconds: Double
        var repeats: Int
        var timings: [Timing]
        /// dtxd's resident memory with two participants registered and nothing run, and
        /// with the history full.
        var rssEmptyMiB: Double
        var rssFullMiB: Double

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, repeats, timings
            case finishedTransactions = "finished_transactions"
            case fillSeconds = "fill_s"
            case rssEmptyMiB = "dtxd_rss_empty_mib"
            case rssFullMiB = "dtxd_rss_full_mib"
        }
    }

    func run() async throws {
        let processes = BenchProcesses()
        let directory = NSTemporaryDirectory() + "dtx-bench-console-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let (daemon, daemonURL) = try processes.start("dtxd", ["--data-dir", directory + "/data", "--listen", "127.0.0.1:0", "--log-level", "error",
                                                          "--history-max", String(transactions + 1000)],
                                                 environment: [:], marker: "dtxd listening on ")
        for index in 0..<2 {
            _ = try processes.start("memory-participant", ["--name", "p\(index)", "--coordinator", daemonURL, "--listen", "127.0.0.1:0", "--log-level", "error"],
                                    environment: [:], marker: "memory-participant p\(index) listening on ")
        }
        let http = benchHTTPClient()
        defer { _ = http.shutdown() }
        try await waitForRegistrations(http, daemonURL, count: 2)
        let machine = Machine.current()
        let rssEmpty = Self.residentMiB(daemon.processIdentifier)

        // Fill: `transactions` committed ones, `concurrency` at a time.
        let body = try JSONEncoder().encode(TransactionSubmission(
            protocol: .twoPhaseCommit, branches: [BranchSpec(participant: "p0", operation: "noop"), BranchSpec(participant: "p1", operation: "noop")], timeout: 30, wait: true))
        let started = Date()
        let counter = Counter(transactions)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    while counter.take() {
                        guard try await submitTransaction(http, daemonURL, body, expected: "committed") else { throw ValidationError("a filling transaction did not commit") }
                    }
                }
            }
            try await group.waitForAll()
        }
        let fill = Date().timeIntervalSince(started)
        let rssFull = Self.residentMiB(daemon.processIdentifier)
        print("console: \(transactions) finished 2PC transactions in dtxd's history (filled in \(String(format: "%.0f", fill)) s), \(repeats) requests each, \(machine.build) build")
        print(String(format: "  dtxd resident memory: %.1f MiB empty, %.1f MiB full (%.0f bytes per finished transaction)",
                     rssEmpty, rssFull, (rssFull - rssEmpty) * 1_048_576 / Double(transactions)))

        // A gid from the middle of the history, for the transaction page.
        let middle = try await get(http, daemonURL + "/v1/transactions?limit=1000").body
        let list = try JSONDecoder.dtx().decode(TransactionList.self, from: middle)
        let gid = list.transactions[list.transactions.count / 2].gid
        let requests: [(String, String)] = [
            ("list, first page (100)", "/v1/transactions?limit=100"),
            ("list, status=committed", "/v1/transactions?status=committed&limit=100"),
            ("list, protocol=2pc", "/v1/transactions?protocol=2pc&limit=100"),
            ("list, participant=p1", "/v1/transactions?participant=p1&limit=100"),
            ("list, olderThan=1", "/v1/transactions?olderThan=1&limit=100"),
            ("list, status=stuck (none: scans all)", "/v1/transactions?status=stuck&limit=100"),
            ("list, status=in_doubt (none: scans all)", "/v1/transactions?status=in_doubt&limit=100"),
            ("transaction page", "/v1/transactions/\(gid)"),
            ("counts (/healthz)", "/healthz"),
            ("participants", "/v1/participants"),
            ("page /ui/", "/ui/"),
            ("page script", "/ui/console.js"),
        ]
        print("  request                                   p50 ms    p99 ms    max ms     bytes")
        var timings: [Timing] = []
        for (name, path) in requests {
            var samples: [Double] = []
            var bytes = 0
            for _ in 0..<repeats {
                let begun = ContinuousClock.now
                let answer = try await get(http, daemonURL + path)
                samples.append((ContinuousClock.now - begun).seconds * 1000)
                guard answer.status == 200 else { throw ValidationError("\(path) answered \(answer.status)") }
                bytes = answer.body.count
            }
            samples.sort()
            let timing = Timing(request: name, p50Milliseconds: percentile(samples, 50), p99Milliseconds: percentile(samples, 99), maxMilliseconds: samples.last ?? 0, bytes: bytes)
            timings.append(timing)
            print("  " + name.padding(toLength: 40, withPad: " ", startingAt: 0)
                  + String(format: " %8.2f  %8.2f  %8.2f  %8d", timing.p50Milliseconds, timing.p99Milliseconds, timing.maxMilliseconds, bytes))
        }
        if let json {
            try writeJSON(Report(machine: machine, finishedTransactions: transactions, fillSeconds: fill, repeats: repeats, timings: timings,
                                 rssEmptyMiB: rssEmpty, rssFullMiB: rssFull), to: json)
            print("wrote \(json)")
        }
    }

    /// VmRSS of a process, in MiB.
    static func residentMiB(_ pid: Int32) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = line.split(separator: " ").dropFirst().first.flatMap({ Double($0) }) else { return 0 }
        return kib / 1024
    }

    private func get(_ http: HTTPClient, _ url: String) async throws -> (status: Int, body: Data) {
        let response = try await http.execute(HTTPClientRequest(url: url), timeout: .seconds(30))
        let body = try await response.body.collect(upTo: 64 << 20)
        return (Int(response.status.code), Data(body.readableBytesView))
    }
}

/// Hands out `total` turns to concurrent workers.
private final class Counter: Sendable {
    private let left: Mutex<Int>

    init(_ total: Int) { left = Mutex(total) }

    func take() -> Bool {
        left.withLock { left in
            guard left > 0 else { return false }
            left -= 1
            return true
        }
    }
}
