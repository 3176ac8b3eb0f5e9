import DTXCore
import Foundation

extension TransactionView {
    /// The same JSON `JSONEncoder.dtx()` writes (sorted keys, nil fields omitted, ISO
    /// dates), written directly: this answer is on every transaction's path.
    public func jsonBytes() -> [UInt8] {
        var json = JSONWriter(capacity: 1024 + 160 * timeline.count)
        json.raw("{\"branches\":[")
        for (index, branch) in branches.enumerated() {
            if index > 0 { json.raw(",") }
            json.member("{\"attempts\":", branch.attempts)
            json.member(",\"id\":", branch.id)
            if let lastError = branch.lastError {
                json.member(",\"lastError\":", lastError)
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
        json.member(",\"status\":", status)
        json.member(",\"stuck\":", stuck)
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
    /// Reads a well-formed request without Codable (every participant message takes this
    /// path); nil for anything else, which the caller then decodes with Codable to say
    /// precisely what is wrong.
    public init?(fastParsing bytes: [UInt8]) {
        guard case .object(let members)? = try? JSONValue(parsing: bytes),
              let gid = members["gid"]?.stringValue,
              let branchNumber = members["branch"]?.doubleValue, branchNumber.rounded() == branchNumber, abs(branchNumber) < 1e15,
              let operation = members["operation"]?.stringValue else { return nil }
        var participants: [String]?
        switch members["participants"] {
        case nil, .null?: participants = nil
        case .array(let names)?:
            let strings = names.compactMap(\.stringValue)
            guard strings.count == names.count else { return nil }
            participants = strings
        default: return nil
        }
        let payload = members["payload"].flatMap { $0 == .null ? nil : $0 }
        self.init(gid: gid, branch: Int(branchNumber), operation: operation, payload: payload, participants: participants)
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
