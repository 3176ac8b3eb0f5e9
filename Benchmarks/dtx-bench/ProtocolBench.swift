import ArgumentParser
import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import NIOCore

/// `dtx-bench 2pc`, `3pc`, `saga` and `tcc`: one command per protocol, the same measurements
/// (`ProtocolBench`). A type per protocol only because each subcommand needs its own.
struct ProtocolBenchCommand<Kind: BenchedProtocol>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: Kind.transactionProtocol.rawValue,
            abstract: "Committed \(Kind.transactionProtocol.rawValue) transactions/s, latency and coordinator fsyncs per transaction, vs a bare HTTP round trip."
        )
    }

    @OptionGroup var options: ProtocolBenchOptions

    func run() async throws {
        try await ProtocolBench(transactionProtocol: Kind.transactionProtocol, options: options).run()
    }
}

protocol BenchedProtocol { static var transactionProtocol: TransactionProtocol { get } }
enum TwoPhaseBench: BenchedProtocol { static let transactionProtocol = TransactionProtocol.twoPhaseCommit }
enum ThreePhaseBench: BenchedProtocol { static let transactionProtocol = TransactionProtocol.threePhaseCommit }
enum SagaBench: BenchedProtocol { static let transactionProtocol = TransactionProtocol.saga }
enum TCCBench: BenchedProtocol { static let transactionProtocol = TransactionProtocol.tcc }
enum MessageBench: BenchedProtocol { static let transactionProtocol = TransactionProtocol.msg }

struct ProtocolBenchOptions: ParsableArguments {
    @Option(help: "Number of no-op participant processes (each transaction has one branch, or saga step, on each).")
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

    @Option(name: .customLong("participant-backlog"), help: "Listen backlog of each no-op participant (memory-participant --backlog): a small one (5, Python's default) drops connections when dtxd opens many at once.")
    var participantBacklog: Int = 256

    @Option(name: .customLong("last-agent"), help: "dtxd's --last-agent: on lets a 2PC transaction's last branch commit in one phase and decide; off prepares every branch.")
    var lastAgent: String = "off"

    @Option(help: "Seconds. Instead of the sweep, run the first concurrency level this long twice, each against a fresh dtxd: once with small log segments and frequent checkpoints, once with 64 MiB segments and no checkpoint; report transactions and the slowest one per 100 ms.")
    var timeline: Double?

    @Option(name: .customLong("segment-size"), help: "MiB per log segment of dtxd in the timeline's switching run.")
    var segmentSizeMiB: Int = 1

    @Option(name: .customLong("checkpoint-every"), help: "Seconds between dtxd's checkpoints in the timeline's switching run (dtxd --checkpoint-interval).")
    var checkpointEvery: Double = 2

    @Option(help: "wal: one dtxd on its own log. postgres: clusters of dtxd nodes (--nodes) on a throwaway PostgreSQL, the load spread over them, each run after one on the WAL.")
    var store = "wal"

    @Option(help: "With --store postgres: comma-separated numbers of nodes.")
    var nodes = "1,2,3"

    @Option(name: .customLong("lease-ttl"), help: "With --store postgres: the nodes' --lease-ttl in seconds.")
    var leaseTTL: Double = 5

    @Option(help: "With --store postgres: after the runs, kill a transaction's owner right after its commit decision this many times, and report how long another node takes to commit it.")
    var kills = 0

    @Option(name: .customLong("otlp-endpoint"), help: "Instead of the sweep: run the first concurrency level with dtxd and the participants tracing and exporting to this OTLP/HTTP collector, and without, alternating, twice each, each against a fresh dtxd; report the ratio. Start a collector first, e.g. python3 Tests/Tools/otlp_receiver.py --discard --port 4318.")
    var otlpEndpoint: String?

