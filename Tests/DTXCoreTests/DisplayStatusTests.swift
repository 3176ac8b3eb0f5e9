import DTXCore
import Testing

/// Each machine says what its view shows before its first event has run: the status
/// that event leads to, never `created`; afterwards, its status.
@Suite struct DisplayStatusTests {
    private let gid = try! GlobalTransactionID(validating: "g")
    private let specs = [BranchSpec(participant: "p", operation: "o"), BranchSpec(participant: "q", operation: "o")]

    @Test func beforeTheFirstEventAMachineShowsWhereItIsGoing() {
        #expect(TwoPhaseCommit(gid: gid, branches: specs).displayStatus == .preparing)
        #expect(TwoPhaseCommit(interactive: gid).displayStatus == .active)
        #expect(ThreePhaseCommit(gid: gid, branches: specs).displayStatus == .preparing)
        #expect(TryConfirmCancel(gid: gid, branches: specs).displayStatus == .trying)
        #expect(TryConfirmCancel(interactive: gid).displayStatus == .active)
        #expect(Saga(gid: gid, steps: specs).displayStatus == .running)
    }

    @Test func afterItTheStatusIsShownAsItIs() {
        var machine = TwoPhaseCommit(gid: gid, branches: specs)
        _ = machine.handle(.start)
        _ = machine.handle(.abortRequested(reason: "no"))
        #expect(machine.status != .created)
        #expect(machine.displayStatus == machine.status)
    }
}
