/// DTXCore: the pure model of global transactions and the protocols' state machines.
/// No IO, no clocks, no threads: events in, actions out.

/// The protocols a global transaction can run.
public enum TransactionProtocol: String, Sendable, Codable, CaseIterable {
    case twoPhaseCommit = "2pc"
    case threePhaseCommit = "3pc"
    case tcc
    case saga
    /// A transactional message (`TransactionalMessage`): prepared before the service's
    /// local commit, submitted after it, then delivered.
    case msg

    /// The protocol whose participant messages this protocol's branches receive, and
    /// which their participants must serve: a message's branches are saga actions that
    /// are never compensated. (A participant that serves `msg` answers the check-back.)
    public var branchProtocol: TransactionProtocol { self == .msg ? .saga : self }

    /// 3PC's participants end a transaction among themselves when the coordinator is
    /// gone, so every message to them lists the transaction's participants.
    public var participantsKnowTheirPeers: Bool { self == .threePhaseCommit }
}

/// A global transaction id. Clients may choose their own; it travels in URLs, log
/// records and PostgreSQL prepared-transaction names (< 200 bytes with a prefix and
/// a branch id), so it is short and made of URL-safe characters.
public struct GlobalTransactionID: Hashable, Sendable, Codable, CustomStringConvertible {
    public static let maxLength = 128

    public let rawValue: String

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case empty
        case tooLong(Int)
        case invalidCharacter(Character)

        public var description: String {
            switch self {
            case .empty: return "gid is empty"
            case let .tooLong(count): return "gid is \(count) bytes long; the limit is \(GlobalTransactionID.maxLength)"
            case let .invalidCharacter(c): return "gid contains '\(c)'; use letters, digits, '-', '_', '.' and ':' only"
            }
        }
    }

    public init(validating text: String) throws(Problem) {
        guard !text.isEmpty else { throw .empty }
        guard text.utf8.count <= Self.maxLength else { throw .tooLong(text.utf8.count) }
        // Bytes, not Characters: this runs for every submission and every record a
        // checkpoint keeps, and Unicode property lookups showed up in profiles.
        if text.utf8.contains(where: { !Self.isAllowed($0) }) {
            throw .invalidCharacter(text.first { !($0.isASCII && $0.utf8.allSatisfy(Self.isAllowed)) } ?? "?")
        }
        rawValue = text
    }

    public var description: String { rawValue }

    /// ASCII letters, digits, '-', '_', '.' and ':'.
    private static func isAllowed(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: ":"):
            return true
        default:
            return false
        }
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do {
            try self.init(validating: text)
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A participant's registered name, e.g. `accounts-eu`. It travels in URLs and log
/// records, so it is short and made of URL-safe characters.
public enum ParticipantName {
    /// The rule, as error messages state it.
    public static let rule = "1 to 64 characters of letters, digits, '-', '_' and '.'"

    public static func isValid(_ name: some StringProtocol) -> Bool {
        (1...64).contains(name.utf8.count) && name.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."):
                return true
            default:
                return false
            }
        }
    }
}
