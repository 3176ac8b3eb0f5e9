/// DTXAPI: the JSON bodies of the coordinator API and of the participant protocol,
/// shared by the daemon, the client, the CLI and the participant kit. The OpenAPI
/// documents in Schemas/ are the contract; these types follow them.
import DTXCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Errors

/// Every 4xx answer: `{ "error": { "code": ..., "message": ... } }`.
public struct APIErrorBody: Codable, Sendable, Equatable, Error {
    public struct Detail: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
    }

    public var error: Detail

    public init(code: String, message: String) {
        error = Detail(code: code, message: message)
    }
}

// MARK: - Participants

public struct ParticipantRegistration: Codable, Sendable, Equatable {
    /// Whether `url` is a base URL the coordinator can call: `http://` or `https://`, a
    /// host name or `[IPv6]`, an optional port 1–65535, a path without query or fragment,
    /// at most 2048 bytes. The same rule as the document's pattern for `url`.
    public static func isValidURL(_ url: String) -> Bool {
        guard url.utf8.count <= 2048 else { return false }
        let rest: Substring
        if url.hasPrefix("http://") {
            rest = url.dropFirst("http://".count)
        } else if url.hasPrefix("https://") {
            rest = url.dropFirst("https://".count)
        } else {
            return false
        }
        let authority = rest.prefix { $0 != "/" }
        let path = rest.dropFirst(authority.count)
        var port: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return false }
            // An IPv6 address in hex groups (no embedded IPv4, no zone), as the pattern says.
            let address = String(authority[authority.index(after: authority.startIndex)..<close])
            var parsed = in6_addr()
            guard address.utf8.allSatisfy({ isHexDigit($0) || $0 == UInt8(ascii: ":") }), inet_pton(AF_INET6, address, &parsed) == 1 else { return false }
            let tail = authority[authority.index(after: close)...]
            if !tail.isEmpty {
                guard tail.hasPrefix(":") else { return false }
                port = tail.dropFirst()
            }
        } else {
            let host = authority.prefix { $0 != ":" }
            guard !host.isEmpty, host.utf8.allSatisfy({ isAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") }) else { return false }
            if host.count < authority.count { port = authority.dropFirst(host.count + 1) }
        }
        if let port {
            guard (1...5).contains(port.utf8.count), port.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }),
                  !port.hasPrefix("0"), let number = Int(port), number <= 65535 else { return false }
        }
        var bytes = path.utf8.makeIterator()
        while let byte = bytes.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = bytes.next(), let low = bytes.next(), isHexDigit(high), isHexDigit(low) else { return false }
            } else if !(isAlphanumeric(byte) || "-._~!$&'()*+,;=:@/".utf8.contains(byte)) {
                return false
            }
        }
        return true
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(byte)
    }

    /// Stable service name, e.g. `accounts-eu`: 1–64 of [A-Za-z0-9-_.].
    public var name: String
    /// Base URL the coordinator calls, e.g. `http://127.0.0.1:8081`.
    public var url: String
    /// Protocols the participant serves; defaults to `["2pc"]`.
    public var protocols: [TransactionProtocol]?
    /// Bearer token the coordinator sends on its calls to this participant.
    public var token: String?
    /// The participant serves `POST {base}/dtx/batch` (`ParticipantBatch`): under load
    /// the coordinator sends it several messages in one request. Defaults to false.
    public var batch: Bool?

    public init(name: String, url: String, protocols: [TransactionProtocol]? = nil, token: String? = nil, batch: Bool? = nil) {
        self.name = name
        self.url = url
        self.protocols = protocols
        self.token = token
        self.batch = batch
    }
}

public struct ParticipantInfo: Codable, Sendable, Equatable {
    public var name: String
    public var url: String
    public var protocols: [TransactionProtocol]
    public var hasToken: Bool
    public var registeredAt: Date
    /// Last registration, heartbeat or successful call; nil after a coordinator restart
    /// until the participant is heard from again.
    public var lastSeen: Date?
    /// Branches of unfinished transactions on this participant.
    public var unfinishedBranches: Int
    /// The coordinator may send it several messages in one `POST {base}/dtx/batch`.
    public var batch: Bool

