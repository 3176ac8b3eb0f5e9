import DTXCore

// The JSON reader of every hand-written path (the engine itself reads no JSON: DTXCore
// only writes it).

/// JSON that is not the shape a reader expected; `message` names the place and what it
/// must be (the readers of participant requests, submissions and log records).
public struct UnreadableJSON: Error, Equatable, CustomStringConvertible {
    public var message: String
    public var description: String { message }

    public init(message: String) {
        self.message = message
    }
}

extension JSONValue {
    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public var offset: Int
        public var description: String { "invalid JSON at byte \(offset)" }
    }

    /// Parses one JSON document (RFC 8259; surrounding whitespace allowed). A number
    /// beyond `Double`'s range is refused (it could not be written back as JSON).
    public init(parsing bytes: [UInt8]) throws(ParseError) {
        self = try Self.parse(bytes, strict: false)
    }

    /// Parses as `init(parsing:)`, and also refuses what Foundation's `JSONDecoder` would
    /// read differently: a key twice in one object, a string that is not valid UTF-8, a
    /// non-zero number too small for `Double`. For reading what Codable reads elsewhere.
    public init(parsingStrictly bytes: [UInt8]) throws(ParseError) {
        self = try Self.parse(bytes, strict: true)
    }

    private static func parse(_ bytes: [UInt8], strict: Bool) throws(ParseError) -> JSONValue {
        var parser = JSONParser(bytes: bytes, strict: strict)
        let value = try parser.parseValue(depth: 0)
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw ParseError(offset: parser.index) }
        return value
    }
}

private struct JSONParser {
    let bytes: [UInt8]
    let strict: Bool
    var index = 0

    init(bytes: [UInt8], strict: Bool) {
        self.bytes = bytes
        self.strict = strict
    }

    private func fail() -> JSONValue.ParseError { JSONValue.ParseError(offset: index) }

    mutating func skipWhitespace() {
        while index < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[index]) { index += 1 }
    }

    mutating func parseValue(depth: Int) throws(JSONValue.ParseError) -> JSONValue {
        guard depth < 128 else { throw fail() }
        skipWhitespace()
        guard index < bytes.count else { throw fail() }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            var members: [String: JSONValue] = [:]
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            while true {
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw fail() }
                let name = try parseString()
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail() }
                index += 1
                if strict, members[name] != nil { throw fail() }
                members[name] = try parseValue(depth: depth + 1)
                skipWhitespace()
                guard index < bytes.count else { throw fail() }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                guard bytes[index] == UInt8(ascii: "}") else { throw fail() }
                index += 1
                return .object(members)
            }
        case UInt8(ascii: "["):
            index += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            while true {
                items.append(try parseValue(depth: depth + 1))
                skipWhitespace()
                guard index < bytes.count else { throw fail() }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                guard bytes[index] == UInt8(ascii: "]") else { throw fail() }
                index += 1
                return .array(items)
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        default:
            return .number(try parseNumber())
        }
    }

    private mutating func expect(_ word: StaticString) throws(JSONValue.ParseError) {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw fail() }
        let matches = word.withUTF8Buffer { Array($0) == Array(bytes[index..<index + count]) }
        guard matches else { throw fail() }
        index += count
    }

    private mutating func parseNumber() throws(JSONValue.ParseError) -> Double {
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        let digitsStart = index
        while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
        guard index > digitsStart, !(bytes[digitsStart] == UInt8(ascii: "0") && index - digitsStart > 1) else { throw fail() }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            let fraction = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            guard index > fraction else { throw fail() }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            let exponent = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            guard index > exponent else { throw fail() }
        }
        guard let value = Double(String(decoding: bytes[start..<index], as: UTF8.self)), value.isFinite else { throw fail() }
        if strict, value == 0, bytes[start..<index].prefix(while: { $0 != UInt8(ascii: "e") && $0 != UInt8(ascii: "E") }).contains(where: { (UInt8(ascii: "1")...UInt8(ascii: "9")).contains($0) }) {
            throw fail()  // a non-zero number that rounds to zero
        }
        return value
    }

    private mutating func parseString() throws(JSONValue.ParseError) -> String {
        index += 1  // the opening quote
        var scalars: [UInt8] = []
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                if strict {
                    guard let text = String(validating: scalars, as: UTF8.self) else { throw fail() }
                    return text
                }
                return String(decoding: scalars, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { throw fail() }
                let escaped = bytes[index]
                index += 1
                switch escaped {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scalars.append(escaped)
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code) {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else { throw fail() }
                        index += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw fail() }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let scalar = Unicode.Scalar(code) else { throw fail() }
                    scalars.append(contentsOf: Array(String(Character(scalar)).utf8))
                default:
                    throw fail()
                }
            case 0..<0x20:
                throw fail()
            default:
                scalars.append(byte)
            }
        }
        throw fail()
    }

    private mutating func hex4() throws(JSONValue.ParseError) -> UInt32 {
        guard index + 4 <= bytes.count else { throw fail() }
        var code: UInt32 = 0
        for byte in bytes[index..<index + 4] {
            code <<= 4
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): code |= UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): code |= UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): code |= UInt32(byte - UInt8(ascii: "A") + 10)
            default: throw fail()
            }
        }
        index += 4
        return code
    }
}
