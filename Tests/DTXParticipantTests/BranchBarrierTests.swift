import DTXCore
import DTXParticipant
import Foundation
import Testing

/// The branch barrier's rules, and InMemoryResourceManager serving TCC and sagas behind
/// them with a real journal file: idempotency, null compensation, no hanging, and what a
/// restarted participant remembers.
@Suite struct BranchBarrierTests {
    private let branch = BranchRef(gid: "order-1", branch: 0)
    private let payload: JSONValue = .object(["amount": .number(10)])

    private func result(_ phase: BarrierPhase, _ operation: String = "freeze", participant: String = "a") -> JSONValue {
        .object(["operation": .string(operation), "participant": .string(participant), "phase": .string(phase.rawValue)])
    }

    // MARK: The rules

    @Test func theRulesOfTheBarrier() throws {
        let digest = BranchDigest.of(operation: "freeze", payload: payload)
        let other = BranchDigest.of(operation: "freeze", payload: .object(["amount": .number(11)]))
        func step(_ phase: BarrierPhase, _ recorded: [BarrierPhase: BranchBarrier.Record], digest: String = digest) throws(BusinessError) -> BranchBarrier.Step {
            try BranchBarrier.step(for: phase, of: branch, digest: digest, recorded: recorded)
        }
        func refusal(_ phase: BarrierPhase, _ recorded: [BarrierPhase: BranchBarrier.Record], digest: String = digest) -> String? {
            do {
                _ = try step(phase, recorded, digest: digest)
                return nil
            } catch {
                return error.code
            }
        }
        let tried = BranchBarrier.Record(digest: digest, result: .string("reserved"))
        let marker = BranchBarrier.Record(digest: digest, result: nil)

        // Nothing recorded: the forward phases run; cancel and compensate are null
        // compensations; a confirm has nothing to confirm.
        #expect(try step(.try, [:]) == .run)
        #expect(try step(.action, [:]) == .run)
        #expect(try step(.cancel, [:]) == .recordNullCompensation)
        #expect(try step(.compensate, [:]) == .recordNullCompensation)
        #expect(refusal(.confirm, [:]) == "unknown_branch")
        // A recorded phase answers its stored result; with other work it is refused.
        #expect(try step(.try, [.try: tried]) == .answer(.string("reserved")))
        #expect(refusal(.try, [.try: tried], digest: other) == "branch_mismatch")
        #expect(try step(.cancel, [.cancel: marker]) == .answer(nil))
        // After a try: confirm and cancel run, with the try's work only.
        #expect(try step(.confirm, [.try: tried]) == .run)
        #expect(try step(.cancel, [.try: tried]) == .run)
        #expect(refusal(.confirm, [.try: tried], digest: other) == "branch_mismatch")
        #expect(refusal(.cancel, [.try: tried], digest: other) == "branch_mismatch")
        // No hanging: a try or action after its cancel or compensate is refused.
        #expect(refusal(.try, [.cancel: marker]) == "already_cancelled")
        #expect(refusal(.action, [.compensate: marker]) == "already_compensated")
        // Confirm and cancel exclude each other.
        #expect(refusal(.confirm, [.try: tried, .cancel: marker]) == "already_cancelled")
        #expect(refusal(.cancel, [.try: tried, .confirm: marker]) == "already_confirmed")
        #expect(try step(.compensate, [.action: tried]) == .run)
    }

    @Test func phasesKnowTheirProtocolPathAndReply() {
        #expect(BarrierPhase.allCases.map(\.path) == ["/dtx/tcc/try", "/dtx/tcc/confirm", "/dtx/tcc/cancel", "/dtx/saga/action", "/dtx/saga/compensate"])
        #expect(BarrierPhase.allCases.map(\.replyStatus) == ["tried", "confirmed", "cancelled", "done", "compensated"])
        #expect(BarrierPhase.allCases.filter(\.isForward) == [.try, .action])
    }

