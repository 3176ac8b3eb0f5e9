/// A transactional message (protocol `msg`) as a pure state machine: a service's local
/// commit and the calls it must cause, tied together.
///
/// The service *prepares* the message (its branches, and itself as the `service` to check
/// back with) before its local transaction commits, and *submits* it after; once
/// submitted, the branches are delivered as a saga runs forward past its pivot (in
/// order, or by `dependsOn`), each retried with backoff until it is done, and never
/// compensated.
///
/// Coordinator log writes:
/// - prepare: `begin` (with the service) **forced**, before the prepare is answered: the
///   service commits locally only after it, so a restart must still know the message
///   (else nobody would check back, and a local commit whose submit was lost would never
///   be delivered);
/// - submit (or a check-back that finds the local transaction committed):
///   `decision(commit)` **forced**, before the submit is answered and before any
///   delivery: the service forgets the message once its submit is answered;
/// - abort (or a check-back that finds it rolled back): `decision(abort)` and `end`,
///   lazy: a restart that lost them checks back again and hears `rolled_back` again;
/// - every branch done: `end`, lazy (a restart that lost it delivers again, idempotently
///   under the receivers' barrier).
///
/// No submit or abort within the message's timeout (`phaseOne`): dtxd sends
/// `query_prepared` to the service, which answers `committed`, `rolled_back` or
/// `running`. `running`, a failure or a refusal checks back again after the engine's
/// backoff (`checkBack`), for as long as it takes.
///
/// An operator may force either outcome while the message is prepared, deciding in the
/// service's place (heuristic), and force commit once it is submitted, giving up on the
/// branches not delivered (heuristic).
///
/// A branch refused for good (409) is `failed`: nothing can be compensated, so the
/// message (status `failed`) waits for an operator, who retries it, resolves the branch
/// by hand as committed, or forces commit to give up on what was not delivered.
///
/// Recovery: `begin` only → prepared again, checked back at the timeout;
/// `decision(commit)` → deliver its targets again; `decision(abort)` → end.
public struct TransactionalMessage: TransactionStateMachine {
    public enum Event: Sendable, Equatable {
        /// The service prepares the message.
        case prepare
        /// The service submits it: its local transaction committed.
        case submit
        /// The service aborts it: its local transaction rolled back.
        case abortRequested(reason: String)
        /// An operator forces the outcome (see `rejection(of:)`).
        case forced(Decision, reason: String)
        /// The service's answer to `query_prepared`.
        case checkedBack(ParticipantResponse)
        /// An operator settled branch `id` outside dtx.
        case resolvedByHand(BranchID, Decision, reason: String)
        /// `phaseOne` (the message's timeout) or `checkBack` (the backoff between check-backs).
        case timedOut(TimerID)
        /// An event of the delivery (answers to actions, their retry and step timers).
        case delivery(Saga.Event)
        /// Rebuild after a restart from what the log holds for this message.
        case recovered(Recovered)
    }

    public typealias Recovered = TwoPhaseCommit.Recovered

    public let gid: GlobalTransactionID
    /// The participant that prepared the message and answers `query_prepared`.
    public let service: String
    public private(set) var status: TransactionStatus = .created
    /// The delivery: a saga whose every step is past its pivot.
    private var delivery: Saga
    /// A `query_prepared` is out and its answer awaited.
    private var checkingBack = false
    /// Check-backs sent so far.
    public private(set) var checkBacks = 0
    /// Why the last check-back gave no outcome (the service's `running`, or a failure).
    public private(set) var lastCheckBack: String?
    private var operatorGaveUp = false

    public init(gid: GlobalTransactionID, service: String, branches: [BranchSpec]) {
        precondition(!branches.isEmpty, "a message has at least one branch")
        self.gid = gid
        self.service = service
        delivery = Saga(gid: gid, steps: branches)
        delivery.refusalsWaitForAnOperator = true
    }

    public var branches: [Branch] { delivery.branches }
    public var heuristic: Bool { delivery.heuristic || operatorGaveUp }
    public var displayStatus: TransactionStatus {
        switch status {
        case .created: .prepared
        case .running where !delivery.refusedSteps.isEmpty: .failed
        default: status
        }
    }

    public var waitingForAnOperator: [BranchID] { status == .running ? delivery.refusedSteps : [] }

    /// Only the service knows whether its local transaction committed: an operator's
    /// commit or abort decides in its place.
    public static var operatorsOnlyForce: Bool { true }

    public func retryPolicy(for id: BranchID, base: RetryPolicy) -> RetryPolicy { delivery.retryPolicy(for: id, base: base) }
    public func stepTimeout(_ id: BranchID) -> Duration? { delivery.stepTimeout(id) }

    /// The steps each branch waits for (declared, or the previous branch).
    public var dependencies: [[BranchID]] { delivery.dependencies }