    public init(name: String, url: String, protocols: [TransactionProtocol], hasToken: Bool, registeredAt: Date, lastSeen: Date?, unfinishedBranches: Int, batch: Bool = false) {
        self.name = name
        self.url = url
        self.protocols = protocols
        self.hasToken = hasToken
        self.registeredAt = registeredAt
        self.lastSeen = lastSeen
        self.unfinishedBranches = unfinishedBranches
        self.batch = batch
    }
}

public struct ParticipantList: Codable, Sendable, Equatable {
    public var participants: [ParticipantInfo]

    public init(participants: [ParticipantInfo]) {
        self.participants = participants
    }
}

// MARK: - Transactions

/// `POST /v1/transactions`: a whole transaction (submit-and-run), or with
/// `interactive: true` and no branches, the begin of an XA-style transaction.
public struct TransactionSubmission: Encodable, Sendable, Equatable {
    /// Client-chosen id; submitting the same gid and spec again returns the same transaction.
    public var gid: String?
    public var `protocol`: TransactionProtocol
    public var branches: [BranchSpec]?
    /// Seconds phase one (or an interactive transaction) may take before it aborts. Default 30.
    public var timeout: Double?
    /// Wait for the outcome before answering (at most `timeout` + 30 s).
    public var wait: Bool?
    public var interactive: Bool?
    /// Msg: the participant that prepares the message and answers dtxd's check-back
    /// (`query_prepared`); required for msg, refused for the other protocols.
    public var service: String?

    public init(gid: String? = nil, protocol: TransactionProtocol = .twoPhaseCommit, branches: [BranchSpec]? = nil, timeout: Double? = nil, wait: Bool? = nil,
                interactive: Bool? = nil, service: String? = nil) {
        self.gid = gid
        self.protocol = `protocol`
        self.branches = branches
        self.timeout = timeout
        self.wait = wait
        self.interactive = interactive
        self.service = service
    }
}

extension TransactionSubmission {
    /// The most branches a transaction may have, and the longest timeout, in seconds.
    public static let maximumBranches = 100
    public static let maximumTimeout: Double = 3600

    /// What the document (TransactionSubmission in coordinator-api.yaml) refuses in this
    /// submission, as an error code and a message naming the place and what to change;
    /// nil when it allows it. dtxd answers it 400 and `dtx submit` refuses it before
    /// sending. What needs the daemon's state (registered participants, how saga steps
    /// fit together) is not judged here.
    public var documentProblem: (code: String, message: String)? {
        if let gid {
            do {
                _ = try GlobalTransactionID(validating: gid)
            } catch {
                return ("invalid_gid", error.description)
            }
        }
        let interactive = self.interactive ?? false
        if interactive, self.protocol == .saga || self.protocol == .threePhaseCommit || self.protocol == .msg {
            // 3PC: CanCommit must list every branch's participant for termination, so the branches are known up front.
            let what = switch self.protocol {
            case .saga: "a saga is submitted whole, with its steps"
            case .msg: "a message is prepared whole, with its branches"
            default: "a 3pc transaction is submitted whole, with its branches"
            }
            return ("invalid_submission", "\(what); interactive is for 2pc and tcc")
        }
        switch (self.protocol, service) {
        case (.msg, nil):
            return ("invalid_submission", "service is required for protocol msg: the registered participant that prepares the message and answers dtxd's check-back")
        case (.msg, let name?) where !ParticipantName.isValid(name):
            return ("invalid_submission", "service must be a participant name, \(ParticipantName.rule), not '\(name)'")
        case (.msg, _) where wait == true:
            return ("invalid_submission", "wait: a message is delivered only once it is submitted, after the service's local commit; wait on the submit instead (POST /v1/transactions/{gid}/commit with {\"wait\": true})")
        case (.msg, _), (_, nil):
            break
        default:
            return ("invalid_submission", "service is for protocol msg only (the participant dtxd checks back with); remove it")
        }
        let branches = self.branches ?? []
        if interactive, !branches.isEmpty {
            return ("invalid_branches", "an interactive transaction starts without branches: services enlist them with POST /v1/transactions/{gid}/branches")
        }
        if !interactive, branches.isEmpty {
            return ("invalid_branches", "branches: at least one branch is required (or set interactive: true)")
        }
        if branches.count > Self.maximumBranches {
            return ("invalid_branches", "branches: \(branches.count) branches; the limit is \(Self.maximumBranches)")
        }
        for (index, branch) in branches.enumerated() {
            if let problem = branch.documentProblem(at: "branches[\(index)]", proto: self.protocol) { return ("invalid_branches", problem) }
        }
        if self.protocol == .saga, let problem = Saga.valueProblem(branches) { return ("invalid_branches", problem) }
        if self.protocol == .msg, let problem = TransactionalMessage.valueProblem(branches) { return ("invalid_branches", problem) }
        if let timeout, !(timeout.isFinite && timeout > 0 && timeout <= Self.maximumTimeout) {
            return ("invalid_timeout", "timeout must be a number of seconds above 0 and at most \(Int(Self.maximumTimeout))")
        }
        return nil
    }
}

