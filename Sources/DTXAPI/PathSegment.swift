import DTXCore

/// One codec for the values that travel in URL paths and queries (a gid, a participant
/// name): every client dtx ships encodes with `encode`, and dtxd decodes with `decode`,
/// once, before it validates. HTTP clients in other languages encode `:` (Python's
/// `quote`, Java's `URLEncoder`), so a server that compared the raw text would see
/// `order%3A77` where the client meant `order:77`.
public enum PathSegment {
    /// Percent-encodes every byte outside RFC 3986's unreserved characters
    /// (`A-Z a-z 0-9 - . _ ~`), so the result is safe in a path segment and in a query value.
    public static func encode(_ text: String) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            if isUnreserved(byte) {
                bytes.append(byte)
            } else {
                bytes.append(UInt8(ascii: "%"))
                bytes.append(hexDigits[Int(byte >> 4)])
                bytes.append(hexDigits[Int(byte & 0x0F)])
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Removes one level of percent-encoding. nil when a `%` is not followed by two hex
    /// digits or the bytes are not UTF-8: such a value is invalid, never looked up.
    public static func decode(_ text: some StringProtocol) -> String? {
        guard text.utf8.contains(UInt8(ascii: "%")) else { return String(text) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static let hexDigits = Array("0123456789ABCDEF".utf8)

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// Numbers in queries, read as the documents declare them: ASCII digits only (no sign,
/// no spaces, no hex), so that what a schema calls invalid is refused, not guessed at.
public enum QueryNumber {
    /// A whole number of at most `digits` digits.
    public static func whole(_ text: some StringProtocol, digits: Int) -> Int? {
        guard (1...digits).contains(text.utf8.count), text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
        return Int(text)
    }

    /// A branch id: 0 to 2^31 - 1 (`BranchID` in the documents).
    public static func branch(_ text: some StringProtocol) -> BranchID? {
        whole(text, digits: 10).flatMap { $0 <= Int(Int32.max) ? $0 : nil }
    }
}
