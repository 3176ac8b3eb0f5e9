import ArgumentParser
import DTXAPI
import DTXClient
import DTXCore
import Foundation

/// `book-trip`: books a flight, a hotel and a car for one trip as a saga. Each booking is
/// a step on its own service; when one fails, dtxd compensates (cancels) the bookings
/// already made, the latest first.
@main
struct BookTrip: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "book-trip",
        abstract: "Book a flight, a hotel and a car as one saga through dtxd.",
        discussion: """
        The steps go to the travel services registered as flight, hotel and car: flight, \
        then hotel, then car; with --parallel, hotel and car both start once the flight \
        is booked. Exit status 0 when the trip is booked, 1 when a step failed and the \
        others were compensated, 3 when dtxd cannot be reached.
        """
    )

    @Option(help: "Flight to book a seat on.")
    var flight: String

    @Option(help: "Hotel to book a room in.")
    var hotel: String

    @Option(help: "Car to rent.")
    var car: String

    @Option(help: "Trip id, the key of the bookings (default: generated).")
    var trip: String?

    @Option(help: "Make this step refuse (flight, hotel or car), to see the compensations.")
    var fail: Step?

    @Flag(help: "Book hotel and car at the same time, each depending only on the flight.")
    var parallel = false

    @Option(help: "Global transaction id (default: generated). Submitting the same id again is safe.")
    var gid: String?

    @Option(help: "URL of dtxd. (env DTX_URL, default http://127.0.0.1:7070)")
    var url: String?

    @Option(help: "Bearer token for dtxd. (env DTX_TOKEN)")
    var token: String?

    enum Step: String, CaseIterable, ExpressibleByArgument {
        case flight, hotel, car
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let client = try CoordinatorClient(baseURL: url ?? env["DTX_URL"] ?? "http://127.0.0.1:7070", token: token ?? env["DTX_TOKEN"])
        defer { Task { try? await client.shutdown() } }
        let trip = trip ?? "trip-" + UUID().uuidString.prefix(8).lowercased()

        // One step per service, in order: 0 flight, 1 hotel, 2 car. Without dependsOn a
        // step waits for the previous one; [0] makes hotel and car wait for the flight only.
        let items: [(Step, String)] = [(.flight, flight), (.hotel, hotel), (.car, car)]
        let steps = items.map { step, item in
            var payload: [String: JSONValue] = ["trip": .string(trip), "item": .string(item)]
            if step == fail { payload["fail"] = .bool(true) }
            return BranchSpec(participant: step.rawValue, operation: "book", payload: .object(payload),
                              dependsOn: parallel && step != .flight ? [0] : nil)
        }
        let view: TransactionView
        do {
            view = try await client.submit(TransactionSubmission(gid: gid, protocol: .saga, branches: steps, timeout: 30, wait: true))
        } catch let error as ClientError {
            FileHandle.standardError.write(Data("book-trip: \(error)\n".utf8))
            if case .unreachable = error { throw ExitCode(3) }
            throw ExitCode(1)
        }

        switch view.status {
        case "committed": print("booked trip \(trip) (gid \(view.gid))")
        case "aborted": print("trip \(trip) not booked: \(view.error ?? "a step failed") (gid \(view.gid))")
        default: print("trip \(trip) still \(view.status) after waiting (gid \(view.gid)); see `dtx show \(view.gid)`")
        }
        for (branch, (step, item)) in zip(view.branches, items) {
            print("  \(step.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)) \(item): \(Self.describe(branch))")
        }
        if let compensations = view.compensations, !compensations.isEmpty {
            let names = compensations.map { id in
                view.branches[id].result?["error"] == nil ? items[id].0.rawValue : "\(items[id].0.rawValue) (nothing to undo)"
            }
            print("  compensated, in the order they ran: \(names.joined(separator: ", "))")
        }
        if view.status != "committed" { throw ExitCode(1) }
    }

    /// One step as the transaction view shows it: its state and what its service answered.
    static func describe(_ branch: BranchView) -> String {
        let result = branch.result
        if let error = result?["error"] {
            return "failed: \(error["message"]?.stringValue ?? "?") (\(error["code"]?.stringValue ?? "?"))"
        }
        let left = result?["left"]?.doubleValue.map { ", \(Int($0)) left" } ?? ""
        switch branch.state {
        case "done": return "booked\(left)"
        // Without a result the compensation ran before the action answered (a step running
        // in parallel with the failing one): the barrier then refuses the late action.
        case "compensated": return result == nil ? "compensated before it was booked" : "booked, then cancelled"
        case "pending": return "not attempted"
        default: return branch.state + (branch.lastError.map { ": \($0)" } ?? "")
        }
    }
}
