import DTXCore
import DTXPostgresClient
import DTXParticipant

/// The name of a branch's prepared transaction: `prefix:gid:branch:digest`, e.g.
/// `dtx:order-42:1:9f86d081884c7d65`, where `digest` is the `BranchDigest` of the
/// branch's operation and payload. The prefix marks the transactions one resource
/// manager owns. While a branch is prepared its `dtx_branches` row is inside the
/// prepared transaction, invisible to other sessions: the name is where a repeated
/// PREPARE reads the work the branch was prepared for. `prefix:gid:branch` (`base`) is
/// the branch's lock key.
///
/// The gid may itself contain `:`, so parsing takes the prefix from the front and the
/// digest and the branch from the back: the last component is the digest (16 lowercase
/// hex digits), the one before it the branch id.
/// At most 16 + 1 + 128 + 1 + 20 + 1 + 16 = 183 bytes, under PostgreSQL's limit of 199
/// (200 with the terminating NUL).
struct PreparedTransactionName: Equatable {
    static let maxPrefixLength = 16
    /// PostgreSQL's limit on a prepared transaction's name, in bytes.
    static let maxLength = 199
    static let digestLength = 16

    /// The resource manager's prefix.
    let prefix: String
    let branch: BranchRef
    /// The fingerprint of the branch's work.
    let digest: String

    /// `prefix:gid:branch`: the branch's lock key, and followed by `:` the start of the
    /// name.
    var base: String { Self.base(prefix: prefix, branch: branch) }

    /// The name as PostgreSQL stores it.
    var text: String { base + ":" + digest }

    /// The prefix is embedded in SQL literals and LIKE patterns: letters and digits only.
    static func validate(prefix: String) throws {
        guard !prefix.isEmpty, prefix.utf8.count <= maxPrefixLength,
              prefix.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) })
        else {
            throw PostgresError(
                code: .invalidConfiguration,
                message: "prepared-transaction prefix \"\(prefix)\" is not allowed: use 1 to \(maxPrefixLength) ASCII letters and digits")
        }
    }

    /// The name for `branch` prepared for the work `digest` identifies. The gid and the
    /// digest are validated because the name is spliced into `PREPARE TRANSACTION '…'`
    /// (which takes no parameters): their allowed characters contain no quote.
    static func make(prefix: String, branch: BranchRef, digest: String) throws -> PreparedTransactionName {
        try validate(branch: branch)
        guard isDigest(digest) else {
            throw PostgresError(code: .invalidValue, message: "branch digest \"\(digest)\" is not \(digestLength) lowercase hex digits")
        }
        let name = PreparedTransactionName(prefix: prefix, branch: branch, digest: digest)
        guard name.text.utf8.count <= maxLength else {
            // Unreachable with a valid prefix and gid (see the type's comment).
            throw PostgresError(code: .invalidValue, message: "prepared-transaction name \(name.text) is longer than PostgreSQL's limit of \(maxLength) bytes")
        }
        return name
    }

    /// `prefix:gid:branch` for `branch`, after validating its gid.
    static func base(validating branch: BranchRef, prefix: String) throws -> String {
        try validate(branch: branch)
        return base(prefix: prefix, branch: branch)
    }

    /// The name, or nil when it is not one of `prefix`'s names.
    static func parse(_ name: String, prefix: String) -> PreparedTransactionName? {
        guard name.hasPrefix(prefix + ":") else { return nil }
        let rest = Substring(name.dropFirst(prefix.count + 1))
        guard let separator = rest.lastIndex(of: ":") else { return nil }
        let digest = rest[rest.index(after: separator)...]
        guard isDigest(digest), let branch = parseBranch(rest[..<separator]) else { return nil }
        return PreparedTransactionName(prefix: prefix, branch: branch, digest: String(digest))
    }

    /// `gid:branch`, with a valid gid and a branch id written as `String(branch)` writes
    /// it (the form `make` uses, so that the name is found again by its branch).
    private static func parseBranch(_ text: Substring) -> BranchRef? {
        guard let separator = text.lastIndex(of: ":") else { return nil }
        let digits = text[text.index(after: separator)...]
        guard let branch = BranchID(digits), String(branch) == digits else { return nil }
        let gid = String(text[..<separator])
        guard (try? GlobalTransactionID(validating: gid)) != nil else { return nil }
        return BranchRef(gid: gid, branch: branch)
    }

    /// `prefix:gid:branch` for `branch`, whose gid is not validated.
    static func base(prefix: String, branch: BranchRef) -> String {
        "\(prefix):\(branch.gid):\(branch.branch)"
    }

    private static func validate(branch: BranchRef) throws {
        do {
            _ = try GlobalTransactionID(validating: branch.gid)
        } catch {
            throw BusinessError(code: "invalid_gid", message: "\(error.description)")
        }
    }

    static func isDigest<S: StringProtocol>(_ text: S) -> Bool {
        text.utf8.count == digestLength && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}
