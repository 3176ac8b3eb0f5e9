/// Where one party of a three-phase commit stands (Skeen's letters: q, w, p, a, c).
///
/// The raw values are the protocol's words: a 3PC participant answers every message
/// with the state it is in afterwards (200 `{"status": "pre_committed"}`), and
/// `GET {base}/dtx/state` reports it. The coordinator has the same states (see
/// `ThreePhaseCommit.threePhaseState`), which is what it tells a participant that asks.
public enum ThreePhaseState: String, Sendable, Codable, CaseIterable, Equatable {
    /// q: has not voted yes (or does not know the transaction). It may still abort alone.
    case initial
    /// w: voted yes; its work is durably prepared, so it may no longer decide alone.
    case prepared
    /// p: pre-committed durably: every participant voted yes and the coordinator meant to commit.
    case preCommitted = "pre_committed"
    /// c: committed (final).
    case committed
    /// a: aborted (final).
    case aborted
}

/// What the termination rule concludes from the states it could learn.
public enum TerminationOutcome: Sendable, Equatable {
    case decided(Decision)
    /// Someone is pre-committed and nobody has decided: these branches, still prepared,
    /// must be brought to p before anyone commits — so that a crash of whoever commits
    /// first leaves only p and c behind, from which every later termination commits too.
    case preCommitFirst([BranchID])
    /// No decision is safe on what was learned; ask again later (or an operator resolves it).
    case undecidable(String)
}

/// 3PC's termination rule (Skeen), as a pure function of the states of the branches
/// that could be reached — the asking participant's own included.
///
/// In priority order: any committed → commit; any aborted → abort; any pre-committed
/// (none decided) → bring the prepared ones to p, then commit; otherwise (all prepared,
/// or some never voted) → abort. It is safe when "unreachable" means "crashed": a
/// participant reaches p only after every one voted yes, and commits only after every
/// reachable one is in p. Under a network partition the two sides may conclude
/// differently — 3PC's known limit, which the coordinator flags as heuristic once it
/// reaches everyone again.
public enum Termination {
    public static func decide(_ reachable: [BranchID: ThreePhaseState]) -> TerminationOutcome {
        guard !reachable.isEmpty else { return .undecidable("no participant could be reached") }
        let states = Set(reachable.values)
        switch (states.contains(.committed), states.contains(.aborted)) {
        case (true, true):
            // The partition anomaly has already happened: either decision contradicts someone.
            return .undecidable("branches \(branches(in: .committed, of: reachable)) committed and \(branches(in: .aborted, of: reachable)) aborted; an operator must resolve the rest")
        case (true, false):
            return .decided(.commit)
        case (false, true):
            return .decided(.abort)
        case (false, false):
            break
        }
        guard states.contains(.preCommitted) else {
            // Nobody reached p, so the coordinator cannot have committed.
            return .decided(.abort)
        }
        if states.contains(.initial) {
            // p proves every branch voted yes: one that reports q has lost its state.
            return .undecidable("branches \(branches(in: .initial, of: reachable)) report no vote while \(branches(in: .preCommitted, of: reachable)) are pre-committed; their state was lost")
        }
        let behind = branches(in: .prepared, of: reachable)
        return behind.isEmpty ? .decided(.commit) : .preCommitFirst(behind)
    }

    private static func branches(in state: ThreePhaseState, of reachable: [BranchID: ThreePhaseState]) -> [BranchID] {
        reachable.filter { $0.value == state }.keys.sorted()
    }
}
