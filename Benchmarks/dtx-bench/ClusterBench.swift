import ArgumentParser
import AsyncHTTPClient
import DTXAPI
import DTXCore
import DTXTestSupport
import Foundation
import NIOCore
import Synchronization

/// `dtx-bench 2pc --store postgres --nodes 1,2,3 [--kills N]`: committed transactions
/// through a cluster of dtxd nodes on a throwaway PostgreSQL (the load spread over the
/// nodes), against the embedded write-ahead log in the same run; PostgreSQL commits per
/// transaction; and, with `--kills`, how long a killed owner's decided transaction takes
/// to finish on another node.
struct ClusterBench {
    var transactionProtocol: TransactionProtocol
    var options: ProtocolBenchOptions

    struct Run: Codable {
        var store: String
        var nodes: Int
        var concurrency: Int
        var transactions: Int
        var failures: Int
        var transactionsPerSecond: Double
        var p50Milliseconds: Double
        var p99Milliseconds: Double
        /// PostgreSQL commits (record batches) per committed transaction; fsyncs for the WAL.
        var storeCommitsPerTransaction: Double

        enum CodingKeys: String, CodingKey {
            case store, nodes, concurrency, transactions, failures
            case transactionsPerSecond = "tx_per_s"
            case p50Milliseconds = "p50_ms"
            case p99Milliseconds = "p99_ms"
            case storeCommitsPerTransaction = "store_commits_per_tx"
        }
    }

