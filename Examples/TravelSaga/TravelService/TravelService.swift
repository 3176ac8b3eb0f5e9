import ArgumentParser
import DTXAPI
import DTXCore
import DTXParticipant
import ExampleSupport
import Foundation
import Hummingbird

/// `travel-service`: a flight, hotel or car rental service on SQLite or PostgreSQL that
/// takes part in dtx sagas: it registers with dtxd under its kind's name and serves the
/// saga operation `book` (Bookings.swift).
@main
struct TravelService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "travel-service",
        abstract: "A flight, hotel or car service on SQLite or PostgreSQL that joins dtx sagas.",
        discussion: """
        --db is sqlite:FILE (created if missing) or postgres:"host=... port=... user=... \
        dbname=..." (the server needs max_prepared_transactions above 0). Once listening \
        it prints 'travel-service KIND listening on URL' and registers with dtxd under \
        KIND (flight, hotel or car).

        HTTP: GET /inventory lists the items with the places left, and the bookings; \
        POST /inventory {"id": ..., "capacity": N} adds an item or sets its places left; \
        the saga protocol is under /dtx/saga/.
        """
    )

    @Option(help: "What this service sells: flight, hotel or car. Also its name with dtxd.")
    var kind: Kind

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        try await options.serve(program: "travel-service", name: kind.rawValue, schema: kind.schema) { database, _, router in
            registerBook(kind, on: database)
            addInventoryRoutes(to: router, kind: kind, database: database)
        }
    }
}

private struct Inventory: Encodable {
    struct Item: Encodable {
        var id: String
        var capacity: Int
    }

    struct Booking: Encodable {
        var trip: String
        var item: String
        var status: String
    }

    var kind: String
    var items: [Item]
    var bookings: [Booking]
}

private struct Stock: Decodable {
    var id: String
    var capacity: Int
}

func addInventoryRoutes(to router: Router<BasicRequestContext>, kind: Kind, database: Database) {
    router.get("/inventory") { _, _ -> Response in
        let items = try await database.query("SELECT id, capacity FROM \(kind.table) ORDER BY id")
        let bookings = try await database.query("SELECT trip, item, status FROM bookings ORDER BY trip")
        return json(Inventory(
            kind: kind.rawValue,
            items: items.map { .init(id: $0.text("id") ?? "", capacity: $0.int("capacity") ?? 0) },
            bookings: bookings.map { .init(trip: $0.text("trip") ?? "", item: $0.text("item") ?? "", status: $0.text("status") ?? "") }))
    }
    router.post("/inventory") { request, context -> Response in
        var request = request
        let body = try await request.collectBody(upTo: 64 << 10)
        guard let stock = try? JSONDecoder().decode(Stock.self, from: Data(body.readableBytesView)), !stock.id.isEmpty, stock.capacity >= 0 else {
            return json(APIErrorBody(code: "bad_request", message: "send {\"id\": ITEM, \"capacity\": places left (0 or more)}"), status: .badRequest)
        }
        try await database.query(
            "INSERT INTO \(kind.table) (id, capacity) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET capacity = excluded.capacity",
            .text(stock.id), .int(stock.capacity))
        return json(Inventory(kind: kind.rawValue, items: [.init(id: stock.id, capacity: stock.capacity)], bookings: []), status: .created)
    }
}

private func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