extension BranchSpec {
    /// What the document refuses in this branch (or enlistment) at `path`: its
    /// participant name, its operation, fields for saga steps only.
    public func documentProblem(at path: String, proto: TransactionProtocol) -> String? {
        guard ParticipantName.isValid(participant) else {
            return "\(path).participant must be a participant name, \(ParticipantName.rule), not '\(participant)'"
        }
        // Lengths count Unicode code points, as the document's maxLength does.
        guard (1...128).contains(operation.unicodeScalars.count) else {
            return "\(path).operation must be 1 to 128 characters"
        }
        if proto.branchProtocol != .saga {
            let sagaOnly = [("dependsOn", dependsOn != nil), ("compensatable", compensatable != nil), ("retry", retry != nil), ("timeout", timeout != nil)]
            if let (field, _) = sagaOnly.first(where: \.1) {
                return "\(path).\(field) is for saga steps and message branches only; remove it, or submit the transaction as protocol saga"
            }
        }
        return nil
    }
}

public struct BranchView: Codable, Sendable, Equatable {
    public var id: BranchID
    public var participant: String
    public var operation: String
    public var state: String
    public var attempts: Int
    public var lastError: String?
    /// When the armed retry of the branch's current message fires; nil when none is armed.
    public var nextRetryAt: Date?
    /// What the participant answered (its result, or its business error).
    public var result: JSONValue?

    public init(id: BranchID, participant: String, operation: String, state: String, attempts: Int, lastError: String?, nextRetryAt: Date? = nil, result: JSONValue?) {
        self.id = id
        self.participant = participant
        self.operation = operation
        self.state = state
        self.attempts = attempts
        self.lastError = lastError
        self.nextRetryAt = nextRetryAt
        self.result = result
    }
}

/// An operator's action on a transaction, as its view shows it.
public struct AuditRecord: Codable, Sendable, Equatable {
    public var at: Date
    /// Who: the name the request gave (`operator`), and how it was authenticated: `token`
    /// (dtxd's bearer token) or `local` (dtxd requires none).
    public var who: String
    /// What was done: `commit`, `abort`, `force commit`, `force abort`, `retry now`.
    public var action: String
    public var reason: String
    public var branch: BranchID?

    public init(at: Date, who: String, action: String, reason: String, branch: BranchID? = nil) {
        self.at = at
        self.who = who
        self.action = action
        self.reason = reason
        self.branch = branch
    }
}

public struct TimelineEntry: Codable, Sendable, Equatable {
    public var at: Date
    public var event: String
    public var branch: BranchID?
    public var detail: String?

    public init(at: Date, event: String, branch: BranchID? = nil, detail: String? = nil) {
        self.at = at
        self.event = event
        self.branch = branch
        self.detail = detail
    }
}

/// Status strings: `active` (interactive, open for enlistment), `preparing`,
/// `committing`, `aborting`, `committed`, `aborted`.
public struct TransactionView: Decodable, Sendable, Equatable {
    public var gid: String
    public var `protocol`: TransactionProtocol
    public var status: String
    /// `commit` or `abort` once decided.
    public var decision: Decision?
    public var interactive: Bool
    /// An operator forced an outcome that overrode a logged decision.
    public var heuristic: Bool
    /// The transaction needs an operator's attention (`stuckReason` says why).
    public var stuck: Bool
    /// Why it is stuck: a branch's attempts and last error, a failed log, or its age.
    public var stuckReason: String?
    public var createdAt: Date
    public var updatedAt: Date
    public var timeout: Double
    /// The first business error or the operator's reason.
    public var error: String?
    public var branches: [BranchView]
    public var timeline: [TimelineEntry]
    /// Sagas: the steps whose compensation has run, in the order they completed.
    public var compensations: [BranchID]?
    /// Operators' actions on the transaction, oldest first; absent when there were none.
    public var audit: [AuditRecord]?
    /// Msg: the participant that prepared the message, which dtxd checks back with.
    public var service: String?

