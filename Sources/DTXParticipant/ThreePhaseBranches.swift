import DTXAPI
import DTXCore
import Foundation
import Logging
import Synchronization

/// Runs 3PC's participant side (`ThreePhaseParticipant`) for every branch in progress on
/// a `ThreePhaseResourceManager`: messages, the per-branch timer and the termination
/// protocol (ask the coordinator, then the peers, decide by `Termination`).
///
/// Only branches in progress have a machine in memory. A finished one is forgotten and
/// rebuilt from the resource manager's record when asked again, so a peer asking later
/// reads c or a, never q; a restart rebuilds those in w or p and runs termination.
final class ThreePhaseBranches: Sendable {
    /// What a message is answered with: the machine's reply, and CANCOMMIT's work result.
    struct Answer: Sendable {
        var reply: ThreePhaseParticipant.Reply
        var result: JSONValue?
    }

    let resourceManager: any ThreePhaseResourceManager
    let network: ThreePhaseNetwork
    /// The wait in q, w or p before the branch acts alone (later waits are longer).
    let timeout: Duration
    let environment: any EngineEnvironment
    let logger: Logger
    private let live = Mutex<[BranchRef: ThreePhaseBranch]>([:])

    init(resourceManager: any ThreePhaseResourceManager, network: ThreePhaseNetwork, timeout: Duration,
         environment: any EngineEnvironment = SystemEnvironment(), logger: Logger) {
        self.resourceManager = resourceManager
        self.network = network
        self.timeout = timeout
        self.environment = environment
        self.logger = logger
    }

    /// Handles a message (or a peer's question) for `ref`. `request` is the message's body:
    /// CANCOMMIT's carries the work and the transaction's participants.
    /// - Throws: what the resource manager throws when the branch's record cannot be read.
    func handle(_ event: ThreePhaseParticipant.Event, for ref: BranchRef, request: ParticipantRequest?) async throws -> Answer {
        let branch = try await branch(ref, branchCount: request?.participants?.count)
        return await branch.submit(event, work: event == .canCommit ? request : nil)
    }

    /// Runs termination for every branch the resource manager holds in w or p (at start).
    func resumeUnfinished() async {
        do {
            let unfinished = try await resourceManager.unfinishedThreePhaseBranches()
            if !unfinished.isEmpty { logger.notice("running 3PC termination for unfinished branches", metadata: ["count": .stringConvertible(unfinished.count)]) }
            for record in unfinished { resume(record) }
        } catch {
            logger.error("cannot list unfinished 3PC branches", metadata: ["error": "\(error)"])
        }
    }

    /// Rebuilds a branch in w or p from its record and runs termination, unless it is live.
    private func resume(_ record: ThreePhaseBranchRecord) {
        guard let gid = try? GlobalTransactionID(validating: record.ref.gid) else { return }
        let (machine, event) = ThreePhaseParticipant.recovering(gid: gid, branch: record.ref.branch, branchCount: record.participants.count, state: record.state)
        let branch = ThreePhaseBranch(ref: record.ref, machine: machine, participants: record.participants, owner: self)
        let resumed = live.withLock { live -> Bool in
            guard live[record.ref] == nil else { return false }
            live[record.ref] = branch
            return true
        }
        if resumed { environment.spawn { _ = await branch.submit(event, work: nil) } }
    }

    /// The live branch, or one rebuilt from the resource manager's record (q when it has none).
    private func branch(_ ref: BranchRef, branchCount: Int?) async throws -> ThreePhaseBranch {
        if let branch = live.withLock({ $0[ref] }) { return branch }
        let record = try await resourceManager.threePhaseBranch(ref)
        let gid = try GlobalTransactionID(validating: ref.gid)
        let machine = ThreePhaseParticipant(gid: gid, branch: ref.branch, branchCount: record?.participants.count ?? branchCount ?? 0, state: record?.state ?? .initial)
        let fresh = ThreePhaseBranch(ref: ref, machine: machine, participants: record?.participants ?? [], owner: self)
        return live.withLock { live in
            if let existing = live[ref] { return existing }
            live[ref] = fresh
            return fresh
        }
    }

    /// Drops a branch that has ended (its record answers from now on), or whose durable
    /// step failed (the record holds the truth; termination resumes from it later).
    func forget(_ branch: ThreePhaseBranch, failed: Bool) {
        live.withLock { live in
            if live[branch.ref] === branch { live[branch.ref] = nil }
        }
        guard failed else { return }
        let ref = branch.ref
        _ = environment.schedule(after: timeout) { [self] in
            environment.spawn { await self.resumeIfUnfinished(ref) }
        }
    }

    private func resumeIfUnfinished(_ ref: BranchRef) async {
        if let record = try? await resourceManager.threePhaseBranch(ref), record.state == .prepared || record.state == .preCommitted {
            resume(record)
        }
    }
}

/// One branch's machine, fed one event at a time by the engine's runner (`Mailbox`,
/// `OneShot`, `Timers` in DTXCore, as the coordinator's transaction driver is); the actions
/// of an event are performed in order (durable ones awaited) before the next event is
/// handled. The work, the questions and the PRECOMMITs to peers run as tasks that post
/// their outcome back.
final class ThreePhaseBranch: Sendable {
    private typealias Event = ThreePhaseParticipant.Event
    typealias Answer = ThreePhaseBranches.Answer
    /// Where the answer to one message goes, once known.
    private typealias Slot = OneShot<Answer>
    /// The branch's one timer: the wait before it acts alone.
    private struct Wait: Hashable {}

    private struct State: Sendable {
        var machine: ThreePhaseParticipant
        var participants: [ThreePhasePeer]
        /// CANCOMMIT's body, for the work.
        var work: ParticipantRequest?
        var result: JSONValue?
        /// The CANCOMMIT whose work is running: answered when the work's outcome is handled.
        var canCommit: Slot?
    }

