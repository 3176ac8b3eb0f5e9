import DTXAPI
import DTXClient
import DTXCore
import DTXParticipant
import DTXSQLite
import DTXTestSupport
import Foundation
import Testing

/// One throwaway PostgreSQL server for a whole suite: started before its first test,
/// stopped after its last. Tests reach it through `BankPostgres.current` and create a
/// database of their own in it (`BankCluster.start`).
struct BankPostgres: SuiteTrait, TestScoping {
    @TaskLocal static var current: PostgresServer?

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let server = try PostgresServer()
        try await server.start()
        do {
            try await Self.$current.withValue(server) { try await function() }
        } catch {
            try? await server.stop()
            throw error
        }
        try await server.stop()
    }

    static func server() throws -> PostgresServer {
        guard let current else {
            throw BankError("no PostgreSQL server: the suite needs the .bankPostgres trait")
        }
        return current
    }
}

extension Trait where Self == BankPostgres {
    /// Starts one PostgreSQL server for the suite.
    static var bankPostgres: Self { BankPostgres() }
}

struct BankError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A branch of a global transaction, as the databases record it.
struct BranchKey: Hashable, Sendable, CustomStringConvertible {
    var gid: String
    var branch: Int
    var description: String { "\(gid)#\(branch)" }
}

/// The bank example on real processes: dtxd (through `Cluster`), an accounts service on
/// SQLite (`accounts-eu`, its file in the cluster directory) and one on PostgreSQL
/// (`accounts-us`, its own database on the suite's server). Services can be killed and
/// restarted (same arguments; a new port, they register again), and both databases can
/// be read directly, also while their service is down.
final class BankCluster: @unchecked Sendable {
    // Safe: the mutable state is only touched under `lock`.
    static let eu = "accounts-eu"
    static let us = "accounts-us"
    /// The prefix of accounts-us's prepared transactions in PostgreSQL.
    static let usPrefix = "accountsus"

    let cluster: Cluster
    let postgres: PostgresServer
    /// The PostgreSQL database of accounts-us.
    let database: String
    var sqlitePath: String { cluster.directory + "/accounts-eu.sqlite" }
    var client: CoordinatorClient { cluster.client }

    private let lock = NSLock()
    private var services: [String: ChildProcess] = [:]
    private var urls: [String: String] = [:]
    /// Cluster mode: the PostgreSQL store the dtxd nodes share, and the nodes, n0 on the
    /// cluster's port (the services' coordinator and `client`'s).
    private(set) var storeURL: String?
    private var nodes: [String: ChildProcess] = [:]
    private var nodePorts: [String: Int] = [:]
    private var nodeClients: [String: CoordinatorClient] = [:]
    /// Every process started, in order, with a label: their output for a failure report.
    private var started: [(label: String, process: ChildProcess)] = []

    private init(cluster: Cluster, postgres: PostgresServer, database: String) {
        self.cluster = cluster
        self.postgres = postgres
        self.database = database
    }

    /// Creates a database for accounts-us, starts dtxd (with `daemonFailpoints` armed)
    /// and both services, each registered with dtxd.
    static func start(_ name: String, daemonFailpoints: String? = nil) async throws -> BankCluster {
        let postgres = try BankPostgres.server()
        let database = "bank_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        try await postgres.createDatabase(database)
        let bank = BankCluster(cluster: try Cluster(name), postgres: postgres, database: database)
        try await bank.startDaemon(failpoints: daemonFailpoints)
        try await bank.startService(eu)
        try await bank.startService(us)
        return bank
    }

    /// Cluster mode: `nodes` dtxd nodes (n0, n1…) on a PostgreSQL store in the same
    /// server (lease TTL 2 s, 16 shards), balanced before both services start; the
    /// services register with n0.
    static func startCluster(_ name: String, nodes: Int) async throws -> BankCluster {
        let postgres = try BankPostgres.server()
        let suffix = UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        let (database, store) = ("bank_" + suffix, "store_" + suffix)
        try await postgres.createDatabase(database)
        try await postgres.createDatabase(store)
        let bank = BankCluster(cluster: try Cluster(name), postgres: postgres, database: database)
        bank.storeURL = postgres.connectionString(database: store)
        for index in 0..<nodes { try await bank.startNode("n\(index)") }
        let balanced = await eventually(seconds: 30) {
            guard let status = try? await bank.client.cluster() else { return false }
            let live = Set(status.nodes.filter(\.live).map(\.id))
            return live.count == nodes && status.shards.allSatisfy { $0.owner.map(live.contains) ?? false }
        }
        guard balanced else { throw BankError("the \(nodes) nodes did not share the shards out within 30 s") }
        try await bank.startService(eu)
        try await bank.startService(us)
        return bank
    }
    // MARK: - Processes

