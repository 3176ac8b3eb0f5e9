import AsyncHTTPClient
import DTXAPI
import DTXCore
import DTXPostgres
import DTXPostgresClient
import DTXSQLite
import DTXTestSupport
import Foundation
import Logging
import NIOCore

/// `dtx-bench 2pc|saga|tcc --rm sqlite,postgres`: transfers through dtxd (a debit and a
/// credit branch, or saga step, in the chosen protocol) between an account on a SQLite
/// accounts service and one on a PostgreSQL accounts service, against — in the
/// same run, on the same databases — the same two updates done as plain local
/// transactions with no coordination (the ceiling that gives up atomicity), measured two
/// ways: through the same two services (their local debit/credit endpoints: what an
/// application without a coordinator would call; the ratio's basis) and straight into
/// the databases from this process (no HTTP at all). The three take turns, a fifth of
/// the duration at a time (`interleaved`).
struct BankBench {
    var transactionProtocol: TransactionProtocol
    var accountsPerSide = 1000
    var concurrency: [Int]
    var duration: Double
    var warmup: Double
    var dtxdThreads: Int
    var participantThreads: Int
    /// dtxd runs with `--last-agent on` (2PC: the credit branch commits in one phase).
    var lastAgent: Bool
    var processes: BenchProcesses

    struct Run: Codable {
        var concurrency: Int
        var coordinated: Rate
        var uncoordinated: Rate
        var directDatabase: Rate
        var ratio: Double
        var coordinatorFsyncsPerTransaction: Double

        enum CodingKeys: String, CodingKey {
            case concurrency, coordinated, uncoordinated, ratio
            case directDatabase = "uncoordinated_direct_db"
            case coordinatorFsyncsPerTransaction = "dtxd_fsyncs_per_tx"
        }
    }

    struct Rate: Codable {
        var transactions: Int
        var failures: Int
        var perSecond: Double
        var p50Milliseconds: Double
        var p99Milliseconds: Double

        enum CodingKeys: String, CodingKey {
            case transactions, failures
            case perSecond = "tx_per_s"
            case p50Milliseconds = "p50_ms"
            case p99Milliseconds = "p99_ms"
        }
    }

