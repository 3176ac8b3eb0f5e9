import Foundation

/// Index of a branch within its global transaction (0-based, in submission order).
public typealias BranchID = Int

/// What one branch of a global transaction asks of one participant.
///
/// The optional fields are a saga step's (see `Saga`); other protocols leave them nil.
/// Absent keys decode as nil and nil fields are not encoded.
public struct BranchSpec: Sendable, Codable, Equatable {
    public var participant: String
    public var operation: String
    /// Opaque JSON handed to the participant.
    public var payload: JSONValue?
    /// Saga: the earlier steps this one runs after. nil: the previous step (none for the first).
    public var dependsOn: [BranchID]?
    /// Saga: false for the pivot and the forward-only steps after it. nil means true.
    public var compensatable: Bool?
    /// Saga: how a failed or timed-out action is retried before the saga compensates.
    public var retry: StepRetry?
    /// Saga: seconds one attempt of this step may take before it counts as failed.
    public var timeout: Double?

    public init(participant: String, operation: String, payload: JSONValue? = nil, dependsOn: [BranchID]? = nil,
                compensatable: Bool? = nil, retry: StepRetry? = nil, timeout: Double? = nil) {
        self.participant = participant
        self.operation = operation
        self.payload = payload
        self.dependsOn = dependsOn
        self.compensatable = compensatable
        self.retry = retry
        self.timeout = timeout
    }
}

/// A saga step's retry policy; nil fields take the engine's defaults (`Saga.defaultMaxAttempts`
/// and the engine's `RetryPolicy`).
public struct StepRetry: Sendable, Codable, Equatable {
    /// Deliveries of the action in all, the first included (1 = never retried).
    public var maxAttempts: Int?
    /// Seconds before the first retry; later ones double up to `maxDelay`.
    public var initialDelay: Double?
    /// Seconds; the cap of the exponential backoff.
    public var maxDelay: Double?

    public init(maxAttempts: Int? = nil, initialDelay: Double? = nil, maxDelay: Double? = nil) {
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
    }
}

public enum Decision: String, Sendable, Codable, Equatable {
    case commit
    case abort

    /// How a transaction or branch so decided ended, in the API's word (`committed`, `aborted`).
    public var outcome: String { self == .commit ? "committed" : "aborted" }

    /// The decision an outcome word names; nil for another word.
    public init?(outcome: String) {
        switch outcome {
        case "committed": self = .commit
        case "aborted": self = .abort
        default: return nil
        }
    }
}

/// A participant's answer to PREPARE.
public enum Vote: Sendable, Equatable {
    case yes
    /// Nothing was written: the branch drops out of phase two.
    case readOnly
    /// A definitive business refusal, with the participant's reason.
    case no(String)
}

public enum BranchState: String, Sendable, Codable, Equatable {
    case pending
    case preparing
    case prepared
    case readOnly = "read_only"
    case votedNo = "voted_no"
    case committing
    case committed
    case rollingBack = "rolling_back"
    case rolledBack = "rolled_back"
    // TCC
    case trying
    case tried
    case confirming
    case confirmed
    case cancelling
    case cancelled
    // Saga (a step that was never sent stays `pending`)
    case running
    case done
    /// Refused (a Try or a step's action), or out of attempts.
    case failed
    case compensating
    case compensated
    // 3PC (CanCommit uses `preparing`/`prepared`/`votedNo`, DoCommit `committing`, abort `rollingBack`)
    /// PreCommit sent, its acknowledgement awaited.
    case preCommitting = "pre_committing"
    /// The participant acknowledged PreCommit: it is in 3PC's state p.
    case preCommitted = "pre_committed"

    /// Prepared (2PC, 3PC), pre-committed (3PC) and tried (TCC) branches hold resources
    /// until they hear the outcome.
    public var holdsResources: Bool { self == .prepared || self == .preCommitted || self == .tried }

