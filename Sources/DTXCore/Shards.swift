/// Cluster mode: which shard a transaction belongs to. A fixed number of shards is
/// chosen when a cluster is created; a gid belongs to one shard for ever, by a hash
/// every node (and every build) computes the same way: FNV-1a (64 bit) of the gid's
/// bytes, modulo the number of shards.
public struct ShardMap: Sendable, Equatable {
    public static let defaultCount = 64
    /// The most shards a cluster may have.
    public static let maxCount = 4096

    public let count: Int

    public init(count: Int) {
        precondition((1...Self.maxCount).contains(count), "a cluster has 1 to \(Self.maxCount) shards")
        self.count = count
    }

    public func shard(of gid: GlobalTransactionID) -> Int {
        Int(Self.hash(gid.rawValue) % UInt64(count))
    }

    /// FNV-1a, 64 bit, of the text's UTF-8 bytes.
    public static func hash(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        return hash
    }
}
