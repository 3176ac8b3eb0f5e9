import DTXAPI
import DTXClient
import DTXCore
import DTXTestSupport
import Foundation
import Testing

/// Transactional messages (protocol msg) end to end, with the OrderOutbox example: dtxd,
/// the order service (`outbox-orders`, on SQLite or on the suite's PostgreSQL server),
/// and the stock and notification services (`outbox-receiver`, on SQLite), as processes,
/// SIGKILLed at failpoints and restarted. Outcomes are checked in the transaction view,
/// in the receivers' `/state` and the order service's `/orders`, and in the databases'
/// `dtx_messages` and `dtx_barrier` tables.
@Suite(.serialized, .bankPostgres) struct MessageEndToEndTests {
    /// An order is delivered once to both receivers; an order the stock service refuses
    /// (out of stock) makes the message `failed` and stuck, and once the item is stocked
    /// an operator's retry delivers it.
    @Test func anOrderIsDeliveredOnceAndARefusedOneWaitsForARetry() async throws {
        let example = try await Outbox.start("msg-deliver")
        defer { example.stop() }
        try await example.stock("lamp", 5)

        let placed = try await example.order("o1", "lamp", 2)
        #expect(placed.status == 201, "\(placed.text)\n\(example.logs)")
        #expect((placed.json as? [String: Any])?["gid"] as? String == "order-o1", "\(placed.text)")
        let delivered = try await example.view("order-o1", becomes: "committed")
        #expect(delivered.protocol == .msg)
        #expect(delivered.decision == .commit)
        #expect(delivered.branches.map(\.participant) == ["stock", "notifications"])
        #expect(delivered.branches.map(\.state) == ["done", "done"])
        #expect(!delivered.stuck)
        #expect(!delivered.heuristic)
        #expect(try await example.state() == .init(stock: ["lamp": 3], reservations: ["o1": 2], notifications: ["o1": "o1@example.com"]))
        #expect(try await example.orders() == ["o1"])
        #expect(try await example.messageOutcome("order-o1") == "committed")
        #expect(try await example.barrier("order-o1") == .init(stock: ["0 action"], notifications: ["1 action"]))

        // Ten lamps, three in stock: the stock service refuses for good (409); the
        // notification, independent of it, is delivered; the message waits for an operator.
        let short = try await example.order("o2", "lamp", 10)
        #expect(short.status == 201, "\(short.text)\n\(example.logs)")
        let failed = try await example.view("order-o2", becomes: "failed") { $0.stuck && $0.branches[1].state == "done" }
        #expect(failed.decision == .commit)
        #expect(failed.branches.map(\.state) == ["failed", "done"])
        #expect(failed.branches[0].result?["error"]?["code"]?.stringValue == "out_of_stock", "\(String(describing: failed.branches[0].result))")
        #expect(failed.stuckReason?.contains("refused its delivery for good") == true, "\(failed.stuckReason ?? "no reason")")
        #expect(try await example.state() == .init(stock: ["lamp": 3], reservations: ["o1": 2], notifications: ["o1": "o1@example.com", "o2": "o2@example.com"]))
        #expect(try await example.orders() == ["o1", "o2"])
        #expect(try await example.messageOutcome("order-o2") == "committed")
        // Still failed a while later: a refusal is not retried on its own.
        try await Task.sleep(for: .seconds(1))
        let waiting = try await example.client.transaction("order-o2")
        #expect(waiting.status == "failed")
        #expect(waiting.branches[0].attempts == failed.branches[0].attempts)

        try await example.stock("lamp", 20)
        _ = try await example.client.retry(gid: "order-o2", reason: "lamps restocked")
        let retried = try await example.view("order-o2", becomes: "committed")
        #expect(retried.branches.map(\.state) == ["done", "done"])
        #expect(!retried.stuck)
        #expect(retried.audit?.contains { $0.reason == "lamps restocked" } == true, "\(String(describing: retried.audit))")
        #expect(try await example.state() == .init(stock: ["lamp": 10], reservations: ["o1": 2, "o2": 10], notifications: ["o1": "o1@example.com", "o2": "o2@example.com"]))
        #expect(try await example.barrier("order-o2") == .init(stock: ["0 action"], notifications: ["1 action"]))
    }

