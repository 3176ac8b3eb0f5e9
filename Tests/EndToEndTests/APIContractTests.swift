import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// The daemon's answers against Schemas/coordinator-api.yaml, and bad input: every
/// mistake gets a 4xx JSON error and changes nothing in the log.
@Suite(.serialized) struct APIContractTests {
    private static let repository: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    private func logAppends(_ cluster: Cluster) async throws -> Double {
        let metrics = try await http("GET", cluster.url + "/metrics")
        let text = String(decoding: metrics.body, as: UTF8.self)
        let line = text.split(separator: "\n").first { $0.hasPrefix("dtx_log_appends ") }
        return Double(line?.split(separator: " ").last ?? "") ?? -1
    }

    @Test func badInputGetsAJSONErrorAndChangesNothing() async throws {
        let cluster = try Cluster("e2e-bad-input")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: ["--max-body-size", "16"])
        try await cluster.startParticipant("a")
        _ = try await cluster.client.submit(TransactionSubmission(gid: "done", branches: [.init(participant: "a", operation: "x"), .init(participant: "a", operation: "y"), ], wait: true))
        _ = try await cluster.client.submit(TransactionSubmission(gid: "refused", branches: [.init(participant: "a", operation: "x", payload: .object(["vote": .string("no")])), .init(participant: "a", operation: "y")], wait: true))
        #expect(try await eventually { try await cluster.client.transaction("refused").status == "aborted" })
        let before = try await logAppends(cluster)

