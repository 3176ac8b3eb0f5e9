import DTXCore

/// The participant protocol (Schemas/participant-api.yaml): the coordinator calls
/// `POST {base}/dtx/{protocol}/{message}` with this body, e.g. `/dtx/2pc/prepare`.
/// Answers: 200 with a `ParticipantReply`; 409 with an `APIErrorBody` for a definitive
/// business failure (a NO vote); 425 or 503 to be retried later; anything else is
/// retried with backoff.
public struct ParticipantRequest: Sendable, Equatable {
    public var gid: String
    public var branch: BranchID
    public var operation: String
    public var payload: JSONValue?
    /// Names of every participant of the transaction (3PC termination asks them).
    public var participants: [String]?
    /// The W3C `traceparent` of the coordinator's span for this message, when dtxd traces.
    public var traceparent: String?

    public init(gid: String, branch: BranchID, operation: String, payload: JSONValue? = nil, participants: [String]? = nil, traceparent: String? = nil) {
        self.gid = gid
        self.branch = branch
        self.operation = operation
        self.payload = payload
        self.participants = participants
        self.traceparent = traceparent
    }
}

public struct ParticipantReply: Sendable, Equatable {
    /// 2PC: `prepared`, `read_only`, `committed`, `rolled_back`.
    public var status: String
    public var result: JSONValue?

    public init(status: String, result: JSONValue? = nil) {
        self.status = status
        self.result = result
    }
}

/// A message of the participant protocol as it travels: `POST {base}/dtx/{protocol}/{message}`.
/// The one list of those routes (`all`), with the word each is answered with when done;
/// the coordinator posts to them, the kit serves them and names its failpoints after them.
public struct ParticipantRoute: Hashable, Sendable {
    public let proto: TransactionProtocol
    public let message: ParticipantMessage

    private init(listing proto: TransactionProtocol, _ message: ParticipantMessage) {
        self.proto = proto
        self.message = message
    }

    /// Every route, in the contract's order: 2PC, TCC, saga, 3PC (whose ROLLBACK is its
    /// abort), msg's check-back (a message's branches travel as saga actions).
    public static let all: [ParticipantRoute] = [
        .init(listing: .twoPhaseCommit, .prepare), .init(listing: .twoPhaseCommit, .commit), .init(listing: .twoPhaseCommit, .rollback),
        .init(listing: .twoPhaseCommit, .commitOnePhase),
        .init(listing: .tcc, .try), .init(listing: .tcc, .confirm), .init(listing: .tcc, .cancel),
        .init(listing: .saga, .action), .init(listing: .saga, .compensate),
        .init(listing: .threePhaseCommit, .canCommit), .init(listing: .threePhaseCommit, .preCommit), .init(listing: .threePhaseCommit, .doCommit),
        .init(listing: .threePhaseCommit, .rollback),
        .init(listing: .msg, .queryPrepared),
    ]

    private static let byPath = Dictionary(uniqueKeysWithValues: all.map { ($0.path, $0) })

    /// The route of `message` in `proto`, nil when that protocol does not send it.
    public init?(_ proto: TransactionProtocol, _ message: ParticipantMessage) {
        guard Self.all.contains(ParticipantRoute(listing: proto, message)) else { return nil }
        self.init(listing: proto, message)
    }

    /// The route posted to `path`, if any.
    public init?(path: String) {
        guard let route = Self.byPath[path] else { return nil }
        self = route
    }

    /// `/dtx/2pc/prepare`, `/dtx/tcc/try`, `/dtx/3pc/can_commit`…
    public var path: String { "/dtx/\(proto.rawValue)/\(message.rawValue)" }

    /// The `status` a participant answers with once it has done the message (2PC's
    /// PREPARE and COMMIT_ONE_PHASE may also answer `read_only`; 3PC answers its state).
    public var doneStatus: String {
        switch message {
        case .prepare: "prepared"
        case .commit, .commitOnePhase, .doCommit: "committed"
        case .rollback: proto == .threePhaseCommit ? ThreePhaseState.aborted.rawValue : "rolled_back"
        case .try: "tried"
        case .confirm: "confirmed"
        case .cancel: "cancelled"
        case .action: "done"
        case .compensate: "compensated"
        case .canCommit: ThreePhaseState.prepared.rawValue
        case .preCommit: ThreePhaseState.preCommitted.rawValue
        case .queryPrepared: "committed"
        }
    }

    /// Every `status` a 200 answer to this message may carry (Schemas/participant-api.yaml):
    /// its `doneStatus`; also `read_only` for PREPARE and COMMIT_ONE_PHASE; for 3PC any
    /// state a branch answers with (never q), since participants may have decided by
    /// termination. Any other word is not a usable answer.
    public var acceptedStatuses: Set<String> {
        if proto == .threePhaseCommit {
            return Set(ThreePhaseState.allCases.filter { $0 != .initial }.map(\.rawValue))
        }
        switch message {
        case .prepare, .commitOnePhase: return [doneStatus, "read_only"]
        case .queryPrepared: return MessageCheckBack.answers
        default: return [doneStatus]
        }
    }

