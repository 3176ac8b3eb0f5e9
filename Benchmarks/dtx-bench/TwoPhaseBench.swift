import ArgumentParser
import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import NIOCore

/// Submit-and-wait 2PC transactions through a real dtxd to no-op participant processes on
/// loopback, against — in the same run — a bare HTTP round trip to one participant (the
/// ceiling: a transaction costs a submit plus two round trips per participant).
struct TwoPhaseBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "2pc",
        abstract: "Committed 2PC transactions/s, latency and coordinator fsyncs per transaction, vs a bare HTTP round trip."
    )

    @Option(help: "Number of no-op participant processes (each transaction has one branch on each).")
    var participants: Int = 2

    @Option(help: "Resource managers: 'memory' (no-op participants) or 'sqlite,postgres' (bank transfers between a SQLite and a PostgreSQL accounts service, against the same updates as plain local transactions).")
    var rm = "memory"

    @Option(help: "Comma-separated numbers of concurrent clients.")
    var concurrency: String = "1,16,64"

    @Option(help: "Seconds per measured run.")
    var duration: Double = 10

    @Option(help: "Seconds of warm-up before each run (not measured).")
    var warmup: Double = 2

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    @Option(name: .customLong("dtxd-threads"), help: "Event-loop threads of dtxd (DTXD_THREADS). With every process on one small machine, 1 spares context switches.")
    var dtxdThreads: Int = 1

    @Option(name: .customLong("participant-threads"), help: "Event-loop threads of each participant (DTX_PARTICIPANT_THREADS).")
    var participantThreads: Int = 1

    struct Run: Codable {
        var concurrency: Int
        var transactions: Int
        var failures: Int
        var transactionsPerSecond: Double
        var p50Milliseconds: Double
        var p99Milliseconds: Double
        var fsyncsPerTransaction: Double
        var forcedWritesPerTransaction: Double
        var bareRoundTripsPerSecond: Double
        /// CPU time (user + system) per transaction: noise-resistant where rates are not.
        var coordinatorCPUMicroseconds: Double = 0
        var participantsCPUMicroseconds: Double = 0
        var clientCPUMicroseconds: Double = 0

        enum CodingKeys: String, CodingKey {
            case concurrency, transactions, failures
            case coordinatorCPUMicroseconds = "dtxd_cpu_us_per_tx"
            case participantsCPUMicroseconds = "participants_cpu_us_per_tx"
            case clientCPUMicroseconds = "client_cpu_us_per_tx"
            case transactionsPerSecond = "tx_per_s"
            case p50Milliseconds = "p50_ms"
            case p99Milliseconds = "p99_ms"
            case fsyncsPerTransaction = "fsyncs_per_tx"
            case forcedWritesPerTransaction = "forced_writes_per_tx"
            case bareRoundTripsPerSecond = "bare_round_trips_per_s"
        }
    }

    struct Report: Codable {
        var benchmark = "2pc"
        var machine: Machine
        var participants: Int
        var dtxdThreads: Int
        var participantThreads: Int
        var durationSeconds: Double
        var committed: [Run]
        /// Transactions where one participant votes no.
        var aborted: Run

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, participants, committed, aborted
            case dtxdThreads = "dtxd_threads"
            case participantThreads = "participant_threads"
            case durationSeconds = "duration_s"
        }
    }

    func validate() throws {
        guard ["memory", "sqlite,postgres"].contains(rm) else { throw ValidationError("--rm takes memory or sqlite,postgres") }
        guard (1...16).contains(participants) else { throw ValidationError("--participants must be 1 to 16") }
        guard (1...64).contains(dtxdThreads), (1...64).contains(participantThreads) else { throw ValidationError("--dtxd-threads and --participant-threads must be 1 to 64") }
        guard duration > 0, warmup >= 0 else { throw ValidationError("--duration must be above 0 and --warmup 0 or more") }
        guard !levels.isEmpty, levels.allSatisfy({ (1...1024).contains($0) }) else { throw ValidationError("--concurrency takes numbers from 1 to 1024, e.g. 1,16,64") }
    }

    private var levels: [Int] { concurrency.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func run() async throws {
        if rm == "sqlite,postgres" {
            let bank = BankBench(concurrency: levels, duration: duration, warmup: warmup, dtxdThreads: dtxdThreads, participantThreads: participantThreads, processes: BenchProcesses())
            try await bank.run(json: json)
            return
        }
        let directory = NSTemporaryDirectory() + "dtx-bench-2pc-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let processes = BenchProcesses()
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }

        let (daemon, daemonURL) = try processes.start("dtxd", ["--data-dir", directory + "/data", "--listen", "127.0.0.1:0", "--log-level", "error"], environment: ["DTXD_THREADS": String(dtxdThreads)], marker: "dtxd listening on ")
        var participantURLs: [String] = []
        var participantPIDs: [Int32] = []
        for index in 0..<participants {
            let (process, url) = try processes.start("memory-participant", ["--name", "p\(index)", "--coordinator", daemonURL, "--listen", "127.0.0.1:0", "--log-level", "error", "--heartbeat", "5", "--recovery-interval", "60"],
                                                  environment: ["DTX_PARTICIPANT_THREADS": String(participantThreads)], marker: "memory-participant p\(index) listening on ")
            participantPIDs.append(process.processIdentifier)
            participantURLs.append(url)
        }

        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 1024
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        try await waitForRegistrations(http, daemonURL, count: participants)

        let machine = Machine.current()
        print("2pc: \(participants) no-op participants, \(duration)s per run, \(machine.cpus) cpus, \(machine.build) build, event-loop threads: dtxd \(dtxdThreads), participants \(participantThreads)")
        print("  conc       tx/s    p50 ms    p99 ms   fsync/tx  forced/tx    bare rt/s    ratio   cpu µs/tx: dtxd  participants  client")
        var runs: [Run] = []
        let pids = CPUPids(daemon: daemon.processIdentifier, participants: participantPIDs)
        for level in levels {
            let bare = try await measureBare(http, participantURLs[0], concurrency: level)
            var run = try await measureTransactions(http, daemonURL, pids, concurrency: level, voteNo: false)
            run.bareRoundTripsPerSecond = bare
            runs.append(run)
            printRun(run)
        }
        let aborted = try await measureTransactions(http, daemonURL, pids, concurrency: levels.max() ?? 16, voteNo: true)
        print("aborted (one participant votes no):")
        printRun(aborted)

        try await http.shutdown()
        if let json {
            try writeJSON(Report(machine: machine, participants: participants, dtxdThreads: dtxdThreads, participantThreads: participantThreads, durationSeconds: duration, committed: runs, aborted: aborted), to: json)
            print("wrote \(json)")
        }
    }

    private func printRun(_ run: Run) {
        let ratio = run.bareRoundTripsPerSecond > 0 ? run.transactionsPerSecond / run.bareRoundTripsPerSecond : 0
        print(String(format: "%6d %10.0f %9.2f %9.2f %10.4f %10.4f %12.0f %8.3f %16.0f %13.0f %7.0f", run.concurrency, run.transactionsPerSecond, run.p50Milliseconds, run.p99Milliseconds,
                     run.fsyncsPerTransaction, run.forcedWritesPerTransaction, run.bareRoundTripsPerSecond, ratio,
                     run.coordinatorCPUMicroseconds, run.participantsCPUMicroseconds, run.clientCPUMicroseconds))
        if run.failures > 0 { print("       \(run.failures) transactions did not end as expected") }
    }

    // MARK: Measurements

    private func measureTransactions(_ http: HTTPClient, _ daemonURL: String, _ pids: CPUPids, concurrency: Int, voteNo: Bool) async throws -> Run {
        let branches = (0..<participants).map { index in
            BranchSpec(participant: "p\(index)", operation: "noop", payload: voteNo && index == 0 ? .object(["vote": .string("no")]) : nil)
        }
        let body = try JSONEncoder().encode(TransactionSubmission(protocol: .twoPhaseCommit, branches: branches, timeout: 30, wait: true))
        let expected = voteNo ? "aborted" : "committed"
        _ = try await load(concurrency: concurrency, seconds: warmup) { try await self.submit(http, daemonURL, body, expected: expected) }
        let fsyncsBefore = try await metric(http, daemonURL, "dtx_log_fsyncs")
        let forcedBefore = try await metric(http, daemonURL, "dtx_log_forced_appends")
        let cpuBefore = pids.sample()
        let result = try await load(concurrency: concurrency, seconds: duration) { try await self.submit(http, daemonURL, body, expected: expected) }
        let cpuAfter = pids.sample()
        let fsyncs = try await metric(http, daemonURL, "dtx_log_fsyncs") - fsyncsBefore
        let forced = try await metric(http, daemonURL, "dtx_log_forced_appends") - forcedBefore
        let done = max(result.successes, 1)
        let perTransaction = { (before: Double, after: Double) in (after - before) / Double(done) * 1e6 }
        return Run(concurrency: concurrency, transactions: result.successes, failures: result.failures,
                   transactionsPerSecond: Double(result.successes) / result.elapsed,
                   p50Milliseconds: percentile(result.latencies, 50) * 1000, p99Milliseconds: percentile(result.latencies, 99) * 1000,
                   fsyncsPerTransaction: fsyncs / Double(done), forcedWritesPerTransaction: forced / Double(done), bareRoundTripsPerSecond: 0,
                   coordinatorCPUMicroseconds: perTransaction(cpuBefore.daemon, cpuAfter.daemon),
                   participantsCPUMicroseconds: perTransaction(cpuBefore.participants, cpuAfter.participants),
                   clientCPUMicroseconds: perTransaction(cpuBefore.client, cpuAfter.client))
    }

    /// CPU seconds (user + system) used so far by the daemon, the participants and this process.
    private struct CPUPids {
        var daemon: Int32
        var participants: [Int32]

        struct Sample {
            var daemon: Double
            var participants: Double
            var client: Double
        }

        func sample() -> Sample {
            Sample(daemon: Self.cpu(daemon), participants: participants.map(Self.cpu).reduce(0, +), client: Self.cpu(getpid()))
        }

        static func cpu(_ pid: Int32) -> Double {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return 0 }
            // Fields after the command name; utime and stime are fields 14 and 15 of the line.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
            return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
        }
    }

    private func submit(_ http: HTTPClient, _ daemonURL: String, _ body: Data, expected: String) async throws -> Bool {
        var request = HTTPClientRequest(url: daemonURL + "/v1/transactions")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(bytes: body))
        let response = try await http.execute(request, timeout: .seconds(60))
        let answer = try await response.body.collect(upTo: 1 << 20)
        guard response.status.code == 201 else { return false }
        // Only the status matters: look for it without decoding the whole view.
        return String(buffer: answer).contains("\"status\":\"\(expected)\"")
    }

    /// A bare HTTP round trip to one participant: ROLLBACK of a branch it never saw (a no-op 200).
    private func measureBare(_ http: HTTPClient, _ participantURL: String, concurrency: Int) async throws -> Double {
        let body = Data(#"{"gid":"bench-bare","branch":0,"operation":"noop"}"#.utf8)
        let call: @Sendable () async throws -> Bool = {
            var request = HTTPClientRequest(url: participantURL + "/dtx/2pc/rollback")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
            let response = try await http.execute(request, timeout: .seconds(30))
            _ = try await response.body.collect(upTo: 1 << 20)
            return response.status.code == 200
        }
        _ = try await load(concurrency: concurrency, seconds: warmup, call)
        let result = try await load(concurrency: concurrency, seconds: duration, call)
        return Double(result.successes) / result.elapsed
    }

}
