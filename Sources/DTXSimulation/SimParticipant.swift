import DTXAPI
import DTXCore
import Foundation

/// A participant keeping the participant protocol's duties on an in-memory resource
/// manager whose journal survives its crashes (each change is durable before the reply):
/// idempotent answers, the barrier's anti-hanging and null compensation, and for 2PC
/// and 3PC, asking the coordinator about a branch left in doubt; a 3PC branch that
/// cannot reach the coordinator terminates among its peers (DTXCore's `Termination`).
final class SimParticipant: @unchecked Sendable {
    enum State: String {
        case prepared, preCommitted = "pre_committed", committed, rolledBack = "rolled_back", refused
        case tried, confirmed, cancelled
        case done, compensated
        /// A compensation (or Cancel) that found nothing done: the barrier remembers it so
        /// that a late action (or Try) is refused.
        case nullCompensated = "null_compensated"

        /// Holding resources until it hears the outcome.
        var inDoubt: Bool { self == .prepared || self == .preCommitted || self == .tried }
    }

    struct Key: Hashable, CustomStringConvertible {
        var gid: String
        var branch: BranchID
        var description: String { "\(gid)/\(branch)" }
    }

    struct Entry {
        var state: State
        var proto: TransactionProtocol
    }

    let name: String
    private unowned let sim: Simulation
    var up = true
    private(set) var journal: [Key: Entry] = [:]
    /// A saga step's transient failures still to give (from the payload's `flaky`).
    private var flakyLeft: [Key: Int] = [:]
    /// The order in which real compensations ran, across all transactions.
    private(set) var compensationOrder: [Key: Int] = [:]
    /// 3PC: the participants of each transaction, from its CanCommit (who to ask in a termination).
    private var peers: [String: [String]] = [:]

    /// Msg: a message's local transaction at the service that prepared it, by gid.
    enum LocalTransaction: String {
        /// Running: lost if the service crashes (nothing of it is durable).
        case running
        case committed
        /// Rolled back, or never run and marked so by a check-back (which a later local
        /// commit then finds, and fails on).
        case rolledBack = "rolled_back"
    }

    /// Msg: the local transactions of the messages this service prepared (durable once
    /// committed or rolled back), and the crashes so far, which end a running one.
    private(set) var local: [String: LocalTransaction] = [:]
    private(set) var crashes = 0

    init(name: String, sim: Simulation) {
        self.name = name
        self.sim = sim
    }

    func state(_ gid: String, _ branch: BranchID) -> State? { journal[Key(gid: gid, branch: branch)]?.state }

