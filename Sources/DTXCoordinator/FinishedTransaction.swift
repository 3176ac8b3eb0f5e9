import DTXAPI
import DTXCore
import Foundation

/// A transaction the log shows as ended, rebuilt at start for queries, outcome answers
/// and idempotent resubmission. Its details are what the log holds: its submission time
/// and timeout, no timeline, no results.
final class FinishedTransaction: TransactionDriving {
    let gid: GlobalTransactionID
    let sequence: UInt64
    let proto: TransactionProtocol
    let createdAt: Date
    let spec: SubmittedSpec
    private let replayed: TransactionLogReplay.Replayed
    private let timeout: Duration

    init(_ replayed: TransactionLogReplay.Replayed, sequence: UInt64, createdAt: Date, timeout: Duration) {
        self.createdAt = createdAt
        self.timeout = timeout
        gid = replayed.gid
        proto = replayed.protocol
        self.sequence = sequence
        self.replayed = replayed
        spec = SubmittedSpec(proto: replayed.protocol, branches: replayed.branches, interactive: replayed.interactive)
    }

    var isFinished: Bool { true }
    /// Every ending logs its decision before its `end`, and the log keeps their order:
    /// an ended transaction always has one.
    private var decision: Decision { replayed.decision ?? .abort }
    private var status: TransactionStatus { decision == .commit ? .committed : .aborted }

    private func state(of branch: BranchID) -> BranchState {
        // The last agent committed in one phase: its commit was the decision.
        let targeted = replayed.targets.contains(branch) || branch == replayed.lastAgent
        switch (proto, decision) {
        case (.tcc, .commit): return .confirmed
        case (.tcc, .abort): return .cancelled
        // A completed saga ran every step; a compensated one compensated those that may have run.
        case (.saga, .commit): return .done
        case (.saga, .abort): return targeted ? .compensated : .pending
        // 3PC has no read-only branches: those outside the targets had committed by termination.
        case (.threePhaseCommit, .commit): return .committed
        case (_, .commit): return targeted ? .committed : .readOnly
        case (_, .abort): return .rolledBack
        }
    }

    func start(with event: CommonEvent) async {}
    func request(_ event: CommonEvent) async -> RequestResult { .rejected("the transaction is \(status.rawValue)") }
    func waitForOutcome(decisionLimit: Duration, phaseTwoLimit: Duration) async {}
    func stop() {}
    func retryNow() -> Int { 0 }
    func unfinishedBranches(on participant: String) -> Int { 0 }
    func health() -> (stuck: Bool, inDoubt: Bool) { (false, false) }

    func outcome(branch: BranchID?) -> String {
        guard decision == .commit else { return "aborted" }
        // Only a 2PC branch can be outside the commit (a read-only vote, never prepared); a
        // committed saga's pivot lists only the steps left to do, not the ones done.
        guard let branch, proto == .twoPhaseCommit else { return "committed" }
        return replayed.targets.contains(branch) || branch == replayed.lastAgent ? "committed" : "aborted"
    }

    func threePhaseState(branch: BranchID?) -> ThreePhaseState {
        if let branch, !replayed.branches.indices.contains(branch) { return .aborted }
        return decision == .commit ? .committed : .aborted
    }

    func view() -> TransactionView {
        TransactionView(
            gid: gid.rawValue, protocol: proto, status: status.rawValue, decision: decision, interactive: replayed.interactive,
            heuristic: replayed.heuristic, stuck: false, createdAt: createdAt, updatedAt: createdAt, timeout: timeout.apiSeconds, error: replayed.reason,
            branches: replayed.branches.enumerated().map {
                BranchView(id: $0.offset, participant: $0.element.participant, operation: $0.element.operation,
                           state: state(of: $0.offset).rawValue, attempts: 0, lastError: nil, result: nil)
            },
            timeline: [TimelineEntry(at: createdAt, event: "read from the log at start")]
        )
    }

    func summary() -> TransactionSummary {
        var seen = Set<String>()
        return TransactionSummary(gid: gid.rawValue, protocol: proto, status: status.rawValue, stuck: false, heuristic: replayed.heuristic,
                                  createdAt: createdAt, participants: replayed.branches.map(\.participant).filter { seen.insert($0).inserted })
    }
}
