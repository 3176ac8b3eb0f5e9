import DTXCore
import DTXParticipant
import Foundation
import Testing

/// InMemoryResourceManager with a real journal file: what a restarted participant
/// remembers, and the duties of the participant protocol (idempotence, presumed abort,
/// no prepare after a rollback).
@Suite struct InMemoryResourceManagerTests {
    /// A fresh temporary directory, removed when the test is done with it.
    private final class Directory {
        let path: String

        init() {
            var template = Array((FileManager.default.temporaryDirectory.path + "/dtx-rm-XXXXXX").utf8CString)
            path = String(cString: mkdtemp(&template)!)
        }

        deinit { try? FileManager.default.removeItem(atPath: path) }

        var journal: String { path + "/participant.journal" }
    }

    private let branch = BranchRef(gid: "order-1", branch: 0)

    private func businessError(_ work: () async throws -> Void) async -> BusinessError? {
        do {
            try await work()
            return nil
        } catch let error as BusinessError {
            return error
        } catch {
            Issue.record("expected a BusinessError, got \(error)")
            return nil
        }
    }

    @Test func aPreparedBranchIsInDoubtAfterReopeningTheJournal() async throws {
        let directory = Directory()
        let first = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let outcome = try await first.prepare(branch, operation: "debit", payload: .object(["amount": .number(10)]))
        #expect(outcome == .prepared(result: .object(["operation": .string("debit"), "participant": .string("a")])))
        let other = BranchRef(gid: "order-2", branch: 3)
        _ = try await first.prepare(other, operation: "credit", payload: nil)
        try await first.commit(other)

        // A new instance on the same file, as after a crash: the prepared branch is in
        // doubt with its operation and payload; the committed one is remembered, not in doubt.
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(try await reopened.inDoubt() == [branch])
        let records = reopened.branches()
        #expect(records.count == 2)
        #expect(records.first { $0.ref == branch }?.state == .prepared)
        #expect(records.first { $0.ref == branch }?.operation == "debit")
        #expect(records.first { $0.ref == branch }?.payload == .object(["amount": .number(10)]))
        #expect(records.first { $0.ref == other }?.state == .committed)

        // Resolved after the restart, and that too survives another reopen.
        try await reopened.commit(branch)
        #expect(try await reopened.inDoubt().isEmpty)
        let third = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(try await third.inDoubt().isEmpty)
        #expect(third.branches().allSatisfy { $0.state == .committed })
        #expect(third.branches().count == 2)
    }

    @Test func aMissingJournalIsCreatedEmpty() async throws {
        let directory = Directory()
        #expect(!FileManager.default.fileExists(atPath: directory.journal))
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(FileManager.default.fileExists(atPath: directory.journal))
        #expect(try await manager.inDoubt().isEmpty)
        #expect(manager.branches().isEmpty)
    }

