import ArgumentParser
import DTXAPI
import DTXCore
import DTXParticipant
import ExampleSupport
import Foundation
import Hummingbird

/// `order-service`: the inventory or the payment side of an online shop, on SQLite or
/// PostgreSQL, taking part in dtx TCC transactions: it registers with dtxd under its
/// role's name and serves the TCC operation `reserve` (inventory) or `freeze` (payment)
/// (Reservations.swift).
@main
struct OrderService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "order-service",
        abstract: "An inventory or payment service on SQLite or PostgreSQL that joins dtx TCC transactions.",
        discussion: """
        --db is sqlite:FILE (created if missing) or postgres:"host=... port=... user=... \
        dbname=..." (the server needs max_prepared_transactions above 0). Once listening \
        it prints 'order-service ROLE listening on URL' and registers with dtxd under \
        ROLE (inventory or payment).

        HTTP, inventory: GET /stock lists the items; POST /stock {"sku": ..., \
        "available": N} adds an item or sets how many are available; POST /reserve \
        {"gid": ..., "sku": ..., "qty": N} reserves in the open interactive transaction \
        GID (enlists, then runs the Try). Payment: GET /wallets; POST /wallets \
        {"account": ..., "balance": N}; POST /freeze {"gid": ..., "account": ..., \
        "amount": N}. The TCC protocol is under /dtx/tcc/.
        """
    )

    @Option(help: "inventory or payment. Also its name with dtxd.")
    var role: Role

    @OptionGroup var options: ServiceOptions

    func run() async throws {
        try await options.serve(program: "order-service", name: role.rawValue, schema: [role.schema]) { database, service, router in
            registerOperation(role, on: database)
            addShopRoutes(to: router, role: role, database: database, service: service)
        }
    }
}

func addShopRoutes(to router: Router<BasicRequestContext>, role: Role, database: Database, service: ParticipantService) {
    // GET /stock or /wallets: every row, e.g. {"stock": [{"sku": "A-1", "available": 8, …}]}.
    router.get("/\(role.table)") { _, _ -> Response in
        let rows = try await database.query("SELECT \(([role.key] + role.columns).joined(separator: ", ")) FROM \(role.table) ORDER BY \(role.key)")
        let listed = rows.map { row -> JSONValue in
            var fields: [String: JSONValue] = [role.key: .string(row.text(role.key) ?? "")]
            for column in role.columns { fields[column] = .number(Double(row.int(column) ?? 0)) }
            return .object(fields)
        }
        return json(JSONValue.object([role.table: .array(listed)]))
    }

    // POST /stock {"sku", "available"} or /wallets {"account", "balance"}: a plain local write.
    router.post("/\(role.table)") { request, _ -> Response in
        let body = try await jsonBody(request)
        let amountColumn = role.columns[0]
        guard let body, let id = body[role.key]?.stringValue, !id.isEmpty, let amount = body[amountColumn]?.doubleValue, amount >= 0, amount.rounded() == amount else {
            return json(APIErrorBody(code: "bad_request", message: "send {\"\(role.key)\": ID, \"\(amountColumn)\": a whole number, 0 or more}"), status: .badRequest)
        }
        try await database.query(
            "INSERT INTO \(role.table) (\(role.key), \(amountColumn)) VALUES (?, ?) ON CONFLICT (\(role.key)) DO UPDATE SET \(amountColumn) = excluded.\(amountColumn)",
            .text(id), .int(Int(amount)))
        return json(body, status: .created)
    }

    // POST /reserve or /freeze {"gid", …payload}: this service's own business endpoint for
    // interactive TCC. It enlists a branch in the open transaction GID with dtxd, then runs
    // the Try here; the application commits or aborts GID once every service answered.
    router.post("/\(role.operation)") { request, _ -> Response in
        guard case .object(var payload)? = try await jsonBody(request), let gid = payload["gid"]?.stringValue else {
            return json(APIErrorBody(code: "bad_request", message: "send {\"gid\": the open transaction, and the operation's payload}"), status: .badRequest)
        }
        payload["gid"] = nil
        do {
            let (branch, result) = try await service.tryEnlisted(gid: gid, operation: role.operation, payload: .object(payload))
            return json(JSONValue.object(["branch": .number(Double(branch)), "result": result ?? .null]))
        } catch let refusal as BusinessError {
            return json(APIErrorBody(code: refusal.code, message: refusal.message), status: .conflict)
        } catch {
            return json(APIErrorBody(code: "enlist_failed", message: "\(error)"), status: .badGateway)
        }
    }
}

/// The request's body as JSON, nil when it is not JSON.
private func jsonBody(_ request: Request) async throws -> JSONValue? {
    var request = request
    let body = try await request.collectBody(upTo: 64 << 10)
    return try? JSONValue(parsing: Array(body.readableBytesView))
}

private func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