    public init(gid: String, protocol: TransactionProtocol, status: String, decision: Decision?, interactive: Bool, heuristic: Bool, stuck: Bool, stuckReason: String? = nil,
                createdAt: Date, updatedAt: Date, timeout: Double, error: String?, branches: [BranchView], timeline: [TimelineEntry], compensations: [BranchID]? = nil,
                audit: [AuditRecord]? = nil, service: String? = nil) {
        self.service = service
        self.compensations = compensations
        self.audit = audit
        self.stuckReason = stuckReason
        self.gid = gid
        self.protocol = `protocol`
        self.status = status
        self.decision = decision
        self.interactive = interactive
        self.heuristic = heuristic
        self.stuck = stuck
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.timeout = timeout
        self.error = error
        self.branches = branches
        self.timeline = timeline
    }
}

public struct TransactionSummary: Codable, Sendable, Equatable {
    public var gid: String
    public var `protocol`: TransactionProtocol
    public var status: String
    public var stuck: Bool
    public var heuristic: Bool
    public var createdAt: Date
    public var participants: [String]
    /// This transaction's place in the list: as `cursor`, lists the ones after it.
    public var cursor: String

    public init(gid: String, protocol: TransactionProtocol, status: String, stuck: Bool, heuristic: Bool, createdAt: Date, participants: [String], cursor: String) {
        self.gid = gid
        self.protocol = `protocol`
        self.status = status
        self.stuck = stuck
        self.heuristic = heuristic
        self.createdAt = createdAt
        self.participants = participants
        self.cursor = cursor
    }
}

public struct TransactionList: Codable, Sendable, Equatable {
    public var transactions: [TransactionSummary]
    /// Pass as `cursor` to get the next page; absent on the last page.
    public var nextCursor: String?

    public init(transactions: [TransactionSummary], nextCursor: String?) {
        self.transactions = transactions
        self.nextCursor = nextCursor
    }

    /// The pages of the same query from several cluster nodes as one page of at most
    /// `limit`: newest (highest cursor) first, a gid listed twice (on its old and new
    /// owner during a takeover) once, at its newer place; more follow if any node had
    /// more or not every entry fitted.
    public static func merging(_ lists: [TransactionList], limit: Int) -> TransactionList {
        var newest: [String: TransactionSummary] = [:]
        for summary in lists.flatMap(\.transactions) {
            if let seen = newest[summary.gid], seen.position >= summary.position { continue }
            newest[summary.gid] = summary
        }
        let ordered = newest.values.sorted { $0.position > $1.position }
        let page = Array(ordered.prefix(limit))
        let more = ordered.count > limit || lists.contains { $0.nextCursor != nil }
        return TransactionList(transactions: page, nextCursor: more ? page.last?.cursor : nil)
    }
}

extension TransactionSummary {
    fileprivate var position: UInt64 { UInt64(cursor) ?? 0 }
}

/// `GET /v1/transactions/{gid}/outcome`: `committed`, `aborted` (also for an unknown
/// gid: presumed abort) or `pending` (not decided yet: ask again later).
public struct OutcomeAnswer: Codable, Sendable, Equatable {
    public var gid: String
    public var outcome: String

    public init(gid: String, outcome: String) {
        self.gid = gid
        self.outcome = outcome
    }
}

/// `POST /v1/transactions/{gid}/branches`: a service enlists its branch of an
/// interactive transaction, then prepares its work under the branch id it gets back,
/// then answers the application, which commits only once every service has answered.
public struct EnlistRequest: Codable, Sendable, Equatable {
    public var participant: String
    public var operation: String
    public var payload: JSONValue?

    public init(participant: String, operation: String, payload: JSONValue? = nil) {
        self.participant = participant
        self.operation = operation
        self.payload = payload
    }
}

public struct EnlistAnswer: Codable, Sendable, Equatable {
    public var gid: String
    public var branch: BranchID

    public init(gid: String, branch: BranchID) {
        self.gid = gid
        self.branch = branch
    }
}

/// `POST /v1/transactions/{gid}/commit|abort`. For an interactive transaction that is
/// still open this is the application's commit or abort; for any other unfinished
/// transaction it is an operator forcing the outcome, and `reason` is required.
public struct ResolveRequest: Codable, Sendable, Equatable {
    public var reason: String?
    /// Wait for the outcome before answering.
    public var wait: Bool?
    /// The operator's name, kept in the audit record.
    public var `operator`: String?