    func validate() throws {
        guard ["memory", "sqlite,postgres"].contains(rm) else { throw ValidationError("--rm takes memory or sqlite,postgres") }
        guard (1...16).contains(participants) else { throw ValidationError("--participants must be 1 to 16") }
        guard (1...64).contains(dtxdThreads), (1...64).contains(participantThreads) else { throw ValidationError("--dtxd-threads and --participant-threads must be 1 to 64") }
        guard ["on", "off"].contains(lastAgent) else { throw ValidationError("--last-agent takes on or off") }
        guard duration > 0, warmup >= 0 else { throw ValidationError("--duration must be above 0 and --warmup 0 or more") }
        guard !levels.isEmpty, levels.allSatisfy({ (1...1024).contains($0) }) else { throw ValidationError("--concurrency takes numbers from 1 to 1024, e.g. 1,16,64") }
        if let timeline {
            guard timeline >= 1 && timeline <= 3600 else { throw ValidationError("--timeline takes seconds from 1 to 3600") }
            guard rm == "memory" else { throw ValidationError("--timeline runs with --rm memory") }
        }
        guard (1...1024).contains(segmentSizeMiB) else { throw ValidationError("--segment-size takes MiB from 1 to 1024") }
        guard checkpointEvery >= 1 && checkpointEvery <= 86400 else { throw ValidationError("--checkpoint-every takes seconds from 1 to 86400") }
        guard ["wal", "postgres"].contains(store) else { throw ValidationError("--store takes wal or postgres") }
        guard !nodeCounts.isEmpty, nodeCounts.allSatisfy({ (1...8).contains($0) }) else { throw ValidationError("--nodes takes numbers from 1 to 8, e.g. 1,2,3") }
        guard leaseTTL >= 0.5 && leaseTTL <= 600 else { throw ValidationError("--lease-ttl takes seconds from 0.5 to 600") }
        guard (0...1000).contains(kills) else { throw ValidationError("--kills takes 0 to 1000") }
        if store == "postgres" { guard rm == "memory", timeline == nil else { throw ValidationError("--store postgres runs with --rm memory and no --timeline") } }
    }

