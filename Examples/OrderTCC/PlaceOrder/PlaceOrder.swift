import ArgumentParser
import DTXAPI
import DTXClient
import DTXCore
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `place-order`: reserves stock with the inventory service and freezes the price with
/// the payment service in one TCC transaction, then confirms both (the stock is sold,
/// the money debited) or, when either refuses, cancels both.
@main
struct PlaceOrder: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "place-order",
        abstract: "Place an order across the inventory and payment services with TCC, through dtxd.",
        discussion: """
        By default the whole transaction is submitted to dtxd, which sends the Tries, \
        then Confirm or Cancel. With --interactive, place-order begins the transaction, \
        calls each service's own endpoint (POST /reserve, POST /freeze: the service \
        enlists its branch and runs its Try), then commits or aborts. The services are \
        the ones registered with dtxd as inventory and payment. Exit status 0 when the \
        order is confirmed, 1 when it was cancelled, 3 when dtxd cannot be reached.
        """
    )

    @Option(help: "Item to buy.")
    var sku: String

    @Option(help: "How many.")
    var qty = 1

    @Option(help: "Wallet to pay from.")
    var account: String

    @Option(help: "Price to pay, a whole number above 0.")
    var amount: Int

    @Flag(help: "Begin, call each service's own endpoint, then commit or abort.")
    var interactive = false

    @Option(help: "Global transaction id (default: generated).")
    var gid: String?

    @Option(help: "URL of dtxd. (env DTX_URL, default http://127.0.0.1:7070)")
    var url: String?

    @Option(help: "Bearer token for dtxd. (env DTX_TOKEN)")
    var token: String?

    func validate() throws {
        guard qty > 0, amount > 0 else { throw ValidationError("--qty and --amount must be above 0") }
    }

    /// The two branches: (service, TCC operation, payload).
    var branches: [(service: String, operation: String, payload: [String: JSONValue])] {
        [
            ("inventory", "reserve", ["sku": .string(sku), "qty": .number(Double(qty))]),
            ("payment", "freeze", ["account": .string(account), "amount": .number(Double(amount))]),
        ]
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let client = try CoordinatorClient(baseURL: url ?? env["DTX_URL"] ?? "http://127.0.0.1:7070", token: token ?? env["DTX_TOKEN"])
        defer { Task { try? await client.shutdown() } }
        let view: TransactionView
        do {
            if interactive {
                view = try await placeInteractively(client)
            } else {
                view = try await client.submit(TransactionSubmission(
                    gid: gid, protocol: .tcc,
                    branches: branches.map { BranchSpec(participant: $0.service, operation: $0.operation, payload: .object($0.payload)) },
                    timeout: 30, wait: true))
            }
        } catch let error as ClientError {
            FileHandle.standardError.write(Data("place-order: \(error)\n".utf8))
            if case .unreachable = error { throw ExitCode(3) }
            throw ExitCode(1)
        }

        switch view.status {
        case "committed": print("confirmed: \(qty) × \(sku) sold, \(amount) paid from \(account) (gid \(view.gid))")
        case "aborted": print("cancelled: \(view.error ?? "refused") (gid \(view.gid))")
        default: print("still \(view.status) after waiting (gid \(view.gid)); see `dtx show \(view.gid)`")
        }
        for branch in view.branches {
            // (An interactive transaction's Tries ran at the services: dtxd has their
            // Confirm's answer, if any, but never their Try's.)
            let answer = branch.result.map { " " + Self.compact($0) } ?? ""
            print("  \(branch.participant.padding(toLength: 9, withPad: " ", startingAt: 0)) \(branch.operation.padding(toLength: 7, withPad: " ", startingAt: 0)) \(branch.state)\(answer)")
        }
        if view.status != "committed" { throw ExitCode(1) }
    }

    /// Interactive TCC, the application's side: begin, ask each service to try (it
    /// enlists its branch with dtxd first), then commit when every Try succeeded, or abort.
    func placeInteractively(_ client: CoordinatorClient) async throws -> TransactionView {
        let begun = try await client.submit(TransactionSubmission(gid: gid, protocol: .tcc, timeout: 30, interactive: true))
        var refusal: String?
        for (service, operation, payload) in branches where refusal == nil {
            let endpoint = try await client.participant(service).url + "/" + operation
            var body = payload
            body["gid"] = .string(begun.gid)
            do {
                let (status, answer) = try await post(endpoint, body: .object(body))
                print("\(service): POST /\(operation) answered \(status) \(Self.compact(answer))")
                if status != 200 {
                    refusal = "\(service) refused: " + (answer?["error"]?["message"]?.stringValue ?? "HTTP \(status)")
                }
            } catch {
                refusal = "\(service) cannot be reached: \(error)"
            }
        }
        if let refusal {
            return try await client.abort(gid: begun.gid, reason: refusal, wait: true)
        }
        return try await client.commit(gid: begun.gid, wait: true)
    }

    /// JSON on one line, `-` for none.
    static func compact(_ value: JSONValue?) -> String {
        value.map { String(decoding: (try? JSONEncoder.dtx().encode($0)) ?? Data(), as: UTF8.self) } ?? "-"
    }

    /// POSTs JSON; returns the status and the answer's JSON.
    func post(_ endpoint: String, body: JSONValue) async throws -> (Int, JSONValue?) {
        guard let target = URL(string: endpoint) else { throw ValidationError("bad service URL \(endpoint)") }
        var request = URLRequest(url: target)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = try JSONEncoder.dtx().encode(body)
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, try? JSONValue(parsing: Array(data)))
    }
}