    /// Why `branches` cannot be a message's, as one line naming the branch and what to
    /// change; nil when they can. The problems of single values come first (`valueProblem`).
    public static func validate(_ branches: [BranchSpec]) -> String? {
        guard !branches.isEmpty else { return "a message needs at least one branch to deliver" }
        if let problem = valueProblem(branches) { return problem }
        return Saga.validate(branches)
    }

    /// A branch value a message does not take, or out of its range: what one value shows
    /// on its own (the transaction spec's schema states it too).
    public static func valueProblem(_ branches: [BranchSpec]) -> String? {
        for (id, branch) in branches.enumerated() {
            if branch.compensatable != nil {
                return "branches[\(id)].compensatable: a message's branches are never compensated; remove it"
            }
            if branch.retry?.maxAttempts != nil {
                return "branches[\(id)].retry.maxAttempts: a message's branches are retried until they are done; remove it (initialDelay and maxDelay set the backoff)"
            }
        }
        return Saga.valueProblem(branches)
    }

    public mutating func handle(_ event: Event) -> [TransactionAction] {
        switch (status, event) {
        case (.created, .prepare):
            status = .prepared
            return [.log(.begin(gid: gid, protocol: .msg, branches: delivery.branches.map(\.spec), service: service), forced: true),
                    .schedule(.phaseOne, attempt: 0)]
        case (.created, .recovered(let recovered)):
            return recover(recovered)
        case (.prepared, .submit):
            return commit(.decision(gid: gid, .commit, targets: Array(delivery.branches.indices)))
        case (.prepared, .abortRequested):
            return abort(nil)
        case (.prepared, .forced(.commit, let reason)):
            // The operator decides in the service's place: heuristic (the local
            // transaction may have rolled back).
            operatorGaveUp = true
            return commit(.resolution(gid: gid, .commit, targets: Array(delivery.branches.indices), reason: reason, heuristic: true))
        case (.prepared, .forced(.abort, let reason)):
            operatorGaveUp = true
            return abort(reason)
        case (.prepared, .timedOut(.phaseOne)), (.prepared, .timedOut(.checkBack)):
            guard !checkingBack else { return [] }
            checkingBack = true
            checkBacks += 1
            return [.checkBack(service: service)]
        case (.prepared, .checkedBack(let response)):
            guard checkingBack else { return [] }  // a duplicate
            checkingBack = false
            switch response {
            case .done("committed", _):
                lastCheckBack = nil
                return commit(.decision(gid: gid, .commit, targets: Array(delivery.branches.indices)))
            case .done("rolled_back", _):
                lastCheckBack = nil
                return abort(nil)
            case .done(let word, _):
                lastCheckBack = word == "running" ? "the service's local transaction is still running" : "the service answered '\(word)'"
            case let .refused(code, message):
                lastCheckBack = "the service refused the check-back: \(code): \(message)"
            case .failed(let error), .undelivered(let error):
                lastCheckBack = error
            }
            return [.schedule(.checkBack, attempt: checkBacks)]
        case (.running, .submit):
            return []  // a submit sent again
        case (.running, .forced(.commit, let reason)):
            operatorGaveUp = true
            return delivered(delivery.handle(.forced(.commit, reason: reason)))
        case (.running, .resolvedByHand(let id, .commit, let reason)):
            let actions = delivery.settledByHand(id)
            guard !actions.isEmpty || delivery.branches[id].state == .done else { return [] }
            // Forced before anything it causes: a restart must not deliver the branch again.
            let owed = delivery.branches.indices.filter { delivery.branches[$0].state != .done }
            let record = LogEntry.resolution(gid: gid, .commit, targets: owed, reason: "branch \(id) resolved by hand as committed: \(reason)", heuristic: heuristic)
            return [.log(record, forced: true)] + delivered(actions)
        case (.running, .delivery(let event)):
            return delivered(delivery.handle(event))
        default:
            return ignored(event)
        }
    }

    /// Late answers and timers change nothing: a check-back's answer or timer once
    /// submitted or aborted, a delivery's after the end. Impossible: a second prepare or
    /// recovery, a request `rejection(of:)` refuses, a delivery's event before the
    /// submit, a retry or step timer while prepared.
    private func ignored(_ event: Event) -> [TransactionAction] {
        switch event {
        case .prepare, .recovered, .abortRequested, .forced, .resolvedByHand:
            return ignoring(event, impossible: true)
        case .submit:
            return ignoring(event, impossible: status == .created)
        case .checkedBack, .timedOut(.phaseOne), .timedOut(.checkBack):
            return ignoring(event, impossible: status == .created)
        case .timedOut, .delivery:
            return ignoring(event, impossible: status == .created || status == .prepared)
        }
    }

    /// The outcome is commit: `entry` forced, then the delivery runs.
    private mutating func commit(_ entry: LogEntry) -> [TransactionAction] {
        checkingBack = false
        lastCheckBack = nil
        status = .running
        let actions: [TransactionAction] = [.cancel(.phaseOne), .cancel(.checkBack), .log(entry, forced: true), .decided(.commit)]
        return actions + delivered(delivery.deliverForward())
    }