    /// A message is out to the branch and its answer is awaited: a transaction may not
    /// end while one of its branches is in such a state.
    public var awaitsAnAnswer: Bool {
        switch self {
        case .preparing, .committing, .rollingBack, .trying, .confirming, .cancelling, .running, .compensating, .preCommitting: return true
        case .pending, .prepared, .readOnly, .votedNo, .committed, .rolledBack, .tried, .confirmed, .cancelled, .done, .failed, .compensated,
             .preCommitted: return false
        }
    }
}

extension JSONValue {
    /// A branch's result when its work was refused (or, a saga step, ran out of attempts).
    public static func refusal(code: String, message: String) -> JSONValue {
        .object(["error": .object(["code": .string(code), "message": .string(message)])])
    }

    /// The message of a `refusal`, or nil.
    public var refusalMessage: String? { self["error"]?["message"]?.stringValue }
}

public struct Branch: Sendable, Equatable {
    public var id: BranchID
    public var spec: BranchSpec
    public var state: BranchState
    /// Deliveries tried for the current step (reset when the step changes).
    public var attempts: Int
    public var lastError: String?
    /// What the participant answered to the branch's work (a PREPARE, a one-phase
    /// commit, a CanCommit, a Try, a Confirm that returned one, a step's action), or
    /// `JSONValue.refusal` when it refused it. Set by the machines; the view shows it.
    public var result: JSONValue?

    public init(id: BranchID, spec: BranchSpec, state: BranchState = .pending) {
        self.id = id
        self.spec = spec
        self.state = state
        self.attempts = 0
    }
}

/// Where a global transaction stands, as the API and the CLI show it.
public enum TransactionStatus: String, Sendable, Codable, Equatable, CaseIterable {
    case created
    /// Interactive: open, services enlist their prepared branches until commit or abort.
    case active
    case preparing
    case committing
    case aborting
    /// TCC: Try sent to the branches.
    case trying
    /// TCC: decided to confirm; Confirm retried until every branch has done it.
    case confirming
    /// TCC: decided to cancel; Cancel retried until every branch has done it.
    case cancelling
    /// Saga: running its steps forward (past the pivot too, then with the decision logged).
    case running
    /// Saga: backward recovery, compensations retried until every one is done.
    case compensating
    /// TCC: every branch confirmed; Saga: every step done.
    case committed
    /// TCC: every branch cancelled; Saga: every step that may have run compensated.
    case aborted
    /// 3PC: every branch voted yes; the pre-commit is logged and PreCommit sent.
    case preCommitting = "pre_committing"
    /// Msg: prepared, awaiting the service's submit (or abort); past its timeout dtxd
    /// checks back with the service.
    case prepared
    /// Msg: a branch refused its delivery for good (409); the message waits for an
    /// operator (retry it, resolve the branch by hand, or force commit).
    case failed
}

/// The messages the coordinator sends to participants (Schemas/participant-api.yaml).
public enum ParticipantMessage: String, Sendable, Equatable {
    case prepare
    case commit
    case rollback
    /// Single-participant optimisation: do the work and commit in one step.
    case commitOnePhase = "commit_one_phase"
    // TCC: POST /dtx/tcc/{try,confirm,cancel}
    case `try`
    case confirm
    case cancel
    // Saga: POST /dtx/saga/{action,compensate}
    case action
    case compensate
    // 3PC: POST /dtx/3pc/{can_commit,pre_commit,do_commit,rollback}; ROLLBACK is its abort.
    case canCommit = "can_commit"
    case preCommit = "pre_commit"
    case doCommit = "do_commit"
    /// Msg: POST /dtx/msg/query_prepared, the check-back to the service that prepared a
    /// message and has not submitted it: did its local transaction commit?
    case queryPrepared = "query_prepared"
}

extension ParticipantMessage {
    /// Phase two's positive messages: each may go out only once the outcome is durable
    /// (an invariant the engine checks).
    public var confirmsTheOutcome: Bool {
        switch self {
        case .commit, .confirm, .doCommit: true
        case .prepare, .commitOnePhase, .rollback, .try, .cancel, .action, .compensate, .canCommit, .preCommit, .queryPrepared: false
        }
    }