    var daemonIsRunning: Bool { storeURL == nil ? cluster.daemon?.process.isRunning ?? false : nodeIsRunning("n0") }

    // MARK: - Coordinators: dtxd, or the nodes of a cluster

    /// "dtxd", or the cluster's node ids.
    var coordinatorIDs: [String] { storeURL == nil ? ["dtxd"] : nodeIDs }
    func coordinatorIsRunning(_ id: String) -> Bool { storeURL == nil ? daemonIsRunning : nodeIsRunning(id) }
    func coordinatorClient(_ id: String) -> CoordinatorClient { storeURL == nil ? client : nodeClient(id) ?? client }
    /// The process of dtxd or of node `id` now.
    func coordinatorProcess(_ id: String) -> ChildProcess? { storeURL == nil ? cluster.daemon : lock.withLock { nodes[id] } }

    func startCoordinator(_ id: String, failpoints: String? = nil, arguments: [String]? = nil) async throws {
        if storeURL == nil { try await startDaemon(failpoints: failpoints, arguments: arguments) } else { try await startNode(id, failpoints: failpoints, arguments: arguments) }
    }

    func killCoordinator(_ id: String) async throws {
        if storeURL == nil { try await killDaemon() } else { try await killNode(id) }
    }

    // MARK: - Cluster nodes

    var nodeIDs: [String] { lock.withLock { nodePorts.keys.sorted() } }
    func nodeIsRunning(_ id: String) -> Bool { lock.withLock { nodes[id] }?.process.isRunning ?? false }
    func nodeClient(_ id: String) -> CoordinatorClient? { lock.withLock { nodeClients[id] } }

    /// Starts (or restarts) cluster node `id` with `daemonArguments` (or `arguments`) and,
    /// when given, DTXD_FAILPOINTS; returns once it listens (it has joined the cluster).
    func startNode(_ id: String, failpoints: String? = nil, arguments: [String]? = nil) async throws {
        guard let storeURL else { throw BankError("not a cluster: start it with startCluster") }
        let port = lock.withLock { nodePorts[id] } ?? (id == "n0" ? cluster.port : freeLoopbackPort())
        var environment: [String: String] = [:]
        if let failpoints { environment["DTXD_FAILPOINTS"] = failpoints }
        let child = try ChildProcess("dtxd", [
            "--store", "postgres", "--store-url", storeURL, "--node-id", id, "--shards", "16", "--lease-ttl", "2",
            "--listen", "127.0.0.1:\(port)", "--data-dir", cluster.directory + "/\(id)", "--log-level", "warning",
        ] + (arguments ?? daemonArguments), environment: environment)
        let client = try lock.withLock { nodeClients[id] } ?? (id == "n0" ? cluster.client : CoordinatorClient(baseURL: "http://127.0.0.1:\(port)", timeout: .seconds(60)))
        lock.withLock {
            nodes[id] = child
            nodePorts[id] = port
            nodeClients[id] = client
            started.append(("dtxd \(id)" + (failpoints.map { " [\($0)]" } ?? ""), child))
        }
        _ = try await child.waitForOutput(seconds: 60) { $0.contains("dtxd listening on") ? true : nil }
    }

    func killNode(_ id: String) async throws {
        guard let child = lock.withLock({ nodes[id] }), child.process.isRunning else { return }
        child.kill(SIGKILL)
        try await child.waitForExit()
    }

    /// What every start of dtxd without its own arguments passes (e.g. `--last-agent on`).
    var daemonArguments: [String] = []

