import ArgumentParser
import DTXAPI
import DTXCore
import Foundation

/// Each hot JSON shape of a 2PC transaction, written and read by the hand-written path and
/// by Foundation's JSONEncoder/JSONDecoder, in one process, alternating: nanoseconds per
/// operation, and what one transaction pays for each (a two-branch 2PC transaction carries
/// one submission, one view, four participant requests and replies, three log records).
struct CodecBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "codec",
        abstract: "Hand-written JSON paths vs JSONEncoder/JSONDecoder on the shapes every transaction carries."
    )

    @Option(help: "Operations per measurement.")
    var iterations: Int = 50_000

    @Option(help: "Measurements per path (alternating hand and Codable); the median is reported.")
    var rounds: Int = 5

    @Option(help: "Write the results as JSON to this file.")
    var json: String?

    struct Row: Codable {
        var shape: String
        var direction: String
        var perTransaction: Int
        var handNanoseconds: Double
        var codableNanoseconds: Double
        var ratio: Double
        var codableExtraMicrosecondsPerTransaction: Double

        enum CodingKeys: String, CodingKey {
            case shape, direction, ratio
            case perTransaction = "per_transaction"
            case handNanoseconds = "hand_ns"
            case codableNanoseconds = "codable_ns"
            case codableExtraMicrosecondsPerTransaction = "codable_extra_us_per_tx"
        }
    }

    /// The shapes as Codable would read and write them (dtx reads and writes them by hand
    /// only): what the hand-written paths are measured against.
    struct CodableRequest: Codable {
        var gid: String
        var branch: Int
        var operation: String
        var payload: JSONValue?
        var participants: [String]?
    }

    struct CodableSubmission: Codable {
        var gid: String?
        var `protocol`: TransactionProtocol
        var branches: [BranchSpec]?
        var timeout: Double?
        var wait: Bool?
        var interactive: Bool?
    }

    struct CodableView: Encodable {
        var gid: String
        var `protocol`: TransactionProtocol
        var status: String
        var decision: Decision?
        var interactive: Bool
        var heuristic: Bool
        var stuck: Bool
        var createdAt: Date
        var updatedAt: Date
        var timeout: Double
        var error: String?
        var branches: [BranchView]
        var timeline: [TimelineEntry]
        var compensations: [BranchID]?

        init(_ view: TransactionView) {
            (gid, `protocol`, status, decision, interactive, heuristic, stuck) = (view.gid, view.protocol, view.status, view.decision, view.interactive, view.heuristic, view.stuck)
            (createdAt, updatedAt, timeout, error, branches, timeline, compensations) = (view.createdAt, view.updatedAt, view.timeout, view.error, view.branches, view.timeline, view.compensations)
        }
    }

    struct CodableBegin: Codable {
        var gid: String
        var `protocol`: TransactionProtocol
        var branches: [BranchSpec]
    }

    struct CodableReply: Codable {
        var status: String
        var result: JSONValue?
    }

    struct Results: Codable {
        var machine: Machine
        var iterations: Int
        var rounds: Int
        var rows: [Row]
    }

    func run() async throws {
        let encoder = JSONEncoder.dtx()
        let decoder = JSONDecoder.dtx()
        let gid = "order-4711-\(UUID().uuidString.prefix(8))"
        let payload: JSONValue = .object(["account": .string("alice"), "amount": .number(25), "currency": .string("EUR")])
        let submission = TransactionSubmission(
            gid: gid, protocol: .twoPhaseCommit,
            branches: [BranchSpec(participant: "accounts-eu", operation: "debit", payload: payload),
                       BranchSpec(participant: "accounts-us", operation: "credit", payload: payload)],
            timeout: 30, wait: true)
        let submissionBytes = Array(try encoder.encode(submission))
        let request = ParticipantRequest(gid: gid, branch: 1, operation: "credit", payload: payload)
        let requestBytes = request.jsonBytes()
        let codableRequest = CodableRequest(gid: gid, branch: 1, operation: "credit", payload: payload)
        let reply = ParticipantReply(status: "prepared", result: .object(["balance": .number(975)]))
        let replyBytes = reply.jsonBytes()
        let codableReply = CodableReply(status: reply.status, result: reply.result)
        let now = Date()
        let view = TransactionView(
            gid: gid, protocol: .twoPhaseCommit, status: "committed", decision: .commit, interactive: false, heuristic: false, stuck: false,
            createdAt: now, updatedAt: now, timeout: 30, error: nil,
            branches: [BranchView(id: 0, participant: "accounts-eu", operation: "debit", state: "committed", attempts: 1, lastError: nil, result: .object(["balance": .number(975)])),
                       BranchView(id: 1, participant: "accounts-us", operation: "credit", state: "committed", attempts: 1, lastError: nil, result: nil)],
            timeline: ["submitted", "prepare: prepared", "prepare: prepared", "decided commit", "commit: committed", "commit: committed", "finished committed"]
                .enumerated().map { TimelineEntry(at: now, event: $0.element, branch: $0.offset % 3 == 0 ? nil : $0.offset % 2) },
            compensations: nil)
        let codableView = CodableView(view)
        let begin = LogEntry.begin(gid: try GlobalTransactionID(validating: gid), protocol: .twoPhaseCommit, branches: submission.branches ?? [])
        let beginRecord = begin.encoded()

        var rows: [Row] = []
        func measure(_ shape: String, _ direction: String, perTransaction: Int, hand: () throws -> Int, codable: () throws -> Int) rethrows {
            var handTimes: [Double] = []
            var codableTimes: [Double] = []
            for _ in 0..<rounds {
                handTimes.append(try time(hand))
                codableTimes.append(try time(codable))
            }
            let handNs = handTimes.sorted()[rounds / 2]
            let codableNs = codableTimes.sorted()[rounds / 2]
            rows.append(Row(shape: shape, direction: direction, perTransaction: perTransaction, handNanoseconds: handNs, codableNanoseconds: codableNs,
                            ratio: codableNs / handNs, codableExtraMicrosecondsPerTransaction: (codableNs - handNs) * Double(perTransaction) / 1000))
        }
        func time(_ body: () throws -> Int) rethrows -> Double {
            var sink = 0
            let start = ContinuousClock.now
            for _ in 0..<iterations { sink &+= try body() }
            let elapsed = ContinuousClock.now - start
            if sink == 42 { print("") }  // keeps the work from being optimised away
            let (seconds, attoseconds) = elapsed.components
            return (Double(seconds) * 1e9 + Double(attoseconds) / 1e9) / Double(iterations)
        }

        try measure("submission", "read", perTransaction: 1,
                    hand: { try TransactionSubmission(json: try JSONValue(parsingStrictly: submissionBytes)).branches?.count ?? 0 },
                    codable: { try decoder.decode(CodableSubmission.self, from: Data(submissionBytes)).branches?.count ?? 0 })
        try measure("view", "write", perTransaction: 1,
                    hand: { view.jsonBytes().count },
                    codable: { try encoder.encode(codableView).count })
        try measure("participant request", "write", perTransaction: 4,
                    hand: { request.jsonBytes().count },
                    codable: { try encoder.encode(codableRequest).count })
        try measure("participant request", "read", perTransaction: 4,
                    hand: { try ParticipantRequest(json: requestBytes).branch },
                    codable: { try decoder.decode(CodableRequest.self, from: Data(requestBytes)).branch })
        try measure("participant reply", "write", perTransaction: 4,
                    hand: { reply.jsonBytes().count },
                    codable: { try encoder.encode(codableReply).count })
        try measure("participant reply", "read", perTransaction: 4,
                    hand: { try JSONValue(parsing: replyBytes)["status"]?.stringValue?.count ?? 0 },
                    codable: { try decoder.decode(CodableReply.self, from: Data(replyBytes)).status.count })
        // Log records are read only at start (replay): nothing per transaction.
        try measure("log record (begin)", "read", perTransaction: 0,
                    hand: { try LogEntry(type: beginRecord.type, payload: beginRecord.payload).gid.rawValue.count },
                    codable: { try decoder.decode(CodableBegin.self, from: Data(beginRecord.payload)).gid.count })

        print("JSON shapes: hand-written vs Codable, \(iterations) operations × \(rounds) rounds (median), \(Machine.current().build) build")
        print("  shape                  dir      hand ns  codable ns   ratio   Codable's extra µs per 2PC tx")
        for row in rows {
            print("  \(row.shape.padding(toLength: 22, withPad: " ", startingAt: 0)) \(row.direction.padding(toLength: 6, withPad: " ", startingAt: 0)) \(String(format: "%9.0f %11.0f %7.2f %12.2f", row.handNanoseconds, row.codableNanoseconds, row.ratio, row.codableExtraMicrosecondsPerTransaction))")
        }
        if let json {
            let results = Results(machine: .current(), iterations: iterations, rounds: rounds, rows: rows)
            let out = JSONEncoder()
            out.outputFormatting = [.prettyPrinted, .sortedKeys]
            try out.encode(results).write(to: URL(fileURLWithPath: json))
            print("wrote \(json)")
        }
    }
}
