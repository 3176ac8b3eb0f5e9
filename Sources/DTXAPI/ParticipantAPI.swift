import DTXCore

/// The participant protocol (Schemas/participant-api.yaml): the coordinator calls
/// `POST {base}/dtx/{protocol}/{message}` with this body, e.g. `/dtx/2pc/prepare`.
/// Answers: 200 with a `ParticipantReply`; 409 with an `APIErrorBody` for a definitive
/// business failure (a NO vote); 425 or 503 to be retried later; anything else is
/// retried with backoff.
public struct ParticipantRequest: Codable, Sendable, Equatable {
    public var gid: String
    public var branch: BranchID
    public var operation: String
    public var payload: JSONValue?
    /// Names of every participant of the transaction (3PC termination asks them).
    public var participants: [String]?

    public init(gid: String, branch: BranchID, operation: String, payload: JSONValue? = nil, participants: [String]? = nil) {
        self.gid = gid
        self.branch = branch
        self.operation = operation
        self.payload = payload
        self.participants = participants
    }
}

public struct ParticipantReply: Codable, Sendable, Equatable {
    /// 2PC: `prepared`, `read_only`, `committed`, `rolled_back`.
    public var status: String
    public var result: JSONValue?

    public init(status: String, result: JSONValue? = nil) {
        self.status = status
        self.result = result
    }
}

extension ParticipantMessage {
    /// The path the coordinator posts this message to, under the participant's base URL:
    /// `/dtx/2pc/prepare`, `/dtx/tcc/try|confirm|cancel`, `/dtx/saga/action|compensate`.
    public func path(for proto: TransactionProtocol) -> String {
        "/dtx/\(proto.rawValue)/\(rawValue)"
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
}