    /// The order service dies between its local commit and the submit: the POST gets no
    /// answer, the message stays prepared, and once the service is back dtxd's check-back
    /// finds the order's message row and delivers it, once.
    @Test func aSubmitLostWithTheServiceIsDeliveredByTheCheckBack() async throws {
        let example = try await Outbox.start("msg-after-local-commit", orders: "after-local-commit=crash")
        defer { example.stop() }
        try await example.stock("lamp", 5)

        await #expect(throws: (any Error).self, "the order service answered although it was to die") {
            try await example.order("o1", "lamp", 2)
        }
        try await example.exited("orders")
        let prepared = try await example.client.transaction("order-o1")
        #expect(prepared.status == "prepared", "\(prepared.timeline.map(\.event))")
        #expect(try await example.messageOutcome("order-o1") == "committed")

        try await example.cluster.restartService("orders")
        let delivered = try await example.view("order-o1", becomes: "committed")
        let events = delivered.timeline.map(\.event)
        #expect(events.contains("query_prepared sent"), "\(events)")
        #expect(events.contains("query_prepared: committed"), "\(events)")
        #expect(!events.contains("commit requested"), "\(events)")
        #expect(delivered.branches.map(\.state) == ["done", "done"])
        #expect(try await example.state() == .init(stock: ["lamp": 3], reservations: ["o1": 2], notifications: ["o1": "o1@example.com"]))
        #expect(try await example.orders() == ["o1"])
        #expect(try await example.barrier("order-o1") == .init(stock: ["0 action"], notifications: ["1 action"]))
    }

    /// The order service dies inside its local transaction: nothing of the order is
    /// written, the check-back (once the service is back) marks the message rolled back,
    /// and dtxd aborts it without delivering anything.
    @Test func aServiceDeadBeforeItsLocalCommitHasItsMessageAborted() async throws {
        let example = try await Outbox.start("msg-before-local-commit", orders: "before-local-commit=crash")
        defer { example.stop() }
        try await example.stock("lamp", 5)

        await #expect(throws: (any Error).self, "the order service answered although it was to die") {
            try await example.order("o1", "lamp", 2)
        }
        try await example.exited("orders")
        #expect(try await example.messageOutcome("order-o1") == nil)

        try await example.cluster.restartService("orders")
        // The status turns `aborted` as the machine decides, the decision shows once the
        // engine has performed it: a view in between shows no decision yet.
        let aborted = try await example.view("order-o1", becomes: "aborted", where: { $0.decision != nil })
        let events = aborted.timeline.map(\.event)
        #expect(aborted.decision == .abort)
        #expect(events.contains("query_prepared sent"), "\(events)")
        #expect(events.contains("query_prepared: rolled_back"), "\(events)")
        #expect(!aborted.branches.contains { $0.state == "done" || $0.attempts > 0 }, "\(aborted.branches)")
        #expect(try await example.messageOutcome("order-o1") == "rolled_back")
        #expect(try await example.orders() == [])
        #expect(try await example.state() == .init(stock: ["lamp": 5], reservations: [:], notifications: [:]))
        #expect(try await example.barrier("order-o1") == .init(stock: [], notifications: []))
    }

    /// The check-back arrives while the order's local transaction still runs (it stalls
    /// 4 s inside, its row lock held; the check-back comes after 1 s): it waits for the
    /// local commit and never answers `rolled_back`; the POST succeeds and the message is
    /// delivered once.
    @Test(arguments: ["postgres", "sqlite"])
    func aCheckBackDuringTheLocalTransactionWaitsForItsCommit(database: String) async throws {
        let example = try await Outbox.start("msg-stall-\(database)", ordersOnPostgres: database == "postgres",
                                             orders: "before-local-commit=stall:4", checkBackAfter: 1)
        defer { example.stop() }
        try await example.stock("lamp", 5)

        let started = Date()
        let placed: Exchange
        do {
            placed = try await example.order("o1", "lamp", 2)
        } catch {
            Issue.record("the order got no answer: \(error)\n\(example.logs)")
            return
        }
        #expect(placed.status == 201, "\(placed.text)\n\(example.logs)")
        #expect(Date().timeIntervalSince(started) >= 4, "the local transaction did not stall")
        let delivered = try await example.view("order-o1", becomes: "committed")
        let events = delivered.timeline.map(\.event)
        #expect(delivered.decision == .commit)
        #expect(events.contains("query_prepared sent"), "the check-back never went out: \(events)")
        #expect(!events.contains("query_prepared: rolled_back"), "\(events)")
        #expect(!events.contains("decided abort"), "\(events)")
        #expect(delivered.branches.map(\.state) == ["done", "done"])
        #expect(try await example.messageOutcome("order-o1") == "committed")
        #expect(try await example.orders() == ["o1"])
        #expect(try await example.state() == .init(stock: ["lamp": 3], reservations: ["o1": 2], notifications: ["o1": "o1@example.com"]))
        #expect(try await example.barrier("order-o1") == .init(stock: ["0 action"], notifications: ["1 action"]))
    }

    /// dtxd dies at the submit, before or after its commit decision is durable. The
    /// order committed locally; restarted, dtxd delivers the message once: checked back
    /// first when only its `begin` was durable, directly when its decision was.
    @Test(arguments: ["before-commit-decision", "after-commit-decision"])
    func dtxdDeadAtTheSubmitDeliversAfterItsRestart(failpoint: String) async throws {
        let example = try await Outbox.start("msg-\(failpoint)", daemon: failpoint)
        defer { example.stop() }
        try await example.stock("lamp", 5)

        // The submit gets no answer: the order service answers anyway (its local commit
        // stands), saying the message awaits dtxd.
        let placed = try await example.order("o1", "lamp", 2)
        #expect(placed.status == 201, "\(placed.text)\n\(example.logs)")
        #expect((placed.json as? [String: Any])?["status"] as? String == "submitted, awaiting dtxd", "\(placed.text)")
        let daemon = try #require(example.cluster.cluster.daemon)
        _ = try await daemon.waitForExit(seconds: 10)
        #expect(daemon.stderr.contains("failpoint \(failpoint) hit"), "\(daemon.stderr)")
        #expect(try await example.messageOutcome("order-o1") == "committed")
        #expect(try await example.orders() == ["o1"])
        #expect(try await example.state() == .init(stock: ["lamp": 5], reservations: [:], notifications: [:]))

        try await example.cluster.restartDaemon()
        let delivered = try await example.view("order-o1", becomes: "committed")
        let events = delivered.timeline.map(\.event)
        #expect(events.contains("recovered from the log"), "\(events)")
        if failpoint == "before-commit-decision" {
            // Recovered prepared: checked back, then decided.
            let checkedBack = events.firstIndex(of: "query_prepared: committed")
            let decided = events.firstIndex(of: "decided commit")
            #expect(checkedBack != nil && decided != nil && checkedBack! < decided!, "\(events)")
        } else {
            #expect(!events.contains("query_prepared sent"), "the decision was durable: \(events)")
        }
        #expect(delivered.decision == .commit)
        #expect(delivered.branches.map(\.state) == ["done", "done"])
        #expect(try await example.state() == .init(stock: ["lamp": 3], reservations: ["o1": 2], notifications: ["o1": "o1@example.com"]))
        #expect(try await example.orders() == ["o1"])
        #expect(try await example.barrier("order-o1") == .init(stock: ["0 action"], notifications: ["1 action"]))
    }

    /// The stock service dies once its reservation committed, before it answers: its
    /// branch is delivered again once it is back, and its barrier makes the second
    /// delivery do nothing.
    @Test func aReceiverDeadMidDeliveryReservesOnce() async throws {
        let example = try await Outbox.start("msg-receiver-crash", stock: "after-action=crash")
        defer { example.stop() }
        try await example.stock("lamp", 5)

        let placed = try await example.order("o1", "lamp", 2)
        #expect(placed.status == 201, "\(placed.text)\n\(example.logs)")
        try await example.exited("stock")
        try await example.cluster.restartService("stock")
        let delivered = try await example.view("order-o1", becomes: "committed")
        #expect(delivered.branches.map(\.state) == ["done", "done"])
        #expect(delivered.branches[0].attempts > 1, "\(delivered.branches[0])")
        #expect(try await example.state() == .init(stock: ["lamp": 3], reservations: ["o1": 2], notifications: ["o1": "o1@example.com"]))
        #expect(try await example.barrier("order-o1") == .init(stock: ["0 action"], notifications: ["1 action"]))
    }
}