    func handle(_ message: ParticipantMessage, _ proto: TransactionProtocol, _ request: ParticipantRequest) -> ParticipantResponse {
        let key = Key(gid: request.gid, branch: request.branch)
        let current = journal[key]?.state
        let refuses = request.payload?["refuse"] == .bool(true)
        func set(_ state: State) {
            sim.world.note("\(name) \(key) \(current?.rawValue ?? "-") -> \(state.rawValue) on \(message.rawValue)")
            journal[key] = Entry(state: state, proto: proto)
            if state.inDoubt { watch(key) }
        }
        func done(_ word: String) -> ParticipantResponse { .done(status: word, result: nil) }
        func wrong(_ what: String) -> ParticipantResponse {
            sim.violation(request.gid, "\(name) branch \(request.branch): \(message.rawValue) \(what) (state \(current?.rawValue ?? "none"))")
            return done(current?.rawValue ?? "none")
        }
        let rolledBack = ParticipantResponse.refused(code: proto == .threePhaseCommit ? "already_aborted" : "already_rolled_back", message: "the branch was rolled back")
        switch message {
        case .prepare, .canCommit:
            if message == .canCommit, let names = request.participants { peers[request.gid] = names }
            switch current {
            case nil where refuses: set(.refused); return .refused(code: "refused", message: "the simulation votes no")
            case nil: set(.prepared); return done("prepared")
            case .prepared?, .preCommitted?: return done("prepared")
            case .committed?: return done("committed")
            case .refused?, .rolledBack?: return rolledBack
            default: return wrong("for a branch of another protocol")
            }
        case .commitOnePhase:
            switch current {
            case nil where refuses: set(.refused); return .refused(code: "refused", message: "the simulation votes no")
            case nil: set(.committed); return done("committed")
            case .committed?: return done("committed")
            case .refused?, .rolledBack?: return rolledBack
            default: return wrong("for a branch it had prepared")
            }
        case .preCommit:
            switch current {
            case .prepared?: set(.preCommitted); return done("pre_committed")
            case .preCommitted?: return done("pre_committed")
            case .committed?: return done("committed")
            case .rolledBack?: return rolledBack
            default: return wrong("for a branch that is not prepared")
            }
        case .commit, .doCommit:
            switch current {
            case .prepared?, .preCommitted?: set(.committed); return done("committed")
            case .committed?: return done("committed")
            // Only after an operator forced a commit: the transaction is heuristic. A 3PC
            // branch with no record is in q, aborted; 2PC refuses an unknown branch.
            case nil: return proto == .threePhaseCommit ? rolledBack : .refused(code: "unknown_branch", message: "no record of this branch")
            case .refused?, .rolledBack?: return rolledBack
            default: return wrong("for a branch of another protocol")
            }
        case .rollback:
            switch current {
            // 3PC answers with the participant's state (Schemas/participant-api.yaml), 2PC with the branch's.
            case nil, .prepared?, .preCommitted?, .refused?: set(.rolledBack); return done(proto == .threePhaseCommit ? "aborted" : "rolled_back")
            case .rolledBack?: return done(proto == .threePhaseCommit ? "aborted" : "rolled_back")
            // Committed in one phase (a lost answer), or after an operator's override.
            case .committed?: return .refused(code: "already_committed", message: "the branch is committed")
            default: return wrong("for a branch of another protocol")
            }
        case .try:
            switch current {
            case nil where refuses: set(.refused); return .refused(code: "refused", message: "the simulation refuses the Try")
            case nil: set(.tried); return done("tried")
            case .tried?, .confirmed?: return done("tried")
            case .refused?, .cancelled?, .nullCompensated?: return .refused(code: "cancelled", message: "the branch was cancelled")
            default: return wrong("for a branch of another protocol")
            }
        case .confirm:
            switch current {
            case .tried?: set(.confirmed); return done("confirmed")
            case .confirmed?: return done("confirmed")
            default: return wrong("for a branch that was not tried")
            }
        case .cancel:
            switch current {
            case .tried?: set(.cancelled); return done("cancelled")
            case nil, .refused?: set(.nullCompensated); return done("cancelled")
            case .cancelled?, .nullCompensated?: return done("cancelled")
            default: return wrong("for a confirmed branch")
            }
        case .action:
            switch current {
            case nil:
                let flaky = flakyLeft[key] ?? Int(request.payload?["flaky"]?.doubleValue ?? 0)
                if flaky > 0 {
                    flakyLeft[key] = flaky - 1
                    return .failed("503: the simulation fails this attempt")
                }
                if refuses { set(.refused); return .refused(code: "refused", message: "the simulation refuses the step") }
                set(.done)
                return done("done")
            case .done?: return done("done")
            case .refused?: return .refused(code: "refused", message: "the simulation refuses the step")
            case .compensated?, .nullCompensated?: return .refused(code: "compensated", message: "the step was compensated")
            default: return wrong("for a branch of another protocol")
            }
        case .queryPrepared:
            // The barrier method: a gid with no local record gets a rollback marker, so that
            // the answer is settled; a running local transaction answers `running`, as a
            // service not holding the check-back on its row lock would.
            if local[request.gid] == nil {
                sim.world.note("\(name) \(request.gid) local - -> rolled_back on query_prepared")
                local[request.gid] = .rolledBack
            }
            return done(local[request.gid]!.rawValue)
        case .compensate:
            switch current {
            case .done?:
                set(.compensated)
                compensationOrder[key] = sim.nextCompensation()
                return done("compensated")
            case nil, .refused?: set(.nullCompensated); return done("compensated")
            case .compensated?, .nullCompensated?: return done("compensated")
            default: return wrong("for a branch of another protocol")
            }
        }
    }

    /// An interactive branch's work, done by its service here (2PC: prepared; TCC: its
    /// Try run). Returns false when the work fails, or (TCC) when a Cancel came first:
    /// nothing is left in doubt then.
    func workLocally(_ gid: String, _ branch: BranchID, _ proto: TransactionProtocol, refuse: Bool) -> Bool {
        guard up, !refuse else { return false }
        let key = Key(gid: gid, branch: branch)
        guard journal[key] == nil else { return false }
        let state: State = proto == .tcc ? .tried : .prepared
        sim.world.note("\(name) \(key) - -> \(state.rawValue) locally")
        journal[key] = Entry(state: state, proto: proto)
        if proto != .tcc { watch(key) }
        return true
    }

    /// The service undoes a Try it could not enlist (the coordinator, which may or may not
    /// have its enlistment, will never confirm it: the transaction cannot commit without
    /// the application's commit, which it does not send). A Cancel the coordinator sends
    /// later finds it cancelled.
    func cancelLocally(_ gid: String, _ branch: BranchID) {
        let key = Key(gid: gid, branch: branch)
        guard journal[key]?.state == .tried else { return }
        sim.world.note("\(name) \(key) tried -> cancelled locally")
        journal[key]?.state = .cancelled
    }

