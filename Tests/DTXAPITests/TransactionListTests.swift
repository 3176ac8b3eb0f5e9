import DTXAPI
import Foundation
import Testing

/// The pages of several cluster nodes merged into one (GET /v1/transactions on a node of
/// a cluster).
@Suite struct TransactionListTests {
    private func summary(_ gid: String, _ cursor: UInt64) -> TransactionSummary {
        TransactionSummary(gid: gid, protocol: .twoPhaseCommit, status: "committed", stuck: false, heuristic: false,
                           createdAt: Date(timeIntervalSince1970: 1_795_000_000), participants: ["a"], cursor: String(cursor))
    }

    private func list(_ entries: [(String, UInt64)], more: Bool) -> TransactionList {
        let page = entries.map { summary($0.0, $0.1) }
        return TransactionList(transactions: page, nextCursor: more ? page.last?.cursor : nil)
    }

    @Test func pagesMergeNewestFirstAndSayWhetherMoreFollow() {
        let a = list([("a3", 9000), ("a2", 5000), ("a1", 1000)], more: false)
        let b = list([("b2", 7000), ("b1", 3000)], more: false)
        let page = TransactionList.merging([a, b], limit: 3)
        #expect(page.transactions.map(\.gid) == ["a3", "b2", "a2"])
        #expect(page.nextCursor == "5000")
        let all = TransactionList.merging([a, b], limit: 5)
        #expect(all.transactions.map(\.gid) == ["a3", "b2", "a2", "b1", "a1"])
        #expect(all.nextCursor == nil)
    }

    /// A node with more than its page means more follow, even when all of its page fitted.
    @Test func aNodeWithMoreMakesANextPage() {
        let a = list([("a3", 9000), ("a2", 8000)], more: true)
        let b = list([], more: false)
        let page = TransactionList.merging([a, b], limit: 2)
        #expect(page.transactions.map(\.gid) == ["a3", "a2"])
        #expect(page.nextCursor == "8000")
    }

    /// During a takeover the old and the new owner may both list a gid: once, at its newer place.
    @Test func aGidListedByTwoNodesAppearsOnce() {
        let old = list([("moved", 4000), ("x", 2000)], more: false)
        let new = list([("moved", 6000)], more: false)
        let page = TransactionList.merging([old, new], limit: 10)
        #expect(page.transactions.map(\.gid) == ["moved", "x"])
        #expect(page.transactions.first?.cursor == "6000")
    }
}
