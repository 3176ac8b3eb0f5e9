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
            json.raw("{\"attempts\":")
            json.int(branch.attempts)
            json.raw(",\"id\":")
            json.int(branch.id)
            if let lastError = branch.lastError {
                json.raw(",\"lastError\":")
                json.string(lastError)
            }
            json.raw(",\"operation\":")
            json.string(branch.operation)
            json.raw(",\"participant\":")
            json.string(branch.participant)
            if let result = branch.result {
                json.raw(",\"result\":")
                json.value(result)
            }
            json.raw(",\"state\":")
            json.string(branch.state)
            json.raw("}")
        }
        json.raw("],\"createdAt\":")
        json.string(ISO8601.format(createdAt))
        if let decision {
            json.raw(",\"decision\":")
            json.string(decision.rawValue)
        }
        if let error {
            json.raw(",\"error\":")
            json.string(error)
        }
        json.raw(",\"gid\":")
        json.string(gid)
        json.raw(",\"heuristic\":")
        json.bool(heuristic)
        json.raw(",\"interactive\":")
        json.bool(interactive)
        json.raw(",\"protocol\":")
        json.string(self.protocol.rawValue)
        json.raw(",\"status\":")
        json.string(status)
        json.raw(",\"stuck\":")
        json.bool(stuck)
        json.raw(",\"timeline\":[")
        for (index, entry) in timeline.enumerated() {
            if index > 0 { json.raw(",") }
            json.raw("{\"at\":")
            json.string(ISO8601.format(entry.at))
            if let branch = entry.branch {
                json.raw(",\"branch\":")
                json.int(branch)
            }
            if let detail = entry.detail {
                json.raw(",\"detail\":")
                json.string(detail)
            }
            json.raw(",\"event\":")
            json.string(entry.event)
            json.raw("}")
        }
        json.raw("],\"timeout\":")
        json.value(.number(timeout))
        json.raw(",\"updatedAt\":")
        json.string(ISO8601.format(updatedAt))
        json.raw("}")
        return json.bytes
    }
}