    var levels: [Int] { concurrency.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    var nodeCounts: [Int] { nodes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }
}

/// Submit-and-wait transactions of one protocol through a real dtxd to no-op participant
/// processes on loopback, against — in the same run — a bare HTTP round trip to one
/// participant (the ceiling: a transaction costs a submit plus one to three round trips
/// per participant: prepare + commit, can-commit + pre-commit + do-commit, try + confirm,
/// or one action per step).
struct ProtocolBench {
    var transactionProtocol: TransactionProtocol
    var options: ProtocolBenchOptions

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
        var benchmark: String
        var machine: Machine
        var participants: Int
        var dtxdThreads: Int
        var participantThreads: Int
        var participantBacklog: Int
        var durationSeconds: Double
        var committed: [Run]
        /// Transactions whose last branch refuses (`abortedCase`).
        var aborted: Run
        var abortedCase: String

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, participants, committed, aborted
            case dtxdThreads = "dtxd_threads"
            case participantThreads = "participant_threads"
            case participantBacklog = "participant_backlog"
            case durationSeconds = "duration_s"
            case abortedCase = "aborted_case"
        }
    }

    /// What the aborted run measures: the last branch's payload is `{"vote": "no"}`.
    private var abortedCase: String {
        switch transactionProtocol {
        case .saga: "the last step's action is refused; the steps before it are compensated"
        case .tcc: "one Try is refused; every branch is cancelled"
        default: "one participant votes no; the others are rolled back"
        }
    }

    func run() async throws {
        if options.store == "postgres" {
            try await ClusterBench(transactionProtocol: transactionProtocol, options: options).run()
            return
        }
        if let seconds = options.timeline {
            try await runTimeline(seconds: seconds)
            return
        }
        if let endpoint = options.otlpEndpoint {
            try await runTracingComparison(endpoint: endpoint)
            return
        }
        if transactionProtocol == .msg {
            try await runMessageComparison()
            return
        }
        let processes = BenchProcesses()
        if options.rm == "sqlite,postgres" {
            let bank = BankBench(transactionProtocol: transactionProtocol, concurrency: options.levels, duration: options.duration, warmup: options.warmup,
                                 dtxdThreads: options.dtxdThreads, participantThreads: options.participantThreads, lastAgent: options.lastAgent == "on", processes: processes)
            try await bank.run(json: options.json)
            return
        }
        let directory = NSTemporaryDirectory() + "dtx-bench-\(transactionProtocol.rawValue)-\(getpid())"
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let (daemon, daemonURL, participantPIDs, participantURLs) = try startCluster(processes, directory: directory, dtxdArguments: [])
        let http = benchHTTPClient()
        try await waitForRegistrations(http, daemonURL, count: options.participants)

        let machine = Machine.current()
        print("\(transactionProtocol.rawValue): \(options.participants) no-op participants, \(options.duration)s per run, \(machine.cpus) cpus, \(machine.build) build, event-loop threads: dtxd \(options.dtxdThreads), participants \(options.participantThreads), participant backlog \(options.participantBacklog)")
        print("  conc       tx/s    p50 ms    p99 ms   fsync/tx  forced/tx    bare rt/s    ratio   cpu µs/tx: dtxd  participants  client")
        var runs: [Run] = []
        let pids = CPUPids(daemon: daemon.processIdentifier, participants: participantPIDs)
        for level in options.levels {
            let bare = try await measureBare(http, participantURLs[0], concurrency: level)
            var run = try await measureTransactions(http, daemonURL, pids, concurrency: level, refused: false)
            run.bareRoundTripsPerSecond = bare
            runs.append(run)
            printRun(run)
        }
        let aborted = try await measureTransactions(http, daemonURL, pids, concurrency: options.levels.max() ?? 16, refused: true)
        print("aborted (\(abortedCase)):")
        printRun(aborted)

        try await http.shutdown()
        if let json = options.json {
            try writeJSON(Report(benchmark: transactionProtocol.rawValue, machine: machine, participants: options.participants, dtxdThreads: options.dtxdThreads,
                                 participantThreads: options.participantThreads, participantBacklog: options.participantBacklog,
                                 durationSeconds: options.duration, committed: runs, aborted: aborted, abortedCase: abortedCase), to: json)
            print("wrote \(json)")
        }
    }

    /// dtxd (its data in `directory`, made fresh) and the no-op participants.
    func startCluster(_ processes: BenchProcesses, directory: String, dtxdArguments: [String], participantArguments: [String] = []) throws
        -> (daemon: Process, url: String, participantPIDs: [Int32], participantURLs: [String]) {
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let (daemon, daemonURL) = try processes.start("dtxd", ["--data-dir", directory + "/data", "--listen", "127.0.0.1:0", "--log-level", "error"] + dtxdArguments,
                                                      environment: ["DTXD_THREADS": String(options.dtxdThreads)], marker: "dtxd listening on ")
        var participantURLs: [String] = []
        var participantPIDs: [Int32] = []
        for index in 0..<options.participants {
            let (process, url) = try processes.start("memory-participant", ["--name", "p\(index)", "--coordinator", daemonURL, "--listen", "127.0.0.1:0", "--log-level", "error", "--heartbeat", "5", "--recovery-interval", "60",
                                                                           "--backlog", String(options.participantBacklog)] + participantArguments,
                                                  environment: ["DTX_PARTICIPANT_THREADS": String(options.participantThreads)], marker: "memory-participant p\(index) listening on ")
            participantPIDs.append(process.processIdentifier)
            participantURLs.append(url)
        }
        return (daemon, daemonURL, participantPIDs, participantURLs)
    }

    // MARK: Tracing

    struct TracingReport: Codable {
        var benchmark: String
        var machine: Machine
        var participants: Int
        var concurrency: Int
        var durationSeconds: Double
        var off: [Run]
        var on: [Run]
        /// Mean committed tx/s with tracing over mean without.
        var ratio: Double

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, participants, concurrency, off, on, ratio
            case durationSeconds = "duration_s"
        }
    }

    /// The same load without and with traces exported (dtxd and every participant), in
    /// turns, each against a fresh dtxd.
    private func runTracingComparison(endpoint: String) async throws {
        let machine = Machine.current()
        let level = options.levels[0]
        print("\(transactionProtocol.rawValue) with and without tracing to \(endpoint): \(options.participants) no-op participants, concurrency \(level), \(options.duration)s per run, \(machine.build) build")
        print("  tracing       tx/s    p50 ms    p99 ms   cpu µs/tx: dtxd  participants")
        var runs: [Bool: [Run]] = [false: [], true: []]
        for _ in 0..<2 {
            for tracing in [false, true] {
                let processes = BenchProcesses()
                let directory = NSTemporaryDirectory() + "dtx-bench-tracing-\(getpid())"
                defer {
                    processes.stopAll()
                    try? FileManager.default.removeItem(atPath: directory)
                }
                let exporting = tracing ? ["--otlp-endpoint", endpoint] : []
                let (daemon, daemonURL, participantPIDs, _) = try startCluster(processes, directory: directory, dtxdArguments: exporting, participantArguments: exporting)
                let http = benchHTTPClient()
                try await waitForRegistrations(http, daemonURL, count: options.participants)
                let run = try await measureTransactions(http, daemonURL, CPUPids(daemon: daemon.processIdentifier, participants: participantPIDs), concurrency: level, refused: false)
                try await http.shutdown()
                runs[tracing]!.append(run)
                print("  " + (tracing ? "on" : "off").padding(toLength: 8, withPad: " ", startingAt: 0) + String(format: " %10.0f  %8.2f  %8.2f   %14.0f  %12.0f", run.transactionsPerSecond,
                             run.p50Milliseconds, run.p99Milliseconds, run.coordinatorCPUMicroseconds, run.participantsCPUMicroseconds))
            }
        }
        let mean = { (runs: [Run]) in runs.map(\.transactionsPerSecond).reduce(0, +) / Double(max(runs.count, 1)) }
        let ratio = mean(runs[true]!) / mean(runs[false]!)
        print(String(format: "with tracing: %.3f× the throughput without", ratio))
        if let json = options.json {
            try writeJSON(TracingReport(benchmark: "\(transactionProtocol.rawValue)-tracing", machine: machine, participants: options.participants, concurrency: level,
                                        durationSeconds: options.duration, off: runs[false]!, on: runs[true]!, ratio: ratio), to: json)
            print("wrote \(json)")
        }
    }

    // MARK: Timeline

    struct TimelineReport: Codable {
        var benchmark: String
        var machine: Machine
        var participants: Int
        var concurrency: Int
        var seconds: Double
        var segmentSizeMiB: Int
        var checkpointEverySeconds: Double
        /// Small segments and frequent checkpoints.
        var switching: Timeline
        /// 64 MiB segments, no checkpoint: the same load crossing nothing.
        var steady: Timeline
        var p99Ratio: Double

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, participants, concurrency, seconds, switching, steady
            case segmentSizeMiB = "segment_size_mib"
            case checkpointEverySeconds = "checkpoint_every_s"
            case p99Ratio = "p99_switching_over_steady"
        }
    }

    /// Unique-gid transactions with `wait: true` at one concurrency against a fresh dtxd
    /// twice, in turns: switching segments and checkpointing often, then crossing neither.
    private func runTimeline(seconds: Double) async throws {
        let concurrency = options.levels[0]
        print("\(transactionProtocol.rawValue) timeline: \(options.participants) no-op participants, \(concurrency) clients, \(seconds) s each; switching: \(options.segmentSizeMiB) MiB segments, a checkpoint every \(options.checkpointEvery) s")
        let switching = try await timelineRun(seconds: seconds, concurrency: concurrency,
                                              dtxdArguments: ["--segment-size", "\(options.segmentSizeMiB)", "--checkpoint-interval", "\(options.checkpointEvery)"])
        let steady = try await timelineRun(seconds: seconds, concurrency: concurrency, dtxdArguments: ["--segment-size", "64", "--checkpoint-interval", "86400"])
        let ratio = Timeline.printComparison(switching: switching, steady: steady)
        if let json = options.json {
            try writeJSON(TimelineReport(benchmark: transactionProtocol.rawValue + "-timeline", machine: .current(), participants: options.participants,
                                         concurrency: concurrency, seconds: seconds, segmentSizeMiB: options.segmentSizeMiB,
                                         checkpointEverySeconds: options.checkpointEvery, switching: switching, steady: steady, p99Ratio: ratio), to: json)
            print("wrote \(json)")
        }
    }

    private func timelineRun(seconds: Double, concurrency: Int, dtxdArguments: [String]) async throws -> Timeline {
        let processes = BenchProcesses()
        let directory = NSTemporaryDirectory() + "dtx-bench-timeline-\(getpid())"
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let (_, daemonURL, _, _) = try startCluster(processes, directory: directory, dtxdArguments: dtxdArguments)
        let http = benchHTTPClient()
        do {
            try await waitForRegistrations(http, daemonURL, count: options.participants)
            let branches = (0..<options.participants).map { BranchSpec(participant: "p\($0)", operation: "noop") }
            let body = try JSONEncoder().encode(TransactionSubmission(protocol: transactionProtocol, branches: branches, timeout: 30, wait: true))
            let submit: @Sendable () async throws -> Bool = { try await submitTransaction(http, daemonURL, body, expected: "committed") }
            _ = try await load(concurrency: concurrency, seconds: options.warmup, submit)

            // Switches and checkpoints as /metrics shows them, read every 20 ms.
            let names = ["dtx_log_segment_switches", "dtx_log_checkpoints", "dtx_log_switches_without_spare"]
            let first = try await metrics(http, daemonURL, names)
            let clock = ContinuousClock()
            let start = clock.now
            let poller = Task { () -> (switches: [Double], checkpoints: [Double]) in
                var previous = first
                var switches: [Double] = [], checkpoints: [Double] = []
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(20))
                    guard let now = try? await metrics(http, daemonURL, names) else { continue }
                    let at = (clock.now - start).seconds
                    switches += Array(repeating: at, count: max(0, Int(now[0] - previous[0])))
                    checkpoints += Array(repeating: at, count: max(0, Int(now[1] - previous[1])))
                    previous = now
                }
                return (switches, checkpoints)
            }
            let result = try await load(concurrency: concurrency, seconds: seconds, submit)
            poller.cancel()
            let seen = await poller.value
            let last = try await metrics(http, daemonURL, names)
            try await http.shutdown()
            return Timeline(duration: seconds, completions: result.completions, switches: seen.switches,
                            switchesWithoutSpare: Int(last[2] - first[2]), checkpoints: seen.checkpoints.map { ($0, $0) })
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    func printRun(_ run: Run) {
        let ratio = run.bareRoundTripsPerSecond > 0 ? run.transactionsPerSecond / run.bareRoundTripsPerSecond : 0
        print(String(format: "%6d %10.0f %9.2f %9.2f %10.4f %10.4f %12.0f %8.3f %16.0f %13.0f %7.0f", run.concurrency, run.transactionsPerSecond, run.p50Milliseconds, run.p99Milliseconds,
                     run.fsyncsPerTransaction, run.forcedWritesPerTransaction, run.bareRoundTripsPerSecond, ratio,
                     run.coordinatorCPUMicroseconds, run.participantsCPUMicroseconds, run.clientCPUMicroseconds))
        if run.failures > 0 { print("       \(run.failures) transactions did not end as expected") }
    }

    // MARK: Measurements

    private func measureTransactions(_ http: HTTPClient, _ daemonURL: String, _ pids: CPUPids, concurrency: Int, refused: Bool) async throws -> Run {
        let last = options.participants - 1
        let branches = (0..<options.participants).map { index in
            BranchSpec(participant: "p\(index)", operation: "noop", payload: refused && index == last ? .object(["vote": .string("no")]) : nil)
        }
        let body = try JSONEncoder().encode(TransactionSubmission(protocol: transactionProtocol, branches: branches, timeout: 30, wait: true))
        let expected = refused ? "aborted" : "committed"
        return try await measure(http, daemonURL, pids, concurrency: concurrency) { try await submitTransaction(http, daemonURL, body, expected: expected) }
    }

    /// `submit` (one transaction, true when it ended as expected) run by `concurrency`
    /// clients: after the warm-up, for `duration`.
    func measure(_ http: HTTPClient, _ daemonURL: String, _ pids: CPUPids, concurrency: Int, _ submit: @escaping @Sendable () async throws -> Bool) async throws -> Run {
        _ = try await load(concurrency: concurrency, seconds: options.warmup, submit)
        let fsyncsBefore = try await metric(http, daemonURL, "dtx_log_fsyncs")
        let forcedBefore = try await metric(http, daemonURL, "dtx_log_forced_appends")
        let cpuBefore = pids.sample()
        let result = try await load(concurrency: concurrency, seconds: options.duration, submit)
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
    struct CPUPids {
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

    /// A bare HTTP round trip to one participant: ROLLBACK of a branch it never saw (a no-op 200).
    private func measureBare(_ http: HTTPClient, _ participantURL: String, concurrency: Int) async throws -> Double {
        let body = Data(#"{"gid":"bench-bare","branch":0,"operation":"noop"}"#.utf8)
        let call: @Sendable () async throws -> Bool = {
            var request = HTTPClientRequest(url: participantURL + "/dtx/2pc/rollback")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
            // A participant with a small listen backlog drops or resets some of this
            // client's connections: counted as failures, not the end of the run.
            guard let response = try? await http.execute(request, timeout: .seconds(30)),
                  (try? await response.body.collect(upTo: 1 << 20)) != nil else { return false }
            return response.status.code == 200
        }
        _ = try await load(concurrency: concurrency, seconds: options.warmup, call)
        let result = try await load(concurrency: concurrency, seconds: options.duration, call)
        return Double(result.successes) / result.elapsed
    }
}