/// The OrderOutbox example on an `ExampleCluster`: `orders` (`outbox-orders`), `stock`
/// and `notifications` (`outbox-receiver`, on SQLite).
private struct Outbox {
    let cluster: ExampleCluster

    var client: CoordinatorClient { cluster.client }
    var logs: String { cluster.logs() }

    /// Starts dtxd (with DTXD_FAILPOINTS `daemon`), the receivers and the order service,
    /// each with its failpoints, the order service checking back after `checkBackAfter` s.
    static func start(_ name: String, ordersOnPostgres: Bool = false, orders: String? = nil, stock: String? = nil,
                      daemon: String? = nil, checkBackAfter: Double = 2) async throws -> Outbox {
        let cluster = try await ExampleCluster.start(name, daemonFailpoints: daemon)
        let outbox = Outbox(cluster: cluster)
        do {
            try await cluster.startService("outbox-receiver", "stock", ["--kind", "stock", "--db", cluster.sqliteDatabase("stock")], failpoints: stock)
            try await cluster.startService("outbox-receiver", "notifications", ["--kind", "notifications", "--db", cluster.sqliteDatabase("notifications")])
            let database = ordersOnPostgres ? try await cluster.postgresDatabase() : cluster.sqliteDatabase("orders")
            try await cluster.startService("outbox-orders", "orders", ["--db", database, "--check-back-after", String(checkBackAfter)], failpoints: orders)
        } catch {
            outbox.stop()
            throw error
        }
        return outbox
    }