    struct Report: Codable {
        var benchmark: String
        var machine: Machine
        var participants: Int
        var durationSeconds: Double
        var leaseTTLSeconds: Double
        var runs: [Run]
        /// Seconds from a node's death (SIGKILL right after its commit decision) to the
        /// transaction committed, seen through another node.
        var takeoverSeconds: [Double]

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, participants, runs
            case durationSeconds = "duration_s"
            case leaseTTLSeconds = "lease_ttl_s"
            case takeoverSeconds = "takeover_s"
        }
    }

    func run() async throws {
        let postgres = try PostgresServer()
        try await postgres.start()
        do {
            try await measure(postgres)
        } catch {
            try? await postgres.stop()
            throw error
        }
        try await postgres.stop()
    }

    private func measure(_ postgres: PostgresServer) async throws {
        let machine = Machine.current()
        print("\(transactionProtocol.rawValue) on a PostgreSQL store: \(options.participants) no-op participants, \(options.duration)s per run, \(machine.cpus) cpus, \(machine.build) build; WAL runs alternate with cluster runs")
        print("  store      nodes  conc       tx/s    p50 ms    p99 ms  store commits/tx   vs WAL")
        var runs: [Run] = []
        for level in options.levels {
            let wal = try await measureOnce(postgres, nodes: 0, concurrency: level)
            runs.append(wal)
            printRun(wal, base: wal)
            for nodes in options.nodeCounts {
                let run = try await measureOnce(postgres, nodes: nodes, concurrency: level)
                runs.append(run)
                printRun(run, base: wal)
            }
        }
        var takeovers: [Double] = []
        if options.kills > 0 {
            takeovers = try await measureTakeovers(postgres, kills: options.kills)
            let sorted = takeovers.sorted()
            print(String(format: "takeover after SIGKILL of the owner (lease ttl %.1f s), %d kills: min %.2f s, p50 %.2f s, p90 %.2f s, max %.2f s",
                         options.leaseTTL, sorted.count, sorted.first ?? 0, percentile(sorted, 50), percentile(sorted, 90), sorted.last ?? 0))
        }
        if let json = options.json {
            try writeJSON(Report(benchmark: "\(transactionProtocol.rawValue)-cluster", machine: machine, participants: options.participants, durationSeconds: options.duration,
                                 leaseTTLSeconds: options.leaseTTL, runs: runs, takeoverSeconds: takeovers), to: json)
            print("wrote \(json)")
        }
    }

    private func printRun(_ run: Run, base: Run) {
        print(String(format: "  %-9@ %6d %5d %10.0f %9.2f %9.2f %17.3f %8.2f", run.store as NSString, run.nodes, run.concurrency, run.transactionsPerSecond,
                     run.p50Milliseconds, run.p99Milliseconds, run.storeCommitsPerTransaction, run.transactionsPerSecond / max(base.transactionsPerSecond, 1)))
        if run.failures > 0 { print("       \(run.failures) transactions did not commit") }
    }

    /// Fresh processes: `nodes` dtxd nodes on a new database (0: one dtxd on its own log)
    /// and the participants; `concurrency` clients, spread over the nodes.
    private func measureOnce(_ postgres: PostgresServer, nodes: Int, concurrency: Int) async throws -> Run {
        let processes = BenchProcesses()
        let directory = NSTemporaryDirectory() + "dtx-bench-cluster-\(getpid())"
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let urls = try await startNodes(postgres, processes, directory: directory, count: nodes, failpoints: [:])
        let http = benchHTTPClient()
        do {
            try startParticipants(processes, coordinator: urls[0])
            for url in urls { try await waitForRegistrations(http, url, count: options.participants) }
            let branches = (0..<options.participants).map { BranchSpec(participant: "p\($0)", operation: "noop") }
            let body = try JSONEncoder().encode(TransactionSubmission(protocol: transactionProtocol, branches: branches, timeout: 30, wait: true))
            let next = Atomic<Int>(0)
            let submit: @Sendable () async throws -> Bool = {
                let url = urls[next.add(1, ordering: .relaxed).oldValue % urls.count]
                return try await submitTransaction(http, url, body, expected: "committed")
            }
            _ = try await load(concurrency: concurrency, seconds: options.warmup, submit)
            let counter = nodes == 0 ? "dtx_log_fsyncs" : "dtx_store_commits"
            let before = try await sum(http, urls, counter)
            let result = try await load(concurrency: concurrency, seconds: options.duration, submit)
            let commits = try await sum(http, urls, counter) - before
            if nodes > 0 {
                let figures = try await metrics(http, urls[0], ["dtx_store_commit_duration_seconds_sum", "dtx_store_commit_duration_seconds_count",
                                                                "dtx_store_records", "dtx_store_commits", "dtx_store_forced_waits"])
                print(String(format: "           n0: %.2f ms per store commit, %.1f records and %.1f forced waits per commit", figures[0] / max(figures[1], 1) * 1000,
                             figures[2] / max(figures[3], 1), figures[4] / max(figures[3], 1)))
            }
            try await http.shutdown()
            return Run(store: nodes == 0 ? "wal" : "postgres", nodes: max(nodes, 1), concurrency: concurrency, transactions: result.successes, failures: result.failures,
                       transactionsPerSecond: Double(result.successes) / result.elapsed, p50Milliseconds: percentile(result.latencies, 50) * 1000,
                       p99Milliseconds: percentile(result.latencies, 99) * 1000, storeCommitsPerTransaction: commits / Double(max(result.successes, 1)))
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    private func sum(_ http: HTTPClient, _ urls: [String], _ name: String) async throws -> Double {
        var total = 0.0
        for url in urls { total += try await metric(http, url, name) }
        return total
    }

    /// `count` dtxd nodes on a fresh database, once every shard is owned; 0: one dtxd on its own log.
    private func startNodes(_ postgres: PostgresServer, _ processes: BenchProcesses, directory: String, count: Int,
                            failpoints: [Int: String]) async throws -> [String] {
        let environment = ["DTXD_THREADS": String(options.dtxdThreads)]
        guard count > 0 else {
            let (_, url) = try processes.start("dtxd", ["--data-dir", directory + "/data", "--listen", "127.0.0.1:0", "--log-level", "error"],
                                               environment: environment, marker: "dtxd listening on ")
            return [url]
        }
        let database = "bench_" + UUID().uuidString.prefix(8).lowercased()
        try await postgres.createDatabase(database)
        var urls: [String] = []
        for index in 0..<count {
            let url = try startNode(postgres, processes, database: database, directory: directory, id: "n\(index)", port: freeLoopbackPort(), failpoints: failpoints[index])
            urls.append(url)
        }
        try await waitUntilBalanced(urls[0], nodes: count)
        return urls
    }

    private func startNode(_ postgres: PostgresServer, _ processes: BenchProcesses, database: String, directory: String, id: String, port: Int,
                           failpoints: String?) throws -> String {
        var environment = ["DTXD_THREADS": String(options.dtxdThreads)]
        if let failpoints { environment["DTXD_FAILPOINTS"] = failpoints }
        let (_, url) = try processes.start("dtxd", [
            "--store", "postgres", "--store-url", postgres.connectionString(database: database), "--node-id", id, "--lease-ttl", "\(options.leaseTTL)",
            "--listen", "127.0.0.1:\(port)", "--data-dir", directory + "/\(id)", "--log-level", "error",
        ], environment: environment, marker: "dtxd listening on ")
        return url
    }

    private func startParticipants(_ processes: BenchProcesses, coordinator: String) throws {
        for index in 0..<options.participants {
            _ = try processes.start("memory-participant", ["--name", "p\(index)", "--coordinator", coordinator, "--listen", "127.0.0.1:0", "--log-level", "error",
                                                           "--heartbeat", "5", "--recovery-interval", "2"],
                                    environment: ["DTX_PARTICIPANT_THREADS": String(options.participantThreads)], marker: "memory-participant p\(index) listening on ")
        }
    }

    private func cluster(_ url: String) async throws -> ClusterStatus {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url + "/v1/cluster"), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 16 << 20)
        return try JSONDecoder.dtx().decode(ClusterStatus.self, from: Data(body.readableBytesView))
    }

    /// Every shard owned, by `nodes` live nodes each owning some.
    private func waitUntilBalanced(_ url: String, nodes: Int) async throws {
        for _ in 0..<600 {
            if let status = try? await cluster(url) {
                let live = Set(status.nodes.filter(\.live).map(\.id))
                let owners = Set(status.shards.compactMap(\.owner))
                if live.count == nodes, owners == live, status.shards.allSatisfy({ $0.owner != nil }) { return }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ValidationError("the cluster's shards were not shared among its \(nodes) nodes")
    }

    /// Three nodes; n0 and n1 die at their first commit decision, the participants talk
    /// to n2. Each round a transaction is sent (through n2) to a shard of a victim, which
    /// dies once its decision is durable; the time until n2 shows it committed is the
    /// takeover time. The victim is then restarted and the cluster rebalanced.
    private func measureTakeovers(_ postgres: PostgresServer, kills: Int) async throws -> [Double] {
        let processes = BenchProcesses()
        let directory = NSTemporaryDirectory() + "dtx-bench-takeover-\(getpid())"
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let database = "takeover_" + UUID().uuidString.prefix(8).lowercased()
        try await postgres.createDatabase(database)
        let ports = (0..<3).map { _ in freeLoopbackPort() }
        var urls: [String] = []
        for index in 0..<3 {
            urls.append(try startNode(postgres, processes, database: database, directory: directory, id: "n\(index)", port: ports[index],
                                      failpoints: index < 2 ? "after-commit-decision" : nil))
        }
        try await waitUntilBalanced(urls[2], nodes: 3)
        let http = benchHTTPClient()
        defer { Task { try? await http.shutdown() } }
        try startParticipants(processes, coordinator: urls[2])
        try await waitForRegistrations(http, urls[2], count: options.participants)
        let map = ShardMap(count: try await cluster(urls[2]).shards.count)
        var seconds: [Double] = []
        for round in 0..<kills {
            let victim = round % 2
            let status = try await cluster(urls[2])
            let owned = Set(status.shards.filter { $0.owner == "n\(victim)" }.map(\.shard))
            guard let gid = (0..<100_000).lazy.map({ "takeover-\(round)-\($0)" }).first(where: { owned.contains(map.shard(of: try! GlobalTransactionID(validating: $0))) }) else {
                throw ValidationError("n\(victim) owns no shard")
            }
            let branches = (0..<options.participants).map { BranchSpec(participant: "p\($0)", operation: "noop") }
            let body = try JSONEncoder().encode(TransactionSubmission(gid: gid, protocol: transactionProtocol, branches: branches, timeout: 30, wait: true))
            let survivor = urls[2]
            let submission = Task { try await submitTransaction(http, survivor, body, expected: "committed") }
            // The victim's death, seen from here: its port stops answering.
            var died: ContinuousClock.Instant?
            for _ in 0..<3000 {
                if (try? await http.execute(HTTPClientRequest(url: urls[victim] + "/healthz"), timeout: .milliseconds(200))) == nil { died = .now; break }
                try await Task.sleep(for: .milliseconds(5))
            }
            guard let died else { throw ValidationError("n\(victim) did not die at its commit decision") }
            var committed: ContinuousClock.Instant?
            for _ in 0..<3000 {
                var request = HTTPClientRequest(url: urls[2] + "/v1/transactions/\(gid)")
                request.method = .GET
                if let response = try? await http.execute(request, timeout: .seconds(30)),
                   String(buffer: try await response.body.collect(upTo: 1 << 20)).contains("\"status\":\"committed\"") {
                    committed = .now
                    break
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            guard let committed else { throw ValidationError("the transaction \(gid) did not commit after n\(victim) died") }
            _ = try await submission.value
            seconds.append((committed - died).seconds)
            print(String(format: "  kill %2d: n%d, committed on another node %.2f s after its death", round + 1, victim, seconds.last!))
            urls[victim] = try startNode(postgres, processes, database: database, directory: directory, id: "n\(victim)", port: ports[victim],
                                         failpoints: "after-commit-decision")
            try await waitUntilBalanced(urls[2], nodes: 3)
        }
        return seconds
    }
}
