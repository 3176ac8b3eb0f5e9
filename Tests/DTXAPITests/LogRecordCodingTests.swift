import DTXAPI
import DTXCore
import Foundation
import Testing

private let a = try! GlobalTransactionID(validating: "a")
private let b = try! GlobalTransactionID(validating: "b")
private let c = try! GlobalTransactionID(validating: "c")
private let specs = [BranchSpec(participant: "accounts-eu", operation: "debit", payload: .object(["amount": .number(5)])), BranchSpec(participant: "accounts-us", operation: "credit")]
private let sagaSteps = [
    BranchSpec(participant: "hotel", operation: "book", payload: .object(["nights": .number(2)]), dependsOn: [], retry: StepRetry(maxAttempts: 5, initialDelay: 0.25, maxDelay: 30), timeout: 2.5),
    BranchSpec(participant: "flight", operation: "book", dependsOn: [], retry: StepRetry(maxAttempts: 2)),
    BranchSpec(participant: "card", operation: "charge", dependsOn: [0, 1], compensatable: false, retry: StepRetry()),
    BranchSpec(participant: "mail", operation: "send", compensatable: false, timeout: 10),
]
/// A message's branches: a saga's fields, without compensation or an attempt limit.
private let messageBranches = [
    BranchSpec(participant: "stock", operation: "reserve", payload: .object(["sku": .string("x")]), dependsOn: [], retry: StepRetry(initialDelay: 0.25, maxDelay: 30), timeout: 2.5),
    BranchSpec(participant: "mail", operation: "send", dependsOn: []),
]

@Suite struct LogEntryCodingTests {
    @Test(arguments: [
        LogEntry.begin(gid: a, protocol: .twoPhaseCommit, branches: specs),
        LogEntry.begin(gid: a, protocol: .saga, branches: sagaSteps),
        LogEntry.begin(gid: a, protocol: .tcc, branches: specs),
        LogEntry.begin(gid: a, protocol: .msg, branches: messageBranches, service: "orders"),
        LogEntry.enlist(gid: a, branch: 0, spec: sagaSteps[0]),
        LogEntry.decision(gid: a, .commit, targets: [0, 1]),
        LogEntry.decision(gid: a, .abort, targets: []),
        LogEntry.end(gid: a),
        LogEntry.open(gid: a, protocol: .twoPhaseCommit),
        LogEntry.enlist(gid: a, branch: 3, spec: BranchSpec(participant: "p", operation: "o\"dd", payload: .array([.string("\n")]))),
        LogEntry.resolution(gid: a, .abort, targets: [1], reason: "disk \"lost\"", heuristic: true),
        LogEntry.begin(gid: a, protocol: .threePhaseCommit, branches: specs),
        LogEntry.preCommit(gid: a),
        LogEntry.delegation(gid: a, agent: 1, targets: [0]),
        LogEntry.submitted(gid: a, at: Date(timeIntervalSince1970: 1_780_000_000.5), timeout: .milliseconds(2_501)),
        LogEntry.history(gid: a, TransactionHistory(
            branches: [.init(attempts: 1, lastError: nil, result: .object(["gid": .string("x")])), .init(attempts: 3, lastError: "down \"again\"", result: .refusal(code: "no", message: "sold out"))],
            timeline: [.init(at: Date(timeIntervalSince1970: 1_780_000_000.123), event: "submitted", branch: nil, detail: nil),
                       .init(at: Date(timeIntervalSince1970: 1_780_000_001), event: "prepare: failed", branch: 1, detail: "refused\n")],
            error: "sold out", updatedAt: Date(timeIntervalSince1970: 1_780_000_002.0009), compensations: [1, 0])),
        LogEntry.history(gid: a, TransactionHistory(branches: [], timeline: [], error: nil, updatedAt: Date(timeIntervalSince1970: 0), compensations: nil)),
    ])
    func entriesRoundTripThroughRecords(_ entry: LogEntry) throws {
        let (type, payload) = entry.encoded()
        #expect(try LogEntry(type: type, payload: payload) == entry)
        // Checkpoints read only the gid.
        #expect(try LogEntry.gid(type: type, payload: payload) == entry.gid)
        // Payloads are JSON text, readable in `dtx wal dump`.
        #expect(String(decoding: payload, as: UTF8.self).hasPrefix("{"))
    }

