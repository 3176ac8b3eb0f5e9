/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every
/// record frame and segment header. Slicing-by-8 over one flat table keeps it well
/// under the cost of the syscalls around it.
enum CRC32C {
    /// Eight 256-entry tables, back to back; allocated once and never freed.
    private nonisolated(unsafe) static let table: UnsafePointer<UInt32> = {
        let table = UnsafeMutablePointer<UInt32>.allocate(capacity: 8 * 256)
        for n in 0..<256 {
            var crc = UInt32(n)
            for _ in 0..<8 {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1
            }
            table[n] = crc
        }
        for n in 0..<256 {
            var crc = table[n]
            for k in 1..<8 {
                crc = table[Int(crc & 0xFF)] ^ (crc >> 8)
                table[k * 256 + n] = crc
            }
        }
        return UnsafePointer(table)
    }()

    /// Continues a checksum over `bytes`; start with `0`.
    static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress else { return crc }
        let t = table
        var crc = ~crc
        var index = 0
        let count = bytes.count
        while count &- index >= 8 {
            let lo = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: index, as: UInt32.self)) ^ crc
            let hi = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: index &+ 4, as: UInt32.self))
            crc = t[1792 &+ Int(lo & 0xFF)] ^ t[1536 &+ Int((lo >> 8) & 0xFF)]
                ^ t[1280 &+ Int((lo >> 16) & 0xFF)] ^ t[1024 &+ Int(lo >> 24)]
                ^ t[768 &+ Int(hi & 0xFF)] ^ t[512 &+ Int((hi >> 8) & 0xFF)]
                ^ t[256 &+ Int((hi >> 16) & 0xFF)] ^ t[Int(hi >> 24)]
            index &+= 8
        }
        while index < count {
            crc = t[Int((crc ^ UInt32(base.load(fromByteOffset: index, as: UInt8.self))) & 0xFF)] ^ (crc >> 8)
            index &+= 1
        }
        return ~crc
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        update(0, bytes)
    }
}