    /// Phase two and compensation: it finishes what a branch did and never waits for
    /// another branch. Only these go in batches. Work (prepare, try, action) may wait in
    /// the database for a row that another branch holds until that branch is finished,
    /// and that branch's vote could be in the same batch, whose answer waits for every
    /// message in it: the two would wait for each other until a lock timeout.
    public var finishesABranch: Bool {
        switch self {
        case .commit, .rollback, .confirm, .cancel, .compensate, .doCommit: true
        case .prepare, .commitOnePhase, .try, .action, .canCommit, .preCommit, .queryPrepared: false
        }
    }
}

/// Timers a state machine asks the engine to run; the engine turns them into delays
/// (the transaction timeout, or `RetryPolicy` with jitter) and feeds `timedOut` back.
public enum TimerID: Hashable, Sendable {
    /// The transaction timeout (phase one, TCC's Try, an open interactive transaction,
    /// 3PC's wait for the PreCommit acknowledgements).
    case phaseOne
    /// The backoff before delivering a branch's message again; `attempt` numbers it.
    case retry(BranchID)
    /// Saga: the current attempt of a step has taken the step's `timeout` seconds.
    case step(BranchID)
    /// Msg: the backoff before checking back with the service again; `attempt` numbers it.
    case checkBack
}

/// What a protocol wants logged; the engine encodes it into a DTXLog record.
public enum LogEntry: Sendable, Equatable {
    /// `service`: a message's (msg) participant that dtxd checks back with; nil elsewhere.
    case begin(gid: GlobalTransactionID, protocol: TransactionProtocol, branches: [BranchSpec], service: String? = nil)
    /// `targets` are the branches phase two must reach (read-only voters excluded).
    case decision(gid: GlobalTransactionID, Decision, targets: [BranchID])
    case end(gid: GlobalTransactionID)
    /// An interactive transaction opened, with no branches yet.
    case open(gid: GlobalTransactionID, protocol: TransactionProtocol)
    /// A service enlisted a branch it has prepared in an interactive transaction.
    case enlist(gid: GlobalTransactionID, branch: BranchID, spec: BranchSpec)
    /// An operator forced the outcome. `heuristic` when it overrides a logged decision;
    /// `targets` are the branches that must now receive it.
    case resolution(gid: GlobalTransactionID, Decision, targets: [BranchID], reason: String, heuristic: Bool)
    /// 2PC's last agent: every other branch voted yes (`targets` prepared) and the
    /// agent is sent COMMIT_ONE_PHASE, which decides. Forced: a restart must ask the
    /// agent how its branch ended rather than presume abort.
    case delegation(gid: GlobalTransactionID, agent: BranchID, targets: [BranchID])
    /// 3PC: every branch voted yes and PreCommit goes out to all of them. Forced: a
    /// restart must send PreCommit again rather than abort, since participants may
    /// already be in p (and so may commit on their own through termination).
    case preCommit(gid: GlobalTransactionID)
    /// The engine's, not a machine's: when the transaction was submitted and its
    /// timeout, so that a view read back after a restart shows them. Lazy.
    case submitted(gid: GlobalTransactionID, at: Date, timeout: Duration)
    /// The engine's: what the view of a finished transaction shows beyond its protocol's
    /// records. Lazy, logged when it finishes (after its `end`).
    case history(gid: GlobalTransactionID, TransactionHistory)
}

extension LogEntry {
    /// How a transaction's timeline names this record once it is forced: `logged decision
    /// commit (forced)` (the words Schemas/coordinator-api.yaml lists).
    public var timelineName: String {
        switch self {
        case .begin: "begin"
        case .decision(_, let decision, _): "decision \(decision.rawValue)"
        case .end: "end"
        case .open: "open"
        case .enlist: "enlist"
        case .resolution(_, let decision, _, _, _): "resolution \(decision.rawValue)"
        case .delegation: "delegation"
        case .preCommit: "pre-commit"
        case .submitted: "submitted"
        case .history: "history"
        }
    }
}

