import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// 2PC with a real dtxd and real participant processes, killed with SIGKILL at failpoints.
@Suite(.serialized) struct TwoPhaseCommitEndToEndTests {
    /// dtxd with the last-agent optimisation (off by default).
    private let lastAgent = ["--last-agent", "on"]

    private func transfer(_ gid: String, _ names: [String], payloads: [JSONValue?] = [], timeout: Double = 10, wait: Bool = true) -> TransactionSubmission {
        TransactionSubmission(
            gid: gid, protocol: .twoPhaseCommit,
            branches: names.enumerated().map { BranchSpec(participant: $0.element, operation: "op\($0.offset)", payload: payloads.indices.contains($0.offset) ? payloads[$0.offset] : nil) },
            timeout: timeout, wait: wait
        )
    }

    @Test func allYesCommitsEverywhereAndResubmissionIsIdempotent() async throws {
        let cluster = try Cluster("e2e-commit")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b", "c"] { try await cluster.startParticipant(name) }

        let submission = transfer("t-commit", ["a", "b", "c"])
        let view = try await cluster.client.submit(submission)
        #expect(view.status == "committed")
        #expect(view.decision == .commit)
        #expect(view.branches.map(\.state) == ["committed", "committed", "committed"])
        #expect(view.branches.allSatisfy { $0.result?["operation"] != nil })
        #expect(try await cluster.all(["a", "b", "c"], gid: "t-commit", are: "committed", expected: 3))

        // The same gid and spec again: the same transaction, 200 instead of 201, nothing re-run.
        let again = try await http("POST", cluster.url + "/v1/transactions", body: String(decoding: try JSONEncoder().encode(submission), as: UTF8.self))
        #expect(again.status == 200)
        #expect((again.json as? [String: Any])?["status"] as? String == "committed")
        // The same gid with another spec is a conflict.
        let other = try await http("POST", cluster.url + "/v1/transactions", body: #"{"gid":"t-commit","protocol":"2pc","branches":[{"participant":"a","operation":"other"}]}"#)
        #expect(other.status == 409)
        #expect(other.errorCode == "gid_conflict")
        #expect(try await cluster.client.outcome(gid: "t-commit", branch: 1) == "committed")
        #expect(try await cluster.client.outcome(gid: "never-seen") == "aborted")
    }

    @Test func aParticipantListedWithOtherProtocolsRegistersAgainButLeavesItsNameToAnotherURL() async throws {
        let cluster = try Cluster("e2e-relist")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let own = try await cluster.startParticipant("a")
        let served = try await cluster.client.participant("a")
        #expect(served.batch == true)

        // dtxd lists it at its URL with less than it serves (as from an older version
        // of the process): its next heartbeat (every second) registers what it serves.
        _ = try await cluster.client.register(ParticipantRegistration(name: "a", url: own, protocols: [.twoPhaseCommit]))
        #expect(await eventually(seconds: 10) { (try? await cluster.client.participant("a")).map { Set($0.protocols) == Set(served.protocols) && $0.batch == true } ?? false })

        // Another process takes the name: this one says so and does not take it back.
        _ = try await cluster.client.register(ParticipantRegistration(name: "a", url: "http://127.0.0.1:9", protocols: [.twoPhaseCommit]))
        let process = try #require(cluster.participants["a"])
        #expect(await eventually(seconds: 10) { process.stdout.contains("lists this participant's name at another URL") || process.stderr.contains("lists this participant's name at another URL") })
        try await Task.sleep(for: .seconds(2.5))
        #expect(try await cluster.client.participant("a").url == "http://127.0.0.1:9")
    }

    @Test func oneNoVoteRollsBackEverywhere() async throws {
        let cluster = try Cluster("e2e-no")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b", "c"] { try await cluster.startParticipant(name) }

        let view = try await cluster.client.submit(transfer("t-no", ["a", "b", "c"], payloads: [nil, .object(["vote": .string("no")]), nil]))
        #expect(view.decision == .abort)
        #expect(view.branches[1].state == "voted_no")
        #expect(view.error != nil)
        #expect(view.branches[1].result?["error"] != nil)
        // Every branch that prepared is rolled back; the refusing one never prepared.
        #expect(try await eventually { try await cluster.all(["a", "c"], gid: "t-no", are: "rolled_back", expected: 2) })
        #expect(try await cluster.branchStates("b", gid: "t-no").values.allSatisfy { $0 == "rolled_back" })
        #expect(try await eventually { try await cluster.client.transaction("t-no").status == "aborted" })
    }

    /// A PREPARE that reaches nobody (connection refused) is not a NO: it is sent again
    /// with backoff, and the transaction commits when the participant is back in time.
    @Test func aParticipantUnreachableInPhaseOneIsAskedAgainAndCommitsWhenItReturnsInTime() async throws {
        let cluster = try Cluster("e2e-unreached")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        try await cluster.killParticipant("b")

        _ = try await cluster.client.submit(transfer("t-unreached", ["a", "b"], timeout: 30, wait: false))
        #expect(try await eventually { try await cluster.client.transaction("t-unreached").branches[1].attempts >= 3 })
        let waiting = try await cluster.client.transaction("t-unreached")
        #expect(waiting.status == "preparing")
        #expect(waiting.branches[1].lastError?.contains("connection refused") == true, "\(waiting.branches[1])")
        #expect(waiting.timeline.contains { $0.event == "prepare: not delivered" })
        try await cluster.startParticipant("b")
        #expect(try await eventually(seconds: 40) { try await cluster.client.transaction("t-unreached").status == "committed" })
        #expect(try await cluster.all(["a", "b"], gid: "t-unreached", are: "committed", expected: 2))
    }

    @Test func aParticipantUnreachableUntilTheTimeoutAbortsAndIsRolledBackWhenItReturns() async throws {
        let cluster = try Cluster("e2e-unreachable")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        try await cluster.killParticipant("b")

        let view = try await cluster.client.submit(transfer("t-unreachable", ["a", "b"], timeout: 2))
        #expect(view.decision == .abort)
        #expect(try await eventually { try await cluster.all(["a"], gid: "t-unreachable", are: "rolled_back", expected: 1) })
        // b may have prepared before it died, so the coordinator keeps sending ROLLBACK until it answers.
        try await cluster.startParticipant("b")
        #expect(try await eventually(seconds: 40) { try await cluster.client.transaction("t-unreachable").status == "aborted" })
        #expect(try await cluster.branchStates("b", gid: "t-unreachable").values.allSatisfy { $0 == "rolled_back" })
    }

    @Test func aParticipantDownInPhaseTwoIsRetriedAndCommitsWhenItReturns() async throws {
        let cluster = try Cluster("e2e-phase-two")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "commit=crash")

        _ = try await cluster.client.submit(transfer("t-phase-two", ["a", "b"]))
        #expect(try await eventually { try await cluster.client.transaction("t-phase-two").branches[1].attempts >= 2 })
        let stalled = try await cluster.client.transaction("t-phase-two")
        #expect(stalled.status == "committing", "\(stalled.branches.map { "\($0.participant) \($0.state) \($0.lastError ?? "")" }) \(stalled.timeline.map(\.event))")
        #expect(stalled.decision == .commit)
        #expect(stalled.branches[0].state == "committed")
        #expect(try await cluster.client.outcome(gid: "t-phase-two", branch: 1) == "committed")

        // b comes back (prepared, from its journal) and is committed, by the coordinator's
        // retry or by its own in-doubt recovery, whichever comes first.
        try await cluster.startParticipant("b")
        #expect(try await eventually(seconds: 40) { try await cluster.client.transaction("t-phase-two").status == "committed" })
        #expect(try await cluster.all(["a", "b"], gid: "t-phase-two", are: "committed", expected: 2))
    }

