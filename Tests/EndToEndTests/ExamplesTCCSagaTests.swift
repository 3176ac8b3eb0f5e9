import DTXAPI
import DTXClient
import DTXCore
import DTXSQLite
import DTXTestSupport
import Foundation
import Testing

/// The TravelSaga and OrderTCC examples end to end, as their READMEs run them: dtxd, the
/// example services as processes (one of them on a real PostgreSQL server, the others on
/// SQLite files) and the example clients. Outcomes are checked through the services, in
/// the transaction view, and in each database's `dtx_barrier` table.
@Suite(.serialized, .bankPostgres) struct ExamplesTCCSagaTests {
    // MARK: TravelSaga

    @Test func aTripIsBookedAndAFailingStepIsCompensated() async throws {
        let example = try await ExampleCluster.start("travel-saga")
        defer { example.stopProcesses(); Task { await example.shutdown() } }
        try await example.startService("travel-service", "flight", ["--kind", "flight", "--db", try await example.postgresDatabase()])
        try await example.startService("travel-service", "hotel", ["--kind", "hotel", "--db", example.sqliteDatabase("hotel")])
        try await example.startService("travel-service", "car", ["--kind", "car", "--db", example.sqliteDatabase("car")])
        try await example.post("flight", "/inventory", #"{"id": "DTX101", "capacity": 3}"#)
        try await example.post("hotel", "/inventory", #"{"id": "harbour-inn", "capacity": 2}"#)
        try await example.post("car", "/inventory", #"{"id": "compact", "capacity": 1}"#)
        let trip = ["--flight", "DTX101", "--hotel", "harbour-inn", "--car", "compact", "--url", example.url]

        // A trip: every step done, one place fewer everywhere.
        let booked = try await run("book-trip", trip + ["--trip", "t1", "--gid", "trip-1"])
        #expect(booked.status == 0, "\(booked.out)\(booked.err)\n\(example.logs())")
        #expect(booked.out.contains("booked trip t1 (gid trip-1)"), "\(booked.out)")
        #expect(booked.out.contains("car     compact: booked, 0 left"), "\(booked.out)")
        let committed = try await example.client.transaction("trip-1")
        #expect(committed.status == "committed")
        #expect(committed.branches.map(\.state) == ["done", "done", "done"])
        #expect(committed.branches[0].result?["left"] == .number(2))
        #expect(try await example.travel("flight") == .init(capacity: ["DTX101": 2], bookings: ["t1": "booked"]))
        #expect(try await example.travel("hotel") == .init(capacity: ["harbour-inn": 1], bookings: ["t1": "booked"]))
        #expect(try await example.travel("car") == .init(capacity: ["compact": 0], bookings: ["t1": "booked"]))
        #expect(try await example.barrier("flight", gid: "trip-1") == ["0 action"])
        #expect(try await example.barrier("car", gid: "trip-1") == ["2 action"])

        // The car is told to fail: flight and hotel are compensated, the latest first, and
        // every place is back; the car's compensation finds no action (null compensation).
        let failed = try await run("book-trip", trip + ["--trip", "t2", "--gid", "trip-2", "--fail", "car"])
        #expect(failed.status == 1, "\(failed.out)\(failed.err)\n\(example.logs())")
        #expect(failed.out.contains("trip t2 not booked: the car booking of t2 was told to fail (gid trip-2)"), "\(failed.out)")
        #expect(failed.out.contains("flight  DTX101: booked, then cancelled"), "\(failed.out)")
        #expect(failed.out.contains("car     compact: failed: the car booking of t2 was told to fail (told_to_fail)"), "\(failed.out)")
        #expect(failed.out.contains("compensated, in the order they ran: car (nothing to undo), hotel, flight"), "\(failed.out)")
        let compensated = try await example.client.transaction("trip-2")
        #expect(compensated.status == "aborted")
        #expect(compensated.decision == .abort)
        #expect(compensated.compensations == [2, 1, 0])
        #expect(compensated.branches.map(\.state) == ["compensated", "compensated", "compensated"])
        #expect(compensated.branches[2].result?["error"]?["code"]?.stringValue == "told_to_fail")
        #expect(try await example.travel("flight") == .init(capacity: ["DTX101": 2], bookings: ["t1": "booked", "t2": "cancelled"]))
        #expect(try await example.travel("hotel") == .init(capacity: ["harbour-inn": 1], bookings: ["t1": "booked", "t2": "cancelled"]))
        #expect(try await example.travel("car") == .init(capacity: ["compact": 0], bookings: ["t1": "booked"]))
        #expect(try await example.barrier("flight", gid: "trip-2") == ["0 action", "0 compensate"])
        #expect(try await example.barrier("hotel", gid: "trip-2") == ["1 action", "1 compensate"])
        #expect(try await example.barrier("car", gid: "trip-2") == ["2 compensate (null)"])
        let shown = try await run("dtx", ["show", "trip-2", "--url", example.url])
        #expect(shown.status == 0, "\(shown.err)")
        #expect(shown.out.contains("compensated: 2, 1, 0"), "\(shown.out)")
        #expect(shown.out.contains("told_to_fail"), "\(shown.out)")

        // Hotel and car in parallel after the flight; the car is sold out for real. Whether
        // the hotel's action ran before its compensation or not, every place is back.
        let soldOut = try await run("book-trip", trip + ["--trip", "t3", "--gid", "trip-3", "--parallel"])
        #expect(soldOut.status == 1, "\(soldOut.out)\(soldOut.err)\n\(example.logs())")
        #expect(soldOut.out.contains("car     compact: failed: car compact is sold out (sold_out)"), "\(soldOut.out)")
        let parallel = try await example.client.transaction("trip-3")
        #expect(parallel.status == "aborted")
        #expect(Set(parallel.compensations ?? []) == [0, 1, 2])
        #expect(parallel.compensations?.last == 0)
        #expect(try await example.travel("flight").capacity == ["DTX101": 2])
        #expect(try await example.travel("hotel").capacity == ["harbour-inn": 1])
        #expect(try await example.travel("hotel").bookings["t3", default: "cancelled"] == "cancelled")
        #expect(try await example.travel("car") == .init(capacity: ["compact": 0], bookings: ["t1": "booked"]))
    }

    // MARK: OrderTCC

    @Test func anOrderIsConfirmedAndARefusedPaymentCancelsBothSides() async throws {
        let example = try await ExampleCluster.start("order-tcc")
        defer { example.stopProcesses(); Task { await example.shutdown() } }
        try await example.startOrderServices(stock: 10, balance: 10_000)
        let order = ["--sku", "A-1", "--account", "alice", "--url", example.url]

        let confirmed = try await run("place-order", order + ["--qty", "2", "--amount", "4000", "--gid", "order-1"])
        #expect(confirmed.status == 0, "\(confirmed.out)\(confirmed.err)\n\(example.logs())")
        #expect(confirmed.out.contains("confirmed: 2 × A-1 sold, 4000 paid from alice (gid order-1)"), "\(confirmed.out)")
        let view = try await example.client.transaction("order-1")
        #expect(view.status == "committed")
        #expect(view.branches.map(\.state) == ["confirmed", "confirmed"])
        #expect(try await example.stock() == ["available": 8, "reserved": 0, "sold": 2])
        #expect(try await example.wallet() == ["balance": 6_000, "frozen": 0])
        #expect(try await example.barrier("inventory", gid: "order-1") == ["0 try", "0 confirm"])
        #expect(try await example.barrier("payment", gid: "order-1") == ["1 try", "1 confirm"])

        // The payment's Try refuses: the inventory's reservation is cancelled, and the
        // payment's Cancel finds no Try (it rolled back with its refusal).
        let refused = try await run("place-order", order + ["--qty", "1", "--amount", "999999", "--gid", "order-2"])
        #expect(refused.status == 1, "\(refused.out)\(refused.err)\n\(example.logs())")
        #expect(refused.out.contains("cancelled: wallet alice has less than 999999 (gid order-2)"), "\(refused.out)")
        let cancelled = try await example.client.transaction("order-2")
        #expect(cancelled.status == "aborted")
        #expect(cancelled.branches.map(\.state) == ["cancelled", "cancelled"])
        #expect(cancelled.branches[0].result?["reserved"] == .number(1))
        #expect(cancelled.branches[1].result?["error"]?["code"]?.stringValue == "insufficient_funds")
        #expect(try await example.stock() == ["available": 8, "reserved": 0, "sold": 2])
        #expect(try await example.wallet() == ["balance": 6_000, "frozen": 0])
        #expect(try await example.barrier("inventory", gid: "order-2") == ["0 try", "0 cancel"])
        #expect(try await example.barrier("payment", gid: "order-2") == ["1 cancel (null)"])
    }

    @Test func anInteractiveOrderTriesAtEachServiceThenCommitsOrAborts() async throws {
        let example = try await ExampleCluster.start("order-tcc-interactive")
        defer { example.stopProcesses(); Task { await example.shutdown() } }
        try await example.startOrderServices(stock: 5, balance: 3_000)

        let placed = try await run("place-order", ["--sku", "A-1", "--account", "alice", "--amount", "1000", "--interactive", "--gid", "order-i1", "--url", example.url])
        #expect(placed.status == 0, "\(placed.out)\(placed.err)\n\(example.logs())")
        #expect(placed.out.contains("inventory: POST /reserve answered 200"), "\(placed.out)")
        #expect(placed.out.contains("payment: POST /freeze answered 200"), "\(placed.out)")
        #expect(placed.out.contains("confirmed: 1 × A-1 sold, 1000 paid from alice (gid order-i1)"), "\(placed.out)")
        let view = try await example.client.transaction("order-i1")
        #expect(view.interactive)
        #expect(view.status == "committed")
        #expect(view.branches.map(\.participant) == ["inventory", "payment"])
        #expect(view.branches.map(\.state) == ["confirmed", "confirmed"])
        #expect(try await example.stock() == ["available": 4, "reserved": 0, "sold": 1])
        #expect(try await example.wallet() == ["balance": 2_000, "frozen": 0])

        // The same by hand: the reservation is visible between the Try and the abort.
        let begun = try await example.client.submit(TransactionSubmission(gid: "order-i2", protocol: .tcc, timeout: 30, interactive: true))
        #expect(begun.status == "active")
        let reserved = try await example.post("inventory", "/reserve", #"{"gid": "order-i2", "sku": "A-1", "qty": 1}"#)
        #expect(reserved.status == 200, "\(String(decoding: reserved.body, as: UTF8.self))")
        #expect(try await example.stock() == ["available": 3, "reserved": 1, "sold": 1])
        let frozen = try await example.post("payment", "/freeze", #"{"gid": "order-i2", "account": "alice", "amount": 999999}"#, expect: 409)
        #expect(frozen.errorCode == "insufficient_funds")
        let aborted = try await example.client.abort(gid: "order-i2", wait: true)
        #expect(aborted.status == "aborted")
        #expect(aborted.branches.map(\.state) == ["cancelled", "cancelled"])
        #expect(try await example.stock() == ["available": 4, "reserved": 0, "sold": 1])
        #expect(try await example.wallet() == ["balance": 2_000, "frozen": 0])
        #expect(try await example.barrier("inventory", gid: "order-i2") == ["0 try", "0 cancel"])
        #expect(try await example.barrier("payment", gid: "order-i2") == ["1 cancel (null)"])
    }
}

/// dtxd (through `Cluster`) and example services started as processes, each on SQLite
/// or on its own database of the suite's PostgreSQL server.
final class ExampleCluster: @unchecked Sendable {
    // Safe: a test drives its cluster from one task at a time.
    let cluster: Cluster
    let postgres: PostgresServer
    private var services: [String: (process: ChildProcess, url: String, database: String, executable: String, arguments: [String])] = [:]
    private var started: [(label: String, process: ChildProcess)] = []

    var client: CoordinatorClient { cluster.client }
    var url: String { cluster.url }

    private init(cluster: Cluster, postgres: PostgresServer) {
        self.cluster = cluster
        self.postgres = postgres
    }

    /// `daemonFailpoints`: DTXD_FAILPOINTS for dtxd's first start.
    static func start(_ name: String, daemonFailpoints: String? = nil) async throws -> ExampleCluster {
        let example = ExampleCluster(cluster: try Cluster(name), postgres: try BankPostgres.server())
        try await example.startDaemon(failpoints: daemonFailpoints)
        return example
    }

    private func startDaemon(failpoints: String? = nil) async throws {
        try await cluster.startDaemon(failpoints: failpoints)
        if let daemon = cluster.daemon { started.append(("dtxd" + (failpoints.map { " [\($0)]" } ?? ""), daemon)) }
    }

    /// Kills dtxd if it still runs, then starts it again, without failpoints, on the
    /// same data directory and port.
    func restartDaemon() async throws {
        if let daemon = cluster.daemon, daemon.process.isRunning { try await cluster.killDaemon() }
        try await startDaemon()
    }

    /// A new database on the suite's server, as a `--db` value.
    func postgresDatabase() async throws -> String {
        let database = "example_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased()
        try await postgres.createDatabase(database)
        return "postgres:" + postgres.connectionString(database: database)
    }

    func sqliteDatabase(_ name: String) -> String {
        "sqlite:" + cluster.directory + "/\(name).sqlite"
    }

    /// Starts `executable` (which prints `EXECUTABLE NAME listening on URL`) and returns
    /// once dtxd lists it under `name` at that URL. `failpoints` are armed through
    /// DTX_PARTICIPANT_FAILPOINTS.
    func startService(_ executable: String, _ name: String, _ arguments: [String], failpoints: String? = nil) async throws {
        let environment = failpoints.map { ["DTX_PARTICIPANT_FAILPOINTS": $0] } ?? [:]
        let child = try ChildProcess(executable, arguments + ["--listen", "127.0.0.1:0", "--coordinator", url, "--heartbeat", "1"], environment: environment)
        started.append((name + (failpoints.map { " [\($0)]" } ?? ""), child))
        let serviceURL = try await child.waitForOutput(seconds: 60) { text -> String? in
            guard let range = text.range(of: "\(executable) \(name) listening on ") else { return nil }
            let rest = text[range.upperBound...]
            return rest.firstIndex(of: "\n").map { String(rest[..<$0]) }
        }
        services[name] = (child, serviceURL, arguments[arguments.index(after: arguments.firstIndex(of: "--db")!)], executable, arguments)
        let registered = await eventually(seconds: 30) { (try? await self.client.participant(name))?.url == serviceURL }
        guard registered else { throw BankError("\(name) did not register with dtxd at \(serviceURL)\n\(logs())") }
    }

    /// Kills service `name` if it still runs (a failpoint may have killed it), then starts
    /// it again with the same arguments (its database too), without failpoints.
    func restartService(_ name: String) async throws {
        guard let service = services[name] else { throw BankError("\(name) was never started") }
        if service.process.process.isRunning { service.process.kill(SIGKILL) }
        try await service.process.waitForExit()
        try await startService(service.executable, name, service.arguments)
    }

    func isRunning(_ name: String) -> Bool { services[name]?.process.process.isRunning ?? false }

    /// The OrderTCC services: inventory on SQLite with `stock` of A-1, payment on
    /// PostgreSQL with `balance` in alice's wallet.
    func startOrderServices(stock: Int, balance: Int) async throws {
        try await startService("order-service", "inventory", ["--role", "inventory", "--db", sqliteDatabase("inventory")])
        try await startService("order-service", "payment", ["--role", "payment", "--db", try await postgresDatabase()])
        try await post("inventory", "/stock", #"{"sku": "A-1", "available": \#(stock)}"#, expect: 201)
        try await post("payment", "/wallets", #"{"account": "alice", "balance": \#(balance)}"#, expect: 201)
    }

    @discardableResult
    func post(_ service: String, _ path: String, _ body: String, expect status: Int? = nil) async throws -> Exchange {
        guard let base = services[service]?.url else { throw BankError("\(service) was never started") }
        let answer = try await http("POST", base + path, body: body)
        if let status, answer.status != status {
            throw BankError("POST \(path) on \(service) answered \(answer.status), not \(status): \(String(decoding: answer.body, as: UTF8.self))")
        }
        return answer
    }

    private func get(_ service: String, _ path: String) async throws -> [String: Any] {
        guard let object = try await getJSON(service, path) as? [String: Any] else {
            throw BankError("GET \(path) on \(service) did not answer a JSON object")
        }
        return object
    }

    /// `GET path` on the service, answered 200 with JSON.
    func getJSON(_ service: String, _ path: String) async throws -> Any {
        guard let base = services[service]?.url else { throw BankError("\(service) was never started") }
        let answer = try await http("GET", base + path)
        guard answer.status == 200, let json = answer.json else {
            throw BankError("GET \(path) on \(service) answered \(answer.status): \(String(decoding: answer.body, as: UTF8.self))")
        }
        return json
    }

    struct Travel: Equatable {
        var capacity: [String: Int]
        /// Trip → `booked` or `cancelled`.
        var bookings: [String: String]
    }

    /// A travel service's places left and bookings (`GET /inventory`).
    func travel(_ service: String) async throws -> Travel {
        let inventory = try await get(service, "/inventory")
        var travel = Travel(capacity: [:], bookings: [:])
        for item in inventory["items"] as? [[String: Any]] ?? [] {
            if let id = item["id"] as? String { travel.capacity[id] = item["capacity"] as? Int }
        }
        for booking in inventory["bookings"] as? [[String: Any]] ?? [] {
            if let trip = booking["trip"] as? String { travel.bookings[trip] = booking["status"] as? String }
        }
        return travel
    }

    /// Item A-1 at the inventory service: available, reserved, sold.
    func stock() async throws -> [String: Int] {
        try await row("inventory", "/stock", key: "stock")
    }

    /// Alice's wallet at the payment service: balance, frozen.
    func wallet() async throws -> [String: Int] {
        try await row("payment", "/wallets", key: "wallets")
    }

    private func row(_ service: String, _ path: String, key: String) async throws -> [String: Int] {
        guard let rows = try await get(service, path)[key] as? [[String: Any]], rows.count == 1 else {
            throw BankError("GET \(path) on \(service) did not list exactly one row")
        }
        return rows[0].compactMapValues { $0 as? Int }
    }

    /// The service's `dtx_barrier` rows of `gid`, read from its database, each as
    /// `BRANCH PHASE`, with ` (null)` for a null compensation.
    func barrier(_ service: String, gid: String) async throws -> Set<String> {
        guard let database = services[service]?.database else { throw BankError("\(service) was never started") }
        if database.hasPrefix("sqlite:") {
            let connection = try SQLiteConnection(path: String(database.dropFirst("sqlite:".count)))
            return Set(try connection.query("SELECT branch, op, null_compensation FROM dtx_barrier WHERE gid = ?", [.text(gid)]).map { row in
                "\(row["branch"]?.integerValue ?? -1) \(row["op"]?.textValue ?? "?")" + (row["null_compensation"]?.integerValue == 1 ? " (null)" : "")
            })
        }
        let name = database.split(separator: " ").first { $0.hasPrefix("dbname=") }.map { String($0.dropFirst("dbname=".count)) }
        let output = try await postgres.psql("SELECT branch, op, null_compensation FROM dtx_barrier WHERE gid = '\(gid)'", database: name)
        return Set(output.split(separator: "\n").map { line in
            let columns = line.split(separator: "|").map(String.init)
            return "\(columns[0]) \(columns[1])" + (columns[2] == "t" ? " (null)" : "")
        })
    }

    /// The `outcome` of message `gid` in the service's `dtx_messages` table, read from its
    /// database (nil: no row).
    func messageOutcome(_ service: String, gid: String) async throws -> String? {
        guard let database = services[service]?.database else { throw BankError("\(service) was never started") }
        if database.hasPrefix("sqlite:") {
            let connection = try SQLiteConnection(path: String(database.dropFirst("sqlite:".count)))
            return try connection.query("SELECT outcome FROM dtx_messages WHERE gid = ?", [.text(gid)]).first?["outcome"]?.textValue
        }
        let name = database.split(separator: " ").first { $0.hasPrefix("dbname=") }.map { String($0.dropFirst("dbname=".count)) }
        let output = try await postgres.psql("SELECT outcome FROM dtx_messages WHERE gid = '\(gid)'", database: name)
        return output.isEmpty ? nil : output
    }

    /// The output of every process started (for a failure report).
    func logs(lastLines: Int = 40) -> String {
        started.map { label, process in
            let tail = (process.stdout + process.stderr).split(separator: "\n", omittingEmptySubsequences: false).suffix(lastLines).joined(separator: "\n")
            return "=== \(label) ===\n\(tail)"
        }.joined(separator: "\n")
    }

    func stopProcesses() {
        for (_, process) in started where process.process.isRunning { process.kill(SIGKILL) }
        cluster.stopProcesses()
    }

    func shutdown() async {
        stopProcesses()
        for (_, process) in started { _ = try? await process.waitForExit() }
        await cluster.shutdown()
    }
}
