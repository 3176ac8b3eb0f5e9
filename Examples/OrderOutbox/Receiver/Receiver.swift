import ArgumentParser
import DTXAPI
import DTXCore
import DTXParticipant
import ExampleSupport
import Foundation
import Hummingbird

/// `outbox-receiver`: the stock or notification service of the OrderOutbox example, on
/// SQLite or PostgreSQL. A message's branch reaches it as a saga action (the branch
/// barrier makes a repeated delivery do nothing twice); a message never compensates.
@main
struct OutboxReceiver: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "outbox-receiver",
        abstract: "The stock or notification service that receives the order service's messages.",
        discussion: """
        --db is sqlite:FILE (created if missing) or postgres:"host=... port=... user=... \
        dbname=...". Once listening it prints 'outbox-receiver KIND listening on URL' and \
        registers with dtxd as 'stock' or 'notifications'.

        stock serves the operation 'reserve' ({"order", "item", "quantity"}): takes the \
        quantity from the item's stock and records the reservation; refused (409) when \
        the item is unknown or short. notifications serves 'notify' ({"order", "email"}): \
        records the notification. HTTP: GET /state lists the stock, reservations and \
        notifications; POST /stock {"item": ID, "quantity": N} sets an item's stock.
        """
    )

    enum Kind: String, ExpressibleByArgument, Sendable {
        case stock, notifications
    }

    @Option(help: "stock or notifications; also the name with dtxd.")
    var kind: Kind

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        let schema = [
            "CREATE TABLE IF NOT EXISTS stock (item TEXT PRIMARY KEY, quantity INTEGER NOT NULL CHECK (quantity >= 0))",
            "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, item TEXT NOT NULL, quantity INTEGER NOT NULL)",
            "CREATE TABLE IF NOT EXISTS notifications (order_id TEXT PRIMARY KEY, email TEXT NOT NULL)",
        ]
        let kind = kind
        try await options.serve(program: "outbox-receiver", name: kind.rawValue, schema: schema) { database, _, router in
            switch kind {
            case .stock:
                database.register(saga: "reserve", action: { payload, sql in
                    let order = try text(payload, "order"), item = try text(payload, "item")
                    guard let quantity = payload?["quantity"]?.doubleValue.flatMap({ Int(exactly: $0) }), quantity > 0 else {
                        throw BusinessError(code: "invalid_payload", message: "reserve takes {\"order\", \"item\", \"quantity\": N}")
                    }
                    let left = try sql.query("UPDATE stock SET quantity = quantity - ? WHERE item = ? AND quantity >= ? RETURNING quantity", .int(quantity), .text(item), .int(quantity))
                    guard let remaining = left.first?.int("quantity") else {
                        throw BusinessError(code: "out_of_stock", message: "item \(item) has fewer than \(quantity) in stock (or is unknown)")
                    }
                    try sql.query("INSERT INTO reservations (order_id, item, quantity) VALUES (?, ?, ?)", .text(order), .text(item), .int(quantity))
                    return .object(["order": .string(order), "left": .number(Double(remaining))])
                }, compensate: { _, _ in nil })  // a message's branches are never compensated
            case .notifications:
                database.register(saga: "notify", action: { payload, sql in
                    let order = try text(payload, "order"), email = try text(payload, "email")
                    try sql.query("INSERT INTO notifications (order_id, email) VALUES (?, ?)", .text(order), .text(email))
                    return .object(["order": .string(order), "sent": .string(email)])
                }, compensate: { _, _ in nil })
            }
            router.get("/state") { _, _ -> Response in
                let stock = try await database.query("SELECT item, quantity FROM stock ORDER BY item")
                let reservations = try await database.query("SELECT order_id, item, quantity FROM reservations ORDER BY order_id")
                let notifications = try await database.query("SELECT order_id, email FROM notifications ORDER BY order_id")
                return json(State(
                    stock: Dictionary(uniqueKeysWithValues: stock.map { ($0.text("item") ?? "", $0.int("quantity") ?? 0) }),
                    reservations: Dictionary(uniqueKeysWithValues: reservations.map { ($0.text("order_id") ?? "", $0.int("quantity") ?? 0) }),
                    notifications: Dictionary(uniqueKeysWithValues: notifications.map { ($0.text("order_id") ?? "", $0.text("email") ?? "") })))
            }
            router.post("/stock") { request, _ -> Response in
                var request = request
                let body = try await request.collectBody(upTo: 64 << 10)
                guard let set = try? JSONDecoder().decode(SetStock.self, from: Data(body.readableBytesView)), !set.item.isEmpty, set.quantity >= 0 else {
                    return json(APIErrorBody(code: "bad_request", message: "send {\"item\": ID, \"quantity\": N (0 or more)}"), status: .badRequest)
                }
                try await database.query("INSERT INTO stock (item, quantity) VALUES (?, ?) ON CONFLICT (item) DO UPDATE SET quantity = excluded.quantity",
                                         .text(set.item), .int(set.quantity))
                return json(set, status: .created)
            }
        }
    }
}

private struct State: Encodable {
    var stock: [String: Int]
    var reservations: [String: Int]
    var notifications: [String: String]
}

private struct SetStock: Codable {
    var item: String
    var quantity: Int
}

private func text(_ payload: JSONValue?, _ name: String) throws -> String {
    guard let value = payload?[name]?.stringValue, !value.isEmpty else {
        throw BusinessError(code: "invalid_payload", message: "the payload lacks '\(name)'")
    }
    return value
}

private func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