    /// A branch that keeps failing makes its transaction stuck, and the view says why and
    /// when the next attempt goes; both clear once the participant answers.
    @Test func aStuckTransactionSaysWhyAndWhenItIsRetried() async throws {
        let cluster = try Cluster("e2e-stuck")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: ["--stuck-after", "3"])
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "commit=crash")

        _ = try await cluster.client.submit(transfer("t-stuck", ["a", "b"], wait: false))
        #expect(try await eventually(seconds: 30) { try await cluster.client.transaction("t-stuck").stuck })
        let stuck = try await cluster.client.transaction("t-stuck")
        let reason = try #require(stuck.stuckReason)
        #expect(reason.contains("branch 1 (b, committing)") && reason.contains("attempts; last error:"), "\(reason)")
        #expect(stuck.branches[1].attempts >= 3)
        #expect(try await eventually { try await cluster.client.transaction("t-stuck").branches[1].nextRetryAt != nil })
        #expect(stuck.branches[0].nextRetryAt == nil)

        // An operator retries now, with a reason (kept in the audit), then brings b back.
        let retried = try await run("dtx", ["retry", "t-stuck", "--reason", "b is back", "--operator", "alice", "--url", cluster.url])
        #expect(retried.status == 0, "\(retried)")
        try await cluster.startParticipant("b")
        #expect(try await eventually(seconds: 40) { try await cluster.client.transaction("t-stuck").status == "committed" })
        let done = try await cluster.client.transaction("t-stuck")
        #expect(!done.stuck && done.stuckReason == nil && done.branches.allSatisfy { $0.nextRetryAt == nil })
        let audit = try #require(done.audit)
        #expect(audit.count == 1 && audit[0].who == "alice (local)" && audit[0].reason == "b is back" && audit[0].action.hasPrefix("retry now"), "\(audit)")
        let shown = try await run("dtx", ["show", "t-stuck", "--url", cluster.url])
        #expect(shown.out.contains("NEXT RETRY") && shown.out.contains("alice (local)"), "\(shown.out)")
        // Retrying a finished transaction is refused, with a reason to give or not.
        let again = try await run("dtx", ["retry", "t-stuck", "--reason", "again", "--url", cluster.url])
        #expect(again.status == 1 && again.err.contains("nothing is left to retry"), "\(again)")
        let noReason = try await http("POST", cluster.url + "/v1/transactions/t-stuck/retry", body: #"{"reason":"  "}"#)
        #expect(noReason.status == 400 && noReason.errorCode == "invalid_reason")

        // The audit is kept in the log: a restart shows it.
        try await cluster.killDaemon()
        try await cluster.startDaemon(arguments: ["--stuck-after", "3"])
        #expect(try await cluster.client.transaction("t-stuck").audit == audit)
    }

    /// A branch whose participant cannot finish it is resolved by hand: the transaction
    /// finishes without it, the audit says who and why, and a restart keeps both.
    @Test func aBranchResolvedByHandFinishesAStuckTransaction() async throws {
        let cluster = try Cluster("e2e-resolve")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: ["--stuck-after", "2"])
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "commit=crash")
        _ = try await cluster.client.submit(transfer("t-resolve", ["a", "b"], wait: false))
        #expect(try await eventually(seconds: 30) { try await cluster.client.transaction("t-resolve").stuck })

        let early = try await run("dtx", ["resolve", "t-resolve", "0", "--outcome", "committed", "--reason", "x", "--url", cluster.url])
        #expect(early.status == 1 && early.err.contains("branch 0 is committed: it is owed nothing"), "\(early)")
        let resolved = try await run("dtx", ["resolve", "t-resolve", "1", "--outcome", "committed", "--reason", "credit applied by hand", "--operator", "bob",
                                             "--url", cluster.url])
        #expect(resolved.status == 0, "\(resolved)")
        let view = try await cluster.client.transaction("t-resolve")
        #expect(view.status == "committed" && !view.heuristic && view.branches[1].state == "committed", "\(view.status) \(view.branches)")
        #expect(view.audit?.last == AuditRecord(at: view.audit!.last!.at, who: "bob (local)", action: "resolve branch as committed", reason: "credit applied by hand", branch: 1))
        #expect(view.timeline.contains { $0.event == "resolved by hand as committed" && $0.branch == 1 })

        try await cluster.killDaemon()
        try await cluster.startDaemon(arguments: ["--stuck-after", "2"])
        let after = try await cluster.client.transaction("t-resolve")
        #expect(after.status == "committed" && after.audit == view.audit)
    }

    @Test func dtxdKilledAfterTheCommitDecisionCommitsEverywhereAfterRestart() async throws {
        let cluster = try Cluster("e2e-kill-after")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "after-commit-decision")
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(transfer("t-kill-after", ["a", "b"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        // Both voted yes and nobody has been told: in doubt.
        #expect(try await cluster.all(["a", "b"], gid: "t-kill-after", are: "prepared", expected: 2))

        try await cluster.startDaemon()
        #expect(try await eventually(seconds: 30) { try await cluster.all(["a", "b"], gid: "t-kill-after", are: "committed", expected: 2) })
        #expect(try await eventually { try await cluster.client.transaction("t-kill-after").status == "committed" })
    }

    /// A transaction read back from the log after a SIGKILL shows the view it had: when
    /// it was submitted and its own timeout (not the restart's time and the daemon's
    /// default), its branches' results and attempts, its timeline; one resumed after the
    /// restart shows its own time and timeout too.
    @Test func aRestartKeepsEachTransactionsCreationTimeAndTimeout() async throws {
        let cluster = try Cluster("e2e-history")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        var finished = transfer("t-history-done", ["a", "b"])
        finished.timeout = 7
        _ = try await cluster.client.submit(finished)
        // Its history record is lazy: the next transaction's forced decision syncs it.
        _ = try await cluster.client.submit(transfer("t-history-sync", ["a", "b"]))
        let before = try await cluster.client.transaction("t-history-done")
        #expect(before.status == "committed" && before.timeout == 7)
        #expect(before.timeline.count >= 6, "submitted, two votes, the decision, two acknowledgements, finished")
        // Two seconds on, a second transaction is killed at its decision and resumed later.
        try await Task.sleep(for: .seconds(2))
        try await cluster.killDaemon()
        try await cluster.startDaemon(failpoints: "after-commit-decision")
        _ = try? await cluster.client.submit(transfer("t-history-resumed", ["a", "b"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        let killedAt = Date()
        // Views show whole seconds: let the restart fall in a later one.
        try await Task.sleep(for: .milliseconds(1100))

        try await cluster.startDaemon(arguments: ["--default-timeout", "30"])
        let after = try await cluster.client.transaction("t-history-done")
        #expect(after == before)
        #expect(try await eventually { try await cluster.client.transaction("t-history-resumed").status == "committed" })
        let resumed = try await cluster.client.transaction("t-history-resumed")
        #expect(resumed.timeout == 10)
        #expect(resumed.createdAt > before.createdAt && resumed.createdAt <= killedAt, "its own time, not the restart's")
    }

    @Test func dtxdKilledBeforeTheDecisionAbortsEverywhereAfterRestart() async throws {
        let cluster = try Cluster("e2e-kill-before")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "before-commit-decision")
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(transfer("t-kill-before", ["a", "b"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await cluster.all(["a", "b"], gid: "t-kill-before", are: "prepared", expected: 2))

        try await cluster.startDaemon()
        #expect(try await eventually(seconds: 30) { try await cluster.all(["a", "b"], gid: "t-kill-before", are: "rolled_back", expected: 2) })
        // Its lazy `begin` may not have reached the disk: then the gid is unknown, which is
        // abort too (presumed abort); when it did, the restart aborted it.
        #expect(try await cluster.client.outcome(gid: "t-kill-before") == "aborted")
        #expect(await eventually { (try? await cluster.client.transaction("t-kill-before")).map { $0.status == "aborted" } ?? true })
    }

    @Test func aParticipantKilledAfterVotingYesLearnsTheOutcomeAfterRestart() async throws {
        let cluster = try Cluster("e2e-participant-crash")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a", failpoints: "before-commit=crash")
        try await cluster.startParticipant("b")

        _ = try await cluster.client.submit(transfer("t-crash", ["a", "b"], wait: false))
        #expect(try await cluster.participants["a"]?.waitForExit() == SIGKILL)
        // Restarted from its journal, a holds a prepared branch and asks the coordinator.
        try await cluster.startParticipant("a")
        #expect(try await eventually(seconds: 40) { try await cluster.all(["a", "b"], gid: "t-crash", are: "committed", expected: 2) })
        #expect(try await eventually { try await cluster.client.transaction("t-crash").status == "committed" })
    }

    /// Outcomes no forced decision covers (an abort, a single branch's one-phase commit,
    /// an all-read-only commit, an empty interactive commit) are synced before a waiting
    /// caller is told them: dtxd SIGKILLed at the moment it would answer reports each
    /// after a restart.
    @Test func whatAWaitingCallerIsToldSurvivesASIGKILLAtTheAnswer() async throws {
        let cluster = try Cluster("e2e-told")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        let client = cluster.client
        let no: JSONValue = .object(["vote": .string("no")])
        let readOnly: JSONValue = .object(["readOnly": .bool(true)])
        let submitted: [(TransactionSubmission, String)] = [
            (transfer("t-told-one", ["a"]), "committed"),
            (transfer("t-told-one-no", ["a"], payloads: [no]), "aborted"),
            (transfer("t-told-no", ["a", "b"], payloads: [nil, no]), "aborted"),
            (transfer("t-told-read-only", ["a", "b"], payloads: [readOnly, readOnly]), "committed"),
        ]
        var cases: [(gid: String, status: String, run: @Sendable () async throws -> Void)] = submitted.map { submission, status in
            (submission.gid!, status, { _ = try await client.submit(submission) })
        }
        // Interactive, answered by the application's commit or abort request.
        cases.append(("t-told-tcc-empty", "committed", {
            _ = try await client.submit(TransactionSubmission(gid: "t-told-tcc-empty", protocol: .tcc, timeout: 30, interactive: true))
            _ = try await client.commit(gid: "t-told-tcc-empty", wait: true)
        }))
        cases.append(("t-told-2pc-abort", "aborted", {
            _ = try await client.submit(TransactionSubmission(gid: "t-told-2pc-abort", protocol: .twoPhaseCommit, timeout: 30, interactive: true))
            _ = try await client.abort(gid: "t-told-2pc-abort", wait: true)
        }))
        for (gid, _, run) in cases {
            try await cluster.killDaemon()
            try await cluster.startDaemon(failpoints: "before-outcome-answer")
            try? await run()
            #expect(try await cluster.daemon?.waitForExit() == SIGKILL, "\(gid)")
        }

        try await cluster.startDaemon()
        for (gid, status, _) in cases {
            #expect(try await eventually(seconds: 30) { try await client.transaction(gid).status == status }, "\(gid) should be \(status)")
            #expect(try await client.transaction(gid).heuristic == false, "\(gid)")
        }
        #expect(try await client.transaction("t-told-one").branches.map(\.state) == ["committed"])
        #expect(try await client.outcome(gid: "t-told-one", branch: 0) == "committed")
        #expect(try await cluster.all(["a"], gid: "t-told-one", are: "committed", expected: 1))
    }

    // MARK: Last agent (--last-agent on): the last branch commits in one phase and decides.

    @Test func theLastAgentCommitsInOnePhaseAndARefusalRollsBackEveryBranch() async throws {
        let cluster = try Cluster("e2e-agent")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: lastAgent)
        for name in ["a", "b", "c"] { try await cluster.startParticipant(name) }

        let view = try await cluster.client.submit(transfer("t-agent", ["a", "b", "c"]))
        #expect(view.decision == .commit)
        #expect(try await eventually { try await cluster.all(["a", "b", "c"], gid: "t-agent", are: "committed", expected: 3) })
        #expect(try await eventually { try await cluster.client.transaction("t-agent").status == "committed" })

        // The agent refuses: a and b prepared and are rolled back; c's refusal is recorded
        // as a rollback, so that no late copy of its one-phase commit can commit.
        let refused = try await cluster.client.submit(transfer("t-agent-no", ["a", "b", "c"], payloads: [nil, nil, .object(["vote": .string("no")])]))
        #expect(refused.decision == .abort)
        #expect(try await eventually { try await cluster.all(["a", "b", "c"], gid: "t-agent-no", are: "rolled_back", expected: 3) })
        #expect(try await eventually { try await cluster.client.transaction("t-agent-no").status == "aborted" })
    }

    @Test func dtxdKilledAfterTheDelegationAsksTheAgentAndAbortsWhenItHadNotCommitted() async throws {
        let cluster = try Cluster("e2e-agent-delegated")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "after-delegation", arguments: lastAgent)
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(transfer("t-delegated", ["a", "b"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        // a is prepared; b (the agent) was never sent anything.
        #expect(try await cluster.all(["a"], gid: "t-delegated", are: "prepared", expected: 1))
        #expect(try await cluster.branchStates("b", gid: "t-delegated").isEmpty)

        try await cluster.startDaemon(arguments: lastAgent)
        #expect(try await eventually(seconds: 30) { try await cluster.all(["a", "b"], gid: "t-delegated", are: "rolled_back", expected: 2) })
        let view = try await cluster.client.transaction("t-delegated")
        #expect(try await eventually { try await cluster.client.transaction("t-delegated").status == "aborted" })
        #expect(!view.heuristic)
    }

    @Test func dtxdKilledAfterTheAgentCommittedCommitsTheOthersAfterRestart() async throws {
        let cluster = try Cluster("e2e-agent-committed")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "after-one-phase-commit", arguments: lastAgent)
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(transfer("t-agent-done", ["a", "b"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await cluster.all(["a"], gid: "t-agent-done", are: "prepared", expected: 1))
        #expect(try await cluster.all(["b"], gid: "t-agent-done", are: "committed", expected: 1))

        // Nothing but the delegation is in the log: the agent's answer to ROLLBACK
        // (already committed) decides.
        try await cluster.startDaemon(arguments: lastAgent)
        #expect(try await eventually(seconds: 30) { try await cluster.all(["a", "b"], gid: "t-agent-done", are: "committed", expected: 2) })
        #expect(try await eventually { try await cluster.client.transaction("t-agent-done").status == "committed" })
        #expect(try await cluster.client.transaction("t-agent-done").heuristic == false)
    }

    @Test func anAgentKilledAfterCommittingIsAskedUntilItReturnsAndTheOthersCommit() async throws {
        let cluster = try Cluster("e2e-agent-crash")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: lastAgent)
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "after-commit-one-phase=crash")

        _ = try await cluster.client.submit(transfer("t-agent-crash", ["a", "b"], wait: false))
        #expect(try await cluster.participants["b"]?.waitForExit() == SIGKILL)
        // The answer was lost: neither the timeout nor an abort request can end it now.
        try await Task.sleep(for: .seconds(1))
        #expect(try await cluster.client.transaction("t-agent-crash").status == "preparing")
        #expect(try await cluster.all(["a"], gid: "t-agent-crash", are: "prepared", expected: 1))

        try await cluster.startParticipant("b")
        #expect(try await eventually(seconds: 40) { try await cluster.all(["a", "b"], gid: "t-agent-crash", are: "committed", expected: 2) })
        #expect(try await eventually { try await cluster.client.transaction("t-agent-crash").status == "committed" })
        #expect(try await cluster.client.transaction("t-agent-crash").heuristic == false)
    }

    @Test func dtxdKilledBeforeTheDelegationAbortsEverywhereAfterRestart() async throws {
        let cluster = try Cluster("e2e-agent-before")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "before-delegation", arguments: lastAgent)
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(transfer("t-agent-before", ["a", "b"]))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        try await cluster.startDaemon(arguments: lastAgent)
        #expect(try await eventually(seconds: 30) { try await cluster.all(["a"], gid: "t-agent-before", are: "rolled_back", expected: 1) })
        // Its lazy `begin` may not have reached the disk: then the gid is unknown, which is abort too.
        #expect(try await cluster.client.outcome(gid: "t-agent-before", branch: 0) == "aborted")
        #expect(try await cluster.branchStates("b", gid: "t-agent-before").values.allSatisfy { $0 == "rolled_back" })
    }

    @Test func interactiveTransactionsCommitWhatServicesEnlisted() async throws {
        let cluster = try Cluster("e2e-interactive")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        let begun = try await cluster.client.submit(TransactionSubmission(gid: "t-xa", protocol: .twoPhaseCommit, timeout: 30, interactive: true))
        #expect(begun.status == "active")
        // Each service enlists its branch, then prepares its work under the branch id it got.
        for (index, name) in ["a", "b"].enumerated() {
            let enlisted = try await cluster.client.enlist(gid: "t-xa", EnlistRequest(participant: name, operation: "reserve"))
            #expect(enlisted.branch == index)
            let prepared = try await http("POST", cluster.participantURLs[name]! + "/dtx/2pc/prepare", body: #"{"gid":"t-xa","branch":\#(enlisted.branch),"operation":"reserve"}"#)
            #expect(prepared.status == 200)
        }
        let committed = try await cluster.client.commit(gid: "t-xa", wait: true)
        #expect(committed.status == "committed")
        #expect(try await cluster.all(["a", "b"], gid: "t-xa", are: "committed", expected: 2))

        // Enlisting after the commit, or aborting a committed transaction, is refused and changes nothing.
        await #expect(throws: ClientError.self) { try await cluster.client.enlist(gid: "t-xa", EnlistRequest(participant: "a", operation: "late")) }
        await #expect(throws: ClientError.self) { try await cluster.client.abort(gid: "t-xa", reason: "too late") }
        #expect(try await cluster.client.transaction("t-xa").status == "committed")

        // An interactive transaction the application aborts rolls back what was enlisted.
        _ = try await cluster.client.submit(TransactionSubmission(gid: "t-xa-2", protocol: .twoPhaseCommit, timeout: 30, interactive: true))
        let second = try await cluster.client.enlist(gid: "t-xa-2", EnlistRequest(participant: "a", operation: "reserve"))
        _ = try await http("POST", cluster.participantURLs["a"]! + "/dtx/2pc/prepare", body: #"{"gid":"t-xa-2","branch":\#(second.branch),"operation":"reserve"}"#)
        let aborted = try await cluster.client.abort(gid: "t-xa-2", reason: "customer cancelled", wait: true)
        #expect(aborted.decision == .abort)
        #expect(try await eventually { try await cluster.all(["a"], gid: "t-xa-2", are: "rolled_back", expected: 1) })
    }
}
