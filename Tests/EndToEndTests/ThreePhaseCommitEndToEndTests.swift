import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// 3PC with a real dtxd and real participant processes: what it adds over 2PC is that
/// participants finish a transaction by themselves when dtxd dies and stays dead.
@Suite(.serialized) struct ThreePhaseCommitEndToEndTests {
    /// Seconds a 3PC branch waits before it acts alone; short, so these tests stay fast.
    private static let participantTimeout = 1.0
    /// Long enough for every participant to run termination a few times over.
    private static let settle = Duration.seconds(5)

    init() {
        // Inherited by the memory participants the clusters start (only 3PC branches use it).
        setenv("DTX_PARTICIPANT_3PC_TIMEOUT", "\(Self.participantTimeout)", 1)
    }

    private func submission(_ gid: String, _ names: [String], protocol proto: TransactionProtocol = .threePhaseCommit, payloads: [JSONValue?] = [], timeout: Double = 10, wait: Bool = true) -> TransactionSubmission {
        TransactionSubmission(
            gid: gid, protocol: proto,
            branches: names.enumerated().map { BranchSpec(participant: $0.element, operation: "op\($0.offset)", payload: payloads.indices.contains($0.offset) ? payloads[$0.offset] : nil) },
            timeout: timeout, wait: wait
        )
    }

    /// Starts dtxd with `failpoints` and one participant per name.
    private func startCluster(_ name: String, daemonFailpoints: String? = nil, _ names: [String]) async throws -> Cluster {
        let cluster = try Cluster(name)
        try await cluster.startDaemon(failpoints: daemonFailpoints)
        for participant in names { try await cluster.startParticipant(participant) }
        return cluster
    }

    /// The same crash under 2PC: dtxd, restarted with `failpoints`, dies running a 2PC
    /// transaction on `names`. Long after 3PC's participants would have finished, 2PC's
    /// are all still prepared: in doubt until dtxd returns.
    private func twoPhaseStaysInDoubt(_ cluster: Cluster, failpoints: String, gid: String, _ names: [String]) async throws -> Bool {
        try await cluster.startDaemon(failpoints: failpoints)
        _ = try? await cluster.client.submit(submission(gid, names, protocol: .twoPhaseCommit))
        guard try await cluster.daemon?.waitForExit() == SIGKILL else { return false }
        try await Task.sleep(for: Self.settle)
        return try await cluster.all(names, gid: gid, are: "prepared", expected: names.count)
    }

    /// Restarts a participant from its journal while dtxd is down (the cluster's own start
    /// waits for a registration); returns once it listens. Its new port is not the one its
    /// peers recorded, so only it can ask them, not the other way round.
    private func restartWithoutCoordinator(_ cluster: Cluster, _ name: String) async throws -> ChildProcess {
        let child = try ChildProcess("memory-participant", [
            "--name", name, "--coordinator", cluster.url, "--listen", "127.0.0.1:0", "--journal", cluster.directory + "/\(name).journal", "--log-level", "warning",
        ])
        _ = try await child.waitForOutput { $0.contains("memory-participant \(name) listening on ") ? true : nil }
        return child
    }