    func startDaemon(failpoints: String? = nil, arguments: [String]? = nil) async throws {
        try await cluster.startDaemon(failpoints: failpoints, arguments: arguments ?? daemonArguments)
        if let daemon = cluster.daemon {
            lock.withLock { started.append(("dtxd" + (failpoints.map { " [\($0)]" } ?? ""), daemon)) }
        }
    }

    func killDaemon() async throws {
        try await cluster.killDaemon()
    }

    /// Kills dtxd if it runs, then starts it again without failpoints.
    func restartDaemon() async throws {
        if daemonIsRunning { try await killDaemon() }
        try await startDaemon()
    }

    func service(_ name: String) -> ChildProcess? { lock.withLock { services[name] } }
    func url(_ name: String) -> String? { lock.withLock { urls[name] } }
    func isRunning(_ name: String) -> Bool { service(name)?.process.isRunning ?? false }

    private func databaseArguments(_ name: String) -> [String] {
        name == Self.eu
            ? ["--sqlite", sqlitePath]
            : ["--postgres", postgres.connectionString(database: database), "--prefix", Self.usPrefix]
    }

    /// Starts the service `name` (`eu` or `us`) with its usual arguments; `failpoints` are
    /// armed through DTX_PARTICIPANT_FAILPOINTS. Returns its URL once it listens and, when
    /// dtxd runs, once dtxd lists it there.
    @discardableResult
    func startService(_ name: String, failpoints: String? = nil) async throws -> String {
        var environment: [String: String] = [:]
        if let failpoints { environment["DTX_PARTICIPANT_FAILPOINTS"] = failpoints }
        let child = try ChildProcess("accounts-service", ["--name", name] + databaseArguments(name) + [
            "--listen", "127.0.0.1:0", "--coordinator", cluster.url,
            "--heartbeat", "1", "--recovery-interval", "1", "--log-level", "info",
        ], environment: environment)
        lock.withLock {
            services[name] = child
            started.append((name, child))
        }
        let url = try await child.waitForOutput(seconds: 60) { text -> String? in
            guard let range = text.range(of: "accounts-service \(name) listening on ") else { return nil }
            let rest = text[range.upperBound...]
            guard let end = rest.firstIndex(of: "\n") else { return nil }
            return String(rest[..<end])
        }
        lock.withLock { urls[name] = url }
        if daemonIsRunning { try await waitUntilRegistered(name) }
        return url
    }

    /// Waits until dtxd lists `name` at the URL its current process listens on.
    func waitUntilRegistered(_ name: String, seconds: Double = 30) async throws {
        guard let url = url(name) else { throw BankError("\(name) was never started") }
        // What each attempt saw, so that a failure tells whether dtxd listed something
        // else, refused, or did not answer in time.
        var attempts = 0
        var lastAttempt = "none"
        var slowest = 0.0
        let registered = await eventually(seconds: seconds) {
            attempts += 1
            let started = Date()
            defer { slowest = max(slowest, Date().timeIntervalSince(started)) }
            do {
                let listed = try await client.participant(name).url
                lastAttempt = "listed at \(listed)"
                return listed == url
            } catch {
                lastAttempt = "\(error)"
                return false
            }
        }
        guard registered else {
            // What dtxd says instead, so that a failure tells which side lost track.
            let listed: String
            do {
                let info = try await client.participant(name)
                listed = "dtxd lists it at \(info.url), registered \(info.registeredAt), last seen \(info.lastSeen.map { "\($0)" } ?? "never")"
            } catch {
                listed = "dtxd answers: \(error)"
            }
            let running = isRunning(name) ? "the service still runs" : "the service is not running"
            let seen = "\(attempts) attempts, the last: \(lastAttempt), the slowest took \(String(format: "%.1f", slowest)) s"
            throw BankError("\(name) did not register with dtxd at \(url) within \(seconds) s (\(seen)); now \(listed); \(running)")
        }
    }

    func killService(_ name: String) async throws {
        guard let child = service(name) else { return }
        child.kill(SIGKILL)
        try await child.waitForExit()
    }

    /// Kills the service if it runs, then starts it again (no failpoints).
    func restartService(_ name: String) async throws {
        if isRunning(name) { try await killService(name) }
        try await startService(name)
    }

