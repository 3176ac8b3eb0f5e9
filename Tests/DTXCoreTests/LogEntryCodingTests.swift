import DTXCore
import Testing

private let a = try! GlobalTransactionID(validating: "a")
private let b = try! GlobalTransactionID(validating: "b")
private let c = try! GlobalTransactionID(validating: "c")
private let specs = [BranchSpec(participant: "accounts-eu", operation: "debit", payload: .object(["amount": .number(5)])), BranchSpec(participant: "accounts-us", operation: "credit")]

@Suite struct LogEntryCodingTests {
    @Test(arguments: [
        LogEntry.begin(gid: a, protocol: .twoPhaseCommit, branches: specs),
        LogEntry.decision(gid: a, .commit, targets: [0, 1]),
        LogEntry.decision(gid: a, .abort, targets: []),
        LogEntry.end(gid: a),
        LogEntry.open(gid: a, protocol: .twoPhaseCommit),
        LogEntry.enlist(gid: a, branch: 3, spec: BranchSpec(participant: "p", operation: "o\"dd", payload: .array([.string("\n")]))),
        LogEntry.resolution(gid: a, .abort, targets: [1], reason: "disk \"lost\"", heuristic: true),
    ])
    func entriesRoundTripThroughRecords(_ entry: LogEntry) throws {
        let (type, payload) = entry.encoded()
        #expect(try LogEntry(type: type, payload: payload) == entry)
        // Payloads are JSON text, readable in `dtx wal dump`.
        #expect(String(decoding: payload, as: UTF8.self).hasPrefix("{"))
    }

    @Test func unreadableRecordsAreRefusedSayingWhy() {
        #expect(throws: LogEntry.DecodingProblem(description: "unknown log record type 99")) { try LogEntry(type: 99, payload: []) }
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry(type: 1, payload: Array(#"{"gid":"a"}"#.utf8)) }
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry(type: 2, payload: Array("not json".utf8)) }
        #expect(throws: LogEntry.DecodingProblem.self) { try LogEntry(type: 3, payload: Array(#"{"gid":"bad gid"}"#.utf8)) }
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
        ] {
            replay.apply(entry)
        }
        #expect(Set(replay.unfinished.keys) == [a, b])
        #expect(TwoPhaseCommit.Recovered(replay.unfinished[a]!) == .undecided)
        #expect(TwoPhaseCommit.Recovered(replay.unfinished[b]!) == .decided(.commit, targets: [1]))
        #expect(replay.transactions[c]?.ended == true)
        #expect(replay.order == [a, b, c])
    }
}