    public init(reason: String? = nil, wait: Bool? = nil, operator: String? = nil) {
        self.reason = reason
        self.wait = wait
        self.operator = `operator`
    }
}

/// `POST /v1/transactions/{gid}/branches/{branch}/resolve`: an operator declares how a
/// branch ended after settling it outside dtx.
public struct BranchResolution: Codable, Sendable, Equatable {
    /// `committed` or `aborted`.
    public var outcome: String
    public var reason: String
    /// The operator's name, kept in the audit record.
    public var `operator`: String?

    public init(outcome: String, reason: String, operator: String? = nil) {
        self.outcome = outcome
        self.reason = reason
        self.operator = `operator`
    }
}

/// `POST /v1/transactions/{gid}/retry`: send every pending delivery of the transaction now.
public struct RetryRequest: Codable, Sendable, Equatable {
    public var reason: String
    /// The operator's name, kept in the audit record.
    public var `operator`: String?

    public init(reason: String, operator: String? = nil) {
        self.reason = reason
        self.operator = `operator`
    }
}

public struct RecoveryReport: Codable, Sendable, Equatable {
    /// Unfinished transactions whose pending deliveries were retried now.
    public var transactions: Int
    public var deliveries: Int

    public init(transactions: Int, deliveries: Int) {
        self.transactions = transactions
        self.deliveries = deliveries
    }
}

public struct HealthAnswer: Codable, Sendable, Equatable {
    public var status: String
    public var unfinishedTransactions: Int
    public var stuckTransactions: Int
    public var inDoubtTransactions: Int
    public var participants: Int

    public init(status: String, unfinishedTransactions: Int, stuckTransactions: Int, inDoubtTransactions: Int, participants: Int) {
        self.status = status
        self.unfinishedTransactions = unfinishedTransactions
        self.stuckTransactions = stuckTransactions
        self.inDoubtTransactions = inDoubtTransactions
        self.participants = participants
    }
}

extension JSONEncoder {
    /// How every dtx component writes API JSON: ISO 8601 dates, sorted keys.
    public static func dtx() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(ISO8601.format(date))
        }
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}

extension JSONDecoder {
    public static func dtx() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

/// ISO 8601 in UTC to the second (`2026-11-23T10:01:02Z`), formatted directly: every API
/// answer carries several dates, and a general-purpose formatter costs more than the rest.
public enum ISO8601 {
    public static func format(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let year = Int(parts.tm_year) + 1900
        return "\(year)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }
}

/// `GET /v1/cluster`: the cluster as the store sees it, from the node asked. Unfinished
/// transactions are counted by each shard's owner: the answering node fills them in for
/// its own shards only (`dtx cluster` asks every live node).
public struct ClusterStatus: Codable, Sendable, Equatable {
    public struct Node: Codable, Sendable, Equatable {
        public var id: String
        public var url: String
        /// Its lease has not expired (by the store's clock).
        public var live: Bool
        /// Seconds since its last renewal, by the store's clock.
        public var renewedAgo: Double
        public var shards: Int

        public init(id: String, url: String, live: Bool, renewedAgo: Double, shards: Int) {
            self.id = id
            self.url = url
            self.live = live
            self.renewedAgo = renewedAgo
            self.shards = shards
        }
    }

    public struct Shard: Codable, Sendable, Equatable {
        public var shard: Int
        public var owner: String?
        /// Grows by one at every acquisition: the fencing token.
        public var epoch: Int
        /// Seconds since the owner acquired it.
        public var heldFor: Double?
        /// Unfinished transactions, when the answering node owns the shard.
        public var unfinished: Int?

        public init(shard: Int, owner: String?, epoch: Int, heldFor: Double?, unfinished: Int?) {
            self.shard = shard
            self.owner = owner
            self.epoch = epoch
            self.heldFor = heldFor
            self.unfinished = unfinished
        }
    }

    /// The node that answered.
    public var node: String
    public var leaseTTL: Double
    public var nodes: [Node]
    public var shards: [Shard]

    public init(node: String, leaseTTL: Double, nodes: [Node], shards: [Shard]) {
        self.node = node
        self.leaseTTL = leaseTTL
        self.nodes = nodes
        self.shards = shards
    }
}
