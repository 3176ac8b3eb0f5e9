import ArgumentParser
import DTXCore
import DTXParticipant
import ExampleSupport

/// What a travel service sells. Each kind keeps its own table of items with the places
/// left (`capacity`) and a table of bookings by trip, in its own database.
enum Kind: String, CaseIterable, ExpressibleByArgument, Sendable {
    case flight, hotel, car

    /// Seats on flights, rooms in hotels, rental cars.
    var table: String {
        switch self {
        case .flight: "seats"
        case .hotel: "rooms"
        case .car: "cars"
        }
    }

    var schema: [String] {
        [
            "CREATE TABLE IF NOT EXISTS \(table) (id TEXT PRIMARY KEY, capacity INTEGER NOT NULL CHECK (capacity >= 0))",
            "CREATE TABLE IF NOT EXISTS bookings (trip TEXT PRIMARY KEY, item TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN ('booked', 'cancelled')))",
        ]
    }
}

/// The saga operation `book`, payload `{"trip": ID, "item": ID, "fail": true?}`.
///
/// - action: refuses when told to fail, when the item is sold out or unknown, or when the
///   trip already has a booking here; otherwise takes one place and records the booking.
/// - compensation: cancels the trip's booking and gives its place back.
///
/// Both run inside the branch barrier, in the same local transaction as its record: a
/// repeated message does nothing twice, a compensation whose action never ran (or was
/// refused) does nothing, and an action that arrives after its compensation is refused.
/// So they are written as if each message arrived exactly once, in order.
func registerBook(_ kind: Kind, on database: Database) {
    let table = kind.table
    database.register(
        saga: "book",
        action: { payload, sql in
            let trip = try field(payload, "trip"), item = try field(payload, "item")
            if case .bool(true)? = payload?["fail"] {
                throw BusinessError(code: "told_to_fail", message: "the \(kind) booking of \(trip) was told to fail")
            }
            if let booking = try sql.query("SELECT status FROM bookings WHERE trip = ?", .text(trip)).first {
                throw BusinessError(code: "already_booked", message: "trip \(trip) already has a \(kind) booking here (\(booking.text("status") ?? "?"))")
            }
            let taken = try sql.query("UPDATE \(table) SET capacity = capacity - 1 WHERE id = ? AND capacity > 0 RETURNING capacity", .text(item))
            guard let left = taken.first?.int("capacity") else {
                if try sql.query("SELECT id FROM \(table) WHERE id = ?", .text(item)).isEmpty {
                    throw BusinessError(code: "unknown_item", message: "no \(kind) \(item) here")
                }
                throw BusinessError(code: "sold_out", message: "\(kind) \(item) is sold out")
            }
            try sql.query("INSERT INTO bookings (trip, item, status) VALUES (?, ?, 'booked')", .text(trip), .text(item))
            return .object(["trip": .string(trip), "item": .string(item), "left": .number(Double(left))])
        },
        compensate: { payload, sql in
            let trip = try field(payload, "trip")
            let cancelled = try sql.query("UPDATE bookings SET status = 'cancelled' WHERE trip = ? AND status = 'booked' RETURNING item", .text(trip))
            guard let item = cancelled.first?.text("item") else { return nil }
            let restored = try sql.query("UPDATE \(table) SET capacity = capacity + 1 WHERE id = ? RETURNING capacity", .text(item))
            return .object(["trip": .string(trip), "cancelled": .string(item), "left": .number(Double(restored.first?.int("capacity") ?? 0))])
        })
}

private func field(_ payload: JSONValue?, _ name: String) throws -> String {
    guard let value = payload?[name]?.stringValue, !value.isEmpty else {
        throw BusinessError(code: "invalid_payload", message: "a booking payload is {\"trip\": ID, \"item\": ID, \"fail\": true (optional)}")
    }
    return value
}