/// What a finished transaction's view shows beyond its protocol's records: each branch's
/// attempts, last error and result, the timeline (bounded as the view's is), the error
/// shown, when it last changed and a saga's compensation order. Times are kept to the
/// millisecond (views show seconds).
public struct TransactionHistory: Sendable, Equatable {
    public struct BranchDetail: Sendable, Equatable {
        public var attempts: Int
        public var lastError: String?
        public var result: JSONValue?

        public init(attempts: Int, lastError: String?, result: JSONValue?) {
            self.attempts = attempts
            self.lastError = lastError
            self.result = result
        }
    }

    public struct Event: Sendable, Equatable {
        /// Seconds since 1970.
        public var at: Double
        public var event: String
        public var branch: BranchID?
        public var detail: String?

        public init(at: Date, event: String, branch: BranchID?, detail: String?) {
            self.at = TransactionHistory.milliseconds(at)
            self.event = event
            self.branch = branch
            self.detail = detail
        }
    }

    /// An operator's action on the transaction: who, when, what and why.
    public struct AuditEntry: Sendable, Equatable {
        /// Seconds since 1970.
        public var at: Double
        /// The operator: a name the request gave, and how it was authenticated (`token`,
        /// or `local` when dtxd requires no token).
        public var who: String
        /// What was done, e.g. `force abort`, `retry now`.
        public var action: String
        public var reason: String
        /// The branch the action is about, if it is about one.
        public var branch: BranchID?

        public init(at: Date, who: String, action: String, reason: String, branch: BranchID? = nil) {
            self.at = TransactionHistory.milliseconds(at)
            self.who = who
            self.action = action
            self.reason = reason
            self.branch = branch
        }
    }

    public var branches: [BranchDetail]
    public var timeline: [Event]
    public var error: String?
    /// Seconds since 1970.
    public var updatedAt: Double
    public var compensations: [BranchID]?
    /// Operators' actions, oldest first.
    public var audit: [AuditEntry]

    public init(branches: [BranchDetail], timeline: [Event], error: String?, updatedAt: Date, compensations: [BranchID]?, audit: [AuditEntry] = []) {
        self.branches = branches
        self.timeline = timeline
        self.error = error
        self.updatedAt = Self.milliseconds(updatedAt)
        self.compensations = compensations
        self.audit = audit
    }

    static func milliseconds(_ date: Date) -> Double { (date.timeIntervalSince1970 * 1000).rounded(.down) / 1000 }
}

/// What the engine must do, in order. A forced log action completes (is durable)
/// before any later action of the same batch is performed.
public enum TransactionAction: Sendable, Equatable {
    case log(LogEntry, forced: Bool)
    case send(ParticipantMessage, to: BranchID)
    /// Msg: ask participant `service` whether the message's local transaction committed
    /// (`query_prepared`); its answer comes back as `CommonEvent.checkedBack`.
    case checkBack(service: String)
    case schedule(TimerID, attempt: Int)
    case cancel(TimerID)
    /// The outcome is decided (and durable where the protocol requires): waiters may be told.
    case decided(Decision)
    /// Every branch has acknowledged; the transaction is over.
    case finish(TransactionStatus)
    /// The event could not have come had the engine kept its invariants (an answer to a
    /// message never sent, a second start, a request `rejection(of:)` refuses): the
    /// machine changes nothing and the engine reports it as a broken invariant. Events a
    /// machine ignores as late or duplicate yield no action at all.
    case impossible(String)
}

extension TransactionStateMachine {
    /// What a machine answers an event its states do not act on: nothing when the event
    /// is late or a duplicate; `impossible` when `impossible`.
    func ignoring(_ event: Event, impossible: Bool) -> [TransactionAction] {
        impossible ? [.impossible("\(gid): \(event) while \(status.rawValue)")] : []
    }
}