    @Test func aRecordStartsWithItsGidAndLeavesOutWhatABranchDoesNotSay() throws {
        let text = #"{"gid":"a","branches":[{"operation":"debit","participant":"accounts-eu","payload":{"amount":5}},{"operation":"credit","participant":"accounts-us"}],"protocol":"2pc"}"#
        #expect(String(decoding: LogEntry.begin(gid: a, protocol: .twoPhaseCommit, branches: specs).encoded().payload, as: UTF8.self) == text)
        // A payload that names a gid of its own does not confuse the checkpoint's reading.
        let nested = LogEntry.enlist(gid: b, branch: 0, spec: BranchSpec(participant: "p", operation: "o", payload: .object(["gid": .string("a")]))).encoded()
        #expect(try LogEntry.gid(type: nested.type, payload: nested.payload) == b)
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry.gid(type: 3, payload: Array(#"{"at":1,"gid":"a"}"#.utf8)) }
    }

    @Test(arguments: sagaSteps + specs + [BranchSpec(participant: "p", operation: "o", compensatable: true, retry: StepRetry(initialDelay: 1), timeout: 0.001)])
    func theHandWrittenBranchIsWhatCodableWritesAndReads(_ spec: BranchSpec) throws {
        var writer = JSONWriter()
        writer.branch(spec)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let codable = try encoder.encode(spec)
        // Byte for byte what Codable writes with sorted keys, and read back by Codable.
        #expect(String(decoding: writer.bytes, as: UTF8.self) == String(decoding: codable, as: UTF8.self))
        #expect(try JSONDecoder().decode(BranchSpec.self, from: Data(writer.bytes)) == spec)
        // Nil fields are left out, not written as null.
        #expect(!String(decoding: writer.bytes, as: UTF8.self).contains("null"))
    }

    @Test func unreadableRecordsAreRefusedSayingWhy() {
        #expect(throws: LogEntry.DecodingProblem(description: "unknown log record type 99")) { try LogEntry(type: 99, payload: []) }
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry(type: 1, payload: Array(#"{"gid":"a"}"#.utf8)) }
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry(type: 2, payload: Array("not json".utf8)) }
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry(type: 3, payload: Array(#"{"gid":"bad gid"}"#.utf8)) }
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry(type: 7, payload: Array("{}".utf8)) }
        #expect(throws: LogEntry.DecodingProblem(description: "delegation record of a lacks its agent or targets")) {
            try LogEntry(type: 8, payload: Array(#"{"gid":"a","targets":[0]}"#.utf8))
        }
    }

    @Test func aMessagesBeginKeepsItsServiceAndIsUnreadableWithoutIt() throws {
        let entry = LogEntry.begin(gid: a, protocol: .msg, branches: specs, service: "orders")
        let (type, payload) = entry.encoded()
        #expect(type == 1)
        #expect(String(decoding: payload, as: UTF8.self).hasSuffix(#""protocol":"msg","service":"orders"}"#))
        #expect(try LogEntry(type: type, payload: payload) == entry)
        var replay = TransactionLogReplay()
        replay.apply(try LogEntry(type: type, payload: payload))
        #expect(replay.unfinished[a]?.service == "orders")

        let withoutService = #"{"gid":"a","branches":[{"operation":"credit","participant":"accounts-us"}],"protocol":"msg"}"#
        #expect(throws: LogEntry.DecodingProblem(description: "begin record of a lacks its service")) {
            try LogEntry(type: 1, payload: Array(withoutService.utf8))
        }
        // Another protocol's begin has none.
        let saga = #"{"gid":"a","branches":[{"operation":"credit","participant":"accounts-us"}],"protocol":"saga"}"#
        #expect(try LogEntry(type: 1, payload: Array(saga.utf8)) == .begin(gid: a, protocol: .saga, branches: [specs[1]]))
    }

    @Test func theDelegationRecordIsTypeEightAndRecoveryAsksTheAgentUnlessADecisionFollowed() throws {
        let (type, payload) = LogEntry.delegation(gid: a, agent: 1, targets: [0]).encoded()
        #expect(type == 8 && LogEntry.RecordType(rawValue: type)?.name == "delegation")
        #expect(String(decoding: payload, as: UTF8.self) == #"{"gid":"a","agent":1,"targets":[0]}"#)

        var replay = TransactionLogReplay()
        for entry: LogEntry in [
            .begin(gid: a, protocol: .twoPhaseCommit, branches: specs), .delegation(gid: a, agent: 1, targets: [0]),
            .begin(gid: b, protocol: .twoPhaseCommit, branches: specs), .delegation(gid: b, agent: 1, targets: [0]), .decision(gid: b, .commit, targets: [0]),
        ] {
            replay.apply(entry)
        }
        let (delegated, resumeDelegated) = TwoPhaseCommit.recovering(replay.unfinished[a]!)
        #expect(delegated.lastAgent == 1)
        #expect(resumeDelegated == .recoveredDelegation(targets: [0]))
        let (decided, resumeDecided) = TwoPhaseCommit.recovering(replay.unfinished[b]!)
        #expect(decided.lastAgent == 1)
        #expect(resumeDecided == .recovered(.decided(.commit, targets: [0])))
    }

    @Test func thePreCommitRecordIsTypeSevenWithTheGidOnly() throws {
        let (type, payload) = LogEntry.preCommit(gid: a).encoded()
        #expect(type == 7 && LogEntry.RecordType(rawValue: type)?.name == "pre_commit")
        #expect(String(decoding: payload, as: UTF8.self) == #"{"gid":"a"}"#)
    }

    @Test func replayLeavesUnfinishedTransactionsWithWhatRecoveryNeeds() {
        var replay = TransactionLogReplay()
        for entry: LogEntry in [
            .begin(gid: a, protocol: .twoPhaseCommit, branches: specs),
            .begin(gid: b, protocol: .twoPhaseCommit, branches: specs),
            .begin(gid: c, protocol: .twoPhaseCommit, branches: specs),
            .decision(gid: b, .commit, targets: [1]),
            .decision(gid: c, .abort, targets: [0, 1]),
            .end(gid: c),
            .begin(gid: c, protocol: .twoPhaseCommit, branches: specs),  // a stray duplicate after end
            .preCommit(gid: b),  // after its decision: the decision still rules
        ] {
            replay.apply(entry)
        }
        #expect(Set(replay.unfinished.keys) == [a, b])
        #expect(TwoPhaseCommit.Recovered(replay.unfinished[a]!) == .undecided)
        #expect(TwoPhaseCommit.Recovered(replay.unfinished[b]!) == .decided(.commit, targets: [1]))
        #expect(ThreePhaseCommit.Recovered(replay.unfinished[b]!) == .decided(.commit, targets: [1]))
        #expect(ThreePhaseCommit.Recovered(replay.unfinished[a]!) == .undecided)
        replay.apply(.preCommit(gid: a))
        #expect(ThreePhaseCommit.Recovered(replay.unfinished[a]!) == .preCommitted)
        #expect(replay.transactions[c]?.ended == true)
        #expect(replay.order == [a, b, c])
    }

    @Test func aSubmittedRecordGivesTheReplayedTransactionItsTimeAndTimeout() throws {
        let at = Date(timeIntervalSince1970: 1_780_000_000.25)
        var replay = TransactionLogReplay()
        for entry: LogEntry in [
            .submitted(gid: a, at: at, timeout: .seconds(7)),  // the engine logs it before the machine's first record
            .begin(gid: a, protocol: .saga, branches: sagaSteps),
            .open(gid: b, protocol: .tcc),  // its lazy record never reached the disk
            .end(gid: a),
        ] {
            replay.apply(entry)
        }
        #expect(replay.transactions[a]?.createdAt == at && replay.transactions[a]?.timeout == .seconds(7))
        #expect(replay.transactions[b]?.createdAt == nil && replay.transactions[b]?.timeout == nil)
        // Kept to the millisecond, never rounded up into the next second.
        let (type, payload) = LogEntry.submitted(gid: a, at: Date(timeIntervalSince1970: 59.9996), timeout: .seconds(1)).encoded()
        #expect(String(decoding: payload, as: UTF8.self) == #"{"gid":"a","at":59.999,"timeout":1}"#)
        #expect(type == 9 && LogEntry.RecordType(rawValue: type)?.name == "submitted")
    }
}
