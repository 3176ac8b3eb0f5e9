import ArgumentParser
import DTXAPI
import DTXClient
import DTXCore
import DTXParticipant
import ExampleSupport
import Foundation
import Hummingbird

/// `outbox-orders`: an order service on SQLite or PostgreSQL that writes each order and,
/// in the same local transaction, a transactional message (protocol msg) to the stock
/// service (reserve the items) and the notification service (tell the customer). dtxd
/// delivers the message once the order is committed, even if this process dies right
/// after its commit: it then checks back (`/dtx/msg/query_prepared`), and the order's
/// message row answers.
@main
struct OutboxOrders: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-orders",
        abstract: "An order service whose orders send a transactional message to stock and notification services.",
        discussion: """
        --db is sqlite:FILE (created if missing) or postgres:"host=... port=... user=... \
        dbname=...". Once listening it prints 'outbox-orders orders listening on URL' \
        and registers with dtxd as 'orders' (it serves msg: dtxd's check-back).

        HTTP: POST /orders {"order": ID, "item": ID, "quantity": N, "email": ADDRESS} \
        writes the order and sends its message (gid order-ID; 201 with the message's \
        status); GET /orders lists the orders. Failpoints for crash tests \
        (DTX_PARTICIPANT_FAILPOINTS or PUT /test/failpoints): before-local-commit=crash \
        dies inside the order's local transaction, after-local-commit=crash between its \
        commit and the submit.
        """
    )

    @Option(help: "The stock service's name with dtxd.")
    var stock = "stock"

    @Option(help: "The notification service's name with dtxd.")
    var notifications = "notifications"

    @Option(help: "Seconds dtxd waits for a message's submit before it checks back.")
    var checkBackAfter: Double = 5

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        let schema = ["CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, item TEXT NOT NULL, quantity INTEGER NOT NULL CHECK (quantity > 0), email TEXT NOT NULL)"]
        let (stock, notifications, timeout) = (stock, notifications, checkBackAfter)
        try await options.serve(program: "outbox-orders", name: "orders", schema: schema) { database, service, router in
            router.post("/orders") { request, _ -> Response in
                var request = request
                let body = try await request.collectBody(upTo: 64 << 10)
                guard let order = try? JSONDecoder().decode(Order.self, from: Data(body.readableBytesView)), order.isValid else {
                    return json(APIErrorBody(code: "bad_request", message: "send {\"order\": ID, \"item\": ID, \"quantity\": N (1 or more), \"email\": ADDRESS}"), status: .badRequest)
                }
                let branches = [
                    BranchSpec(participant: stock, operation: "reserve",
                               payload: .object(["order": .string(order.order), "item": .string(order.item), "quantity": .number(Double(order.quantity))])),
                    BranchSpec(participant: notifications, operation: "notify",
                               payload: .object(["order": .string(order.order), "email": .string(order.email)]), dependsOn: []),
                ]
                do {
                    let sent = try await database.send(message: "order-\(order.order)", branches: branches, timeout: timeout, through: service) { sql in
                        try sql.query("INSERT INTO orders (id, item, quantity, email) VALUES (?, ?, ?, ?)",
                                      .text(order.order), .text(order.item), .int(order.quantity), .text(order.email))
                    }
                    return json(Placed(order: order.order, gid: sent.gid, status: sent.view?.status ?? "submitted, awaiting dtxd"), status: .created)
                } catch let error as BusinessError {
                    return json(APIErrorBody(code: error.code, message: error.message), status: .conflict)
                } catch let error as MessageRolledBack {
                    return json(APIErrorBody(code: "rolled_back", message: error.description), status: .conflict)
                } catch let error as ClientError {
                    // The prepare was refused or got no answer: nothing was written.
                    return json(APIErrorBody(code: "coordinator_refused", message: "\(error)"), status: .badGateway)
                }
            }
            router.get("/orders") { _, _ -> Response in
                let rows = try await database.query("SELECT id, item, quantity, email FROM orders ORDER BY id")
                return json(rows.map { Order(order: $0.text("id") ?? "", item: $0.text("item") ?? "", quantity: $0.int("quantity") ?? 0, email: $0.text("email") ?? "") })
            }
        }
    }
}

private struct Order: Codable, Sendable {
    var order: String
    var item: String
    var quantity: Int
    var email: String

    var isValid: Bool {
        (try? GlobalTransactionID(validating: "order-\(order)")) != nil && !item.isEmpty && quantity >= 1 && !email.isEmpty
    }
}

private struct Placed: Encodable {
    var order: String
    var gid: String
    var status: String
}

private func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
