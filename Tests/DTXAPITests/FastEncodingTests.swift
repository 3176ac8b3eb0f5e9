import DTXAPI
import DTXCore
import Foundation
import Testing

@Suite struct FastEncodingTests {
    private func view(error: String?, decision: Decision?) -> TransactionView {
        let at = Date(timeIntervalSince1970: 1_795_000_000)
        return TransactionView(
            gid: "g-1", protocol: .twoPhaseCommit, status: "committing", decision: decision, interactive: false, heuristic: true, stuck: false,
            createdAt: at, updatedAt: at.addingTimeInterval(2), timeout: 2.5, error: error,
            branches: [
                BranchView(id: 0, participant: "a", operation: "debit", state: "committed", attempts: 1, lastError: nil, result: .object(["ok": .bool(true)])),
                BranchView(id: 1, participant: "b\"q", operation: "credit", state: "committing", attempts: 3, lastError: "down\n", result: nil),
            ],
            timeline: [TimelineEntry(at: at, event: "submitted"), TimelineEntry(at: at, event: "prepare: failed", branch: 1, detail: "é")]
        )
    }

    @Test(arguments: [(String?.none, Decision?.none), ("no funds", .abort), (nil, .commit)])
    func theHandWrittenViewIsWhatCodableWrites(_ error: String?, _ decision: Decision?) throws {
        let original = view(error: error, decision: decision)
        let fast = original.jsonBytes()
        let codable = Array(try JSONEncoder.dtx().encode(original))
        #expect(String(decoding: fast, as: UTF8.self) == String(decoding: codable, as: UTF8.self))
        #expect(try JSONDecoder.dtx().decode(TransactionView.self, from: Data(fast)) == original)
    }

    @Test func datesAreISO8601InUTCToTheSecond() {
        #expect(ISO8601.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00Z")
        #expect(ISO8601.format(Date(timeIntervalSince1970: 1_795_000_000.9)) == "2026-11-18T11:06:40Z")
    }
}