    /// Arms a failpoint on a running service (`PUT /test/failpoints`); it stays armed
    /// until cleared or the process ends.
    func armFailpoint(_ name: String, _ failpoint: String, _ action: String) async throws {
        guard let url = url(name) else { throw BankError("\(name) was never started") }
        let answer = try await http("PUT", url + "/test/failpoints", body: #"{"name":"\#(failpoint)","action":"\#(action)"}"#)
        guard answer.status == 200 else {
            throw BankError("arming \(failpoint)=\(action) on \(name) answered \(answer.status): \(String(decoding: answer.body, as: UTF8.self))")
        }
    }

    func clearFailpoints(_ name: String) async throws {
        guard let url = url(name) else { return }
        let answer = try await http("DELETE", url + "/test/failpoints")
        guard answer.status == 200 else { throw BankError("clearing failpoints on \(name) answered \(answer.status)") }
    }

    /// SIGKILLs every process (a test's `defer`: nothing may outlive the test).
    func stopProcesses() {
        for child in lock.withLock({ Array(services.values) + Array(nodes.values) }) where child.process.isRunning { child.kill(SIGKILL) }
        cluster.stopProcesses()
    }

    func shutdown() async {
        stopProcesses()
        for child in lock.withLock({ Array(services.values) + Array(nodes.values) }) { _ = try? await child.waitForExit() }
        for (id, client) in lock.withLock({ nodeClients }) where id != "n0" { try? await client.shutdown() }
        await cluster.shutdown()
    }

    /// The output of every process this cluster started (for a failure report).
    func logs(lastLines: Int = 60) -> String {
        lock.withLock { started }.enumerated().map { index, entry in
            let text = entry.process.stdout + entry.process.stderr
            let tail = text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lastLines).joined(separator: "\n")
            return "=== \(index): \(entry.label) (\(entry.process.process.isRunning ? "running" : "exited \(entry.process.process.terminationStatus)")) ===\n\(tail)"
        }.joined(separator: "\n")
    }

    /// Writes every process's whole output under `directory` (kept after the test).
    func saveLogs(to directory: String) {
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (index, entry) in lock.withLock({ started }).enumerated() {
            let name = "\(index)-" + entry.label.filter { $0.isLetter || $0.isNumber || $0 == "-" } + ".log"
            try? (entry.process.stdout + entry.process.stderr).write(toFile: directory + "/" + name, atomically: false, encoding: .utf8)
        }
        // dtxd's log as it is now, for `dtx wal dump`, and the SQLite database.
        let sqliteName = (sqlitePath as NSString).lastPathComponent
        let copies = [(cluster.directory + "/data", directory + "/dtxd-data"), (sqlitePath, directory + "/" + sqliteName),
                      (sqlitePath + "-wal", directory + "/" + sqliteName + "-wal")]
        for (from, to) in copies {
            try? FileManager.default.removeItem(atPath: to)
            try? FileManager.default.copyItem(atPath: from, toPath: to)
        }
    }

    // MARK: - Accounts and transfers

