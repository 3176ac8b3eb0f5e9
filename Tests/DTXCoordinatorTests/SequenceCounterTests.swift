@testable import DTXCoordinator
import Foundation
import Testing

/// The numbers behind the list's order and cursor.
@Suite struct SequenceCounterTests {
    @Test func aDtxdOnItsOwnLogCountsOneTwoThree() {
        let counter = SequenceCounter()
        let now = Date()
        #expect([counter.next(createdAt: now, replayed: true), counter.next(createdAt: now, replayed: false), counter.next(createdAt: .distantPast, replayed: false)] == [1, 2, 3])
    }

    /// Cluster nodes: by creation time, never twice the same on a node, the node's three
    /// digits last, 18 digits at most (the cursor's limit).
    @Test func clusterNodesNumberByTimeWithTheirOwnDigits() {
        let (a, b) = (SequenceCounter(clusterNode: "n0"), SequenceCounter(clusterNode: "n1"))
        let now = Date()
        let first = a.next(createdAt: now, replayed: false)
        let sameInstant = a.next(createdAt: now, replayed: false)
        #expect(sameInstant == first + 1000)
        #expect(first % 1000 == sameInstant % 1000)
        let other = b.next(createdAt: now, replayed: false)
        #expect(other / 1000 == first / 1000 && other % 1000 != first % 1000)
        #expect(a.next(createdAt: now.addingTimeInterval(1), replayed: false) > sameInstant)
        #expect(String(a.next(createdAt: Date(timeIntervalSince1970: 2_556_057_600), replayed: false)).count <= 18)  // 2050-12-31
        // A replayed transaction keeps its creation time's place.
        let replayed = a.next(createdAt: now.addingTimeInterval(-3600), replayed: true)
        #expect(replayed < first && replayed % 1000 == first % 1000)
    }
}
