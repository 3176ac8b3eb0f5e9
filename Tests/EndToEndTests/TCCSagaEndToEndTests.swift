import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// TCC and Saga with a real dtxd and real memory participants: outcomes, the branch
/// barrier's records at each participant (idempotency, null compensation, no hanging),
/// compensation order, participant and coordinator crashes at failpoints, interactive
/// TCC, bad submissions. Every finished view fetched is checked against
/// Schemas/coordinator-api.yaml; the participant routes driven directly against
/// Schemas/participant-api.yaml.
@Suite(.serialized) struct TCCSagaEndToEndTests {
    // MARK: TCC submit-and-run

    @Test func tccAllTriesSucceedConfirmsEveryBranch() async throws {
        let cluster = try Cluster("e2e-tcc-commit")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let names = ["a", "b", "c"]
        for name in names { try await cluster.startParticipant(name) }
        let recorder = Recorder()

        let submission = TransactionSubmission(gid: "tcc-ok", protocol: .tcc, branches: branches(names), timeout: 5, wait: true)
        let view = try await submit(cluster, submission, recorder)
        #expect(view.status == "committed")
        #expect(view.decision == .commit)
        #expect(view.error == nil)
        #expect(view.branches.map(\.state) == ["confirmed", "confirmed", "confirmed"])
        // `wait: true` answers with what each participant did.
        for (id, branch) in view.branches.enumerated() {
            #expect(branch.result?["participant"] == .string(names[id]), "\(branch)")
            #expect(branch.result?["operation"] == .string("op\(id)"), "\(branch)")
        }
        for (id, name) in names.enumerated() {
            #expect(try await cluster.barriers(name, gid: "tcc-ok") == ["\(id) try", "\(id) confirm"])
        }

        // The same gid and spec again is the same transaction: nothing runs again.
        let again = recorder.record(try await http("POST", cluster.url + "/v1/transactions", body: try encode(submission)))
        #expect(again.status == 200)
        #expect((again.json as? [String: Any])?["status"] as? String == "committed")
        #expect(try await cluster.client.outcome(gid: "tcc-ok") == "committed")
        _ = try await fetch(cluster, "tcc-ok", recorder)
        try expectValid(recorder, cluster)
    }

    @Test func tccARefusedTryCancelsEveryBranchWithANullCompensationForTheRefusedOne() async throws {
        let cluster = try Cluster("e2e-tcc-refused")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let names = ["a", "b", "c"]
        for name in names { try await cluster.startParticipant(name) }
        let recorder = Recorder()

        let answer = try await submit(cluster, TransactionSubmission(gid: "tcc-no", protocol: .tcc, branches: branches(names, refusing: 1), timeout: 5, wait: true), recorder)
        #expect(answer.decision == .abort)
        #expect(answer.error?.contains("refused by its payload") == true, "\(answer.error ?? "no error")")
        #expect(answer.branches[1].result?["error"]?["code"] == .string("voted_no"))
        #expect(try await eventually { try await fetch(cluster, "tcc-no").status == "aborted" })
        let view = try await fetch(cluster, "tcc-no", recorder)
        // Cancel reaches every branch, the refused one included.
        #expect(view.branches.map(\.state) == ["cancelled", "cancelled", "cancelled"])
        #expect(view.decision == .abort)
        // The refused Try left nothing, so its Cancel is a null compensation.
        #expect(try await cluster.barriers("b", gid: "tcc-no") == ["1 cancel null"])
        // a and c: cancelled, really (their Try ran) or as a null compensation (the
        // Cancel overtook a Try still on its way).
        for (id, name) in [(0, "a"), (2, "c")] {
            let records = try await cluster.barrierRecords(name, gid: "tcc-no")
            #expect(cancelledConsistently(records, branch: id), "\(name): \(records)")
        }
        try expectValid(recorder, cluster)
    }