    /// A message that may travel in a `/dtx/batch`: one that finishes a branch
    /// (`finishesABranch`), outside 3PC (whose messages the batch does not take).
    public var batchable: Bool { message.finishesABranch && proto != .threePhaseCommit }

    /// `GET {base}/dtx/state?gid=…&branch=…`: where the coordinator and 3PC peers ask a
    /// branch's state during termination.
    public static let statePath = "/dtx/state"
}

/// Msg's check-back, `POST {service}/dtx/msg/query_prepared` with `{"gid": G}` (and the
/// `traceparent` of dtxd's span, when it traces): did the local transaction that prepared
/// message G commit? Answered 200 with a `ParticipantReply` whose status is `committed`,
/// `rolled_back` or `running` (asked again later).
public enum MessageCheckBack {
    public static let committed = "committed"
    public static let rolledBack = "rolled_back"
    public static let running = "running"
    public static let answers: Set<String> = [committed, rolledBack, running]

    /// The request's body.
    public static func body(gid: String, traceparent: String?) -> [UInt8] {
        var json = JSONWriter(capacity: 64)
        json.member("{\"gid\":", gid)
        if let traceparent { json.member(",\"traceparent\":", traceparent) }
        json.raw("}")
        return json.bytes
    }

    /// The gid and traceparent of a request's body.
    public static func read(_ bytes: [UInt8]) throws(UnreadableJSON) -> (gid: String, traceparent: String?) {
        let help = "; send a JSON object with 'gid' (string)"
        guard case .object(let members)? = try? JSONValue(parsing: bytes) else {
            throw UnreadableJSON(message: (bytes.isEmpty ? "the request body is empty" : "the body is not a JSON object") + help)
        }
        guard let gid = members["gid"]?.stringValue else { throw UnreadableJSON(message: "field 'gid' is missing or not a string" + help) }
        switch members["traceparent"] {
        case nil, .null?: return (gid, nil)
        case .string(let text)?: return (gid, text)
        default: throw UnreadableJSON(message: "field 'traceparent' must be a string (a W3C traceparent)")
        }
    }
}

/// `POST {base}/dtx/batch`, served by participants that registered `batch: true`:
/// `{"messages": [{"path": "/dtx/2pc/commit", "request": <ParticipantRequest>}, …]}`,
/// answered 200 with `{"answers": [{"status": 200, "body": <that path's answer>}, …]}`,
/// one answer per message, in order. Each message is handled as if posted on its own.
public enum ParticipantBatch {
    public static let path = "/dtx/batch"
    /// The most messages one batch carries.
    public static let maximumMessages = 256

    /// The batch's body: each message's path and its request body (JSON), in order.
    public static func body(_ messages: [(path: String, body: [UInt8])]) -> [UInt8] {
        list("{\"messages\":[", messages.map { ($0.body, $0.path) }, first: "{\"path\":", then: ",\"request\":") { $0.string($1) }
    }

    /// The answer's body: each message's HTTP status and answer body (JSON), in order.
    public static func answers(_ answers: [(status: Int, body: [UInt8])]) -> [UInt8] {
        list("{\"answers\":[", answers.map { ($0.body, $0.status) }, first: "{\"status\":", then: ",\"body\":") { $0.int($1) }
    }

    /// `head`, then per item `{<first><key>,<then><json>}`, then `]}`.
    private static func list<Key>(_ head: StaticString, _ items: [(json: [UInt8], key: Key)], first: StaticString, then: StaticString,
                                  _ key: (inout JSONWriter, Key) -> Void) -> [UInt8] {
        var json = JSONWriter(capacity: 64 + items.reduce(0) { $0 + $1.json.count + 48 })
        json.raw(head)
        for (index, item) in items.enumerated() {
            if index > 0 { json.raw(",") }
            json.raw(first)
            key(&json, item.key)
            json.raw(then)
            json.encoded(item.json)
            json.raw("}")
        }
        json.raw("]}")
        return json.bytes
    }

    /// The answers in `data`, nil unless it holds exactly `count`.
    public static func answers(in data: [UInt8], count: Int) -> [JSONValue]? {
        guard case .array(let answers)? = (try? JSONValue(parsing: data))?["answers"], answers.count == count else { return nil }
        return answers
    }
}

/// The operations a participant serves for a conformance run (Schemas/participant-api.yaml,
/// "Conformance run"): a counter per key, which the run adds to and reads to see what a
/// branch's work left behind, and a refusal.
public enum ConformanceOperation {
    /// `{"key": K, "amount": N}`: adds N to the counter K, as the branch's work.
    public static let add = "dtx.conformance.add"
    /// `{"key": K}`: writes nothing; the result is `{"value": V}`, the counter's committed value.
    public static let read = "dtx.conformance.read"
    /// Refused (409) with nothing done.
    public static let refuse = "dtx.conformance.refuse"

    /// The amount `payload` adds to counter `key` when `operation` is `add`, else 0.
    public static func amount(added operation: String, _ payload: JSONValue?, to key: String) -> Double {
        guard operation == add, payload?["key"]?.stringValue == key else { return 0 }
        return payload?["amount"]?.doubleValue ?? 0
    }
}
