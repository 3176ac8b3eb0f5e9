import DTXCore
import Foundation

extension TransactionView {
    /// The same JSON `JSONEncoder.dtx()` writes (sorted keys, nil fields omitted, ISO
    /// dates), written directly: this answer is on every transaction's path.
    public func jsonBytes() -> [UInt8] {
        var json = JSONWriter(capacity: 1024 + 160 * timeline.count)
        if let audit {
            json.raw("{\"audit\":[")
            for (index, record) in audit.enumerated() {
                json.member(index == 0 ? "{\"action\":" : ",{\"action\":", record.action)
                json.member(",\"at\":", ISO8601.format(record.at))
                if let branch = record.branch { json.member(",\"branch\":", branch) }
                json.member(",\"reason\":", record.reason)
                json.member(",\"who\":", record.who)
                json.raw("}")
            }
            json.raw("],\"branches\":[")
        } else {
            json.raw("{\"branches\":[")
        }
        for (index, branch) in branches.enumerated() {
            if index > 0 { json.raw(",") }
            json.member("{\"attempts\":", branch.attempts)
            json.member(",\"id\":", branch.id)
            if let lastError = branch.lastError {
                json.member(",\"lastError\":", lastError)
            }
            if let nextRetryAt = branch.nextRetryAt {
                json.member(",\"nextRetryAt\":", ISO8601.format(nextRetryAt))
            }
            json.member(",\"operation\":", branch.operation)
            json.member(",\"participant\":", branch.participant)
            if let result = branch.result {
                json.member(",\"result\":", result)
            }
            json.member(",\"state\":", branch.state)
            json.raw("}")
        }
        json.raw("]")
        if let compensations {
            json.raw(",\"compensations\":[")
            for (index, step) in compensations.enumerated() {
                if index > 0 { json.raw(",") }
                json.member("", step)
            }
            json.raw("]")
        }
        json.member(",\"createdAt\":", ISO8601.format(createdAt))
        if let decision { json.member(",\"decision\":", decision.rawValue) }
        if let error { json.member(",\"error\":", error) }
        json.member(",\"gid\":", gid)
        json.member(",\"heuristic\":", heuristic)
        json.member(",\"interactive\":", interactive)
        json.member(",\"protocol\":", self.protocol.rawValue)
        if let service { json.member(",\"service\":", service) }
        json.member(",\"status\":", status)
        json.member(",\"stuck\":", stuck)
        if let stuckReason { json.member(",\"stuckReason\":", stuckReason) }
        json.raw(",\"timeline\":[")
        for (index, entry) in timeline.enumerated() {
            if index > 0 { json.raw(",") }
            json.member("{\"at\":", ISO8601.format(entry.at))
            if let branch = entry.branch {
                json.member(",\"branch\":", branch)
            }
            if let detail = entry.detail {
                json.member(",\"detail\":", detail)
            }
            json.member(",\"event\":", entry.event)
            json.raw("}")
        }
        json.member("],\"timeout\":", .number(timeout))
        json.member(",\"updatedAt\":", ISO8601.format(updatedAt))
        json.raw("}")
        return json.bytes
    }
}

extension ParticipantRequest {
    /// The request as `JSONEncoder.dtx()` writes it, written directly.
    public func jsonBytes() -> [UInt8] {
        var json = JSONWriter()
        json.member("{\"branch\":", branch)
        json.member(",\"gid\":", gid)
        json.member(",\"operation\":", operation)
        if let participants {
            json.member(",\"participants\":", .array(participants.map { .string($0) }))
        }
        if let payload {
            json.member(",\"payload\":", payload)
        }
        if let traceparent {
            json.member(",\"traceparent\":", traceparent)
        }
        json.raw("}")
        return json.bytes
    }

    /// Reads a request: the one reader of this shape (`dtx-bench codec`: JSONDecoder costs
    /// five times as much, on every participant message). Unknown fields are ignored.
    public init(json bytes: [UInt8]) throws(UnreadableJSON) {
        guard let parsed = try? JSONValue(parsing: bytes) else {
            throw Self.unreadable(bytes.isEmpty ? "the request body is empty" : "the body is not valid JSON")
        }
        try self.init(json: parsed)
    }

    private static func unreadable(_ what: String) -> UnreadableJSON {
        UnreadableJSON(message: "\(what); send a JSON object with 'gid' (string), 'branch' (integer), 'operation' (string) and optionally 'payload'")
    }

    /// Reads a request already parsed (a batch's item).
    public init(json parsed: JSONValue) throws(UnreadableJSON) {
        func unreadable(_ what: String) -> UnreadableJSON { Self.unreadable(what) }
        guard case .object(let members) = parsed else { throw unreadable("the body is not a JSON object") }
        func required(_ name: String) throws(UnreadableJSON) -> JSONValue {
            switch members[name] {
            case nil: throw unreadable("missing field '\(name)'")
            case .null?: throw unreadable("field '\(name)' is null")
            case let value?: return value
            }
        }
        guard let gid = try required("gid").stringValue else { throw unreadable("field 'gid' must be a string") }
        guard let branch = try required("branch").doubleValue.flatMap({ Int(exactly: $0) }) else {
            throw unreadable("field 'branch' must be an integer")
        }
        guard let operation = try required("operation").stringValue else { throw unreadable("field 'operation' must be a string") }
        var participants: [String]?
        switch members["participants"] {
        case nil, .null?: participants = nil
        case .array(let names)?:
            participants = try names.enumerated().map { (index, name) throws(UnreadableJSON) -> String in
                guard let text = name.stringValue else { throw unreadable("field 'participants.\(index)' must be a string") }
                return text
            }
        default: throw unreadable("field 'participants' must be an array of participant names")
        }
        let payload = members["payload"].flatMap { $0 == .null ? nil : $0 }
        var traceparent: String?
        switch members["traceparent"] {
        case nil, .null?: traceparent = nil
        case .string(let text)?: traceparent = text  // a malformed one starts a new trace: W3C's rule
        default: throw unreadable("field 'traceparent' must be a string (a W3C traceparent)")
        }
        self.init(gid: gid, branch: branch, operation: operation, payload: payload, participants: participants, traceparent: traceparent)
    }
}

extension ParticipantReply {
    /// The reply as `JSONEncoder.dtx()` writes it, written directly.
    public func jsonBytes() -> [UInt8] {
        var json = JSONWriter(capacity: 64)
        json.raw("{")
        if let result { json.member("\"result\":", result); json.raw(",") }
        json.member("\"status\":", status)
        json.raw("}")
        return json.bytes
    }
}