    @Test func anUnregisteredOperationIsARefusalForwardAndARetryAfterwards() throws {
        let operations = BarrierOperations<String>()
        operations.register(tcc: "freeze", try: "t", confirm: "c", cancel: "x")
        operations.register(saga: "book", action: "a", compensate: "u")
        #expect(operations.body(.try, "freeze") == "t")
        #expect(operations.body(.compensate, "book") == "u")
        #expect(operations.body(.action, "freeze") == nil)
        do {
            _ = try operations.required(nil, .try, "thaw", of: branch)
            Issue.record("an unknown try was accepted")
        } catch let error as BusinessError {
            #expect(error.code == "unknown_operation")
            #expect(error.message.contains("freeze"))
        }
        #expect(throws: UnregisteredBarrierOperation(phase: .confirm, operation: "thaw", branch: branch)) {
            _ = try operations.required(nil, .confirm, "thaw", of: branch)
        }
    }

    // MARK: The in-memory resource manager

    @Test func repeatedTryConfirmAndCancelAnswerTheStoredResultAndChangeNothing() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(try await manager.try(branch, operation: "freeze", payload: payload) == result(.try))
        let journalAfterTry = try Data(contentsOf: URL(fileURLWithPath: directory.journal))
        #expect(try await manager.try(branch, operation: "freeze", payload: payload) == result(.try))
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.journal)) == journalAfterTry)

        #expect(try await manager.confirm(branch, operation: "freeze", payload: payload) == result(.confirm))
        #expect(try await manager.confirm(branch, operation: "freeze", payload: payload) == result(.confirm))
        #expect(manager.barrierRecords().map(\.phase) == [.try, .confirm])
        // A cancel after the confirm is refused, and leaves nothing.
        #expect(await businessError { _ = try await manager.cancel(branch, operation: "freeze", payload: payload) }?.code == "already_confirmed")
        #expect(manager.barrierRecords().map(\.phase) == [.try, .confirm])
        // Nor is the 2PC state touched.
        #expect(manager.branches().isEmpty)
    }

    @Test func aCancelBeforeItsTryIsANullCompensationAndTheLateTryIsRefused() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(try await manager.cancel(branch, operation: "freeze", payload: payload) == nil)
        #expect(try await manager.cancel(branch, operation: "freeze", payload: payload) == nil)
        let records = manager.barrierRecords()
        #expect(records.count == 1)
        #expect(records.first?.phase == .cancel)
        #expect(records.first?.nullCompensation == true)

        let late = await businessError { _ = try await manager.try(branch, operation: "freeze", payload: payload) }
        #expect(late?.code == "already_cancelled")
        #expect(late?.message.contains("order-1/0") == true)
        #expect(await businessError { _ = try await manager.confirm(branch, operation: "freeze", payload: payload) }?.code == "already_cancelled")
        #expect(manager.barrierRecords() == records)

        // The marker survives a restart: the late try is still refused.
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(reopened.barrierRecords() == records)
        #expect(await businessError { _ = try await reopened.try(branch, operation: "freeze", payload: payload) }?.code == "already_cancelled")
    }

    @Test func aRefusedTryRecordsNothingAndItsCancelIsANullCompensation() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let no: JSONValue = .object(["vote": .string("no")])
        #expect(await businessError { _ = try await manager.try(branch, operation: "freeze", payload: no) }?.code == "voted_no")
        #expect(manager.barrierRecords().isEmpty)
        #expect(try await manager.cancel(branch, operation: "freeze", payload: no) == nil)
        #expect(manager.barrierRecords().map(\.nullCompensation) == [true])
        // The same for a saga's refused action.
        let step = BranchRef(gid: "trip-1", branch: 2)
        #expect(await businessError { _ = try await manager.action(step, operation: "book", payload: no) }?.code == "voted_no")
        #expect(try await manager.compensate(step, operation: "book", payload: no) == nil)
        #expect(manager.barrierRecords().filter { $0.ref == step }.map(\.phase) == [.compensate])
    }

    @Test func aTryThenCancelRunsTheCancel() async throws {
        let manager = try InMemoryResourceManager(name: "a")
        _ = try await manager.try(branch, operation: "freeze", payload: payload)
        #expect(try await manager.cancel(branch, operation: "freeze", payload: payload) == result(.cancel))
        #expect(manager.barrierRecords().map(\.phase) == [.try, .cancel])
        #expect(manager.barrierRecords().allSatisfy { !$0.nullCompensation })
        #expect(await businessError { _ = try await manager.confirm(branch, operation: "freeze", payload: payload) }?.code == "already_cancelled")
        // A cancel naming other work than the try is refused.
        let other = BranchRef(gid: "order-2", branch: 1)
        _ = try await manager.try(other, operation: "freeze", payload: payload)
        #expect(await businessError { _ = try await manager.cancel(other, operation: "freeze", payload: .object(["amount": .number(99)])) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.confirm(BranchRef(gid: "order-3", branch: 0), operation: "freeze", payload: payload) }?.code == "unknown_branch")
    }

    @Test func aCompensateBeforeItsActionIsANullCompensationAndTheLateActionIsRefused() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let step = BranchRef(gid: "trip-1", branch: 1)
        #expect(try await manager.compensate(step, operation: "book", payload: payload) == nil)
        #expect(await businessError { _ = try await manager.action(step, operation: "book", payload: payload) }?.code == "already_compensated")

        // A normal step: the action runs once, its compensation once.
        let done = BranchRef(gid: "trip-2", branch: 0)
        #expect(try await manager.action(done, operation: "book", payload: payload) == result(.action, "book"))
        #expect(try await manager.action(done, operation: "book", payload: payload) == result(.action, "book"))
        #expect(try await manager.compensate(done, operation: "book", payload: payload) == result(.compensate, "book"))
        #expect(try await manager.compensate(done, operation: "book", payload: payload) == result(.compensate, "book"))

        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(reopened.barrierRecords() == manager.barrierRecords())
        #expect(reopened.barrierRecords().map(\.phase) == [.compensate, .action, .compensate])
        #expect(await businessError { _ = try await reopened.action(step, operation: "book", payload: payload) }?.code == "already_compensated")
    }

    @Test func concurrentDuplicateTriesRecordOnce() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let results = try await withThrowingTaskGroup(of: JSONValue?.self) { group in
            for _ in 0..<16 {
                group.addTask { try await manager.try(branch, operation: "freeze", payload: payload) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 16)
        #expect(results.allSatisfy { $0 == result(.try) })
        #expect(manager.barrierRecords().count == 1)
        #expect(try InMemoryResourceManager(name: "a", journal: directory.journal).barrierRecords().count == 1)
    }

    @Test func barrierRecordsOfOldBranchesAreForgottenBeyondTheLimit() async throws {
        let manager = try InMemoryResourceManager(name: "a", retainedDecisions: 2)
        for index in 0..<3 {
            let ref = BranchRef(gid: "g\(index)", branch: 0)
            _ = try await manager.try(ref, operation: "freeze", payload: nil)
            _ = try await manager.confirm(ref, operation: "freeze", payload: nil)
        }
        #expect(manager.barrierRecords().map(\.gid) == ["g1", "g1", "g2", "g2"])
    }
}

/// A fresh temporary directory, removed when the test is done with it.
final class Directory: Sendable {
    let path: String

    init() {
        var template = Array((FileManager.default.temporaryDirectory.path + "/dtx-barrier-XXXXXX").utf8CString)
        path = String(cString: mkdtemp(&template)!)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    var journal: String { path + "/participant.journal" }
}

/// The `BusinessError` `work` throws; records an issue if it throws something else or
/// nothing.
func businessError(_ work: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async -> BusinessError? {
    do {
        try await work()
        Issue.record("expected a BusinessError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as BusinessError {
        return error
    } catch {
        Issue.record("expected a BusinessError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}
