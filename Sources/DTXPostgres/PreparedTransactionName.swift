import DTXCore
import DTXParticipant

/// The name of a branch's prepared transaction: `prefix:gid:branch`, e.g.
/// `dtx:order-42:1`. The prefix marks the transactions one resource manager owns; the
/// gid may itself contain `:`, so parsing takes the prefix from the front and the
/// branch from the back. At most 16 + 1 + 128 + 1 + 20 = 166 bytes, under PostgreSQL's
/// limit of 200.
struct PreparedTransactionName {
    static let maxPrefixLength = 16

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

    /// The name for `branch`. The gid is validated because the name is spliced into
    /// `PREPARE TRANSACTION '…'` (which takes no parameters): its allowed characters
    /// contain no quote.
    static func make(prefix: String, branch: BranchRef) throws -> String {
        do {
            _ = try GlobalTransactionID(validating: branch.gid)
        } catch {
            throw BusinessError(code: "invalid_gid", message: "\(error.description)")
        }
        return "\(prefix):\(branch.gid):\(branch.branch)"
    }

    /// The branch a name belongs to, or nil when it is not one of `prefix`'s names.
    static func parse(_ name: String, prefix: String) -> BranchRef? {
        guard name.hasPrefix(prefix + ":") else { return nil }
        let rest = name.dropFirst(prefix.count + 1)
        guard let separator = rest.lastIndex(of: ":"),
              let branch = BranchID(rest[rest.index(after: separator)...])
        else { return nil }
        let gid = String(rest[..<separator])
        guard (try? GlobalTransactionID(validating: gid)) != nil else { return nil }
        return BranchRef(gid: gid, branch: branch)
    }
}