    func openAccount(_ service: String, _ id: String, balance: Int) async throws {
        guard let url = url(service) else { throw BankError("\(service) was never started") }
        let answer = try await http("POST", url + "/accounts", body: #"{"id":"\#(id)","balance":\#(balance)}"#)
        guard answer.status == 201 else {
            throw BankError("opening \(id) on \(service) answered \(answer.status): \(String(decoding: answer.body, as: UTF8.self))")
        }
    }

    /// Balances by account, from the service (`GET /accounts`); also checks that the
    /// reported total is their sum.
    func balances(_ service: String) async throws -> [String: Int] {
        guard let url = url(service) else { throw BankError("\(service) was never started") }
        let answer = try await http("GET", url + "/accounts")
        guard answer.status == 200, let object = answer.json as? [String: Any], let accounts = object["accounts"] as? [[String: Any]],
              let total = object["total"] as? Int
        else {
            throw BankError("GET /accounts on \(service) answered \(answer.status): \(String(decoding: answer.body, as: UTF8.self))")
        }
        var balances: [String: Int] = [:]
        for account in accounts {
            guard let id = account["id"] as? String, let balance = account["balance"] as? Int else {
                throw BankError("GET /accounts on \(service): unreadable account \(account)")
            }
            balances[id] = balance
        }
        guard balances.values.reduce(0, +) == total else {
            throw BankError("GET /accounts on \(service): total \(total) is not the sum of the balances \(balances)")
        }
        return balances
    }

    /// Balances read from the databases themselves (works while a service is down).
    func databaseBalances(_ service: String) async throws -> [String: Int] {
        if service == Self.eu {
            return try withSQLite { db in
                var balances: [String: Int] = [:]
                for row in try db.query("SELECT id, balance FROM accounts") {
                    guard let id = row["id"]?.textValue, let balance = row["balance"]?.integerValue else { continue }
                    balances[id] = Int(balance)
                }
                return balances
            }
        }
        var balances: [String: Int] = [:]
        for (id, balance) in try await pgRows("SELECT id, balance FROM accounts") {
            guard let value = Int(balance) else { throw BankError("unreadable balance \(balance) of \(id)") }
            balances[id] = value
        }
        return balances
    }

    /// A transfer from `from` (service, account) to `to`: branch 0 debits, branch 1 credits.
    static func transfer(_ gid: String, from: (String, String), to: (String, String), amount: Int, timeout: Double = 10, wait: Bool = true) -> TransactionSubmission {
        TransactionSubmission(
            gid: gid, protocol: .twoPhaseCommit,
            branches: [
                BranchSpec(participant: from.0, operation: "debit", payload: .object(["account": .string(from.1), "amount": .number(Double(amount))])),
                BranchSpec(participant: to.0, operation: "credit", payload: .object(["account": .string(to.1), "amount": .number(Double(amount))])),
            ],
            timeout: timeout, wait: wait)
    }

    /// The name accounts-us gives branch `branch` of `submission` in pg_prepared_xacts:
    /// `prefix:gid:branch:digest`.
    static func preparedName(_ submission: TransactionSubmission, branch: Int) -> String {
        let spec = submission.branches![branch]
        return "\(usPrefix):\(submission.gid ?? ""):\(branch):\(BranchDigest.of(operation: spec.operation, payload: spec.payload))"
    }

    // MARK: - SQLite, read directly

    /// Runs `body` on a fresh connection to the SQLite file. A WAL reader takes no write
    /// lock and sees the last committed state, whether the service runs or not.
    func withSQLite<T>(_ body: (SQLiteConnection) throws -> T) throws -> T {
        guard FileManager.default.fileExists(atPath: sqlitePath) else { throw BankError("no SQLite database at \(sqlitePath)") }
        let connection = try SQLiteConnection(path: sqlitePath)
        return try body(connection)
    }

    /// `SELECT count(*) FROM dtx_prepared`: the SQLite service's in-doubt branches.
    func sqlitePreparedCount() throws -> Int {
        try withSQLite { Int(try $0.query("SELECT count(*) AS n FROM dtx_prepared").first?["n"]?.integerValue ?? -1) }
    }

    func sqliteLockCount() throws -> Int {
        try withSQLite { Int(try $0.query("SELECT count(*) AS n FROM dtx_locks").first?["n"]?.integerValue ?? -1) }
    }

    func sqlitePrepared() throws -> Set<BranchKey> {
        try withSQLite { db in
            Set(try db.query("SELECT gid, branch FROM dtx_prepared").compactMap { row in
                guard let gid = row["gid"]?.textValue, let branch = row["branch"]?.integerValue else { return nil }
                return BranchKey(gid: gid, branch: Int(branch))
            })
        }
    }

    /// `dtx_outcomes`: branch → `committed` or `rolled_back`.
    func sqliteOutcomes() throws -> [BranchKey: String] {
        try withSQLite { db in
            var outcomes: [BranchKey: String] = [:]
            for row in try db.query("SELECT gid, branch, outcome FROM dtx_outcomes") {
                guard let gid = row["gid"]?.textValue, let branch = row["branch"]?.integerValue, let outcome = row["outcome"]?.textValue else { continue }
                outcomes[BranchKey(gid: gid, branch: Int(branch))] = outcome
            }
            return outcomes
        }
    }

    // MARK: - PostgreSQL, read directly

    /// Rows of two columns (psql's unaligned output) in accounts-us's database.
    func pgRows(_ sql: String) async throws -> [(String, String)] {
        let output = try await postgres.psql(sql, database: database)
        return try output.split(separator: "\n").map { line in
            let columns = line.split(separator: "|", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard columns.count == 2 else { throw BankError("unexpected psql line '\(line)' for \(sql)") }
            return (columns[0], columns[1])
        }
    }

    /// `SELECT count(*) FROM pg_prepared_xacts` for accounts-us's database.
    func pgPreparedCount() async throws -> Int {
        let output = try await postgres.psql("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()", database: database)
        guard let count = Int(output) else { throw BankError("unreadable count '\(output)' from pg_prepared_xacts") }
        return count
    }

    /// The names of the prepared transactions in accounts-us's database.
    func pgPreparedNames() async throws -> [String] {
        let output = try await postgres.psql("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid", database: database)
        return output.split(separator: "\n").map(String.init)
    }

    /// `dtx_branches`: a row exists exactly when the branch committed.
    func pgCommitted() async throws -> Set<BranchKey> {
        try await branchKeys("SELECT gid, branch FROM dtx_branches")
    }

    func pgRolledBack() async throws -> Set<BranchKey> {
        try await branchKeys("SELECT gid, branch FROM dtx_rollbacks")
    }

    private func branchKeys(_ sql: String) async throws -> Set<BranchKey> {
        Set(try await pgRows(sql).map { gid, branch in
            guard let id = Int(branch) else { throw BankError("unreadable branch \(branch) of \(gid)") }
            return BranchKey(gid: gid, branch: id)
        })
    }

    // MARK: - Coordinator

    /// Unfinished transactions as dtxd reports them: /healthz's count and the gids listed
    /// as preparing, committing or aborting.
    func unfinished() async throws -> (count: Int, gids: [String]) {
        var count = 0
        // In a cluster each node counts its own; the list below is the whole cluster's.
        for client in storeURL == nil ? [client] : nodeIDs.compactMap(nodeClient) {
            count += try await client.health().unfinishedTransactions
        }
        var gids: [String] = []
        for status in ["active", "preparing", "committing", "aborting"] {
            gids += try await client.transactions(.init(status: status, limit: 1000)).transactions.map(\.gid)
        }
        return (count, gids)
    }

    /// `call`, sent again while it is answered 503 (in a cluster: a shard between owners
    /// as the nodes balance), for up to 30 s.
    func retryingUnavailable<T>(_ call: () async throws -> T) async throws -> T {
        let giveUp = Date().addingTimeInterval(30)
        while true {
            do {
                return try await call()
            } catch let error as ClientError where error.status == 503 && Date() < giveUp {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// A transaction's view.
    func view(_ gid: String) async throws -> TransactionView {
        try await retryingUnavailable { try await client.transaction(gid) }
    }

    /// Every transaction dtxd knows, following the cursors.
    func allTransactions() async throws -> [TransactionSummary] {
        var all: [TransactionSummary] = []
        var cursor: String?
        repeat {
            let next = cursor
            let page = try await retryingUnavailable { try await client.transactions(.init(limit: 1000, cursor: next)) }
            all += page.transactions
            cursor = page.nextCursor
        } while cursor != nil
        return all
    }

    /// Waits until nothing is in doubt anywhere: dtxd lists no unfinished transaction and
    /// neither database holds a prepared branch. Asks dtxd to retry its deliveries now
    /// every second, so that phase-two backoff does not make this wait long. Returns a
    /// description of what is still unfinished, or nil once settled.
    func settle(seconds: Double = 60) async -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        var lastState = "not checked"
        while true {
            _ = try? await client.recover()
            do {
                let (count, gids) = try await unfinished()
                let sqlite = try sqlitePrepared()
                let pg = try await pgPreparedNames()
                if count == 0, gids.isEmpty, sqlite.isEmpty, pg.isEmpty { return nil }
                lastState = "dtxd unfinished \(count) \(gids.sorted()); dtx_prepared \(sqlite.map(\.description).sorted()); pg_prepared_xacts \(pg)"
            } catch {
                lastState = "cannot read the state: \(error)"
            }
            if Date() > deadline { return lastState }
            try? await Task.sleep(for: .milliseconds(500))
        }
    }
}
