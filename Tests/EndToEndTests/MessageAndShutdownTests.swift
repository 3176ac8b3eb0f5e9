import DTXAPI
import DTXClient
import DTXCore
import DTXTestSupport
import Foundation
import Testing

/// Duplicate and late messages (at a participant and at the coordinator), a graceful
/// shutdown with work in flight, stuck transactions and operator force, with a real dtxd
/// and real memory participants.
@Suite(.serialized) struct MessageAndShutdownTests {
    /// Makes b answer 503 to the coordinator's COMMIT *and* keeps its own in-doubt
    /// recovery from committing the branch (recovery commits through the resource
    /// manager, behind `before-commit`, not through the `commit` request failpoint).
    private static let commitBlocked = "commit=unavailable,before-commit=unavailable"

    private func transfer(_ gid: String, _ names: [String], wait: Bool = true) -> TransactionSubmission {
        TransactionSubmission(
            gid: gid, protocol: .twoPhaseCommit,
            branches: names.enumerated().map { BranchSpec(participant: $0.element, operation: "op\($0.offset)") },
            timeout: 10, wait: wait
        )
    }

    /// One participant protocol message, straight to a participant.
    private func send(_ message: String, to base: String, gid: String, branch: Int, payload: String? = nil) async throws -> Exchange {
        let payloadMember = payload.map { #","payload":\#($0)"# } ?? ""
        return try await http("POST", base + "/dtx/2pc/" + message, body: #"{"gid":"\#(gid)","branch":\#(branch),"operation":"reserve"\#(payloadMember)}"#)
    }

    private func replyStatus(_ exchange: Exchange) -> String? {
        (exchange.json as? [String: Any])?["status"] as? String
    }

    private func failpoints(_ base: String) async throws -> [String: String] {
        let answer = try await http("GET", base + "/test/failpoints")
        return ((answer.json as? [String: Any])?["failpoints"] as? [String: String]) ?? [:]
    }

    private func clearFailpoints(_ base: String) async throws {
        let cleared = try await http("DELETE", base + "/test/failpoints")
        #expect(cleared.status == 200)
        #expect(try await failpoints(base).isEmpty)
    }

    private func decodeView(_ exchange: Exchange) throws -> TransactionView {
        try JSONDecoder.dtx().decode(TransactionView.self, from: exchange.body)
    }

    /// The value of an unlabelled Prometheus series in a /metrics scrape.
    private func metric(_ name: String, in cluster: Cluster) async throws -> Double? {
        let scrape = try await http("GET", cluster.url + "/metrics")
        let text = String(decoding: scrape.body, as: UTF8.self)
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    // MARK: a. Duplicate and late messages at a participant

    @Test func aParticipantAnswersDuplicateAndLateMessagesIdempotently() async throws {
        // A participant on its own: its coordinator URL answers nothing, so it never
        // registers and its in-doubt recovery never resolves the branches this test
        // prepares (an unknown gid would be presumed aborted by a real coordinator).
        let directory = makeTemporaryDirectory("e2e-participant-messages")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let child = try ChildProcess("memory-participant", [
            "--name", "p", "--coordinator", "http://127.0.0.1:\(freeLoopbackPort())", "--listen", "127.0.0.1:0",
            "--journal", directory + "/p.journal", "--heartbeat", "1", "--recovery-interval", "1", "--log-level", "warning",
        ])
        defer { if child.process.isRunning { child.kill(SIGKILL) } }
        let base = try await child.waitForOutput { text -> String? in
            guard let range = text.range(of: "memory-participant p listening on ") else { return nil }
            let rest = text[range.upperBound...]
            return rest.firstIndex(of: "\n").map { String(rest[..<$0]) }
        }
        func states(_ gid: String) async throws -> [Int: String] {
            let exchange = try await http("GET", base + "/test/state")
            let branches = ((exchange.json as? [String: Any])?["branches"] as? [[String: Any]]) ?? []
            var states: [Int: String] = [:]
            for branch in branches where branch["gid"] as? String == gid {
                if let id = branch["branch"] as? Int, let state = branch["state"] as? String { states[id] = state }
            }
            return states
        }

        // PREPARE twice: prepared both times, one branch.
        for _ in 0..<2 {
            let prepared = try await send("prepare", to: base, gid: "m-dup", branch: 0)
            #expect(prepared.status == 200)
            #expect(replyStatus(prepared) == "prepared")
        }
        #expect(try await states("m-dup") == [0: "prepared"])

        // COMMIT twice: committed both times.
        for _ in 0..<2 {
            let committed = try await send("commit", to: base, gid: "m-dup", branch: 0)
            #expect(committed.status == 200)
            #expect(replyStatus(committed) == "committed")
        }
        #expect(try await states("m-dup") == [0: "committed"])

        // A PREPARE arriving after the commit answers prepared (a duplicate) and changes nothing.
        let latePrepareOfCommitted = try await send("prepare", to: base, gid: "m-dup", branch: 0)
        #expect(latePrepareOfCommitted.status == 200)
        #expect(try await states("m-dup") == [0: "committed"])

        // ROLLBACK of a committed branch: refused, the branch stays committed.
        let rollbackCommitted = try await send("rollback", to: base, gid: "m-dup", branch: 0)
        #expect(rollbackCommitted.status == 409)
        #expect(rollbackCommitted.errorCode == "already_committed")
        #expect(try await states("m-dup") == [0: "committed"])

        // Prepared, rolled back (twice), then a late PREPARE: refused, stays rolled back.
        #expect(try await send("prepare", to: base, gid: "m-late", branch: 1).status == 200)
        for _ in 0..<2 {
            let rolledBack = try await send("rollback", to: base, gid: "m-late", branch: 1)
            #expect(rolledBack.status == 200)
            #expect(replyStatus(rolledBack) == "rolled_back")
        }
        let latePrepare = try await send("prepare", to: base, gid: "m-late", branch: 1)
        #expect(latePrepare.status == 409)
        #expect(latePrepare.errorCode == "already_rolled_back")
        #expect(try await states("m-late") == [1: "rolled_back"])
        // Nor does a late COMMIT revive it.
        let lateCommit = try await send("commit", to: base, gid: "m-late", branch: 1)
        #expect(lateCommit.status == 409)
        #expect(lateCommit.errorCode == "already_rolled_back")
        #expect(try await states("m-late") == [1: "rolled_back"])

        // ROLLBACK of a branch never seen: a success (presumed abort), remembered, so the
        // PREPARE that was overtaken by it is refused when it finally arrives.
        let presumed = try await send("rollback", to: base, gid: "m-never", branch: 0)
        #expect(presumed.status == 200)
        #expect(replyStatus(presumed) == "rolled_back")
        let overtaken = try await send("prepare", to: base, gid: "m-never", branch: 0)
        #expect(overtaken.status == 409)
        #expect(overtaken.errorCode == "already_rolled_back")
        #expect(try await states("m-never") == [0: "rolled_back"])

        // COMMIT of a branch never seen: refused, nothing recorded.
        let unknown = try await send("commit", to: base, gid: "m-unknown", branch: 0)
        #expect(unknown.status == 409)
        #expect(unknown.errorCode == "unknown_branch")
        #expect(try await states("m-unknown").isEmpty)

        // Malformed bodies: 400 with a JSON error that says what is wrong; nothing changes.
        let before = try await http("GET", base + "/test/state").body
        let malformed: [(String, String)] = [
            ("not json", "not valid JSON"),
            ("", "empty"),
            ("[1,2]", "not a JSON object"),
            (#"{"gid":"m-bad","operation":"reserve"}"#, "missing field 'branch'"),
            (#"{"gid":"m-bad","branch":"zero","operation":"reserve"}"#, "branch"),
            (#"{"gid":"m-bad","branch":-1,"operation":"reserve"}"#, "branch"),
            (#"{"gid":"","branch":0,"operation":"reserve"}"#, "gid"),
        ]
        for message in ["prepare", "commit", "rollback", "commit_one_phase"] {
            for (body, hint) in malformed {
                let answer = try await http("POST", base + "/dtx/2pc/" + message, body: body)
                #expect(answer.status == 400, "\(message) with \(body.debugDescription)")
                #expect(answer.contentType?.hasPrefix("application/json") == true)
                #expect(answer.errorCode == "bad_request", "\(message) with \(body.debugDescription)")
                let text = ((answer.json as? [String: Any])?["error"] as? [String: Any])?["message"] as? String ?? ""
                #expect(text.contains(hint), "\(message) with \(body.debugDescription): \(text)")
            }
        }
        #expect(try await http("GET", base + "/test/state").body == before)
        #expect(child.process.isRunning)
    }

    // MARK: b. Duplicate and late messages at the coordinator

    @Test func theCoordinatorAnswersDuplicateAndLateRequestsWithoutRerunning() async throws {
        let cluster = try Cluster("e2e-coordinator-duplicates")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        let submission = transfer("t-dup", ["a", "b"])
        let first = try await cluster.client.submit(submission)
        #expect(first.status == "committed")
        #expect(try await cluster.client.outcome(gid: "t-dup") == "committed")
        #expect(try await cluster.client.outcome(gid: "t-dup", branch: 0) == "committed")
        #expect(try await cluster.client.outcome(gid: "t-dup", branch: 1) == "committed")
        let statesBefore = [try await cluster.branchStates("a", gid: "t-dup"), try await cluster.branchStates("b", gid: "t-dup")]
        #expect(statesBefore == [[0: "committed"], [1: "committed"]])
        let committed = try await cluster.client.transaction("t-dup")

        // From now on any PREPARE reaching a or b kills it: a resubmission that re-ran
        // phase one would show as a dead participant.
        for name in ["a", "b"] {
            let armed = try await http("PUT", cluster.participantURLs[name]! + "/test/failpoints", body: #"{"name":"prepare","action":"crash"}"#)
            #expect(armed.status == 200)
        }
        let again = try await http("POST", cluster.url + "/v1/transactions", body: String(decoding: try JSONEncoder().encode(submission), as: UTF8.self))
        #expect(again.status == 200)
        let resubmitted = try decodeView(again)
        #expect(resubmitted.status == "committed")
        #expect(resubmitted.decision == .commit)
        #expect(resubmitted.branches.map(\.state) == ["committed", "committed"])
        #expect(resubmitted.branches.map(\.attempts) == committed.branches.map(\.attempts))
        try await Task.sleep(for: .seconds(1))
        for name in ["a", "b"] { #expect(cluster.participants[name]?.process.isRunning == true, "\(name) received a PREPARE") }
        #expect([try await cluster.branchStates("a", gid: "t-dup"), try await cluster.branchStates("b", gid: "t-dup")] == statesBefore)

        // A commit request for the committed transaction: 200, the transaction unchanged.
        let commitAgain = try await http("POST", cluster.url + "/v1/transactions/t-dup/commit")
        #expect(commitAgain.status == 200)
        #expect(try decodeView(commitAgain) == committed)
        // An abort of it: refused, nothing changes.
        let abort = try await http("POST", cluster.url + "/v1/transactions/t-dup/abort")
        #expect(abort.status == 409)
        #expect(abort.errorCode == "already_finished")
        let abortWithReason = try await http("POST", cluster.url + "/v1/transactions/t-dup/abort", body: #"{"reason":"too late"}"#)
        #expect(abortWithReason.status == 409)
        #expect(abortWithReason.errorCode == "already_finished")
        #expect(try await cluster.client.transaction("t-dup") == committed)
        #expect(try await cluster.client.outcome(gid: "t-dup", branch: 1) == "committed")
        #expect([try await cluster.branchStates("a", gid: "t-dup"), try await cluster.branchStates("b", gid: "t-dup")] == statesBefore)

        // Control: the armed failpoint does catch a PREPARE (so the check above could fail).
        _ = try? await http("POST", cluster.participantURLs["a"]! + "/dtx/2pc/prepare", body: #"{"gid":"t-control","branch":0,"operation":"x"}"#)
        #expect(try await cluster.participants["a"]?.waitForExit() == SIGKILL)
    }

    // MARK: c. Graceful shutdown with work in flight

    @Test func sigtermLeavesACommittingTransactionRecoverable() async throws {
        let cluster = try Cluster("e2e-sigterm")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: Self.commitBlocked)

        let view = try await cluster.client.submit(transfer("t-sigterm", ["a", "b"]))
        #expect(view.status == "committing")
        #expect(view.decision == .commit)
        #expect(view.branches.map(\.state) == ["committed", "committing"])
        #expect(try await cluster.branchStates("a", gid: "t-sigterm") == [0: "committed"])
        #expect(try await cluster.branchStates("b", gid: "t-sigterm") == [1: "prepared"])

        let daemon = try #require(cluster.daemon)
        daemon.kill(SIGTERM)
        let status = try await daemon.waitForExit(seconds: 20)
        #expect(daemon.process.terminationReason == .exit)
        #expect(status == 0, "dtxd stderr: \(daemon.stderr)")
        // Still in doubt at b while the coordinator is away.
        #expect(try await cluster.branchStates("b", gid: "t-sigterm") == [1: "prepared"])

        try await clearFailpoints(cluster.participantURLs["b"]!)
        try await cluster.startDaemon()
        #expect(try await eventually(seconds: 30) { try await cluster.client.transaction("t-sigterm").status == "committed" })
        #expect(try await cluster.all(["a", "b"], gid: "t-sigterm", are: "committed", expected: 2))
        let finished = try await cluster.client.transaction("t-sigterm")
        #expect(finished.decision == .commit)
        #expect(finished.heuristic == false)
        #expect(finished.branches.map(\.state) == ["committed", "committed"])
    }

    // MARK: d. Stuck transactions

    @Test func aTransactionWhosePhaseTwoKeepsFailingIsShownStuck() async throws {
        let cluster = try Cluster("e2e-stuck")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: Self.commitBlocked)

        let view = try await cluster.client.submit(transfer("t-stuck", ["a", "b"]))
        #expect(view.status == "committing")
        #expect(try await eventually { try await cluster.client.transaction("t-stuck").branches[1].attempts >= 5 })

        let stuck = try await cluster.client.transaction("t-stuck")
        #expect(stuck.stuck)
        #expect(stuck.status == "committing")
        #expect(stuck.branches[1].lastError?.contains("503") == true || stuck.branches[1].lastError?.contains("unavailable") == true,
                "lastError: \(stuck.branches[1].lastError ?? "nil")")
        let listed = try await cluster.client.transactions(.init(status: "stuck"))
        #expect(listed.transactions.map(\.gid) == ["t-stuck"])
        #expect(listed.transactions.first?.stuck == true)
        #expect(try await metric("dtx_stuck_transactions", in: cluster) == 1)

        // Once the backoff is long (≥ 3.2 s before the 9th delivery), recover delivers now.
        #expect(try await eventually(seconds: 30) { try await cluster.client.transaction("t-stuck").branches[1].attempts >= 8 })
        let attemptsBefore = try await cluster.client.transaction("t-stuck").branches[1].attempts
        let recovered = try await http("POST", cluster.url + "/v1/admin/recover")
        #expect(recovered.status == 200)
        let report = try JSONDecoder.dtx().decode(RecoveryReport.self, from: recovered.body)
        #expect(report == RecoveryReport(transactions: 1, deliveries: 1))
        #expect(try await eventually(seconds: 1.5) { try await cluster.client.transaction("t-stuck").branches[1].attempts > attemptsBefore })

        try await clearFailpoints(cluster.participantURLs["b"]!)
        _ = try await cluster.client.recover()
        #expect(try await eventually(seconds: 10) { try await cluster.client.transaction("t-stuck").status == "committed" })
        #expect(try await cluster.all(["a", "b"], gid: "t-stuck", are: "committed", expected: 2))
        #expect(try await cluster.client.transaction("t-stuck").stuck == false)
        #expect(try await cluster.client.transactions(.init(status: "stuck")).transactions.isEmpty)
        #expect(try await metric("dtx_stuck_transactions", in: cluster) == 0)
    }

    // MARK: e. Operator force

    @Test func anOperatorForcesAbortOfACommittingTransactionHeuristically() async throws {
        let cluster = try Cluster("e2e-force")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: Self.commitBlocked)

        let view = try await cluster.client.submit(transfer("t-force", ["a", "b"]))
        #expect(view.status == "committing")
        #expect(view.decision == .commit)

        // Forcing the outcome already decided is refused.
        let forceCommit = try await http("POST", cluster.url + "/v1/transactions/t-force/commit", body: #"{"reason":"operator: push it through"}"#)
        #expect(forceCommit.status == 409)
        #expect(forceCommit.errorCode == "cannot_force")
        // An abort now overrides a logged commit: only an operator with a reason may.
        let plainAbort = try await http("POST", cluster.url + "/v1/transactions/t-force/abort")
        #expect(plainAbort.status == 409)
        #expect(plainAbort.errorCode == "reason_required")
        let unchanged = try await cluster.client.transaction("t-force")
        #expect(unchanged.status == "committing")
        #expect(unchanged.decision == .commit)
        #expect(unchanged.heuristic == false)
        #expect(try await cluster.branchStates("b", gid: "t-force") == [1: "prepared"])

        let forced = try await http("POST", cluster.url + "/v1/transactions/t-force/abort", body: #"{"reason":"operator: b is gone for good"}"#)
        #expect(forced.status == 200)
        let forcedView = try decodeView(forced)
        #expect(forcedView.heuristic)
        #expect(forcedView.decision == .abort)
        #expect(forcedView.error == "operator: b is gone for good")

        try await clearFailpoints(cluster.participantURLs["b"]!)
        #expect(try await eventually(seconds: 30) { try await cluster.client.transaction("t-force").status == "aborted" })
        let finished = try await cluster.client.transaction("t-force")
        #expect(finished.heuristic)
        #expect(finished.decision == .abort)
        #expect(finished.stuck == false)
        // The heuristic outcome, as the API reports it: a committed before the override, b rolled back.
        #expect(finished.branches.map(\.state) == ["committed", "rolled_back"])
        #expect(finished.timeline.contains { $0.event == "operator forced abort" && $0.detail == "operator: b is gone for good" })
        #expect(try await cluster.branchStates("a", gid: "t-force") == [0: "committed"])
        #expect(try await cluster.branchStates("b", gid: "t-force") == [1: "rolled_back"])
        let listed = try await cluster.client.transactions(.init(status: "aborted"))
        #expect(listed.transactions.first { $0.gid == "t-force" }?.heuristic == true)
    }
    /// With only `commit=unavailable`, b's own in-doubt recovery asks the coordinator,
    /// learns `committed` and commits the branch while the coordinator's COMMITs still
    /// get 503. An abort forced after that cannot be honoured by b: the transaction must
    /// not claim `aborted` (it stays `aborting`, stuck, showing b's refusal) until an
    /// operator forces commit back.
    /// A forced abort that reaches a participant which had already committed is not
    /// retried forever: the branch is recorded as it ended (committed), the transaction
    /// finishes aborted and heuristic (mixed), and the API says which branch did what.
    @Test func aForcedAbortAParticipantCannotHonourEndsHeuristicallyMixed() async throws {
        let cluster = try Cluster("e2e-force-late")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "commit=unavailable")

        let submitted = try await cluster.client.submit(transfer("t-force-late", ["a", "b"]))
        #expect(submitted.status == "committing")
        #expect(try await eventually { try await cluster.branchStates("b", gid: "t-force-late") == [1: "committed"] })
        let before = try await cluster.client.transaction("t-force-late")
        #expect(before.status == "committing")
        #expect(before.branches.map(\.state) == ["committed", "committing"])

        let forced = try await http("POST", cluster.url + "/v1/transactions/t-force-late/abort", body: #"{"reason":"operator: abort it"}"#)
        #expect(forced.status == 200)
        #expect(try decodeView(forced).heuristic)
        try await clearFailpoints(cluster.participantURLs["b"]!)

        #expect(try await eventually(seconds: 20) { try await cluster.client.transaction("t-force-late").status == "aborted" })
        let finished = try await cluster.client.transaction("t-force-late")
        #expect(finished.heuristic)
        #expect(finished.stuck == false)
        #expect(finished.decision == .abort)
        #expect(finished.branches.map(\.state) == ["committed", "committed"])
        #expect(finished.branches[1].lastError?.contains("already committed") == true, "lastError: \(finished.branches[1].lastError ?? "nil")")
        #expect(try await cluster.all(["a", "b"], gid: "t-force-late", are: "committed", expected: 2))
    }
}