    /// The outcome is abort: nothing was delivered and nothing will be. An operator's
    /// `reason` is kept, forced, and heuristic (the local transaction may have committed);
    /// the service's abort is lazy (presumed abort: a restart checks back and hears
    /// `rolled_back` again).
    private mutating func abort(_ reason: String?) -> [TransactionAction] {
        checkingBack = false
        status = .aborted
        let entry: LogEntry = reason.map { .resolution(gid: gid, .abort, targets: [], reason: $0, heuristic: true) } ?? .decision(gid: gid, .abort, targets: [])
        return [.cancel(.phaseOne), .cancel(.checkBack), .log(entry, forced: reason != nil), .decided(.abort), .log(.end(gid: gid), forced: false), .finish(.aborted)]
    }

    /// The delivery's actions, and its end as the message's.
    private mutating func delivered(_ actions: [TransactionAction]) -> [TransactionAction] {
        if delivery.status == .committed { status = .committed }
        return actions
    }

    private mutating func recover(_ recovered: Recovered) -> [TransactionAction] {
        switch recovered {
        case .undecided:
            status = .prepared
            return [.schedule(.phaseOne, attempt: 0)]
        case let .decided(.commit, targets, wasHeuristic):
            status = .running
            operatorGaveUp = wasHeuristic
            return delivered(delivery.handle(.recovered(.decided(.commit, targets: targets, heuristic: wasHeuristic))))
        case let .decided(.abort, _, wasHeuristic):
            status = .aborted
            operatorGaveUp = wasHeuristic
            return [.decided(.abort), .log(.end(gid: gid), forced: false), .finish(.aborted)]
        }
    }
}

extension TransactionalMessage {
    public static func translate(_ event: CommonEvent) -> Event? {
        switch event {
        case .start: return .prepare
        case .commitRequested: return .submit
        case .abortRequested(let reason): return .abortRequested(reason: reason)
        case let .forced(decision, reason): return .forced(decision, reason: reason)
        case let .resolvedByHand(id, decision, reason): return .resolvedByHand(id, decision, reason: reason)
        case .checkedBack(let response): return .checkedBack(response)
        case .timedOut(.phaseOne): return .timedOut(.phaseOne)
        case .timedOut(.checkBack): return .timedOut(.checkBack)
        case .timedOut(let timer): return Saga.translate(.timedOut(timer)).map(Event.delivery)
        case .replied: return Saga.translate(event).map(Event.delivery)
        case .open, .enlisted: return nil  // refused by `rejection(of:)`
        }
    }

    public func rejection(of event: CommonEvent) -> String? {
        switch event {
        case .open, .enlisted:
            return "a message is prepared whole, with its branches; it takes no enlistments"
        case .commitRequested:
            switch status {
            case .prepared, .running: return nil
            case .created: return "the message is being prepared; send the submit once the prepare is answered"
            default: return "the message is \(status.rawValue)"
            }
        case .abortRequested:
            switch status {
            case .prepared: return nil
            case .running: return "the message was submitted (the service's local transaction committed); its branches are delivered and cannot be undone"
            default: return "the message is \(status.rawValue)"
            }
        case .forced(let decision, _):
            switch (status, decision) {
            case (.prepared, _): return nil
            case (.running, .commit): return nil
            case (.running, .abort):
                return "the message was submitted: its branches only go forward; force commit to give up on the branches not yet delivered, once they are settled by hand"
            default: return "the message is \(status.rawValue)"
            }
        case let .resolvedByHand(id, decision, _):
            guard status == .running else {
                return status == .prepared ? "the message is not submitted yet: its branches are owed nothing" : "the message is \(status.rawValue)"
            }
            guard decision == .commit else {
                return "a message's branches are never undone: resolve the branch as committed once its effect is applied by hand, or force commit to give up on it"
            }
            if branches.indices.contains(id), branches[id].state == .done { return "branch \(id) is already done" }
            return nil
        default:
            return nil
        }
    }

    /// A delivered message ran every branch (or an operator gave up on some); an aborted
    /// one delivered nothing.
    public static func ended(_ replayed: TransactionLogReplay.Replayed) -> TransactionalMessage {
        var machine = TransactionalMessage(gid: replayed.gid, service: replayed.service ?? "", branches: replayed.branches)
        machine.delivery = Saga.ended(replayed)
        machine.status = replayed.endedStatus
        machine.operatorGaveUp = replayed.heuristic
        return machine
    }

    public static func recovering(_ replayed: TransactionLogReplay.Replayed) -> (TransactionalMessage, Event) {
        var machine = TransactionalMessage(gid: replayed.gid, service: replayed.service ?? "", branches: replayed.branches)
        machine.delivery = Saga.recovering(replayed).0
        machine.delivery.refusalsWaitForAnOperator = true
        return (machine, .recovered(Recovered(replayed)))
    }
}
