import DTXCore
import Testing

/// Every assignment of {unreachable, q, w, p, a, c} to three branches (6³ rows).
private let everyCombination: [[ThreePhaseState?]] = {
    let slot: [ThreePhaseState?] = [nil] + ThreePhaseState.allCases
    return slot.flatMap { first in slot.flatMap { second in slot.map { third in [first, second, third] } } }
}()

/// The reachable branches of a row, as the rule receives them.
private func reachable(_ row: [ThreePhaseState?]) -> [BranchID: ThreePhaseState] {
    var states: [BranchID: ThreePhaseState] = [:]
    for (id, state) in row.enumerated() { if let state { states[id] = state } }
    return states
}

@Suite struct TerminationTests {
    @Test func theTableCoversEveryCombinationOfThreeBranches() {
        #expect(everyCombination.count == 216)
        #expect(Set(everyCombination.map { $0.map { $0?.rawValue ?? "-" }.joined(separator: ",") }).count == 216)
    }

    /// The safety invariants, on every row: whatever the rule says never contradicts a
    /// reachable branch, and it refuses only where no answer can be safe.
    @Test(arguments: everyCombination)
    func theRuleNeverContradictsAReachableBranch(_ row: [ThreePhaseState?]) {
        let states = reachable(row)
        let present = Set(states.values)
        let outcome = Termination.decide(states)
        switch outcome {
        case .decided(.commit):
            #expect(!present.contains(.aborted), "never commit while a reachable branch has aborted")
            #expect(!present.isSubset(of: [.initial, .prepared]), "never commit while every reachable branch is in q or w")
            #expect(present.contains(.committed) || present == [.preCommitted], "commit only after a commit, or with everyone reachable in p")
        case .decided(.abort):
            #expect(!present.contains(.committed), "never abort while a reachable branch has committed")
            #expect(present.contains(.aborted) || !present.contains(.preCommitted), "never abort a pre-committed transaction unless someone aborted")
        case .preCommitFirst(let behind):
            #expect(present.contains(.preCommitted))
            #expect(present.isSubset(of: [.prepared, .preCommitted]))
            #expect(!behind.isEmpty)
            #expect(behind == states.filter { $0.value == .prepared }.keys.sorted(), "exactly the prepared branches are brought to p")
        case .undecidable:
            let contradictory = present.contains(.committed) && present.contains(.aborted)
            let lostVote = present.contains(.preCommitted) && present.contains(.initial) && !present.contains(.committed) && !present.contains(.aborted)
            #expect(states.isEmpty || contradictory || lostVote, "the rule refuses only when nothing is reachable or the states contradict each other")
        }
    }

    /// The rule depends on the states, not on which branch holds them.
    @Test(arguments: everyCombination)
    func theRuleIsTheSameWhicheverBranchHoldsAState(_ row: [ThreePhaseState?]) {
        func kind(_ outcome: TerminationOutcome) -> String {
            switch outcome {
            case .decided(let decision): return decision.rawValue
            case .preCommitFirst(let behind): return "pre-commit \(behind.count)"
            case .undecidable: return "undecidable"
            }
        }
        let reversed = Array(row.reversed())
        #expect(kind(Termination.decide(reachable(row))) == kind(Termination.decide(reachable(reversed))))
    }

    @Test(arguments: [
        // docs/PROTOCOLS.md (3PC), rule by rule
        ([.committed, .prepared, nil], .decided(.commit)),
        ([.committed, .preCommitted, .initial], .decided(.commit)),
        ([.aborted, .prepared, .prepared], .decided(.abort)),
        ([.aborted, .preCommitted, nil], .decided(.abort)),
        ([.preCommitted, .prepared, .prepared], .preCommitFirst([1, 2])),
        ([.prepared, nil, .preCommitted], .preCommitFirst([0])),
        ([.preCommitted, .preCommitted, nil], .decided(.commit)),
        ([nil, .preCommitted, nil], .decided(.commit)),
        ([.prepared, .prepared, .prepared], .decided(.abort)),
        ([.prepared, nil, nil], .decided(.abort)),
        // q has not voted yes, so nobody can be past w: abort (q may abort alone).
        ([.initial, .prepared, .prepared], .decided(.abort)),
        ([.initial, nil, nil], .decided(.abort)),
    ] as [([ThreePhaseState?], TerminationOutcome)])
    func theRuleOfArchitectureSection3(_ row: [ThreePhaseState?], _ expected: TerminationOutcome) {
        #expect(Termination.decide(reachable(row)) == expected)
    }

    @Test func itRefusesToDecideOnNothingOrOnContradictions() {
        guard case .undecidable = Termination.decide([:]) else { Issue.record("nothing reachable must be undecidable"); return }
        guard case .undecidable(let mixed) = Termination.decide([0: .committed, 1: .aborted, 2: .preCommitted]) else {
            Issue.record("committed and aborted together must be undecidable"); return
        }
        #expect(mixed.contains("[0] committed") && mixed.contains("[1] aborted"))
        guard case .undecidable(let lost) = Termination.decide([0: .preCommitted, 1: .initial]) else {
            Issue.record("p with q must be undecidable"); return
        }
        #expect(lost.contains("[1]"))
    }

    /// 3PC's known limit (docs/PROTOCOLS.md, 3PC): when a partition, not a crash, makes branches
    /// unreachable, the two sides apply the rule to different states and decide apart.
    /// 2PC never does (a prepared participant there waits for the coordinator).
    @Test func underAPartitionTheTwoSidesCanDecideDifferently() {
        // The coordinator sent PreCommit to branches 1 and 2, then the network split
        // {coordinator, 0} from {1, 2}; branch 0 cannot reach the coordinator either.
        let global: [BranchID: ThreePhaseState] = [0: .prepared, 1: .preCommitted, 2: .preCommitted]
        let sideA = global.filter { $0.key == 0 }
        let sideB = global.filter { $0.key != 0 }
        #expect(Termination.decide(sideA) == .decided(.abort))
        #expect(Termination.decide(sideB) == .decided(.commit))
        // With everyone reachable there is one answer, consistent with both states.
        #expect(Termination.decide(global) == .preCommitFirst([0]))
    }
}