    let ref: BranchRef
    private let owner: ThreePhaseBranches
    private let state: Mutex<State>
    private let mailbox = Mailbox<(Event, Slot?)>()
    private let timer: Timers<Wait>

    init(ref: BranchRef, machine: ThreePhaseParticipant, participants: [ThreePhasePeer], owner: ThreePhaseBranches) {
        self.ref = ref
        self.owner = owner
        timer = Timers(environment: owner.environment)
        state = Mutex(State(machine: machine, participants: participants))
    }

    /// Feeds `event` and returns the answer to it (for CANCOMMIT, once its work is done).
    func submit(_ event: ThreePhaseParticipant.Event, work: ParticipantRequest?) async -> Answer {
        let slot = Slot()
        if let work { state.withLock { $0.work = work } }
        await enqueue(event, slot)
        return await slot.value()
    }

    private func post(_ event: Event) {
        owner.environment.spawn { await self.enqueue(event, nil) }
    }

    private func enqueue(_ event: Event, _ slot: Slot?) async {
        await mailbox.deliver((event, slot)) { await process($0.0, $0.1) }
    }

    private func process(_ event: Event, _ slot: Slot?) async {
        let (actions, before) = state.withLock { s in
            let before = s.machine.state
            return (s.machine.handle(event), before)
        }
        // The work's outcome answers the CANCOMMIT that started it.
        let workDone: Bool
        switch event {
        case .workPrepared, .workRefused, .workFailed: workDone = true
        default: workDone = false
        }
        let replyTo = workDone ? state.withLock { s -> Slot? in
            defer { s.canCommit = nil }
            return s.canCommit
        } : slot
        do {
            for action in actions {
                try await perform(action, slot: slot, replyTo: replyTo)
            }
        } catch {
            owner.logger.warning("3PC branch step failed; the branch resumes from its record", metadata: metadata(["error": "\(error)"]))
            let failure = Answer(reply: .unavailable("\(error); retry later"), result: nil)
            slot?.set(failure)
            replyTo?.set(failure)
            timer.cancel(Wait())
            owner.forget(self, failed: true)
            return
        }
        let (after, preparing) = state.withLock { ($0.machine.state, $0.machine.preparing) }
        if let slot, !slot.isSet, !state.withLock({ $0.canCommit === slot }) {
            slot.set(Answer(reply: .state(after), result: nil))
        }
        if after != before, after == .committed || after == .aborted, !Self.isMessage(event) {
            owner.logger.notice("3PC branch decided on its own", metadata: metadata(["outcome": .string(after.rawValue), "event": "\(event)"]))
        }
        if (after == .committed || after == .aborted), !preparing { owner.forget(self, failed: false) }
    }

    private func perform(_ action: ThreePhaseParticipant.Action, slot: Slot?, replyTo: Slot?) async throws {
        let owner = owner
        let ref = ref
        switch action {
        case .prepare:
            state.withLock { $0.canCommit = slot }
            owner.environment.spawn { await self.runWork() }
        case .recordPreCommit:
            try await owner.resourceManager.preCommit(ref)
        case .commit:
            try await owner.resourceManager.commit(ref)
        case .rollback:
            try await owner.resourceManager.rollback(ref)
        case .reply(let reply):
            let result = state.withLock { $0.result }
            replyTo?.set(Answer(reply: reply, result: reply == .state(.prepared) ? result : nil))
        case .schedule(let attempt):
            arm(attempt: attempt)
        case .cancelTimer:
            timer.cancel(Wait())
        case .askCoordinator:
            owner.environment.spawn { self.post(.coordinatorAnswered(await owner.network.coordinatorState(of: ref))) }
        case .askPeers(let peers):
            let participants = state.withLock { $0.participants }
            owner.environment.spawn { self.post(.peersAnswered(await owner.network.peerStates(gid: ref.gid, peers, of: participants))) }
        case .sendPreCommit(let peers):
            let participants = state.withLock { $0.participants }
            owner.environment.spawn { self.post(.peersPreCommitted(await owner.network.preCommit(gid: ref.gid, peers, of: participants))) }
        }
    }

    /// CANCOMMIT's work: the peers' URLs, then the resource manager's prepare (w).
    private func runWork() async {
        guard let work = state.withLock({ $0.work }) else {
            post(.workRefused(code: "bad_request", message: "CANCOMMIT without its body"))
            return
        }
        do {
            let participants = try await owner.network.resolve(work.participants ?? [])
            let result = try await owner.resourceManager.canCommit(ref, operation: work.operation, payload: work.payload, participants: participants)
            state.withLock { s in
                s.participants = participants
                s.result = result
            }
            post(.workPrepared)
        } catch let refusal as BusinessError {
            post(.workRefused(code: refusal.code, message: refusal.message))
        } catch {
            // Not a business refusal, but 3PC's coordinator aborts on any failed CANCOMMIT.
            post(.workFailed("cannot prepare: \(error)"))
        }
    }

    /// Arms the branch's one timer (replacing the armed one); later waits are longer.
    private func arm(attempt: Int) {
        timer.arm(Wait(), after: owner.timeout * min(max(attempt, 1), 4)) { [weak self] in self?.post(.timedOut) }
    }

    private static func isMessage(_ event: Event) -> Bool {
        switch event {
        case .canCommit, .preCommit, .doCommit, .abort, .stateRequested, .workPrepared, .workRefused, .workFailed: return true
        default: return false
        }
    }

    private func metadata(_ extra: Logger.Metadata) -> Logger.Metadata {
        extra.merging(["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch)]) { $1 }
    }
}
