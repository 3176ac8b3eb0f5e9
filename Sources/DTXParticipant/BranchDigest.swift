import DTXCore

/// A short fingerprint of what a branch was asked to do (operation and payload), stored
/// with a prepared branch. A PREPARE that repeats a (gid, branch) is a duplicate only when
/// it asks for the same work; asked for other work it is refused (`branch_mismatch`). That
/// happens when a gid is reused after the coordinator lost its lazily written `begin`
/// (a crash a few milliseconds after PREPARE went out) while a branch stayed prepared.
public enum BranchDigest {
    /// 16 hex digits of FNV-1a (64-bit) over the operation and the payload's canonical JSON
    /// (sorted keys, as `JSONWriter` writes it).
    public static func of(operation: String, payload: JSONValue?) -> String {
        var json = JSONWriter()
        json.string(operation)
        json.raw(",")
        json.value(payload ?? .null)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in json.bytes {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The refusal for a PREPARE that repeats a branch with other work.
    public static func mismatch(_ branch: BranchRef) -> BusinessError {
        BusinessError(code: "branch_mismatch", message: "branch \(branch) was already prepared here for a different operation or payload; this gid was reused after the coordinator lost it. The old branch is rolled back by in-doubt recovery; submit under a new gid")
    }
}
