/// The on-disk format of the write-ahead log, version 1. All integers little-endian.
///
/// A log is a directory of segment files named `NNNNNNNNNNNNNNNN.wal` (the segment's
/// sequence number in 16 hex digits), preallocated to their full size, so the unused
/// tail of a segment reads as zeros. The newest files may be spares: prepared ahead
/// of need, with a spare header (magic "DTXSPR\r\n", first LSN 0, otherwise as below)
/// that a switch overwrites with the segment header (see `LogScan.spares`).
///
/// Segment header, 64 bytes:
///
///     0   magic        8 bytes  "DTXWAL\r\n"
///     8   version      u32      1
///     12  header size  u32      64
///     16  sequence     u64      equals the file name
///     24  first LSN    u64      LSN of the first record appended to this segment
///     32  reserved     28 bytes zero
///     60  CRC32C       u32      over bytes 0..<60
///
/// Record frame, starting at an 8-byte aligned offset:
///
///     0   length       u32      24 + payload size (never 0: zero marks the end)
///     4   CRC32C       u32      over bytes 0..<4 and 8..<length
///     8   LSN          u64
///     16  type         u16
///     18  flags        u16      bit 0: copied forward by a checkpoint (LSN is the original)
///     20  reserved     u32      zero
///     24  payload
///     …   zero padding up to the next multiple of 8 (checked on read)
enum LogFormat {
    static let version: UInt32 = 1
    static let magic: [UInt8] = Array("DTXWAL\r\n".utf8)
    static let spareMagic: [UInt8] = Array("DTXSPR\r\n".utf8)
    static let segmentHeaderSize = 64
    static let frameHeaderSize = 24
    static let alignment = 8
    static let segmentSuffix = ".wal"
    static let temporarySuffix = ".wal.tmp"

    static let flagRewritten: UInt16 = 1

    static func alignedSize(_ size: Int) -> Int {
        (size + alignment - 1) & ~(alignment - 1)
    }

    static func frameSize(payloadCount: Int) -> Int {
        alignedSize(frameHeaderSize + payloadCount)
    }

