import DTXCore
import Testing

private let gid = try! GlobalTransactionID(validating: "ended-1")
private let three = (0..<3).map { BranchSpec(participant: "p\($0)", operation: "op") }

private func replayed(_ entries: [LogEntry]) -> TransactionLogReplay.Replayed {
    var replay = TransactionLogReplay()
    entries.forEach { replay.apply($0) }
    return replay.transactions[gid]!
}

/// A transaction the log shows as ended is rebuilt by its own machine (`ended`), which
/// says where each branch ended; and the machines keep what participants answered.
@Suite struct EndedTransactionTests {
    @Test func aCommitted2PCShowsItsTargetsCommittedAndTheOthersReadOnly() {
        let m = TwoPhaseCommit.ended(replayed([.begin(gid: gid, protocol: .twoPhaseCommit, branches: three), .decision(gid: gid, .commit, targets: [0, 2]), .end(gid: gid)]))
        #expect(m.status == .committed && m.displayStatus == .committed)
        #expect(m.branches.map(\.state) == [.committed, .readOnly, .committed])
    }

    @Test func aDelegatedCommitCountsTheLastAgentAsCommitted() {
        let m = TwoPhaseCommit.ended(replayed([
            .begin(gid: gid, protocol: .twoPhaseCommit, branches: three), .delegation(gid: gid, agent: 2, targets: [0, 1]),
            .decision(gid: gid, .commit, targets: [0, 1]), .end(gid: gid),
        ]))
        #expect(m.branches.map(\.state) == [.committed, .committed, .committed])
    }

    @Test func anAbortedTransactionOfEachProtocolShowsItsBranchesUndone() {
        let abort: [LogEntry] = [.decision(gid: gid, .abort, targets: [0]), .end(gid: gid)]
        #expect(TwoPhaseCommit.ended(replayed([.begin(gid: gid, protocol: .twoPhaseCommit, branches: three)] + abort)).branches.map(\.state) == [.rolledBack, .rolledBack, .rolledBack])
        #expect(ThreePhaseCommit.ended(replayed([.begin(gid: gid, protocol: .threePhaseCommit, branches: three)] + abort)).branches.map(\.state) == [.rolledBack, .rolledBack, .rolledBack])
        #expect(TryConfirmCancel.ended(replayed([.begin(gid: gid, protocol: .tcc, branches: three)] + abort)).branches.map(\.state) == [.cancelled, .cancelled, .cancelled])
        // A saga compensated the steps that may have run; the others never ran.
        let saga = Saga.ended(replayed([.begin(gid: gid, protocol: .saga, branches: three)] + abort))
        #expect(saga.branches.map(\.state) == [.compensated, .pending, .pending] && saga.status == .aborted && saga.decision == .abort)
    }

    @Test func aHeuristicResolutionStaysVisible() {
        let m = ThreePhaseCommit.ended(replayed([
            .begin(gid: gid, protocol: .threePhaseCommit, branches: three), .preCommit(gid: gid),
            .resolution(gid: gid, .abort, targets: [1], reason: "disk lost", heuristic: true), .end(gid: gid),
        ]))
        #expect(m.heuristic && m.status == .aborted && m.threePhaseState == .aborted)
    }

    @Test func twoPhaseAndThreePhaseMachinesKeepWhatTheParticipantAnswered() {
        var two = TwoPhaseCommit(gid: gid, branches: three)
        _ = two.handle(.start)
        _ = two.handle(.voted(0, .yes, result: .number(1)))
        _ = two.handle(.voted(1, .no("no funds"), result: .refusal(code: "insufficient_funds", message: "no funds")))
        #expect(two.branches[0].result == .number(1))
        #expect(two.branches[1].result?.refusalMessage == "no funds")

        var three3 = ThreePhaseCommit(gid: gid, branches: three)
        _ = three3.handle(.start)
        _ = three3.handle(.voted(2, .yes, result: .string("held")))
        #expect(three3.branches[2].result == .string("held"))
    }
}