    @Test func tccATryThatNeverAnswersIsCancelledAfterTheTimeoutAndTheLateTryIsRefused() async throws {
        let cluster = try Cluster("e2e-tcc-timeout")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        // b's Try stalls past the 1 s timeout; a's Cancel stalls longer, so the
        // transaction is still cancelling when b's late Try answers.
        try await cluster.startParticipant("a", failpoints: "before-cancel=stall:4")
        try await cluster.startParticipant("b", failpoints: "before-try=stall:2.5")
        let recorder = Recorder()

        _ = try await submit(cluster, TransactionSubmission(gid: "tcc-slow", protocol: .tcc, branches: branches(["a", "b"]), timeout: 1), recorder)
        #expect(try await eventually(seconds: 15) { try await fetch(cluster, "tcc-slow").status == "aborted" })
        let view = try await fetch(cluster, "tcc-slow", recorder)
        #expect(view.decision == .abort)
        #expect(view.branches.map(\.state) == ["cancelled", "cancelled"])
        #expect(view.timeline.contains { $0.event == "timed out" }, "\(view.timeline)")
        // The late Try reached b after its Cancel: refused, and it did nothing.
        let lateTry = view.timeline.first { $0.event == "try: refused" && $0.branch == 1 }
        #expect(lateTry?.detail?.hasPrefix("already_cancelled") == true, "\(view.timeline)")
        #expect(try await cluster.barriers("a", gid: "tcc-slow") == ["0 try", "0 cancel"])
        #expect(try await cluster.barriers("b", gid: "tcc-slow") == ["1 cancel null"])
        // Sent again by hand, the Try is still refused and still does nothing.
        let again = try await http("POST", cluster.participantURLs["b"]! + "/dtx/tcc/try", body: #"{"gid":"tcc-slow","branch":1,"operation":"op1","payload":{"n":1}}"#)
        #expect(again.status == 409)
        #expect(again.errorCode == "already_cancelled")
        #expect(try await cluster.barriers("b", gid: "tcc-slow") == ["1 cancel null"])
        try expectValid(recorder, cluster)
    }

    @Test func tccAParticipantKilledOnItsTryIsCancelledWhenItReturns() async throws {
        let cluster = try Cluster("e2e-tcc-try-crash")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "before-try=crash")
        let recorder = Recorder()

        _ = try await submit(cluster, TransactionSubmission(gid: "tcc-crash", protocol: .tcc, branches: branches(["a", "b"]), timeout: 5), recorder)
        #expect(try await cluster.participants["b"]?.waitForExit() == SIGKILL)
        // The undeliverable Try cancels the transaction; b's Cancel is retried while it is down.
        #expect(try await eventually { try await fetch(cluster, "tcc-crash").branches[1].attempts >= 2 })
        let stalled = try await fetch(cluster, "tcc-crash", recorder)
        #expect(stalled.status == "cancelling")
        #expect(stalled.decision == .abort)
        #expect(try await cluster.client.outcome(gid: "tcc-crash") == "aborted")
        // a's Cancel went out with b's first one: under load it may still be on its way.
        var records: [Cluster.Barrier] = []
        #expect(try await eventually {
            records = try await cluster.barrierRecords("a", gid: "tcc-crash")
            return cancelledConsistently(records, branch: 0)
        }, "\(records)")

        try await cluster.startParticipant("b")
        _ = try await cluster.client.recover()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "tcc-crash").status == "aborted" })
        let view = try await fetch(cluster, "tcc-crash", recorder)
        #expect(view.branches.map(\.state) == ["cancelled", "cancelled"])
        // b died before its Try did anything: its Cancel is a null compensation.
        #expect(try await cluster.barriers("b", gid: "tcc-crash") == ["1 cancel null"])
        try expectValid(recorder, cluster)
    }

    // MARK: The barrier at the participant, driven directly

    @Test func cancelBeforeTryAndCompensateBeforeActionRefuseTheLateMessage() async throws {
        let cluster = try Cluster("e2e-barrier-direct")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let base = try await cluster.startParticipant("a")
        var exchanges: [Exchange] = []
        func post(_ path: String, _ body: String) async throws -> Exchange {
            let exchange = try await http("POST", base + path, body: body)
            exchanges.append(exchange)
            return exchange
        }
        let request = #"{"gid":"direct-1","branch":0,"operation":"reserve","payload":{"seats":2}}"#

        // A Cancel that finds no Try: null compensation, a success.
        let cancel = try await post("/dtx/tcc/cancel", request)
        #expect(cancel.status == 200)
        #expect((cancel.json as? [String: Any])?["status"] as? String == "cancelled")
        // The Try arriving after it does nothing and is refused, every time (no hanging).
        for _ in 0..<2 {
            let late = try await post("/dtx/tcc/try", request)
            #expect(late.status == 409)
            #expect(late.errorCode == "already_cancelled")
        }
        let confirm = try await post("/dtx/tcc/confirm", request)
        #expect(confirm.status == 409)
        #expect(confirm.errorCode == "already_cancelled")
        #expect(try await post("/dtx/tcc/cancel", request).status == 200)
        #expect(try await cluster.barriers("a", gid: "direct-1") == ["0 cancel null"])

        // The race itself: the Try arrives first but stalls before its work; the Cancel
        // overtakes it, so the Try, when it resumes, finds the Cancel and does nothing.
        try await arm(base, "before-try", "stall:1.5")
        let raced = #"{"gid":"direct-2","branch":3,"operation":"reserve"}"#
        async let stalledTry = http("POST", base + "/dtx/tcc/try", body: raced)
        try await Task.sleep(for: .milliseconds(400))
        let overtaking = try await post("/dtx/tcc/cancel", raced)
        #expect(overtaking.status == 200)
        let resumed = try await stalledTry
        exchanges.append(resumed)
        #expect(resumed.status == 409)
        #expect(resumed.errorCode == "already_cancelled")
        #expect(try await cluster.barriers("a", gid: "direct-2") == ["3 cancel null"])
        _ = try await http("DELETE", base + "/test/failpoints")

        // The same for a saga step: compensate before action, then the late action.
        let step = #"{"gid":"direct-3","branch":1,"operation":"book"}"#
        let compensate = try await post("/dtx/saga/compensate", step)
        #expect(compensate.status == 200)
        #expect((compensate.json as? [String: Any])?["status"] as? String == "compensated")
        let action = try await post("/dtx/saga/action", step)
        #expect(action.status == 409)
        #expect(action.errorCode == "already_compensated")
        #expect(try await cluster.barriers("a", gid: "direct-3") == ["1 compensate null"])

        // Msg's check-back for a message never prepared here: its rollback marker is
        // written, and the answer stays `rolled_back`; a body without gid is a 400.
        for _ in 0..<2 {
            let checked = try await post("/dtx/msg/query_prepared", #"{"gid":"direct-4"}"#)
            #expect(checked.status == 200)
            #expect((checked.json as? [String: Any])?["status"] as? String == "rolled_back")
        }
        #expect(try await post("/dtx/msg/query_prepared", #"{"branch":0}"#).status == 400)

        let report = try validate(exchanges, document: "participant-api.yaml", directory: cluster.directory)
        #expect(report.contains("validated \(exchanges.count) exchanges, 0 failures"), "\(report)")
    }

    @Test func aDuplicateConfirmIsANoOpSuccess() async throws {
        let cluster = try Cluster("e2e-tcc-duplicate")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let base = try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "after-confirm=crash")
        var exchanges: [Exchange] = []
        func post(_ path: String, _ body: String) async throws -> Exchange {
            let exchange = try await http("POST", base + path, body: body)
            exchanges.append(exchange)
            return exchange
        }

        // Directly: Try, Confirm, Confirm again.
        let request = #"{"gid":"dup-1","branch":0,"operation":"reserve","payload":{"seats":2}}"#
        #expect(try await post("/dtx/tcc/try", request).status == 200)
        let first = try await post("/dtx/tcc/confirm", request)
        #expect(first.status == 200)
        let journal = cluster.directory + "/a.journal"
        let written = try fileNumber(journal)
        let second = try await post("/dtx/tcc/confirm", request)
        #expect(second.status == 200)
        #expect((second.json as? [String: Any])?["status"] as? String == "confirmed")
        #expect(second.body == first.body, "the stored result is answered again")
        // Nothing ran and nothing was written for the duplicate: the journal file was
        // not replaced (every change renames a new file over it).
        #expect(try fileNumber(journal) == written)
        #expect(try await cluster.barriers("a", gid: "dup-1") == ["0 try", "0 confirm"])
        // A Try repeated now answers its stored result; a Cancel after the Confirm is refused.
        #expect(try await post("/dtx/tcc/try", request).status == 200)
        let cancel = try await post("/dtx/tcc/cancel", request)
        #expect(cancel.status == 409)
        #expect(cancel.errorCode == "already_confirmed")
        #expect(try await cluster.barriers("a", gid: "dup-1") == ["0 try", "0 confirm"])
        let report = try validate(exchanges, document: "participant-api.yaml", directory: cluster.directory)
        #expect(report.contains("validated \(exchanges.count) exchanges, 0 failures"), "\(report)")

        // Through the coordinator: b confirms, then dies before answering; the
        // coordinator's retried Confirm finds it done.
        let recorder = Recorder()
        _ = try await submit(cluster, TransactionSubmission(gid: "dup-2", protocol: .tcc, branches: branches(["a", "b"]), timeout: 5), recorder)
        #expect(try await cluster.participants["b"]?.waitForExit() == SIGKILL)
        let confirmedBeforeCrash = try fileNumber(cluster.directory + "/b.journal")
        try await cluster.startParticipant("b")
        _ = try await cluster.client.recover()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "dup-2").status == "committed" })
        let view = try await fetch(cluster, "dup-2", recorder)
        #expect(view.branches.map(\.state) == ["confirmed", "confirmed"])
        #expect(try await cluster.barriers("b", gid: "dup-2") == ["1 try", "1 confirm"])
        #expect(try fileNumber(cluster.directory + "/b.journal") == confirmedBeforeCrash, "the repeated Confirm must not run again")
        try expectValid(recorder, cluster)
    }

    // MARK: Saga

    @Test func sagaSequentialStepsAllDoneCommits() async throws {
        let cluster = try Cluster("e2e-saga-commit")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let names = ["a", "b", "c"]
        // Step 0 is slow: a step that did not wait for it would finish first.
        for name in names { try await cluster.startParticipant(name, failpoints: name == "a" ? "before-action=stall:0.3" : nil) }
        let recorder = Recorder()

        let view = try await submit(cluster, TransactionSubmission(gid: "saga-ok", protocol: .saga, branches: branches(names), timeout: 5, wait: true), recorder)
        #expect(view.status == "committed")
        #expect(view.decision == .commit)
        #expect(view.branches.map(\.state) == ["done", "done", "done"])
        #expect(view.compensations ?? [] == [])
        for (id, branch) in view.branches.enumerated() {
            #expect(branch.result?["participant"] == .string(names[id]), "\(branch)")
        }
        // One step at a time, in order.
        #expect(view.timeline.filter { $0.event == "action: done" }.compactMap(\.branch) == [0, 1, 2])
        for (id, name) in names.enumerated() {
            #expect(try await cluster.barriers(name, gid: "saga-ok") == ["\(id) action"])
        }
        _ = try await fetch(cluster, "saga-ok", recorder)
        try expectValid(recorder, cluster)
    }

    @Test func sagaStepRefusedCompensatesTheStepsThatRanInReverseOrder() async throws {
        let cluster = try Cluster("e2e-saga-refused")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let names = ["a", "b", "c"]
        // b's compensation is slow: step 0's must wait for it all the same.
        for name in names { try await cluster.startParticipant(name, failpoints: name == "b" ? "before-compensate=stall:0.5" : nil) }
        let recorder = Recorder()

        let answer = try await submit(cluster, TransactionSubmission(gid: "saga-no", protocol: .saga, branches: branches(names, refusing: 1), timeout: 5, wait: true), recorder)
        // The waiting caller learns which step failed, why, and what was compensated.
        #expect(answer.decision == .abort)
        #expect(answer.status == "aborted")
        #expect(answer.error?.contains("refused by its payload") == true, "\(answer.error ?? "no error")")
        #expect(answer.branches[1].result?["error"]?["code"] == .string("voted_no"))
        #expect(answer.compensations == [1, 0])
        #expect(answer.branches.map(\.state) == ["compensated", "compensated", "pending"])
        let compensated = answer.timeline.filter { $0.event == "compensate: compensated" }.compactMap(\.branch)
        #expect(compensated == [1, 0])

        #expect(try await cluster.barriers("a", gid: "saga-no") == ["0 action", "0 compensate"])
        // The refused action left nothing: its compensation is a null compensation.
        #expect(try await cluster.barriers("b", gid: "saga-no") == ["1 compensate null"])
        // Step 2 was never sent.
        #expect(try await cluster.barriers("c", gid: "saga-no") == [])
        #expect(answer.timeline.allSatisfy { $0.branch != 2 }, "\(answer.timeline)")

        let view = try await fetch(cluster, "saga-no", recorder)
        #expect(view.compensations == [1, 0])
        try expectValid(recorder, cluster)
    }

    @Test func sagaDAGCompensatesInReverseDependencyOrder() async throws {
        let cluster = try Cluster("e2e-saga-dag")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        // Root 1's action is slow (step 2 must wait for it), and the later steps'
        // compensations are slow (the earlier ones must wait for them all the same).
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "before-action=stall:0.3")
        try await cluster.startParticipant("c", failpoints: "before-compensate=stall:0.5")
        try await cluster.startParticipant("d", failpoints: "before-compensate=stall:0.3")
        let recorder = Recorder()

        // 0 and 1 are roots, 2 needs both, 3 needs 2 and is refused.
        let steps = [
            BranchSpec(participant: "a", operation: "reserve-a", dependsOn: []),
            BranchSpec(participant: "b", operation: "reserve-b", dependsOn: []),
            BranchSpec(participant: "c", operation: "charge", dependsOn: [0, 1]),
            BranchSpec(participant: "d", operation: "ship", payload: .object(["vote": .string("no")]), dependsOn: [2]),
        ]
        let answer = try await submit(cluster, TransactionSubmission(gid: "saga-dag", protocol: .saga, branches: steps, timeout: 5, wait: true), recorder)
        #expect(answer.status == "aborted")
        #expect(answer.branches[3].result?["error"]?["code"] == .string("voted_no"))
        // Forward: 2 ran only after both roots were done.
        let done = answer.timeline.filter { $0.event == "action: done" }.compactMap(\.branch)
        #expect(Set(done.prefix(2)) == [0, 1] && done.last == 2, "\(done)")
        // Backward: 3 (a null compensation), then 2, then the roots, in either order.
        let compensations = answer.compensations ?? []
        #expect(compensations.count == 4)
        #expect(Array(compensations.prefix(2)) == [3, 2], "\(compensations)")
        #expect(Set(compensations.suffix(2)) == [0, 1], "\(compensations)")
        #expect(answer.branches.map(\.state) == ["compensated", "compensated", "compensated", "compensated"])
        for (id, name) in [(0, "a"), (1, "b"), (2, "c")] {
            #expect(try await cluster.barriers(name, gid: "saga-dag") == ["\(id) action", "\(id) compensate"])
        }
        #expect(try await cluster.barriers("d", gid: "saga-dag") == ["3 compensate null"])
        _ = try await fetch(cluster, "saga-dag", recorder)
        try expectValid(recorder, cluster)
    }

    @Test func aSagaStepThatTimesOutOrIsAbortedIsCompensatedAndItsLateActionDoesNothing() async throws {
        let cluster = try Cluster("e2e-saga-step-timeout")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        let stall = 2.5
        try await cluster.startParticipant("b", failpoints: "before-action=stall:\(stall)")
        let recorder = Recorder()

        // Each attempt of step 1 times out after 0.3 s; after 2 attempts the saga compensates.
        let steps = [
            BranchSpec(participant: "a", operation: "reserve"),
            BranchSpec(participant: "b", operation: "charge", retry: StepRetry(maxAttempts: 2, initialDelay: 0.1), timeout: 0.3),
        ]
        let started = ContinuousClock.now
        let answer = try await submit(cluster, TransactionSubmission(gid: "saga-slow", protocol: .saga, branches: steps, timeout: 10, wait: true), recorder)
        #expect(answer.status == "aborted")
        #expect(ContinuousClock.now - started < .seconds(stall), "compensated before the stalled attempts resumed")
        #expect(answer.timeline.filter { $0.event == "attempt timed out" && $0.branch == 1 }.count == 2)
        #expect(answer.branches[1].lastError?.contains("timed out") == true)
        #expect(answer.compensations == [1, 0])
        #expect(answer.branches[1].result?["error"]?["code"] == .string("retries_exhausted"))
        #expect(answer.error != nil)
        #expect(try await cluster.barriers("a", gid: "saga-slow") == ["0 action", "0 compensate"])
        #expect(try await cluster.barriers("b", gid: "saga-slow") == ["1 compensate null"])

        // The application aborts a saga while its step stalls at b.
        _ = try await submit(cluster, TransactionSubmission(gid: "saga-abort", protocol: .saga, branches: branches(["a", "b"]), timeout: 10), recorder)
        #expect(try await eventually { try await fetch(cluster, "saga-abort").branches[1].state == "running" })
        let actionSent = ContinuousClock.now
        let aborted = try await resolve(cluster, "saga-abort", "abort", #"{"reason":"customer cancelled","wait":true}"#, recorder)
        #expect(aborted.status == "aborted")
        #expect(aborted.error == "customer cancelled")
        #expect(aborted.compensations == [1, 0])
        #expect(try await cluster.barriers("a", gid: "saga-abort") == ["0 action", "0 compensate"])
        #expect(try await cluster.barriers("b", gid: "saga-abort") == ["1 compensate null"])

        // Once every stalled attempt has resumed, each found the compensation and did nothing.
        try await Task.sleep(until: max(started + .seconds(stall + 0.9), actionSent + .seconds(stall + 0.5)), clock: .continuous)
        #expect(try await cluster.barriers("b", gid: "saga-slow") == ["1 compensate null"])
        #expect(try await cluster.barriers("b", gid: "saga-abort") == ["1 compensate null"])
        let direct = try await http("POST", cluster.participantURLs["b"]! + "/dtx/saga/action", body: #"{"gid":"saga-slow","branch":1,"operation":"charge"}"#)
        #expect(direct.errorCode == "already_compensated")
        for gid in ["saga-slow", "saga-abort"] { _ = try await fetch(cluster, gid, recorder) }
        try expectValid(recorder, cluster)
    }

    @Test func aCompensationIsRetriedAcrossParticipantCrashes() async throws {
        let cluster = try Cluster("e2e-saga-comp-crash")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        // a dies once its compensation is done (before answering), b before doing it.
        try await cluster.startParticipant("a", failpoints: "after-compensate=crash")
        try await cluster.startParticipant("b", failpoints: "before-compensate=crash")
        try await cluster.startParticipant("c")
        let recorder = Recorder()

        _ = try await submit(cluster, TransactionSubmission(gid: "saga-crash", protocol: .saga, branches: branches(["a", "b", "c"], refusing: 2), timeout: 5), recorder)
        #expect(try await cluster.participants["b"]?.waitForExit() == SIGKILL)
        #expect(try await eventually { try await fetch(cluster, "saga-crash").branches[1].attempts >= 2 })
        let waiting = try await fetch(cluster, "saga-crash", recorder)
        #expect(waiting.status == "compensating")
        #expect(waiting.compensations == [2])
        // Step 0 waits for step 1's compensation.
        #expect(waiting.branches[0].state == "done")

        // b restarted from its journal: its action is recorded, its compensation runs now.
        try await cluster.startParticipant("b")
        _ = try await cluster.client.recover()
        #expect(try await cluster.participants["a"]?.waitForExit(seconds: 30) == SIGKILL)
        #expect(try await cluster.barriers("b", gid: "saga-crash") == ["1 action", "1 compensate"])
        // a's compensation is in its journal; the coordinator did not hear it and retries.
        let compensatedBeforeCrash = try fileNumber(cluster.directory + "/a.journal")
        try await cluster.startParticipant("a")
        _ = try await cluster.client.recover()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "saga-crash").status == "aborted" })
        let view = try await fetch(cluster, "saga-crash", recorder)
        #expect(view.compensations == [2, 1, 0])
        #expect(view.branches.map(\.state) == ["compensated", "compensated", "compensated"])
        #expect(try await cluster.barriers("a", gid: "saga-crash") == ["0 action", "0 compensate"])
        #expect(try fileNumber(cluster.directory + "/a.journal") == compensatedBeforeCrash, "the repeated compensation must not run again")
        #expect(try await cluster.barriers("c", gid: "saga-crash") == ["2 compensate null"])
        try expectValid(recorder, cluster)
    }

    // MARK: dtxd killed mid-transaction

    @Test func dtxdKilledAfterTheTCCCommitDecisionConfirmsEverywhereAfterRestart() async throws {
        let cluster = try Cluster("e2e-tcc-kill-after")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "after-commit-decision")
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(TransactionSubmission(gid: "tcc-kill-after", protocol: .tcc, branches: branches(["a", "b"]), timeout: 5))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        // Every Try ran; no Confirm was sent.
        #expect(try await cluster.barriers("a", gid: "tcc-kill-after") == ["0 try"])
        #expect(try await cluster.barriers("b", gid: "tcc-kill-after") == ["1 try"])

        try await cluster.startDaemon()
        let recorder = Recorder()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "tcc-kill-after").status == "committed" })
        let view = try await fetch(cluster, "tcc-kill-after", recorder)
        #expect(view.branches.map(\.state) == ["confirmed", "confirmed"])
        #expect(try await cluster.barriers("a", gid: "tcc-kill-after") == ["0 try", "0 confirm"])
        #expect(try await cluster.barriers("b", gid: "tcc-kill-after") == ["1 try", "1 confirm"])
        try expectValid(recorder, cluster)
    }

    @Test func dtxdKilledBeforeTheTCCCommitDecisionCancelsEverywhereAfterRestart() async throws {
        let cluster = try Cluster("e2e-tcc-kill-before")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "before-commit-decision")
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(TransactionSubmission(gid: "tcc-kill-before", protocol: .tcc, branches: branches(["a", "b"]), timeout: 5))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await cluster.barriers("a", gid: "tcc-kill-before") == ["0 try"])
        #expect(try await cluster.barriers("b", gid: "tcc-kill-before") == ["1 try"])

        // Undecided in the log: presumed cancel.
        try await cluster.startDaemon()
        let recorder = Recorder()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "tcc-kill-before").status == "aborted" })
        let view = try await fetch(cluster, "tcc-kill-before", recorder)
        #expect(view.branches.map(\.state) == ["cancelled", "cancelled"])
        #expect(try await cluster.barriers("a", gid: "tcc-kill-before") == ["0 try", "0 cancel"])
        #expect(try await cluster.barriers("b", gid: "tcc-kill-before") == ["1 try", "1 cancel"])
        try expectValid(recorder, cluster)
    }

    @Test func dtxdKilledAfterTheTCCCancelDecisionCancelsEverywhereAfterRestart() async throws {
        let cluster = try Cluster("e2e-tcc-kill-abort")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "after-abort-decision")
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(TransactionSubmission(gid: "tcc-kill-abort", protocol: .tcc, branches: branches(["a", "b"], refusing: 1), timeout: 5))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        // The cancel decision is durable and no Cancel went out.
        #expect(try await cluster.barrierRecords("a", gid: "tcc-kill-abort").allSatisfy { $0.phase == "try" })
        #expect(try await cluster.barriers("b", gid: "tcc-kill-abort") == [])

        try await cluster.startDaemon()
        let recorder = Recorder()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "tcc-kill-abort").status == "aborted" })
        let view = try await fetch(cluster, "tcc-kill-abort", recorder)
        #expect(view.decision == .abort)
        #expect(view.branches.map(\.state) == ["cancelled", "cancelled"])
        #expect(cancelledConsistently(try await cluster.barrierRecords("a", gid: "tcc-kill-abort"), branch: 0))
        #expect(try await cluster.barriers("b", gid: "tcc-kill-abort") == ["1 cancel null"])
        try expectValid(recorder, cluster)
    }

    @Test func dtxdKilledWhileATryStallsCancelsAfterRestartAndTheLateTryDoesNothing() async throws {
        let cluster = try Cluster("e2e-tcc-kill-stalled")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "before-try=stall:4")

        let submitted = ContinuousClock.now
        _ = try await cluster.client.submit(TransactionSubmission(gid: "tcc-kill-stalled", protocol: .tcc, branches: branches(["a", "b"]), timeout: 20))
        #expect(try await eventually { try await cluster.barriers("a", gid: "tcc-kill-stalled") == ["0 try"] })
        try await cluster.killDaemon()
        try await cluster.startDaemon()

        // Undecided: every branch is cancelled, b's before its stalled Try resumes.
        let recorder = Recorder()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "tcc-kill-stalled").status == "aborted" })
        let view = try await fetch(cluster, "tcc-kill-stalled", recorder)
        #expect(view.branches.map(\.state) == ["cancelled", "cancelled"])
        #expect(ContinuousClock.now - submitted < .seconds(4), "the Cancel should overtake the stalled Try")
        #expect(try await cluster.barriers("a", gid: "tcc-kill-stalled") == ["0 try", "0 cancel"])
        #expect(try await cluster.barriers("b", gid: "tcc-kill-stalled") == ["1 cancel null"])
        // Once the stalled Try has resumed, it found the Cancel and left nothing behind.
        try await Task.sleep(until: submitted + .seconds(4.5), clock: .continuous)
        #expect(try await cluster.barriers("b", gid: "tcc-kill-stalled") == ["1 cancel null"])
        try expectValid(recorder, cluster)
    }

    @Test func dtxdKilledAfterTheSagaCompensateDecisionCompensatesAfterRestart() async throws {
        let cluster = try Cluster("e2e-saga-kill-abort")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "after-abort-decision")
        let names = ["a", "b", "c"]
        for name in names { try await cluster.startParticipant(name) }

        _ = try? await cluster.client.submit(TransactionSubmission(gid: "saga-kill-abort", protocol: .saga, branches: branches(names, refusing: 1), timeout: 5))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await cluster.barriers("a", gid: "saga-kill-abort") == ["0 action"])
        #expect(try await cluster.barriers("b", gid: "saga-kill-abort") == [])

        try await cluster.startDaemon()
        let recorder = Recorder()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "saga-kill-abort").status == "aborted" })
        let view = try await fetch(cluster, "saga-kill-abort", recorder)
        #expect(view.compensations == [1, 0])
        #expect(view.branches.map(\.state) == ["compensated", "compensated", "pending"])
        #expect(try await cluster.barriers("a", gid: "saga-kill-abort") == ["0 action", "0 compensate"])
        #expect(try await cluster.barriers("b", gid: "saga-kill-abort") == ["1 compensate null"])
        #expect(try await cluster.barriers("c", gid: "saga-kill-abort") == [])
        try expectValid(recorder, cluster)
    }

    @Test func dtxdKilledAtTheSagaPivotRunsForwardAfterRestart() async throws {
        let cluster = try Cluster("e2e-saga-kill-pivot")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(failpoints: "after-commit-decision")
        for name in ["a", "b", "c"] { try await cluster.startParticipant(name) }

        // Step 1 is the pivot: its commit decision is forced before it is sent.
        let steps = [
            BranchSpec(participant: "a", operation: "reserve"),
            BranchSpec(participant: "b", operation: "charge", compensatable: false),
            BranchSpec(participant: "c", operation: "notify", compensatable: false),
        ]
        _ = try? await cluster.client.submit(TransactionSubmission(gid: "saga-pivot", protocol: .saga, branches: steps, timeout: 5))
        #expect(try await cluster.daemon?.waitForExit() == SIGKILL)
        #expect(try await cluster.barriers("a", gid: "saga-pivot") == ["0 action"])
        #expect(try await cluster.barriers("b", gid: "saga-pivot") == [])

        try await cluster.startDaemon()
        let recorder = Recorder()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "saga-pivot").status == "committed" })
        let view = try await fetch(cluster, "saga-pivot", recorder)
        #expect(view.branches.map(\.state) == ["done", "done", "done"])
        #expect(view.compensations ?? [] == [])
        for (id, name) in ["a", "b", "c"].enumerated() {
            #expect(try await cluster.barriers(name, gid: "saga-pivot") == ["\(id) action"])
        }
        try expectValid(recorder, cluster)
    }

    @Test func dtxdKilledWhileASagaStepStallsRunsTheSagaForwardAfterRestart() async throws {
        let cluster = try Cluster("e2e-saga-kill-step")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        let b = try await cluster.startParticipant("b", failpoints: "before-action=stall:3")
        try await cluster.startParticipant("c")

        _ = try await cluster.client.submit(TransactionSubmission(gid: "saga-step", protocol: .saga, branches: branches(["a", "b", "c"]), timeout: 20))
        #expect(try await eventually { try await cluster.client.transaction("saga-step").branches[1].state == "running" })
        try await Task.sleep(for: .milliseconds(300))  // the action reaches b and stalls there
        try await cluster.killDaemon()
        _ = try await http("DELETE", b + "/test/failpoints")

        // Undecided: the saga runs forward again; every action is idempotent.
        try await cluster.startDaemon()
        let recorder = Recorder()
        #expect(try await eventually(seconds: 30) { try await fetch(cluster, "saga-step").status == "committed" })
        let view = try await fetch(cluster, "saga-step", recorder)
        #expect(view.branches.map(\.state) == ["done", "done", "done"])
        #expect(view.timeline.contains { $0.event == "recovered from the log" })
        for (id, name) in ["a", "b", "c"].enumerated() {
            #expect(try await cluster.barriers(name, gid: "saga-step") == ["\(id) action"])
        }
        try expectValid(recorder, cluster)
    }

    @Test func finishedTCCAndSagaTransactionsAreKnownAfterARestart() async throws {
        let cluster = try Cluster("e2e-tcc-saga-history")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        let recorder = Recorder()
        _ = try await submit(cluster, TransactionSubmission(gid: "h-tcc-ok", protocol: .tcc, branches: branches(["a", "b"]), timeout: 5, wait: true), recorder)
        _ = try await submit(cluster, TransactionSubmission(gid: "h-tcc-no", protocol: .tcc, branches: branches(["a", "b"], refusing: 1), timeout: 5, wait: true), recorder)
        _ = try await submit(cluster, TransactionSubmission(gid: "h-saga-ok", protocol: .saga, branches: branches(["a", "b"]), timeout: 5, wait: true), recorder)
        _ = try await submit(cluster, TransactionSubmission(gid: "h-saga-no", protocol: .saga, branches: branches(["a", "b", "a"], refusing: 1), timeout: 5, wait: true), recorder)
        for gid in ["h-tcc-no", "h-saga-no"] {
            #expect(try await eventually { try await fetch(cluster, gid).status == "aborted" })
        }

        // Stopped cleanly, so that every `end` (written lazily) is in the log.
        cluster.daemon?.kill(SIGTERM)
        #expect(try await cluster.daemon?.waitForExit() == 0)
        try await cluster.startDaemon()
        try expectValid(recorder, cluster)
        let restarted = Recorder()
        let tccOK = try await fetch(cluster, "h-tcc-ok", restarted)
        #expect(tccOK.status == "committed")
        #expect(tccOK.branches.map(\.state) == ["confirmed", "confirmed"])
        let tccNo = try await fetch(cluster, "h-tcc-no", restarted)
        #expect(tccNo.status == "aborted")
        #expect(tccNo.branches.map(\.state) == ["cancelled", "cancelled"])
        let sagaOK = try await fetch(cluster, "h-saga-ok", restarted)
        #expect(sagaOK.status == "committed")
        #expect(sagaOK.branches.map(\.state) == ["done", "done"])
        let sagaNo = try await fetch(cluster, "h-saga-no", restarted)
        #expect(sagaNo.status == "aborted")
        #expect(sagaNo.branches.map(\.state) == ["compensated", "compensated", "pending"])
        #expect(try await cluster.client.outcome(gid: "h-tcc-ok") == "committed")
        #expect(try await cluster.client.outcome(gid: "h-saga-no") == "aborted")
        // Resubmitting a finished one is still idempotent.
        let again = restarted.record(try await http("POST", cluster.url + "/v1/transactions",
                                                     body: try encode(TransactionSubmission(gid: "h-saga-ok", protocol: .saga, branches: branches(["a", "b"]), timeout: 5))))
        #expect(again.status == 200)
        #expect(restarted.exchanges.count == 5)
        try expectValid(restarted, cluster)
    }

    // MARK: Interactive TCC

    @Test func interactiveTCCConfirmsOrCancelsWhatServicesTried() async throws {
        let cluster = try Cluster("e2e-tcc-interactive")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }
        let recorder = Recorder()
        func tryAt(_ name: String, _ gid: String, _ payload: String? = nil) async throws -> Exchange {
            let body = #"{"gid":"\#(gid)","operation":"reserve-\#(name)""# + (payload.map { #","payload":\#($0)"# } ?? "") + "}"
            return try await http("POST", cluster.participantURLs[name]! + "/test/tcc-try", body: body)
        }

        // Both Trys succeed; the application commits: confirmed everywhere.
        let begun = try await submit(cluster, TransactionSubmission(gid: "itcc-1", protocol: .tcc, timeout: 30, interactive: true), recorder)
        #expect(begun.status == "active")
        for (id, name) in ["a", "b"].enumerated() {
            let tried = try await tryAt(name, "itcc-1")
            #expect(tried.status == 200, "\(String(decoding: tried.body, as: UTF8.self))")
            #expect((tried.json as? [String: Any])?["branch"] as? Int == id)
        }
        let committed = try await resolve(cluster, "itcc-1", "commit", #"{"wait":true}"#, recorder)
        #expect(committed.status == "committed")
        #expect(committed.branches.map(\.state) == ["confirmed", "confirmed"])
        #expect(try await cluster.barriers("a", gid: "itcc-1") == ["0 try", "0 confirm"])
        #expect(try await cluster.barriers("b", gid: "itcc-1") == ["1 try", "1 confirm"])
        // A Try for a transaction no longer open is refused before it runs.
        let late = try await tryAt("a", "itcc-1")
        #expect(late.status == 502)
        #expect(try await cluster.barriers("a", gid: "itcc-1") == ["0 try", "0 confirm"])

        // b's Try is refused; the application aborts: cancelled everywhere.
        _ = try await submit(cluster, TransactionSubmission(gid: "itcc-2", protocol: .tcc, timeout: 30, interactive: true), recorder)
        #expect(try await tryAt("a", "itcc-2").status == 200)
        let refused = try await tryAt("b", "itcc-2", #"{"vote":"no"}"#)
        #expect(refused.status == 409)
        #expect(refused.errorCode == "voted_no")
        let aborted = try await resolve(cluster, "itcc-2", "abort", #"{"reason":"b refused its Try","wait":true}"#, recorder)
        #expect(aborted.status == "aborted")
        #expect(aborted.decision == .abort)
        #expect(aborted.branches.map(\.state) == ["cancelled", "cancelled"])
        #expect(try await cluster.barriers("a", gid: "itcc-2") == ["0 try", "0 cancel"])
        // b was enlisted before its Try ran: it gets a Cancel, a null compensation.
        #expect(try await cluster.barriers("b", gid: "itcc-2") == ["1 cancel null"])

        // Nobody commits: the timeout cancels what was tried.
        _ = try await submit(cluster, TransactionSubmission(gid: "itcc-3", protocol: .tcc, timeout: 2, interactive: true), recorder)
        #expect(try await tryAt("a", "itcc-3").status == 200)
        #expect(try await eventually(seconds: 15) { try await fetch(cluster, "itcc-3").status == "aborted" })
        #expect(try await cluster.barriers("a", gid: "itcc-3") == ["0 try", "0 cancel"])
        for gid in ["itcc-1", "itcc-2", "itcc-3"] { _ = try await fetch(cluster, gid, recorder) }
        try expectValid(recorder, cluster)
    }

    // MARK: Bad input

    @Test func badTCCAndSagaSubmissionsAreRefusedAndLogNothing() async throws {
        let cluster = try Cluster("e2e-tcc-saga-bad")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        let before = try await logAppends(cluster)
        let recorder = Recorder()

        let cases: [(gid: String, body: String, status: Int, code: String)] = [
            ("bad-forward", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x","dependsOn":[1]},{"participant":"a","operation":"y"}]}"#, 422, "invalid_branches"),
            ("bad-self", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x"},{"participant":"a","operation":"y","dependsOn":[1]}]}"#, 422, "invalid_branches"),
            ("bad-twice", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x"},{"participant":"a","operation":"y","dependsOn":[0,0]}]}"#, 400, "invalid_branches"),
            ("bad-pivot", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x","compensatable":false},{"participant":"a","operation":"y"}]}"#, 422, "invalid_branches"),
            ("bad-attempts", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x","retry":{"maxAttempts":0}}]}"#, 400, "invalid_branches"),
            ("bad-step-timeout", #"{"protocol":"saga","branches":[{"participant":"a","operation":"x","timeout":0}]}"#, 400, "invalid_branches"),
            ("bad-empty-saga", #"{"protocol":"saga","branches":[]}"#, 400, "invalid_branches"),
            ("bad-interactive-saga", #"{"protocol":"saga","interactive":true}"#, 400, "invalid_submission"),
            ("bad-interactive-saga-steps", #"{"protocol":"saga","interactive":true,"branches":[{"participant":"a","operation":"x"}]}"#, 400, "invalid_submission"),
            ("bad-2pc-depends", #"{"protocol":"2pc","branches":[{"participant":"a","operation":"x"},{"participant":"a","operation":"y","dependsOn":[0]}]}"#, 400, "invalid_branches"),
            ("bad-tcc-compensatable", #"{"protocol":"tcc","branches":[{"participant":"a","operation":"x","compensatable":false}]}"#, 400, "invalid_branches"),
            ("bad-tcc-retry", #"{"protocol":"tcc","branches":[{"participant":"a","operation":"x","retry":{"maxAttempts":2}}]}"#, 400, "invalid_branches"),
            ("bad-tcc-interactive-branches", #"{"protocol":"tcc","interactive":true,"branches":[{"participant":"a","operation":"x"}]}"#, 400, "invalid_branches"),
        ]
        for (gid, body, status, code) in cases {
            let withGid = #"{"gid":"\#(gid)","# + body.dropFirst()
            let exchange = recorder.record(try await http("POST", cluster.url + "/v1/transactions", body: withGid))
            #expect(exchange.status == status, "\(gid): \(String(decoding: exchange.body, as: UTF8.self))")
            #expect(exchange.errorCode == code, "\(gid): \(String(decoding: exchange.body, as: UTF8.self))")
            let after = recorder.record(try await http("GET", cluster.url + "/v1/transactions/\(gid)"))
            #expect(after.status == 404, "\(gid) must not exist")
        }
        #expect(try await logAppends(cluster) == before, "bad input must not write to the log")
        try expectValid(recorder, cluster)
    }

    /// The list filter takes every status a transaction can be in, TCC's and Saga's too
    /// (the document's `status` parameter is any `TransactionStatus`).
    @Test func theListFilterTakesTCCAndSagaStatuses() async throws {
        let cluster = try Cluster("e2e-tcc-saga-list")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        let recorder = Recorder()
        _ = try await submit(cluster, TransactionSubmission(gid: "list-saga", protocol: .saga, branches: branches(["a"]), timeout: 5, wait: true), recorder)
        let byProtocol = recorder.record(try await http("GET", cluster.url + "/v1/transactions?protocol=saga&status=committed"))
        #expect(byProtocol.status == 200)
        try expectValid(recorder, cluster)
        for status in ["trying", "confirming", "cancelling", "running", "compensating"] {
            let listed = recorder.record(try await http("GET", cluster.url + "/v1/transactions?status=\(status)"))
            #expect(listed.status == 200, "status=\(status): \(String(decoding: listed.body, as: UTF8.self))")
        }
        try expectValid(recorder, cluster)
    }
}

// MARK: - Helpers

/// Branch specs on `names`, operation `op<i>`, payload `{"n": i}`; the branch at
/// `refusing` carries `{"vote": "no"}` instead, which the memory participant refuses.
private func branches(_ names: [String], refusing: Int? = nil) -> [BranchSpec] {
    names.enumerated().map { id, name in
        BranchSpec(participant: name, operation: "op\(id)", payload: id == refusing ? .object(["vote": .string("no")]) : .object(["n": .number(Double(id))]))
    }
}

/// A Cancel reached the branch, and it is a null compensation exactly when no Try is
/// recorded (the Try was refused, or the Cancel overtook it); never a Confirm.
private func cancelledConsistently(_ records: [Cluster.Barrier], branch: Int) -> Bool {
    let mine = records.filter { $0.branch == branch }
    guard let cancel = mine.first(where: { $0.phase == "cancel" }) else { return false }
    let tried = mine.contains { $0.phase == "try" }
    return !mine.contains { $0.phase == "confirm" } && cancel.nullCompensation == !tried
}

/// The coordinator exchanges a test made, to validate against the API document.
private final class Recorder: @unchecked Sendable {
    // Safe: a test records from one task at a time.
    private(set) var exchanges: [Exchange] = []

    @discardableResult
    func record(_ exchange: Exchange) -> Exchange {
        exchanges.append(exchange)
        return exchange
    }
}

private func encode(_ submission: TransactionSubmission) throws -> String {
    String(decoding: try JSONEncoder.dtx().encode(submission), as: UTF8.self)
}

private func view(of exchange: Exchange) throws -> TransactionView {
    guard (200..<300).contains(exchange.status) else {
        throw ProcessError.exited("\(exchange.method) \(exchange.path) answered \(exchange.status): \(String(decoding: exchange.body, as: UTF8.self))")
    }
    return try JSONDecoder.dtx().decode(TransactionView.self, from: exchange.body)
}

/// POST /v1/transactions, recorded.
private func submit(_ cluster: Cluster, _ submission: TransactionSubmission, _ recorder: Recorder) async throws -> TransactionView {
    try view(of: recorder.record(try await http("POST", cluster.url + "/v1/transactions", body: try encode(submission))))
}

/// GET /v1/transactions/{gid}, recorded when a recorder is given.
private func fetch(_ cluster: Cluster, _ gid: String, _ recorder: Recorder? = nil) async throws -> TransactionView {
    let exchange = try await http("GET", cluster.url + "/v1/transactions/\(gid)")
    recorder?.record(exchange)
    return try view(of: exchange)
}

/// POST /v1/transactions/{gid}/commit or /abort, recorded.
private func resolve(_ cluster: Cluster, _ gid: String, _ verb: String, _ body: String, _ recorder: Recorder) async throws -> TransactionView {
    try view(of: recorder.record(try await http("POST", cluster.url + "/v1/transactions/\(gid)/\(verb)", body: body)))
}

private func arm(_ base: String, _ name: String, _ action: String) async throws {
    let armed = try await http("PUT", base + "/test/failpoints", body: #"{"name":"\#(name)","action":"\#(action)"}"#)
    guard armed.status == 200 else { throw ProcessError.exited("cannot arm \(name)=\(action): \(String(decoding: armed.body, as: UTF8.self))") }
}

/// The inode of a file: the memory participant's journal gets a new one at every change.
private func fileNumber(_ path: String) throws -> UInt64 {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.systemFileNumber] as? NSNumber)?.uint64Value ?? 0
}

private func logAppends(_ cluster: Cluster) async throws -> Double {
    let metrics = try await http("GET", cluster.url + "/metrics")
    let line = String(decoding: metrics.body, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("dtx_log_appends ") }
    return Double(line?.split(separator: " ").last ?? "") ?? -1
}

private let repository: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// Runs Tests/Tools/validate_api.py on `exchanges` against `Schemas/<document>`; returns its report.
private func validate(_ exchanges: [Exchange], document: String, directory: String) throws -> String {
    let file = directory + "/exchanges-\(UUID().uuidString).jsonl"
    var lines = ""
    for exchange in exchanges {
        let body: Any = exchange.contentType?.hasPrefix("application/json") == true ? (exchange.json ?? NSNull()) : String(decoding: exchange.body, as: UTF8.self)
        let object: [String: Any] = ["method": exchange.method, "path": exchange.path, "status": exchange.status, "contentType": exchange.contentType ?? "", "body": exchange.status == 204 ? NSNull() : body]
        lines += String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.fragmentsAllowed]), as: UTF8.self) + "\n"
    }
    try lines.write(toFile: file, atomically: true, encoding: .utf8)
    let validator = Process()
    validator.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    validator.arguments = ["python3", repository + "/Tests/Tools/validate_api.py", repository + "/Schemas/" + document, file]
    let output = Pipe()
    validator.standardOutput = output
    validator.standardError = output
    try validator.run()
    let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    validator.waitUntilExit()
    return report
}

/// Every coordinator answer the test recorded matches Schemas/coordinator-api.yaml.
private func expectValid(_ recorder: Recorder, _ cluster: Cluster, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let report = try validate(recorder.exchanges, document: "coordinator-api.yaml", directory: cluster.directory)
    #expect(report.contains("validated \(recorder.exchanges.count) exchanges, 0 failures"), "\(report)", sourceLocation: sourceLocation)
}

extension Cluster {
    /// One barrier record of a participant (its GET /test/state).
    struct Barrier: Sendable, Equatable, CustomStringConvertible {
        var branch: Int
        var phase: String
        var nullCompensation: Bool

        var description: String { "\(branch) \(phase)\(nullCompensation ? " null" : "")" }
    }

    /// The barrier records `name` holds for `gid`, ordered by branch, then phase (try,
    /// confirm, cancel, action, compensate).
    func barrierRecords(_ name: String, gid: String) async throws -> [Barrier] {
        guard let base = participantURLs[name] else { return [] }
        return try await Self.barrierRecords(at: base, gid: gid)
    }

    /// The barrier records of the memory participant at `base` for `gid`.
    static func barrierRecords(at base: String, gid: String) async throws -> [Barrier] {
        let exchange = try await http("GET", base + "/test/state")
        let records = ((exchange.json as? [String: Any])?["barriers"] as? [[String: Any]]) ?? []
        return records.filter { $0["gid"] as? String == gid }.compactMap { record in
            guard let branch = record["branch"] as? Int, let phase = record["phase"] as? String else { return nil }
            return Barrier(branch: branch, phase: phase, nullCompensation: record["nullCompensation"] as? Bool ?? false)
        }
    }

    /// The same as "branch phase" strings, " null" appended for a null compensation.
    func barriers(_ name: String, gid: String) async throws -> [String] {
        try await barrierRecords(name, gid: gid).map(\.description)
    }
}