    static func segmentFileName(_ sequence: UInt64) -> String {
        let hex = String(sequence, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 16 - hex.count)) + hex + segmentSuffix
    }

    /// The sequence number named by a segment file, or nil for any other file.
    static func segmentSequence(fileName: String) -> UInt64? {
        guard fileName.hasSuffix(segmentSuffix) else { return nil }
        let stem = fileName.dropLast(segmentSuffix.count)
        guard stem.count == 16, stem.allSatisfy(\.isHexDigit) else { return nil }
        return UInt64(stem, radix: 16)
    }

    static func encodeSegmentHeader(sequence: UInt64, firstLSN: UInt64) -> [UInt8] {
        encodeHeader(magic: magic, sequence: sequence, firstLSN: firstLSN)
    }

    /// The header of a spare: a segment prepared ahead of need, never switched to.
    static func encodeSpareHeader(sequence: UInt64) -> [UInt8] {
        encodeHeader(magic: spareMagic, sequence: sequence, firstLSN: 0)
    }

    /// Whether `bytes` start with a whole, valid spare header for `sequence`.
    static func isSpareHeader(_ bytes: UnsafeRawBufferPointer, sequence: UInt64) -> Bool {
        bytes.count >= segmentHeaderSize && bytes[0..<8].elementsEqual(spareMagic)
            && CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<60])) == bytes.loadLE(UInt32.self, at: 60)
            && bytes.loadLE(UInt64.self, at: 16) == sequence
    }

    private static func encodeHeader(magic: [UInt8], sequence: UInt64, firstLSN: UInt64) -> [UInt8] {
        var header = [UInt8](repeating: 0, count: segmentHeaderSize)
        header.replaceSubrange(0..<8, with: magic)
        header.storeLE(version, at: 8)
        header.storeLE(UInt32(segmentHeaderSize), at: 12)
        header.storeLE(sequence, at: 16)
        header.storeLE(firstLSN, at: 24)
        let crc = header.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<60])) }
        header.storeLE(crc, at: 60)
        return header
    }

    struct SegmentHeader {
        var sequence: UInt64
        var firstLSN: UInt64
    }

    /// Decodes a segment header, or says in words what is wrong with it.
    static func decodeSegmentHeader(_ bytes: UnsafeRawBufferPointer) -> Result<SegmentHeader, HeaderProblem> {
        guard bytes.count >= segmentHeaderSize else { return .failure(.init("segment header is short (\(bytes.count) of \(segmentHeaderSize) bytes)")) }
        guard bytes[0..<8].elementsEqual(magic) else { return .failure(.init("bad segment magic")) }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<60]))
        guard crc == bytes.loadLE(UInt32.self, at: 60) else { return .failure(.init("segment header checksum mismatch")) }
        let version = bytes.loadLE(UInt32.self, at: 8)
        guard version == LogFormat.version else { return .failure(.init("unsupported segment format version \(version) (this build reads version \(LogFormat.version))")) }
        return .success(SegmentHeader(sequence: bytes.loadLE(UInt64.self, at: 16), firstLSN: bytes.loadLE(UInt64.self, at: 24)))
    }

    struct HeaderProblem: Error {
        var reason: String
        init(_ reason: String) { self.reason = reason }
    }

    /// Appends one frame (with its padding) to `buffer`.
    static func appendFrame(to buffer: inout [UInt8], lsn: UInt64, type: UInt16, flags: UInt16, payload: UnsafeRawBufferPointer) {
        let length = frameHeaderSize + payload.count
        let start = buffer.count
        let total = alignedSize(length)
        buffer.append(contentsOf: repeatElement(0, count: total))
        buffer.withUnsafeMutableBytes { raw in
            let frame = UnsafeMutableRawBufferPointer(rebasing: raw[start..<(start + total)])
            frame.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 0, as: UInt32.self)
            frame.storeBytes(of: lsn.littleEndian, toByteOffset: 8, as: UInt64.self)
            frame.storeBytes(of: type.littleEndian, toByteOffset: 16, as: UInt16.self)
            frame.storeBytes(of: flags.littleEndian, toByteOffset: 18, as: UInt16.self)
            if payload.count > 0 {
                UnsafeMutableRawBufferPointer(rebasing: frame[frameHeaderSize..<length]).copyMemory(from: payload)
            }
            let crc = frameChecksum(UnsafeRawBufferPointer(frame), length: length)
            frame.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
        }
    }

    static func frameChecksum(_ frame: UnsafeRawBufferPointer, length: Int) -> UInt32 {
        let head = CRC32C.update(0, UnsafeRawBufferPointer(rebasing: frame[0..<4]))
        return CRC32C.update(head, UnsafeRawBufferPointer(rebasing: frame[8..<length]))
    }

    enum FrameDecoding {
        /// A valid frame; the next one starts at `next`.
        case frame(lsn: UInt64, type: UInt16, flags: UInt16, payload: Range<Int>, next: Int)
        /// Eight zero bytes where a frame would start: the end of the written data.
        case end
        /// Anything else, with the reason.
        case invalid(String)
    }

    /// Decodes the frame at `offset` of a segment's bytes.
    static func decodeFrame(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> FrameDecoding {
        guard offset + 8 <= bytes.count else {
            return offset == bytes.count ? .end : .invalid("short frame: \(bytes.count - offset) bytes left where a frame header starts")
        }
        let length = Int(bytes.loadLE(UInt32.self, at: offset))
        let storedCRC = bytes.loadLE(UInt32.self, at: offset + 4)
        if length == 0 {
            return storedCRC == 0 ? .end : .invalid("zero frame length with a non-zero checksum")
        }
        guard length >= frameHeaderSize else { return .invalid("frame length \(length) is below the \(frameHeaderSize)-byte frame header") }
        let total = alignedSize(length)
        guard offset + total <= bytes.count else {
            return .invalid("short frame: length \(length) runs past the end of the segment")
        }
        let frame = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + total)])
        guard frameChecksum(frame, length: length) == storedCRC else { return .invalid("record checksum mismatch") }
        guard frame.loadLE(UInt32.self, at: 20) == 0, frame[length..<total].allSatisfy({ $0 == 0 }) else {
            return .invalid("non-zero reserved or padding bytes")
        }
        return .frame(
            lsn: frame.loadLE(UInt64.self, at: 8),
            type: frame.loadLE(UInt16.self, at: 16),
            flags: frame.loadLE(UInt16.self, at: 18),
            payload: (offset + frameHeaderSize)..<(offset + length),
            next: offset + total
        )
    }
}

extension UnsafeRawBufferPointer {
    func loadLE<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension Array where Element == UInt8 {
    mutating func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }
}
