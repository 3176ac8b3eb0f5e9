@testable import DTXCoordinator
import DTXCore
import Testing

@Suite struct FailpointTests {
    /// dtxd's failpoints around a forced record are derived from the record's milestone:
    /// every milestone has its `after-` point, and the `before-` points that tests use exist.
    @Test func milestoneFailpointsAreNamedAfterTheirRecords() {
        for milestone in LogEntry.Milestone.allCases {
            #expect(DaemonFailpoints.Point(rawValue: "after-" + milestone.rawValue) != nil, "after-\(milestone.rawValue)")
        }
        for milestone: LogEntry.Milestone in [.commitDecision, .preCommitDecision, .delegation] {
            #expect(DaemonFailpoints.Point(rawValue: "before-" + milestone.rawValue) != nil, "before-\(milestone.rawValue)")
        }
        let gid = try! GlobalTransactionID(validating: "g")
        #expect(LogEntry.decision(gid: gid, .commit, targets: []).milestone(forced: true) == .commitDecision)
        // A saga's closing decision is lazy: nothing to crash at.
        #expect(LogEntry.decision(gid: gid, .commit, targets: []).milestone(forced: false) == nil)
        #expect(LogEntry.resolution(gid: gid, .abort, targets: [], reason: "r", heuristic: false).milestone(forced: true) == .abortDecision)
        #expect(LogEntry.resolution(gid: gid, .commit, targets: [], reason: "r", heuristic: false).milestone(forced: true) == nil)
    }
}
