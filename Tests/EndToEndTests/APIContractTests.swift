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

    /// Each request (method, URL, body) gets its status and error code, as a JSON error.
    private func expectRefused(_ cases: [(String, String, String?, Int, String)]) async throws {
        for (method, url, body, status, code) in cases {
            let exchange = try await http(method, url, body: body)
            #expect(exchange.status == status, "\(method) \(url.prefix(120)) \(body?.prefix(80) ?? "")")
            #expect(exchange.errorCode == code, "\(method) \(url.prefix(120)): \(String(decoding: exchange.body.prefix(300), as: UTF8.self))")
            #expect(exchange.contentType?.hasPrefix("application/json") == true)
        }
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
        try await expectRefused(cases)
        #expect(try await logAppends(cluster) == before, "bad input must not write to the log")
        #expect(try await cluster.client.transaction("done").status == "committed")
    }

    /// A participant in another language encodes `:` in the path (Python's `quote`,
    /// Java's `URLEncoder`): dtxd must answer for the gid it means. Before path
    /// parameters were decoded, `order%3A77/outcome` was answered `aborted` for a
    /// committed transaction, and a participant acting on it would have broken atomicity.
    @Test func pathParametersArePercentDecodedOnceThenValidated() async throws {
        let cluster = try Cluster("e2e-path-encoding")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let name = "pt-A_z.9"  // every kind of character a participant name may hold
        try await cluster.startParticipant(name)
        let u = cluster.url

        // The exchange of the report, as a participant in another language makes it.
        let submitted = try await http("POST", u + "/v1/transactions", body: #"{"gid":"order:77","protocol":"saga","wait":true,"branches":[{"participant":"\#(name)","operation":"x"}]}"#)
        #expect(submitted.status == 201)
        for gid in ["order:77", "order%3A77", "order%3a77", "%6Frder%3A77"] {
            let outcome = try await http("GET", u + "/v1/transactions/\(gid)/outcome")
            #expect(outcome.status == 200 && (outcome.json as? [String: Any])?["outcome"] as? String == "committed", "\(gid): \(String(decoding: outcome.body, as: UTF8.self))")
            #expect((outcome.json as? [String: Any])?["gid"] as? String == "order:77", "\(gid): the answer names the gid meant")
            let view = try await http("GET", u + "/v1/transactions/\(gid)")
            #expect(view.status == 200 && (view.json as? [String: Any])?["status"] as? String == "committed", "\(gid)")
            let state = try await http("GET", u + "/v1/transactions/\(gid)/state?branch=0")
            #expect((state.json as? [String: Any])?["state"] as? String == "committed", "\(gid): \(String(decoding: state.body, as: UTF8.self))")
        }

        // A gid of every allowed character, through every route, by DTXClient (which
        // encodes) and raw, as it is and with every byte encoded.
        let gid = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:"
        let everyByteEncoded = gid.utf8.map { String(format: "%%%02X", $0) }.joined()
        _ = try await cluster.client.submit(TransactionSubmission(gid: gid, protocol: .twoPhaseCommit, interactive: true))
        #expect(try await cluster.client.enlist(gid: gid, EnlistRequest(participant: name, operation: "x")).branch == 0)
        for form in [gid, PathSegment.encode(gid), everyByteEncoded] {
            let view = try await http("GET", u + "/v1/transactions/\(form)")
            #expect(view.status == 200 && (view.json as? [String: Any])?["gid"] as? String == gid, "\(form)")
            let outcome = try await http("GET", u + "/v1/transactions/\(form)/outcome?branch=0")
            #expect((outcome.json as? [String: Any])?["outcome"] as? String == "pending", "\(form): \(String(decoding: outcome.body, as: UTF8.self))")
        }
        _ = try await http("POST", cluster.participantURLs[name]! + "/dtx/2pc/prepare", body: #"{"gid":"\#(gid)","branch":0,"operation":"x"}"#)
        #expect(try await cluster.client.commit(gid: gid, wait: true).status == "committed")
        #expect(try await cluster.client.outcome(gid: gid, branch: 0) == "committed")
        #expect(try await cluster.client.transaction(gid).status == "committed")
        let again = try await http("POST", u + "/v1/transactions/\(everyByteEncoded)/commit", body: "{}")
        #expect(again.status == 200, "committing a committed transaction answers it, whatever the path's encoding")

        // Participant names, as they are and encoded, by hand and by DTXClient.
        for form in [name, PathSegment.encode(name), "pt%2DA%5Fz%2E9"] {
            #expect(try await http("GET", u + "/v1/participants/\(form)").status == 200, "\(form)")
            #expect(try await http("POST", u + "/v1/participants/\(form)/heartbeat").status == 200, "\(form)")
        }
        #expect(try await cluster.client.participant(name).name == name)

        // Invalid values are refused, never looked up and never answered by presumed abort.
        let before = try await logAppends(cluster)
        let refused: [(String, String, Int, String)] = [
            ("GET", "/v1/transactions/order%253A77/outcome", 400, "invalid_gid"),  // decoded once: "order%3A77"
            ("GET", "/v1/transactions/bad!/outcome", 400, "invalid_gid"),
            ("GET", "/v1/transactions/a%2Fb/state", 400, "invalid_gid"),
            ("GET", "/v1/transactions/a%ZZb/outcome", 400, "invalid_gid"),
            ("GET", "/v1/transactions/%C3%A9", 400, "invalid_gid"),
            ("GET", "/v1/transactions/" + String(repeating: "g", count: 129), 400, "invalid_gid"),
            ("POST", "/v1/transactions/bad!/commit", 400, "invalid_gid"),
            ("POST", "/v1/transactions/bad!/abort", 400, "invalid_gid"),
            ("POST", "/v1/transactions/bad!/branches", 400, "invalid_gid"),
            ("GET", "/v1/participants/a%3Ab", 400, "invalid_name"),
            ("POST", "/v1/participants/a%20b/heartbeat", 400, "invalid_name"),
            ("DELETE", "/v1/participants/a%", 400, "invalid_name"),
            ("GET", "/v1/transactions/order:77/outcome?branch=%2B1", 400, "invalid_query"),
            ("GET", "/v1/transactions/order:77/outcome?branch=2147483648", 400, "invalid_query"),
            ("GET", "/v1/transactions?participant=", 400, "invalid_query"),
            ("GET", "/v1/transactions?participant=a:b", 400, "invalid_query"),
            ("GET", "/v1/transactions?limit=%2B5", 400, "invalid_query"),
            ("GET", "/v1/transactions?olderThan=0x10", 400, "invalid_query"),
            ("GET", "/v1/transactions?cursor=1234567890123456789", 400, "invalid_query"),
        ]
        try await expectRefused(refused.map { method, path, status, code in (method, u + path, method == "GET" ? nil : "{}", status, code) })
        #expect(try await logAppends(cluster) == before, "refused requests write nothing")
    }

    /// The smaller findings of fuzzing the API: 405 with `Allow`, timeouts kept to the
    /// millisecond, null as absent, unknown properties refused.
    @Test func methodsTimeoutsNullsAndUnknownProperties() async throws {
        let cluster = try Cluster("e2e-api-details")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        let u = cluster.url

        for (method, path, allow) in [("TRACE", "/v1/transactions", "POST, GET"), ("PATCH", "/v1/transactions/x", "GET"),
                                      ("GET", "/v1/transactions/x/commit", "POST"), ("PUT", "/v1/participants/a", "GET, DELETE"),
                                      ("DELETE", "/healthz", "GET")] {
            let answer = try await http(method, u + path)
            #expect(answer.status == 405 && answer.errorCode == "method_not_allowed", "\(method) \(path)")
            #expect(answer.allow == allow, "\(method) \(path): Allow \(answer.allow ?? "none")")
        }
        #expect(try await http("GET", u + "/v2/nothing").status == 404)

        // A positive timeout never becomes zero: kept to the millisecond, rounded up.
        let tiny = try await http("POST", u + "/v1/transactions", body: #"{"protocol":"2pc","interactive":true,"timeout":0.0001}"#)
        #expect(tiny.status == 201)
        #expect((tiny.json as? [String: Any])?["timeout"] as? Double == 0.001, "\(String(decoding: tiny.body, as: UTF8.self))")

        // In requests null is the same as absent.
        let nulls = try await http("POST", u + "/v1/transactions", body: #"{"gid":null,"protocol":"2pc","interactive":true,"branches":null,"timeout":null,"wait":null}"#)
        #expect(nulls.status == 201, "\(String(decoding: nulls.body, as: UTF8.self))")
        let registered = try await http("POST", u + "/v1/participants", body: #"{"name":"b","url":"http://127.0.0.1:9","protocols":null,"token":null,"batch":null}"#)
        #expect(registered.status == 201, "\(String(decoding: registered.body, as: UTF8.self))")

        // A property the document does not define is refused, and named.
        let before = try await logAppends(cluster)
        let unknown: [(String, String, String)] = [
            ("/v1/transactions", #"{"protocol":"2pc","branches":[{"participant":"a","operation":"x"}],"wiat":true}"#, "wiat"),
            ("/v1/transactions", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x","retry":{"maxAtempts":2}}]}"#, "branches[0].retry.maxAtempts"),
            ("/v1/participants", #"{"name":"c","url":"http://127.0.0.1:9","protocol":["2pc"]}"#, "protocol"),
            ("/v1/transactions/x/commit", #"{"reason":"r","force":true}"#, "force"),
            ("/v1/participants", #"{"name":"c","url":"http://127.0.0.1:9","protocols":["2pc","2pc"]}"#, "each once"),
            ("/v1/participants", #"{"name":"c","url":"http://127.0.0.1:99999"}"#, "port"),
            ("/v1/participants", #"{"name":"c","url":"http://[C2F1A603Ff:Fe9f1fFB]"}"#, "url"),
            ("/v1/transactions", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x","timeout":1e300}]}"#, "timeout"),
        ]
        for (path, body, mentions) in unknown {
            let exchange = try await http("POST", u + path, body: body)
            #expect(exchange.status == 400, "\(path) \(body): \(String(decoding: exchange.body, as: UTF8.self))")
            #expect(String(decoding: exchange.body, as: UTF8.self).contains(mentions), "\(path) \(body): \(String(decoding: exchange.body, as: UTF8.self))")
        }
        let open = try #require((tiny.json as? [String: Any])?["gid"] as? String)
        let whitespace = try await http("POST", u + "/v1/transactions/\(open)/abort", body: #"{"reason":" \t\n"}"#)
        #expect(whitespace.status == 400 && whitespace.errorCode == "invalid_reason", "\(String(decoding: whitespace.body, as: UTF8.self))")
        #expect(try await logAppends(cluster) == before, "refused requests write nothing")
    }

    /// Every branch of a committed saga is told `committed`, before and after a restart
    /// (read back from the log, its pivot decision lists only the steps left to do; the
    /// finished view once answered `aborted` for the others, presumed abort for a
    /// branch that was committed).
    @Test func everyBranchOfACommittedSagaIsToldCommittedAfterARestart() async throws {
        let cluster = try Cluster("e2e-saga-outcome-restart")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        let body = #"{"gid":"trip:9","protocol":"saga","wait":true,"branches":[{"participant":"a","operation":"book"},{"participant":"a","operation":"pay","dependsOn":[0],"compensatable":false}]}"#
        let submitted = try await http("POST", cluster.url + "/v1/transactions", body: body)
        #expect((submitted.json as? [String: Any])?["status"] as? String == "committed", "\(String(decoding: submitted.body, as: UTF8.self))")
        for restarted in [false, true] {
            if restarted {
                try await cluster.killDaemon()
                try await cluster.startDaemon()
            }
            for branch in 0..<2 {
                #expect(try await cluster.client.outcome(gid: "trip:9", branch: branch) == "committed", "branch \(branch), restarted: \(restarted)")
            }
        }
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
        // Msg: a prepare, its submit (twice), one aborted, one whose branch is refused and
        // resolved by hand, and what the document refuses.
        try await record("POST", u + "/v1/transactions", #"{"gid":"m1","protocol":"msg","service":"a","timeout":30,"branches":[{"participant":"b","operation":"ship"},{"participant":"a","operation":"note","dependsOn":[]}]}"#)
        try await record("GET", u + "/v1/transactions/m1")
        try await record("POST", u + "/v1/transactions/m1/commit", #"{"wait":true}"#)
        try await record("POST", u + "/v1/transactions/m1/commit")
        try await record("POST", u + "/v1/transactions", #"{"gid":"m2","protocol":"msg","service":"a","branches":[{"participant":"b","operation":"ship"}]}"#)
        try await record("POST", u + "/v1/transactions/m2/abort")
        try await record("POST", u + "/v1/transactions/m2/commit")
        #expect(exchanges.last?.status == 409, "a submit after the abort")
        try await record("POST", u + "/v1/transactions", #"{"gid":"m3","protocol":"msg","service":"a","branches":[{"participant":"b","operation":"ship","payload":{"vote":"no"}}]}"#)
        try await record("POST", u + "/v1/transactions/m3/commit")
        #expect(await eventually { (try? await cluster.client.transaction("m3"))?.status == "failed" })
        try await record("GET", u + "/v1/transactions/m3")
        try await record("POST", u + "/v1/transactions/m3/branches/0/resolve", #"{"outcome":"aborted","reason":"undo it"}"#)
        #expect(exchanges.last?.status == 409, "a message's branch is never undone")
        try await record("POST", u + "/v1/transactions/m3/branches/0/resolve", #"{"outcome":"committed","reason":"shipped by hand"}"#)
        #expect((exchanges.last?.json as? [String: Any])?["status"] as? String == "committed")
        try await record("GET", u + "/v1/transactions?protocol=msg")
        try await record("POST", u + "/v1/transactions", #"{"protocol":"msg","branches":[{"participant":"b","operation":"ship"}]}"#)
        try await record("POST", u + "/v1/transactions", #"{"protocol":"msg","service":"a","wait":true,"branches":[{"participant":"b","operation":"ship"}]}"#)
        try await record("POST", u + "/v1/transactions", #"{"protocol":"2pc","service":"a","branches":[{"participant":"b","operation":"ship"}]}"#)
        try await record("POST", u + "/v1/transactions", #"{"protocol":"msg","service":"a","branches":[{"participant":"b","operation":"ship","compensatable":false}]}"#)
        try await record("POST", u + "/v1/transactions", #"{"protocol":"msg","service":"ghost","branches":[{"participant":"b","operation":"ship"}]}"#)
        #expect(exchanges.suffix(5).map(\.status) == [400, 400, 400, 400, 422], "\(exchanges.suffix(5).map { String(decoding: $0.body, as: UTF8.self) })")
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