    /// The records a participant's journal holds for `gid`.
    private func journalRecords(_ cluster: Cluster, _ name: String, gid: String) throws -> [[String: Any]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: cluster.directory + "/\(name).journal"))
        let branches = ((try JSONSerialization.jsonObject(with: data) as? [String: Any])?["branches"] as? [[String: Any]]) ?? []
        return branches.filter { $0["gid"] as? String == gid }
    }

    @Test func allYesCommitsEverywhere() async throws {
        let cluster = try await startCluster("e2e3-commit", ["a", "b", "c"])
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }

        let view = try await cluster.client.submit(submission("t3-commit", ["a", "b", "c"]))
        #expect(view.protocol == .threePhaseCommit)
        #expect(view.status == "committed")
        #expect(view.decision == .commit)
        #expect(view.heuristic == false)
        #expect(view.branches.map(\.state) == ["committed", "committed", "committed"])
        #expect(view.branches.allSatisfy { $0.result?["operation"] != nil })
        #expect(try await cluster.all(["a", "b", "c"], gid: "t3-commit", are: "committed", expected: 3))

        // What a participant running termination is told: the coordinator's state, and
        // aborted for a gid it never saw (presumed abort: nobody can be in p).
        let state = try await http("GET", cluster.url + "/v1/transactions/t3-commit/state?branch=1")
        #expect(state.status == 200)
        #expect((state.json as? [String: Any])?["state"] as? String == "committed")
        let unknown = try await http("GET", cluster.url + "/v1/transactions/never-seen/state")
        #expect((unknown.json as? [String: Any])?["state"] as? String == "aborted")
        // A participant answers a peer's question about a finished branch from its record.
        let peer = try await http("GET", cluster.participantURLs["b"]! + "/dtx/state?gid=t3-commit&branch=1")
        #expect((peer.json as? [String: Any])?["status"] as? String == "committed")
    }

    @Test func oneNoVoteAbortsEverywhereAndInteractiveIsRefused() async throws {
        let cluster = try await startCluster("e2e3-no", ["a", "b", "c"])
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }

        let view = try await cluster.client.submit(submission("t3-no", ["a", "b", "c"], payloads: [nil, .object(["vote": .string("no")]), nil]))
        #expect(view.decision == .abort)
        #expect(view.branches[1].state == "voted_no")
        #expect(try await eventually { try await cluster.all(["a", "b", "c"], gid: "t3-no", are: "rolled_back", expected: 3) })
        #expect(try await eventually { try await cluster.client.transaction("t3-no").status == "aborted" })

        let interactive = try await http("POST", cluster.url + "/v1/transactions", body: #"{"gid":"t3-open","protocol":"3pc","interactive":true}"#)
        #expect(interactive.status == 400)
        #expect(interactive.errorCode == "invalid_submission")
    }

    /// dtxd dies once every branch voted yes (all in w) and is not restarted: 3PC's
    /// participants abort by themselves; 2PC's, in the same spot, stay prepared.
    @Test func dtxdDeadBeforeThePreCommitAbortsEverywhereWhere2PCStaysInDoubt() async throws {
        let cluster = try await startCluster("e2e3-kill-w", daemonFailpoints: "before-pre-commit-decision,before-commit-decision", ["a", "b", "c"])
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }

        _ = try? await cluster.client.submit(submission("t3-w", ["a", "b", "c"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await eventually(seconds: 15) { try await cluster.all(["a", "b", "c"], gid: "t3-w", are: "rolled_back", expected: 3) })

        #expect(try await twoPhaseStaysInDoubt(cluster, failpoints: "before-commit-decision", gid: "t2-w", ["a", "b", "c"]))
    }

    /// dtxd dies once the pre-commit is durable and one participant acknowledged PRECOMMIT:
    /// the rest learn p from that one and everyone commits.
    @Test func dtxdDeadAfterSomePreCommitsCommitsEverywhere() async throws {
        let cluster = try await startCluster("e2e3-kill-p", daemonFailpoints: "after-pre-commit-acknowledged", ["a", "b", "c"])
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }

        _ = try? await cluster.client.submit(submission("t3-p", ["a", "b", "c"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await eventually(seconds: 15) { try await cluster.all(["a", "b", "c"], gid: "t3-p", are: "committed", expected: 3) })
    }

    /// dtxd dies right after logging the commit decision: 3PC's participants (all in p)
    /// commit by themselves; 2PC's stay prepared until dtxd returns.
    @Test func dtxdDeadAfterTheCommitDecisionCommitsEverywhereWhere2PCStaysInDoubt() async throws {
        let cluster = try await startCluster("e2e3-kill-c", daemonFailpoints: "after-commit-decision", ["a", "b"])
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }

        _ = try? await cluster.client.submit(submission("t3-c", ["a", "b"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await eventually(seconds: 15) { try await cluster.all(["a", "b"], gid: "t3-c", are: "committed", expected: 2) })

        #expect(try await twoPhaseStaysInDoubt(cluster, failpoints: "after-commit-decision", gid: "t2-c", ["a", "b"]))
    }

    /// A participant killed once prepared (w), before its vote, with dtxd then killed
    /// too: restarted, it aborts through termination, the way its peer did.
    @Test func aParticipantKilledInWRecoversThroughTermination() async throws {
        try await killParticipantThenDaemon("e2e3-crash-w", gid: "t3-crash-w", failpoint: "after-can-commit=crash", outcome: "rolled_back") { record in
            // Prepared, with the peers termination will ask, and not pre-committed.
            record["state"] as? String == "prepared" && record["participants"] != nil && record["preCommitted"] == nil
        }
    }

    /// A participant killed once pre-committed (p), with dtxd then killed too: restarted,
    /// it commits through termination, as its peer (in p or committed) did.
    @Test func aParticipantKilledInPRecoversThroughTermination() async throws {
        try await killParticipantThenDaemon("e2e3-crash-p", gid: "t3-crash-p", failpoint: "after-pre-commit=crash", outcome: "committed") { record in
            record["state"] as? String == "prepared" && record["preCommitted"] as? Bool == true
        }
    }

    /// Participant b dies at `failpoint`, its journal holding what `killedIn` checks, and
    /// dtxd is killed after it. Restarted, b can only ask its peer a (termination), and
    /// both end up `outcome`.
    private func killParticipantThenDaemon(_ name: String, gid: String, failpoint: String, outcome: String,
                                           killedIn: ([String: Any]) -> Bool) async throws {
        let cluster = try await startCluster(name, ["a"])
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startParticipant("b", failpoints: failpoint)

        _ = try await cluster.client.submit(submission(gid, ["a", "b"], wait: false))
        #expect(try await cluster.participants["b"]?.waitForExit() == SIGKILL)
        try await cluster.killDaemon()
        let records = try journalRecords(cluster, "b", gid: gid)
        #expect(records.count == 1 && killedIn(records[0]))

        let b = try await restartWithoutCoordinator(cluster, "b")
        defer { b.kill(SIGKILL) }
        #expect(try await eventually(seconds: 15) { try journalRecords(cluster, "b", gid: gid).first?["state"] as? String == outcome })
        #expect(try await eventually(seconds: 15) { try await cluster.all(["a"], gid: gid, are: outcome, expected: 1) })
    }
}