/// How a participant answered one message, as the engine reports it to a machine.
public enum ParticipantResponse: Sendable, Equatable {
    /// 200: done; `status` is the participant's word for it (e.g. `read_only`).
    case done(status: String, result: JSONValue?)
    /// 409: a definitive business failure (a NO vote, a failed action).
    case refused(code: String, message: String)
    /// No usable answer: timed out, 425/503, any other status, or a connection that broke
    /// after the message may have been written.
    case failed(String)
    /// The message certainly never reached the participant: no connection could be made
    /// (refused, or not within the connect timeout) or none came free in time. Work
    /// messages so reported are sent again within the transaction's timeout; everywhere
    /// else it is a failure like `failed`.
    case undelivered(String)

    /// The failure's text, for `failed` and `undelivered`.
    public var failure: String? {
        switch self {
        case .failed(let error), .undelivered(let error): error
        case .done, .refused: nil
        }
    }
}

/// The events the engine feeds every protocol, whatever the protocol. A machine
/// translates each into its own `Event` (or ignores one that means nothing to it).
public enum CommonEvent: Sendable, Equatable {
    /// The branch an answer or a timer is about.
    public var branch: BranchID? {
        switch self {
        case .replied(let id, _, _), .timedOut(.retry(let id)), .timedOut(.step(let id)), .resolvedByHand(let id, _, _): id
        default: nil
        }
    }

    case start
    /// Interactive: open the transaction for enlistment.
    case open
    case enlisted(BranchSpec)
    case commitRequested
    case abortRequested(reason: String)
    /// An operator forces the outcome.
    case forced(Decision, reason: String)
    /// An operator declares how one branch ended after settling it outside dtx (its
    /// participant lost it, or was fixed by hand): it is owed no more messages.
    case resolvedByHand(BranchID, Decision, reason: String)
    case replied(BranchID, ParticipantMessage, ParticipantResponse)
    /// Msg: the service's answer to the check-back (`done` with `committed`,
    /// `rolled_back` or `running`).
    case checkedBack(ParticipantResponse)
    case timedOut(TimerID)
}

/// The shape every protocol's state machine has: a pure value that takes an event and
/// returns the actions to perform. No IO, no clocks, no randomness.
public protocol TransactionStateMachine: Sendable {
    associatedtype Event: Sendable
    var gid: GlobalTransactionID { get }
    var status: TransactionStatus { get }
    /// What a view shows: the status, except that a transaction whose first event is
    /// still to come shows the status that event leads to (never `created`).
    var displayStatus: TransactionStatus { get }
    var branches: [Branch] { get }
    /// An operator overrode a logged decision.
    var heuristic: Bool { get }
    mutating func handle(_ event: Event) -> [TransactionAction]

    /// The machine's own event for a common one; nil when it means nothing here.
    static func translate(_ event: CommonEvent) -> Event?
    /// Why a request (enlist, commit, abort, force) cannot be honoured now, or nil.
    func rejection(of event: CommonEvent) -> String?
    /// The machine a restart rebuilds from the log, and the event that resumes it.
    static func recovering(_ replayed: TransactionLogReplay.Replayed) -> (Self, Event)
    /// The machine of a transaction the log shows as ended: final, each branch where
    /// the logged outcome left it.
    static func ended(_ replayed: TransactionLogReplay.Replayed) -> Self
    /// How branch `id` ended, or ends, given the transaction's durable decision: what a
    /// participant asking about that branch is told.
    func outcome(of id: BranchID, decided: Decision) -> Decision
    /// The backoff for branch `id`'s retries, given the engine's policy.
    func retryPolicy(for id: BranchID, base: RetryPolicy) -> RetryPolicy
    /// The delay of branch `id`'s per-attempt timer (saga steps with a `timeout`); nil elsewhere.
    func stepTimeout(_ id: BranchID) -> Duration?
    /// The compensations that ran, in the order they completed (sagas); nil elsewhere.
    var completedCompensations: [BranchID]? { get }
    /// What a 3PC participant running termination is told (3PC); nil elsewhere.
    var terminationAnswer: ThreePhaseState? { get }
    /// Branches refused for good that wait for an operator's retry (msg); empty elsewhere.
    var waitingForAnOperator: [BranchID] { get }
    /// An operator's commit or abort (a request with a reason) is always a forced outcome,
    /// never taken as the application's own request: true for msg, whose submit and abort
    /// are its service's. false: the request is tried as the application's first.
    static var operatorsOnlyForce: Bool { get }
}