    // MARK: Branches in doubt

    /// A prepared (2PC, 3PC) branch asks the coordinator how it ended, a few seconds
    /// after entering doubt and then every few seconds while the answer is pending.
    private func watch(_ key: Key) {
        guard !sim.over else { return }
        _ = sim.world.schedule(after: Simulation.askAfter) { [self] in ask(key) }
    }

    private func ask(_ key: Key) {
        guard let entry = journal[key], entry.state.inDoubt, entry.proto != .tcc else { return }
        guard up else { return watch(key) }
        let gid = try! GlobalTransactionID(validating: key.gid)
        guard let coordinator = sim.reachableCoordinator(from: name, gid: gid) else {
            return entry.proto == .threePhaseCommit ? terminate(key) : watch(key)
        }
        let outcome: Decision?
        if entry.proto == .threePhaseCommit {
            let answer = coordinator.threePhaseState(gid: gid, branch: key.branch)
            outcome = answer == .committed ? .commit : answer == .aborted ? .abort : nil
        } else {
            let answer = coordinator.outcome(gid: gid, branch: key.branch).outcome
            outcome = answer == "committed" ? .commit : answer == "aborted" ? .abort : nil
        }
        sim.world.note("\(name) \(key) asked: \(outcome?.rawValue ?? "pending")")
        switch outcome {
        case .commit?:
            journal[key]?.state = .committed
        case .abort?:
            sim.answeredAborted.insert(key.description)
            journal[key]?.state = .rolledBack
        case nil:
            watch(key)
        }
    }

    /// 3PC's termination among peers, the coordinator out of reach: the states of the
    /// branches whose participants are up (its own included; a branch still in q is
    /// aborted by being asked, as the kit does), decided by DTXCore's `Termination`.
    private func terminate(_ key: Key) {
        guard let names = peers[key.gid] else { return watch(key) }
        var states: [BranchID: ThreePhaseState] = [:]
        for (id, peerName) in names.enumerated() {
            let peer = sim.participant(peerName)
            if peer.up { states[id] = peer.stateAsked(Key(gid: key.gid, branch: id)) }
        }
        let outcome = Termination.decide(states)
        sim.world.note("\(name) \(key) terminates: \(states.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.rawValue)" }.joined(separator: ",")) -> \(outcome)")
        switch outcome {
        case .decided(let decision):
            journal[key]?.state = decision == .commit ? .committed : .rolledBack
            sim.terminated(key.gid)
        case .preCommitFirst(let behind):
            for id in behind { sim.participant(names[id]).preCommitAsked(Key(gid: key.gid, branch: id)) }
            watch(key)
        case .undecidable:
            watch(key)
        }
    }

    /// A peer asks this branch's 3PC state (`GET /dtx/state`).
    private func stateAsked(_ key: Key) -> ThreePhaseState {
        switch journal[key]?.state {
        case nil:
            sim.world.note("\(name) \(key) - -> rolled_back on a peer's question")
            journal[key] = Entry(state: .rolledBack, proto: .threePhaseCommit)
            return .aborted
        case .prepared?: return .prepared
        case .preCommitted?: return .preCommitted
        case .committed?: return .committed
        default: return .aborted
        }
    }

    /// A peer running termination sends PRECOMMIT.
    private func preCommitAsked(_ key: Key) {
        guard up, journal[key]?.state == .prepared else { return }
        sim.world.note("\(name) \(key) prepared -> pre_committed on a peer's PRECOMMIT")
        journal[key]?.state = .preCommitted
    }

    /// Msg: the service begins the local transaction of message `gid`; false when a
    /// check-back already marked it rolled back (the local commit would fail on the marker).
    func beginLocally(_ gid: String) -> Bool {
        guard up, local[gid] == nil else { return false }
        sim.world.note("\(name) \(gid) local - -> running")
        local[gid] = .running
        return true
    }

    /// Msg: the local transaction ends, unless a crash ended it first.
    func endLocally(_ gid: String, _ outcome: LocalTransaction) {
        guard up, local[gid] == .running else { return }
        sim.world.note("\(name) \(gid) local running -> \(outcome.rawValue)")
        local[gid] = outcome
    }

    func crash() {
        up = false
        crashes += 1
        // A running local transaction dies with the process: nothing of it was committed.
        for (gid, state) in local where state == .running { local[gid] = nil }
    }

    /// After a restart: branches still in doubt are asked about again.
    func restart() {
        up = true
        for (key, entry) in journal.sorted(by: { ($0.key.gid, $0.key.branch) < ($1.key.gid, $1.key.branch) }) where entry.state.inDoubt {
            watch(key)
        }
    }
}
