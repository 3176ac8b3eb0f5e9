import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// Traces from real processes: dtxd and two memory participants export their spans over
/// OTLP/HTTP (JSON) to a small receiver (`Tests/Tools/otlp_receiver.py`), and the tree is
/// checked: one trace per transaction (the submission's `traceparent`, else a new one),
/// the transaction span under the caller's span, phases under it, each message under its
/// phase, and each participant's span under the message that reached it (2PC, saga and
/// 3PC, whose messages the kit serves on routes of their own); with gid,
/// protocol, branch, participant and outcome.
@Suite struct TracingTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    struct Span {
        var service: String
        var traceID: String
        var spanID: String
        var parentID: String
        var name: String
        var attributes: [String: Any]

        func string(_ key: String) -> String? { attributes[key] as? String }
        func int(_ key: String) -> Int? { (attributes[key] as? NSNumber)?.intValue }
    }

    static func spans(in file: String) -> [Span] {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
            return Span(service: object["service"] as? String ?? "", traceID: object["traceId"] as? String ?? "", spanID: object["spanId"] as? String ?? "",
                        parentID: object["parentSpanId"] as? String ?? "", name: object["name"] as? String ?? "",
                        attributes: object["attributes"] as? [String: Any] ?? [:])
        }
    }

    /// `Tests/Tools/otlp_receiver.py`, appending the spans it receives to `file`; its URL.
    static func startReceiver(writingTo file: String) async throws -> (ChildProcess, String) {
        let receiver = try ChildProcess("/usr/bin/env", ["python3", root + "/Tests/Tools/otlp_receiver.py", "--out", file])
        let url = try await receiver.waitForOutput { text -> String? in
            guard let range = text.range(of: "otlp receiver listening on ") else { return nil }
            return text[range.upperBound...].split(separator: "\n").first.map(String.init)
        }
        return (receiver, url)
    }

    @Test func eachTransactionIsOneTraceFromTheCallerToTheParticipants() async throws {
        let cluster = try Cluster("tracing")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        let file = cluster.directory + "/spans.jsonl"
        let (receiver, collector) = try await Self.startReceiver(writingTo: file)
        defer { receiver.kill(SIGKILL) }
        // Spans leave every 100 ms instead of 250 ms (the OpenTelemetry variable).
        let export = ["--otlp-endpoint", collector]
        let quick = ["OTEL_BSP_SCHEDULE_DELAY": "100"]
        try await cluster.startDaemon(arguments: export, environment: quick)
        try await cluster.startParticipant("a", arguments: export, environment: quick)
        try await cluster.startParticipant("c", arguments: export, environment: quick)

        // A 2PC transaction continuing the caller's trace; a saga starting one of its own.
        let callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736", callerSpan = "00f067aa0ba902b7"
        let submitted = try await http("POST", cluster.url + "/v1/transactions",
                                       body: #"{"gid":"traced-2pc","protocol":"2pc","branches":[{"participant":"a","operation":"x"},{"participant":"c","operation":"y"}],"wait":true}"#,
                                       headers: ["traceparent": "00-\(callerTrace)-\(callerSpan)-01"])
        #expect(submitted.status == 201, "\(submitted)")
        let saga = try await cluster.client.submit(TransactionSubmission(
            gid: "traced-saga", protocol: .saga, branches: [BranchSpec(participant: "a", operation: "x"), BranchSpec(participant: "c", operation: "y")], wait: true))
        #expect(saga.status == "committed")
        let threePhase = try await cluster.client.submit(TransactionSubmission(
            gid: "traced-3pc", protocol: .threePhaseCommit, branches: [BranchSpec(participant: "a", operation: "x"), BranchSpec(participant: "c", operation: "y")], wait: true))
        #expect(threePhase.status == "committed")

        // 2PC: the transaction, two phases, four messages, four participant spans; the
        // saga: the transaction, one phase, two actions and two participant spans; 3PC:
        // the transaction, three phases, six messages and six participant spans.
        var spans: [Span] = []
        #expect(await eventually {
            spans = Self.spans(in: file)
            return spans.filter { $0.string("dtx.gid") == "traced-2pc" }.count >= 11 && spans.filter { $0.string("dtx.gid") == "traced-saga" }.count >= 6
                && spans.filter { $0.string("dtx.gid") == "traced-3pc" }.count >= 16
        }, "spans received: \(spans.map { "\($0.service) \($0.name) \($0.attributes)" })")

        for (gid, proto, messages) in [("traced-2pc", "2pc", 4), ("traced-saga", "saga", 2), ("traced-3pc", "3pc", 6)] {
            let mine = spans.filter { $0.string("dtx.gid") == gid }
            let byID = Dictionary(mine.map { ($0.spanID, $0) }, uniquingKeysWith: { first, _ in first })
            let transactions = mine.filter { $0.name == "dtx.transaction" }
            try #require(transactions.count == 1, "\(gid): one transaction span, not \(transactions.count)")
            let transaction = transactions[0]
            #expect(Set(mine.map(\.traceID)) == [transaction.traceID], "\(gid): one trace")
            #expect(transaction.service == "dtxd" && transaction.string("dtx.protocol") == proto && transaction.string("dtx.outcome") == "committed",
                    "\(gid): \(transaction.attributes)")
            if gid == "traced-2pc" {
                #expect(transaction.traceID == callerTrace && transaction.parentID == callerSpan, "the caller's trace and span: \(transaction)")
            } else {
                #expect(transaction.parentID.isEmpty && transaction.traceID != callerTrace, "a trace of its own: \(transaction)")
            }
            let phases = mine.filter { $0.name == "dtx.phase" }
            #expect(phases.allSatisfy { $0.parentID == transaction.spanID } && !phases.isEmpty, "\(gid): phases under the transaction")
            let sent = mine.filter { $0.name == "dtx.message" }
            #expect(sent.count == messages, "\(gid): \(sent.map(\.attributes))")
            for message in sent {
                #expect(byID[message.parentID]?.name == "dtx.phase", "\(gid): \(message.attributes) under a phase")
                #expect(message.int("dtx.branch") != nil && message.string("dtx.participant") != nil && message.string("dtx.answer") != nil
                        && message.string("dtx.protocol") == proto, "\(message.attributes)")
            }
            let handled = mine.filter { $0.name == "dtx.participant" }
            #expect(handled.count == messages, "\(gid): \(handled.map(\.attributes))")
            for span in handled {
                let parent = byID[span.parentID]
                #expect(parent?.name == "dtx.message" && parent?.int("dtx.branch") == span.int("dtx.branch")
                        && parent?.string("dtx.message") == span.string("dtx.message"), "\(span.attributes) under its message")
                #expect(span.service == span.string("dtx.participant") && parent?.string("dtx.participant") == span.service, "\(span.service): \(span.attributes)")
            }
        }
    }

    /// What ended since the last export leaves when dtxd stops: with exports 10 minutes
    /// apart, a transaction's spans reach the collector only through the flush at SIGTERM.
    @Test func dtxdSendsItsLastSpansWhenItStops() async throws {
        let cluster = try Cluster("tracing-stop")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        let file = cluster.directory + "/spans.jsonl"
        let (receiver, collector) = try await Self.startReceiver(writingTo: file)
        defer { receiver.kill(SIGKILL) }
        try await cluster.startDaemon(arguments: ["--otlp-endpoint", collector], environment: ["OTEL_BSP_SCHEDULE_DELAY": "600000"])
        try await cluster.startParticipant("a")
        let view = try await cluster.client.submit(TransactionSubmission(gid: "traced-at-stop", branches: [BranchSpec(participant: "a", operation: "x")], wait: true))
        #expect(view.status == "committed")
        #expect(Self.spans(in: file).isEmpty, "nothing is exported before the interval")
        cluster.daemon?.kill(SIGTERM)
        #expect(try await cluster.daemon?.waitForExit() == 0)
        // One branch: COMMIT_ONE_PHASE, in one phase.
        let spans = Self.spans(in: file).filter { $0.string("dtx.gid") == "traced-at-stop" }
        #expect(spans.map(\.name).sorted() == ["dtx.message", "dtx.phase", "dtx.transaction"], "\(spans.map(\.name))")
        #expect(spans.first { $0.name == "dtx.message" }?.string("dtx.message") == "commit_one_phase")
    }
}