    @Test func commitIsIdempotentAndDurable() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        _ = try await manager.prepare(branch, operation: "debit", payload: nil)
        try await manager.commit(branch)
        let journalAfterFirstCommit = try Data(contentsOf: URL(fileURLWithPath: directory.journal))
        try await manager.commit(branch)
        try await manager.commit(branch)
        #expect(manager.branches().map(\.state) == [.committed])
        // A duplicate COMMIT changes nothing, on disk either.
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.journal)) == journalAfterFirstCommit)
        // A repeated PREPARE of a committed branch answers prepared (it is not done again).
        #expect(try await manager.prepare(branch, operation: "debit", payload: nil) == .prepared(result: .object(["operation": .string("debit"), "participant": .string("a")])))
        #expect(manager.branches().map(\.state) == [.committed])
        // Rolling a committed branch back is refused.
        let error = await businessError { try await manager.rollback(branch) }
        #expect(error?.code == "already_committed")
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(reopened.branches().map(\.state) == [.committed])
    }

    @Test func commitOfABranchNeverPreparedIsRefused() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let error = await businessError { try await manager.commit(branch) }
        #expect(error?.code == "unknown_branch")
        #expect(manager.branches().isEmpty)
    }

    @Test func rollbackOfAnUnknownBranchSucceedsAndIsRemembered() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        try await manager.rollback(branch)
        try await manager.rollback(branch)  // idempotent
        #expect(manager.branches().map(\.state) == [.rolledBack])
        #expect(try await manager.inDoubt().isEmpty)

        // The remembered rollback survives a restart, so a late PREPARE is still refused.
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let error = await businessError { _ = try await reopened.prepare(branch, operation: "debit", payload: nil) }
        #expect(error?.code == "already_rolled_back")
        #expect(reopened.branches().map(\.state) == [.rolledBack])
        #expect(try await reopened.inDoubt().isEmpty)
    }

    @Test func prepareAfterRollbackOfAPreparedBranchIsRefused() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        _ = try await manager.prepare(branch, operation: "debit", payload: nil)
        try await manager.rollback(branch)
        let error = await businessError { _ = try await manager.prepare(branch, operation: "debit", payload: nil) }
        #expect(error?.code == "already_rolled_back")
        #expect(manager.branches().map(\.state) == [.rolledBack])
        #expect(try await manager.inDoubt().isEmpty)
        // Nor can it commit, in two phases or in one.
        #expect(await businessError { try await manager.commit(branch) }?.code == "already_rolled_back")
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "debit", payload: nil) }?.code == "already_rolled_back")
        #expect(manager.branches().map(\.state) == [.rolledBack])
    }

    @Test func aNoVoteInThePayloadIsRefusedAndLeavesNothing() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let error = await businessError { _ = try await manager.prepare(branch, operation: "debit", payload: .object(["vote": .string("no")])) }
        #expect(error?.code == "voted_no")
        #expect(manager.branches().isEmpty)
        #expect(try await manager.inDoubt().isEmpty)
        // The same in one phase: refused, nothing committed.
        let onePhase = await businessError { _ = try await manager.commitOnePhase(branch, operation: "debit", payload: .object(["vote": .string("no")])) }
        #expect(onePhase?.code == "voted_no")
        #expect(manager.branches().isEmpty)
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(reopened.branches().isEmpty)
    }

    @Test func aReadOnlyPayloadVotesReadOnlyAndHoldsNothing() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let outcome = try await manager.prepare(branch, operation: "lookup", payload: .object(["readOnly": .bool(true)]))
        #expect(outcome == .readOnly(result: .object(["operation": .string("lookup"), "participant": .string("a")])))
        // A read-only branch drops out of phase two: nothing prepared, nothing in doubt.
        #expect(try await manager.inDoubt().isEmpty)
        #expect(manager.branches().isEmpty)
        // readOnly must be the boolean true, not just present.
        let notReadOnly = try await manager.prepare(BranchRef(gid: "order-1", branch: 1), operation: "lookup", payload: .object(["readOnly": .bool(false)]))
        #expect(notReadOnly == .prepared(result: .object(["operation": .string("lookup"), "participant": .string("a")])))
    }

    @Test func commitOnePhaseReturnsTheSameResultOnARetry() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let first = try await manager.commitOnePhase(branch, operation: "debit", payload: .object(["amount": .number(5)]))
        #expect(first == .object(["operation": .string("debit"), "participant": .string("a")]))
        let retry = try await manager.commitOnePhase(branch, operation: "debit", payload: .object(["amount": .number(5)]))
        #expect(retry == first)
        #expect(manager.branches().map(\.state) == [.committed])
        #expect(try await manager.inDoubt().isEmpty)

        // After a restart the retry still answers the first call's result and does nothing again.
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let afterRestart = try await reopened.commitOnePhase(branch, operation: "debit", payload: .object(["amount": .number(5)]))
        #expect(afterRestart == first)
        #expect(reopened.branches().count == 1)
        #expect(reopened.branches().first?.payload == .object(["amount": .number(5)]))
    }

    @Test func aCorruptJournalIsRefusedAndLeftUntouched() throws {
        let directory = Directory()
        let garbage = Data("{\"branches\": [ {\"gid\": \"order-1\", \"bra".utf8) + Data([0x00, 0xFF, 0xFE, 0x7B])
        try garbage.write(to: URL(fileURLWithPath: directory.journal))
        let before = try FileManager.default.attributesOfItem(atPath: directory.journal)[.modificationDate] as? Date

        do {
            _ = try InMemoryResourceManager(name: "a", journal: directory.journal)
            Issue.record("a corrupt journal was accepted")
        } catch let error as JournalError {
            #expect(error.path == directory.journal)
            // Says what is wrong and what to do.
            #expect(error.description.contains(directory.journal))
            #expect(error.reason.contains("not a valid journal"))
            #expect(error.reason.contains("remove it"))
        } catch {
            Issue.record("expected a JournalError, got \(error)")
        }

        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.journal)) == garbage)
        #expect(try FileManager.default.attributesOfItem(atPath: directory.journal)[.modificationDate] as? Date == before)
        #expect(!FileManager.default.fileExists(atPath: directory.journal + ".tmp"))
    }

    @Test func validJSONOfTheWrongShapeIsACorruptJournalToo() throws {
        let directory = Directory()
        let wrong = Data(#"{"branches": [{"gid": "order-1", "branch": 0, "operation": "x", "state": "half-done"}], "barriers": []}"#.utf8)
        try wrong.write(to: URL(fileURLWithPath: directory.journal))
        #expect(throws: JournalError.self) { _ = try InMemoryResourceManager(name: "a", journal: directory.journal) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.journal)) == wrong)
    }

    @Test func aJournalInAMissingDirectoryFailsAtStart() throws {
        let directory = Directory()
        let path = directory.path + "/no-such-directory/participant.journal"
        #expect(throws: JournalError.self) { _ = try InMemoryResourceManager(name: "a", journal: path) }
    }

    @Test func onlyTheNewestDecisionsAreRememberedButPreparedBranchesAlwaysAre() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal, retainedDecisions: 2)
        let prepared = BranchRef(gid: "held", branch: 0)
        _ = try await manager.prepare(prepared, operation: "debit", payload: nil)
        for index in 0..<3 {
            let ref = BranchRef(gid: "done-\(index)", branch: 0)
            _ = try await manager.prepare(ref, operation: "debit", payload: nil)
            try await manager.commit(ref)
        }
        let gids = Set(manager.branches().map(\.gid))
        #expect(gids == ["held", "done-1", "done-2"])
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal, retainedDecisions: 2)
        #expect(Set(reopened.branches().map(\.gid)) == ["held", "done-1", "done-2"])
        #expect(try await reopened.inDoubt() == [prepared])
    }

    // MARK: A repeated branch asking for other work (a reused gid)

    @Test func aRepeatedPrepareIsADuplicateOnlyForTheSameWork() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let payload: JSONValue = .object(["amount": .number(10)])
        let outcome = try await manager.prepare(branch, operation: "debit", payload: payload)
        let journal = try Data(contentsOf: URL(fileURLWithPath: directory.journal))
        #expect(manager.branches().first?.digest == BranchDigest.of(operation: "debit", payload: payload))

        // The same work again: a duplicate, answered with the stored vote.
        #expect(try await manager.prepare(branch, operation: "debit", payload: payload) == outcome)
        // Other work under the same (gid, branch): refused, nothing changes.
        let otherAmount = await businessError { _ = try await manager.prepare(branch, operation: "debit", payload: .object(["amount": .number(99)])) }
        #expect(otherAmount?.code == "branch_mismatch")
        #expect(otherAmount?.message.contains("order-1/0") == true)
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "credit", payload: payload) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "debit", payload: nil) }?.code == "branch_mismatch")
        // Nor may a one-phase commit with other work commit the prepared branch.
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "debit", payload: .object(["amount": .number(99)])) }?.code == "branch_mismatch")
        #expect(manager.branches().map(\.state) == [.prepared])
        #expect(manager.branches().first?.payload == payload)
        #expect(try await manager.inDoubt() == [branch])
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.journal)) == journal)

        // The digest survives a restart; committing then commits the first work.
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(await businessError { _ = try await reopened.prepare(branch, operation: "debit", payload: .object(["amount": .number(99)])) }?.code == "branch_mismatch")
        try await reopened.commit(branch)
        #expect(reopened.branches().map(\.state) == [.committed])
        #expect(reopened.branches().first?.payload == payload)
        #expect(reopened.branches().first?.digest == BranchDigest.of(operation: "debit", payload: payload))
    }

    @Test func aCommittedBranchRefusesARepeatAskingForOtherWork() async throws {
        let directory = Directory()
        let manager = try InMemoryResourceManager(name: "a", journal: directory.journal)
        let payload: JSONValue = .object(["amount": .number(10)])
        let result: JSONValue = .object(["operation": .string("debit"), "participant": .string("a")])
        _ = try await manager.prepare(branch, operation: "debit", payload: payload)
        try await manager.commit(branch)
        let journal = try Data(contentsOf: URL(fileURLWithPath: directory.journal))

        #expect(try await manager.prepare(branch, operation: "debit", payload: payload) == .prepared(result: result))
        #expect(try await manager.commitOnePhase(branch, operation: "debit", payload: payload) == result)
        #expect(await businessError { _ = try await manager.prepare(branch, operation: "debit", payload: .object(["amount": .number(99)])) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await manager.commitOnePhase(branch, operation: "credit", payload: payload) }?.code == "branch_mismatch")
        #expect(manager.branches().map(\.state) == [.committed])
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory.journal)) == journal)

        // A one-phase commit records its digest too.
        let single = BranchRef(gid: "order-2", branch: 0)
        #expect(try await manager.commitOnePhase(single, operation: "debit", payload: payload) == result)
        #expect(try await manager.commitOnePhase(single, operation: "debit", payload: payload) == result)
        let reopened = try InMemoryResourceManager(name: "a", journal: directory.journal)
        #expect(await businessError { _ = try await reopened.commitOnePhase(single, operation: "debit", payload: .object(["amount": .number(5)])) }?.code == "branch_mismatch")
        #expect(await businessError { _ = try await reopened.prepare(single, operation: "debit", payload: .object(["amount": .number(5)])) }?.code == "branch_mismatch")
        #expect(try await reopened.prepare(single, operation: "debit", payload: payload) == .prepared(result: result))
        // A rolled-back branch still refuses as before, whatever the work.
        try await reopened.rollback(BranchRef(gid: "order-3", branch: 0))
        #expect(await businessError { _ = try await reopened.prepare(BranchRef(gid: "order-3", branch: 0), operation: "debit", payload: payload) }?.code == "already_rolled_back")
    }
}
