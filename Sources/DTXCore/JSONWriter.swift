/// A small JSON writer for the hot paths (log records, participant messages, views),
/// where Foundation's JSONEncoder costs 5 to 13 times as much (`dtx-bench codec`). Its
/// output is ordinary JSON; its reader is `JSONValue(parsing:)` in DTXAPI.
public struct JSONWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 256) {
        bytes.reserveCapacity(capacity)
    }

    public mutating func raw(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    /// Appends JSON that is already encoded (e.g. a message body written before).
    public mutating func encoded(_ json: [UInt8]) {
        bytes.append(contentsOf: json)
    }

    public mutating func string(_ text: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): raw("\\\"")
            case UInt8(ascii: "\\"): raw("\\\\")
            case 0x0A: raw("\\n")
            case 0x0D: raw("\\r")
            case 0x09: raw("\\t")
            case 0..<0x20:
                raw("\\u00")
                let hex: [UInt8] = Array("0123456789abcdef".utf8)
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0xF)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    public mutating func int(_ value: Int) {
        bytes.append(contentsOf: String(value).utf8)
    }

    public mutating func bool(_ value: Bool) {
        value ? raw("true") : raw("false")
    }

    /// Raw JSON text (e.g. `,"gid":`) followed by a value: the shape of every member.
    public mutating func member(_ prefix: StaticString, _ text: String) {
        raw(prefix)
        string(text)
    }

    public mutating func member(_ prefix: StaticString, _ number: Int) {
        raw(prefix)
        int(number)
    }

    public mutating func member(_ prefix: StaticString, _ flag: Bool) {
        raw(prefix)
        bool(flag)
    }

    public mutating func member(_ prefix: StaticString, _ json: JSONValue) {
        raw(prefix)
        value(json)
    }

    public mutating func value(_ value: JSONValue) {
        switch value {
        case .null: raw("null")
        case .bool(let flag): bool(flag)
        case .number(let number):
            if number.rounded() == number, abs(number) < 9.0e15 {
                int(Int(number))
            } else {
                bytes.append(contentsOf: "\(number)".utf8)
            }
        case .string(let text): string(text)
        case .array(let items):
            bytes.append(UInt8(ascii: "["))
            for (index, item) in items.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                self.value(item)
            }
            bytes.append(UInt8(ascii: "]"))
        case .object(let members):
            bytes.append(UInt8(ascii: "{"))
            for (index, name) in members.keys.sorted().enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                string(name)
                bytes.append(UInt8(ascii: ":"))
                self.value(members[name]!)
            }
            bytes.append(UInt8(ascii: "}"))
        }
    }

    /// `{"compensatable":…,"dependsOn":…,"operation":…,"participant":…,"payload":…,"retry":…,"timeout":…}`
    /// with sorted keys and nil fields omitted, as `BranchSpec` encodes.
    public mutating func branch(_ spec: BranchSpec) {
        raw("{")
        if let compensatable = spec.compensatable { member("\"compensatable\":", compensatable); raw(",") }
        if let dependsOn = spec.dependsOn {
            raw("\"dependsOn\":[")
            for (index, id) in dependsOn.enumerated() {
                if index > 0 { raw(",") }
                int(id)
            }
            raw("],")
        }
        member("\"operation\":", spec.operation)
        member(",\"participant\":", spec.participant)
        if let payload = spec.payload { member(",\"payload\":", payload) }
        if let retry = spec.retry {
            raw(",\"retry\":{")
            var first = true
            func next(_ name: StaticString, _ value: JSONValue?, into json: inout JSONWriter) {
                guard let value else { return }
                if !first { json.raw(",") }
                first = false
                json.member(name, value)
            }
            next("\"initialDelay\":", retry.initialDelay.map(JSONValue.number), into: &self)
            next("\"maxAttempts\":", retry.maxAttempts.map { .number(Double($0)) }, into: &self)
            next("\"maxDelay\":", retry.maxDelay.map(JSONValue.number), into: &self)
            raw("}")
        }
        if let timeout = spec.timeout { member(",\"timeout\":", .number(timeout)) }
        raw("}")
    }
}