    func stop() {
        cluster.stopProcesses()
        Task { await cluster.shutdown() }
    }

    func stock(_ item: String, _ quantity: Int) async throws {
        try await cluster.post("stock", "/stock", #"{"item": "\#(item)", "quantity": \#(quantity)}"#, expect: 201)
    }

    /// `POST /orders` at the order service; the customer is `ORDER@example.com`.
    @discardableResult
    func order(_ order: String, _ item: String, _ quantity: Int) async throws -> Exchange {
        try await cluster.post("orders", "/orders", #"{"order": "\#(order)", "item": "\#(item)", "quantity": \#(quantity), "email": "\#(order)@example.com"}"#)
    }

    /// Waits until the view of `gid` shows `status` (and `condition`), and returns it.
    func view(_ gid: String, becomes status: String, where condition: @escaping (TransactionView) -> Bool = { _ in true }, seconds: Double = 20) async throws -> TransactionView {
        var last: TransactionView?
        let reached = await eventually(seconds: seconds) {
            last = try? await client.transaction(gid)
            return last.map { $0.status == status && condition($0) } ?? false
        }
        guard reached, let last else {
            throw BankError("\(gid) did not become \(status) within \(seconds) s; last seen: \(last.map { "\($0.status), stuck \($0.stuck), branches \($0.branches.map { "\($0.state) (\($0.attempts) attempts, \($0.lastError ?? "-"))" }), timeline \($0.timeline.map { $0.event + ($0.detail.map { " [\($0)]" } ?? "") })" } ?? "no view")\n\(logs)")
        }
        return last
    }

    /// Waits until the service's process has exited (SIGKILLed by its failpoint).
    func exited(_ service: String) async throws {
        guard await eventually(seconds: 10, { !cluster.isRunning(service) }) else {
            throw BankError("\(service) still runs; its failpoint did not fire\n\(logs)")
        }
    }

    struct State: Equatable, CustomStringConvertible {
        var stock: [String: Int]
        var reservations: [String: Int]
        var notifications: [String: String]
        var description: String { "stock \(stock), reservations \(reservations), notifications \(notifications)" }
    }

    /// The stock service's stock and reservations, and the notification service's notifications.
    func state() async throws -> State {
        let stock = try await cluster.getJSON("stock", "/state") as? [String: Any] ?? [:]
        let notifications = try await cluster.getJSON("notifications", "/state") as? [String: Any] ?? [:]
        return State(stock: stock["stock"] as? [String: Int] ?? [:], reservations: stock["reservations"] as? [String: Int] ?? [:],
                     notifications: notifications["notifications"] as? [String: String] ?? [:])
    }

    /// The order ids the order service lists.
    func orders() async throws -> [String] {
        let rows = try await cluster.getJSON("orders", "/orders") as? [[String: Any]] ?? []
        return rows.compactMap { $0["order"] as? String }
    }

    func messageOutcome(_ gid: String) async throws -> String? {
        try await cluster.messageOutcome("orders", gid: gid)
    }

    struct Barriers: Equatable {
        var stock: Set<String>
        var notifications: Set<String>
    }

    /// The receivers' `dtx_barrier` rows of `gid`.
    func barrier(_ gid: String) async throws -> Barriers {
        Barriers(stock: try await cluster.barrier("stock", gid: gid), notifications: try await cluster.barrier("notifications", gid: gid))
    }
}

extension Exchange {
    var text: String { String(decoding: body, as: UTF8.self) }
}