extension TransactionStateMachine {
    public func outcome(of id: BranchID, decided: Decision) -> Decision { decided }
    public func retryPolicy(for id: BranchID, base: RetryPolicy) -> RetryPolicy { base }
    public func stepTimeout(_ id: BranchID) -> Duration? { nil }
    public var completedCompensations: [BranchID]? { nil }
    public var terminationAnswer: ThreePhaseState? { nil }
    public var waitingForAnOperator: [BranchID] { [] }
    public static var operatorsOnlyForce: Bool { false }

    /// What a participant asking how branch `branch` (nil: the transaction) ended is told,
    /// given the durable decision: nil while there is none (pending).
    public func answer(about branch: BranchID?, decided: Decision?) -> Decision? {
        guard let decided else { return nil }
        guard let branch, decided == .commit else { return decided }
        return outcome(of: branch, decided: .commit)
    }

    /// What a 3PC participant running termination is told about branch `branch`: a branch
    /// the transaction does not have is aborted; a 3PC transaction answers its state;
    /// another protocol's gid, only its decision (or `prepared` while undecided).
    public func threePhaseAnswer(about branch: BranchID?, decided: Decision?) -> ThreePhaseState {
        if let branch, !branches.indices.contains(branch) { return .aborted }
        if let terminationAnswer { return terminationAnswer }
        return decided.map { $0 == .commit ? .committed : .aborted } ?? .prepared
    }
}

/// Capped exponential backoff; the engine supplies the jitter (a value in 0..<1) so
/// that this stays a pure function.
public struct RetryPolicy: Sendable, Equatable {
    public var initialDelay: Duration
    public var maximumDelay: Duration
    public var multiplier: Double
    /// Fraction of the delay that jitter may remove (0 = none, 1 = full jitter).
    public var jitter: Double

    public init(initialDelay: Duration = .milliseconds(100), maximumDelay: Duration = .seconds(30), multiplier: Double = 2, jitter: Double = 0.5) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
    }

    /// The delay before retry number `attempt` (1-based), given a random `unit` in 0..<1.
    public func delay(attempt: Int, unit: Double) -> Duration {
        // The exponent is capped: a delay that started at 0 would become 0 × ∞ = NaN.
        let base = initialDelay.apiSeconds * pow(multiplier, Double(min(max(attempt - 1, 0), 64)))
        let capped = min(base, maximumDelay.apiSeconds)
        return .nanoseconds(Int64(capped * (1 - jitter * unit) * 1e9))
    }
}

extension Duration {
    /// The longest a saga step's timeout or retry delay may be, in seconds: one day. It
    /// keeps every duration derived from them far inside what timers can hold.
    public static let longestStepSeconds: Double = 86_400

    /// A duration given in the API as a number of seconds, kept to the millisecond and
    /// rounded up, so that a positive value never becomes zero. Callers validate API
    /// input first; anything else (NaN, out of 0...1e9 s) is clamped, so that no value
    /// can trap the conversion.
    public init(apiSeconds seconds: Double) {
        let bounded = seconds.isNaN ? 0 : min(max(seconds, 0), 1e9)
        self = .milliseconds(Int64((bounded * 1000).rounded(.up)))
    }

    /// The duration as the API writes it: seconds, as a number.
    public var apiSeconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