    struct Report: Codable {
        var benchmark: String
        var resourceManagers = ["sqlite", "postgres"]
        var machine: Machine
        var accountsPerSide: Int
        var durationSeconds: Double
        var lastAgent: Bool
        var runs: [Run]

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, runs
            case lastAgent = "dtxd_last_agent"
            case resourceManagers = "resource_managers"
            case accountsPerSide = "accounts_per_side"
            case durationSeconds = "duration_s"
        }
    }

    func run(json: String?) async throws {
        let directory = NSTemporaryDirectory() + "dtx-bench-bank-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let postgres = try PostgresServer()
        try await postgres.start()
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }
        try await postgres.createDatabase("bank")
        let sqlitePath = directory + "/eu.sqlite"
        let pgConnection = postgres.connectionString(database: "bank")
        let logger = Logger(label: "dtx-bench")

        // Both databases get the same accounts the example service uses.
        let sqlite = try await SQLiteDatabase(path: sqlitePath)
        _ = try await sqlite.run { db in
            try db.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL CHECK (balance >= 0))")
            try db.execute("BEGIN")
            for index in 0..<accountsPerSide { try db.execute("INSERT INTO accounts VALUES (?, ?)", [.text("a\(index)"), .integer(1_000_000_000)]) }
            try db.execute("COMMIT")
            return 0
        }
        let pool = try await PostgresPool(pgConnection, size: 8, logger: logger)
        _ = try await pool.withConnection { db in
            _ = try db.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))")
            _ = try db.execute("INSERT INTO accounts SELECT 'a' || i, 1000000000 FROM generate_series(0, $1 - 1) AS i", [.int(accountsPerSide)])
            return 0
        }

        // The services and the coordinator.
        let (_, daemonURL) = try processes.start("dtxd", ["--data-dir", directory + "/data", "--listen", "127.0.0.1:0", "--log-level", "error", "--last-agent", lastAgent ? "on" : "off"],
                                                 environment: ["DTXD_THREADS": String(dtxdThreads)], marker: "dtxd listening on ")
        let threads = ["DTX_PARTICIPANT_THREADS": String(participantThreads)]
        let (_, euURL) = try processes.start("accounts-service", ["--name", "accounts-eu", "--sqlite", sqlitePath, "--coordinator", daemonURL, "--log-level", "error", "--recovery-interval", "60"],
                                environment: threads, marker: "accounts-service accounts-eu listening on ")
        let (_, usURL) = try processes.start("accounts-service", ["--name", "accounts-us", "--postgres", pgConnection, "--coordinator", daemonURL, "--log-level", "error", "--recovery-interval", "60"],
                                environment: threads, marker: "accounts-service accounts-us listening on ")

        let http = benchHTTPClient()
        try await waitForRegistrations(http, daemonURL, count: 2)

        let machine = Machine.current()
        print("\(transactionProtocol.rawValue) bank transfer: SQLite ↔ PostgreSQL, \(accountsPerSide) accounts per side, \(duration)s per run, \(machine.cpus) cpus, \(machine.build) build, dtxd --last-agent \(lastAgent ? "on" : "off")")
        print("  conc   coordinated tx/s  p50 ms  p99 ms   uncoordinated tx/s  p50 ms  p99 ms    ratio   direct-db tx/s  dtxd fsyncs/tx")
        var runs: [Run] = []
        for level in concurrency {
            let accounts = accountsPerSide
            let directUpdates: @Sendable () async throws -> Bool = {
                let from = "a\(Int.random(in: 0..<accounts))", to = "a\(Int.random(in: 0..<accounts))"
                _ = try await sqlite.run { try $0.execute("UPDATE accounts SET balance = balance - 1 WHERE id = ? AND balance >= 1", [.text(from)]) }
                _ = try await pool.withConnection { try $0.execute("UPDATE accounts SET balance = balance + 1 WHERE id = $1", [.text(to)]) }
                return true
            }
            let plainUpdates: @Sendable () async throws -> Bool = {
                try await plainTransfer(http, debit: euURL, from: "a\(Int.random(in: 0..<accounts))", credit: usURL, to: "a\(Int.random(in: 0..<accounts))")
            }
            let coordinatedTransfer: @Sendable () async throws -> Bool = {
                try await transfer(http, daemonURL, from: "a\(Int.random(in: 0..<accounts))", to: "a\(Int.random(in: 0..<accounts))")
            }
            let fsyncsBefore = try await metric(http, daemonURL, "dtx_log_fsyncs")
            let rates = try await interleaved(concurrency: level, [directUpdates, plainUpdates, coordinatedTransfer])
            let (direct, local, coordinated) = (rates[0], rates[1], rates[2])
            let fsyncs = try await metric(http, daemonURL, "dtx_log_fsyncs") - fsyncsBefore
            let run = Run(concurrency: level, coordinated: coordinated, uncoordinated: local, directDatabase: direct,
                          ratio: local.perSecond > 0 ? coordinated.perSecond / local.perSecond : 0,
                          coordinatorFsyncsPerTransaction: fsyncs / Double(max(coordinated.transactions, 1)))
            runs.append(run)
            print(String(format: "%6d %18.0f %7.2f %7.2f %20.0f %7.2f %7.2f %8.3f %16.0f %15.4f", level, coordinated.perSecond, coordinated.p50Milliseconds, coordinated.p99Milliseconds,
                         local.perSecond, local.p50Milliseconds, local.p99Milliseconds, run.ratio, direct.perSecond, run.coordinatorFsyncsPerTransaction))
            if coordinated.failures + local.failures + direct.failures > 0 {
                print("       not committed (row locked by a concurrent transfer, or refused): coordinated \(coordinated.failures), uncoordinated \(local.failures), direct \(direct.failures)")
            }
        }
        try await http.shutdown()
        await pool.close()
        await sqlite.close()
        processes.stopAll()
        try await postgres.stop()
        if let json {
            try writeJSON(Report(benchmark: "\(transactionProtocol.rawValue)-bank", machine: machine, accountsPerSide: accountsPerSide, durationSeconds: duration, lastAgent: lastAgent, runs: runs), to: json)
            print("wrote \(json)")
        }
    }

    private func transfer(_ http: HTTPClient, _ daemonURL: String, from: String, to: String) async throws -> Bool {
        let submission = TransactionSubmission(protocol: transactionProtocol, branches: [
            BranchSpec(participant: "accounts-eu", operation: "debit", payload: .object(["account": .string(from), "amount": .number(1)])),
            BranchSpec(participant: "accounts-us", operation: "credit", payload: .object(["account": .string(to), "amount": .number(1)])),
        ], timeout: 30, wait: true)
        return try await submitTransaction(http, daemonURL, try JSONEncoder().encode(submission), expected: "committed")
    }

    /// The two updates through the services' plain local endpoints, one after the other.
    private func plainTransfer(_ http: HTTPClient, debit: String, from: String, credit: String, to: String) async throws -> Bool {
        for (url, account, operation) in [(debit, from, "debit"), (credit, to, "credit")] {
            var request = HTTPClientRequest(url: url + "/accounts/\(account)/\(operation)")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: #"{"amount":1}"#))
            let response = try await http.execute(request, timeout: .seconds(60))
            _ = try await response.body.collect(upTo: 1 << 20)
            guard response.status.code == 200 else { return false }
        }
        return true
    }

    /// Measures each operation for `duration` seconds in all, in five slices taken in
    /// turn (after one warm-up each), so that a machine that is slower for a while slows
    /// every operation alike and the ratios stay fair.
    private func interleaved(concurrency: Int, _ operations: [@Sendable () async throws -> Bool]) async throws -> [Rate] {
        let slices = 5
        var totals = Array(repeating: LoadResult(), count: operations.count)
        for operation in operations { _ = try await load(concurrency: concurrency, seconds: warmup, operation) }
        for _ in 0..<slices {
            for (index, operation) in operations.enumerated() {
                let slice = try await load(concurrency: concurrency, seconds: duration / Double(slices), operation)
                totals[index].successes += slice.successes
                totals[index].failures += slice.failures
                totals[index].elapsed += slice.elapsed
                totals[index].latencies += slice.latencies
            }
        }
        return totals.map { result in
            let latencies = result.latencies.sorted()
            return Rate(transactions: result.successes, failures: result.failures, perSecond: Double(result.successes) / result.elapsed,
                        p50Milliseconds: percentile(latencies, 50) * 1000, p99Milliseconds: percentile(latencies, 99) * 1000)
        }
    }
}