        let u = cluster.url
        let cases: [(String, String, String?, Int, String)] = [
            ("POST", u + "/v1/transactions", "{not json", 400, "invalid_json"),
            ("POST", u + "/v1/transactions", "", 400, "invalid_json"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc"}"#, 400, "invalid_branches"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc","branches":[]}"#, 400, "invalid_branches"),
            ("POST", u + "/v1/transactions", #"{"protocol":"4pc","branches":[{"participant":"a","operation":"x"}]}"#, 400, "invalid_json"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc","branches":[{"participant":"a"}]}"#, 400, "invalid_json"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc","branches":[{"participant":"nobody","operation":"x"}]}"#, 422, "unknown_participant"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc","gid":"bad gid!","branches":[{"participant":"a","operation":"x"}]}"#, 400, "invalid_gid"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc","timeout":-1,"branches":[{"participant":"a","operation":"x"}]}"#, 400, "invalid_timeout"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc","gid":"done","branches":[{"participant":"a","operation":"other"}]}"#, 409, "gid_conflict"),
            ("POST", u + "/v1/transactions", #"{"protocol":"2pc","interactive":true,"branches":[{"participant":"a","operation":"x"}]}"#, 400, "invalid_branches"),
            ("POST", u + "/v1/transactions", "{\"protocol\":\"2pc\",\"branches\":[{\"participant\":\"a\",\"operation\":\"x\",\"payload\":\"" + String(repeating: "x", count: 64 << 10) + "\"}]}", 413, "body_too_large"),
            ("POST", u + "/v1/transactions/refused/commit", "{}", 409, "already_finished"),
            ("POST", u + "/v1/transactions/done/abort", #"{"reason":"changed my mind"}"#, 409, "already_finished"),
            ("POST", u + "/v1/transactions/done/branches", #"{"participant":"a","operation":"x"}"#, 409, "not_open"),
            ("POST", u + "/v1/transactions/nope/commit", "{}", 404, "unknown_transaction"),
            ("GET", u + "/v1/transactions/nope", nil, 404, "unknown_transaction"),
            ("GET", u + "/v1/transactions?limit=0", nil, 400, "invalid_query"),
            ("GET", u + "/v1/transactions?status=sideways", nil, 400, "invalid_query"),
            ("GET", u + "/v1/transactions/done/outcome?branch=-1", nil, 400, "invalid_query"),
            ("POST", u + "/v1/participants", #"{"name":"b","url":"not a url"}"#, 400, "invalid_url"),
            ("POST", u + "/v1/participants", #"{"name":"no spaces please","url":"http://127.0.0.1:1"}"#, 400, "invalid_name"),
            ("POST", u + "/v1/participants", #"{"name":"b"}"#, 400, "invalid_json"),
            ("GET", u + "/v1/participants/nobody", nil, 404, "unknown_participant"),
            ("DELETE", u + "/v1/participants/nobody", nil, 404, "unknown_participant"),
            ("GET", u + "/v2/whatever", nil, 404, "not_found"),
        ]
        for (method, url, body, status, code) in cases {
            let exchange = try await http(method, url, body: body)
            #expect(exchange.status == status, "\(method) \(url.prefix(120)) \(body?.prefix(80) ?? "")")
            #expect(exchange.errorCode == code, "\(method) \(url.prefix(120)): \(String(decoding: exchange.body.prefix(300), as: UTF8.self))")
            #expect(exchange.contentType?.hasPrefix("application/json") == true)
        }
        #expect(try await logAppends(cluster) == before, "bad input must not write to the log")
        #expect(try await cluster.client.transaction("done").status == "committed")
    }

    @Test func aTokenIsRequiredWhenConfigured() async throws {
        let cluster = try Cluster("e2e-token")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: ["--token", "s3cret"])
        let denied = try await http("GET", cluster.url + "/v1/participants")
        #expect(denied.status == 401)
        #expect(denied.errorCode == "unauthorized")
        let allowed = try await http("GET", cluster.url + "/v1/participants", headers: ["Authorization": "Bearer s3cret"])
        #expect(allowed.status == 200)
        #expect(try await http("GET", cluster.url + "/healthz").status == 200)
        // A non-loopback address without a token is refused at start.
        let exposed = try await run("dtxd", ["--data-dir", cluster.directory + "/other", "--listen", "0.0.0.0:0"])
        #expect(exposed.status != 0)
        #expect(exposed.err.contains("needs a bearer token"))
    }

    @Test func answersMatchTheOpenAPIDocument() async throws {
        let cluster = try Cluster("e2e-contract")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        let u = cluster.url
        var exchanges: [Exchange] = []
        func record(_ method: String, _ url: String, _ body: String? = nil) async throws {
            exchanges.append(try await http(method, url, body: body))
        }
        try await record("GET", u + "/healthz")
        try await record("POST", u + "/v1/participants", #"{"name":"c","url":"http://127.0.0.1:9","protocols":["2pc"],"token":"t"}"#)
        try await record("POST", u + "/v1/participants", #"{"name":"c","url":"http://127.0.0.1:9","protocols":["2pc"],"token":"t"}"#)
        try await record("GET", u + "/v1/participants")
        try await record("GET", u + "/v1/participants/a")
        try await record("POST", u + "/v1/participants/a/heartbeat")
        try await record("DELETE", u + "/v1/participants/c")
        try await record("GET", u + "/v1/participants/c")
        try await record("POST", u + "/v1/transactions", #"{"gid":"c1","protocol":"2pc","branches":[{"participant":"a","operation":"debit","payload":{"amount":5}},{"participant":"b","operation":"credit"}],"wait":true}"#)
        try await record("POST", u + "/v1/transactions", #"{"gid":"c1","protocol":"2pc","branches":[{"participant":"a","operation":"debit","payload":{"amount":5}},{"participant":"b","operation":"credit"}]}"#)
        try await record("POST", u + "/v1/transactions", #"{"gid":"c2","protocol":"2pc","branches":[{"participant":"a","operation":"debit","payload":{"vote":"no"}},{"participant":"b","operation":"credit"}],"wait":true}"#)
        try await record("POST", u + "/v1/transactions", #"{"gid":"c3","protocol":"2pc","branches":[{"participant":"a","operation":"solo"}],"wait":true}"#)
        try await record("POST", u + "/v1/transactions", #"{"gid":"x1","protocol":"2pc","interactive":true,"timeout":30}"#)
        _ = try await http("POST", cluster.participantURLs["a"]! + "/dtx/2pc/prepare", body: #"{"gid":"x1","branch":0,"operation":"reserve"}"#)
        try await record("POST", u + "/v1/transactions/x1/branches", #"{"participant":"a","operation":"reserve"}"#)
        try await record("GET", u + "/v1/transactions/x1/outcome?branch=0")
        try await record("POST", u + "/v1/transactions/x1/commit", #"{"wait":true}"#)
        try await record("POST", u + "/v1/transactions/x1/commit")
        try await record("GET", u + "/v1/transactions/c1")
        try await record("GET", u + "/v1/transactions/c1/outcome")
        try await record("GET", u + "/v1/transactions/unknown/outcome")
        try await record("GET", u + "/v1/transactions?limit=2")
        try await record("GET", u + "/v1/transactions?status=committed&protocol=2pc&participant=a&olderThan=0")
        try await record("POST", u + "/v1/admin/recover")
        try await record("GET", u + "/metrics")
        try await record("POST", u + "/v1/transactions", "{oops")
        try await record("POST", u + "/v1/transactions", #"{"protocol":"2pc","branches":[{"participant":"ghost","operation":"x"}]}"#)
        try await record("POST", u + "/v1/transactions/c2/commit", "{}")
        try await record("GET", u + "/v1/transactions/nope")
        #expect(exchanges.filter { $0.status >= 500 }.isEmpty)

        let file = cluster.directory + "/exchanges.jsonl"
        var lines = ""
        for exchange in exchanges {
            let body: Any = exchange.contentType?.hasPrefix("application/json") == true ? (exchange.json ?? NSNull()) : String(decoding: exchange.body, as: UTF8.self)
            let object: [String: Any] = ["method": exchange.method, "path": exchange.path, "status": exchange.status, "contentType": exchange.contentType ?? "", "body": exchange.status == 204 ? NSNull() : body]
            lines += String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.fragmentsAllowed]), as: UTF8.self) + "\n"
        }
        try lines.write(toFile: file, atomically: true, encoding: .utf8)
        let validator = Process()
        validator.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        validator.arguments = ["python3", Self.repository + "/Tests/Tools/validate_api.py", Self.repository + "/Schemas/coordinator-api.yaml", file]
        let output = Pipe()
        validator.standardOutput = output
        validator.standardError = output
        try validator.run()
        let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        validator.waitUntilExit()
        #expect(validator.terminationStatus == 0, "\(report)")
        #expect(report.contains("validated \(exchanges.count) exchanges, 0 failures"), "\(report)")
    }
}
