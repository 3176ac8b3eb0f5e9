import DTXAPI
import DTXCore
import Foundation
import Synchronization

/// A no-op resource manager for tests, examples and benchmarks: it records each
/// branch's state and does nothing else. A branch's payload steers its vote:
/// `{"vote": "no"}` refuses PREPARE (and a one-phase commit) with `voted_no`, and
/// `{"readOnly": true}` votes read-only. A repeated PREPARE (or one-phase commit) of a
/// branch is answered as a duplicate only when it asks for the same operation and payload
/// (`BranchDigest`); other work under the same (gid, branch) is refused (`branch_mismatch`).
///
/// It serves TCC and sagas as no-ops behind the branch barrier (`BranchBarrier`): each
/// phase of a branch is recorded once with its result, a cancel or compensate whose try
/// or action never ran records a marker (null compensation), and a try or action after
/// it is refused. `{"vote": "no"}` in the payload refuses a try or an action (nothing is
/// recorded).
///
/// It serves the conformance operations (`ConformanceOperation`): a counter's value is
/// the sum of the adds of committed branches, confirmed Trys and actions not compensated,
/// read from the records it keeps; `dtx.conformance.refuse` refuses like `{"vote": "no"}`.
///
/// It serves 3PC (`ThreePhaseResourceManager`): CANCOMMIT prepares like PREPARE (there
/// is no read-only vote) and records the transaction's participants; the pre-commit is
/// a mark on the prepared record. 3PC branches are left out of `inDoubt()`.
///
/// Without a journal everything lives in memory and operations are cheap. With a
/// journal every state change is written to the file durably (written to a temporary
/// file, fsynced, renamed over the journal, directory fsynced) before the operation
/// returns, and the state is loaded from it on start, so prepared branches survive a
/// crash. The whole state is rewritten on each change: a journal is for crash tests,
/// not for throughput.
///
/// Memory is bounded: only the newest `retainedDecisions` committed or rolled-back
/// branches are remembered (to answer duplicate messages); prepared branches are
/// always kept. Likewise the barrier records of the newest `retainedDecisions` TCC or
/// saga branches.
public final class InMemoryResourceManager: ResourceManager, BarrierResourceManager, ThreePhaseResourceManager {
    /// What the resource manager knows about one branch.
    public struct BranchRecord: Codable, Sendable, Equatable {
        public enum State: String, Codable, Sendable {
            case prepared
            case committed
            case rolledBack = "rolled_back"
        }

        public var gid: String
        public var branch: BranchID
        public var operation: String
        public var payload: JSONValue?
        public var state: State
        public var result: JSONValue?
        /// `BranchDigest.of(operation:payload:)` of the work the branch was prepared (or
        /// committed in one phase) for; nil for a rollback of a branch never prepared.
        public var digest: String?
        /// 3PC: every branch's participant, from CANCOMMIT; nil for a 2PC branch.
        public var participants: [ThreePhasePeer]?
        /// 3PC: the prepared branch is pre-committed (p).
        public var preCommitted: Bool?

        public var ref: BranchRef { BranchRef(gid: gid, branch: branch) }

        /// Refuses a repeated PREPARE or one-phase commit of this branch that asks for
        /// other work than the branch was recorded with.
        func check(_ digest: String) throws {
            if self.digest != digest { throw BranchDigest.mismatch(ref) }
        }
    }

    /// One barrier record: a TCC or saga phase of a branch, done once.
    public struct BarrierRecord: Codable, Sendable, Equatable {
        public var gid: String
        public var branch: BranchID
        public var phase: BarrierPhase
        public var operation: String
        public var payload: JSONValue?
        /// `BranchDigest.of(operation:payload:)` of the message.
        public var digest: String
        public var result: JSONValue?
        /// A cancel or compensate that did nothing because its try or action never ran.
        public var nullCompensation: Bool

        public var ref: BranchRef { BranchRef(gid: gid, branch: branch) }
    }

    /// Msg: how the local transaction of a message this service sent ended.
    public struct MessageRecord: Codable, Sendable, Equatable {
        public var gid: String
        /// `committed`, or `rolled_back` (the check-back's marker).
        public var outcome: String
    }

    /// Participant name put into results.
    public let name: String
    private let ledger: Mutex<Ledger>
    private let journal: Journal?

    /// - Parameters:
    ///   - name: the participant's name, reported in branch results.
    ///   - journal: path of a journal file; loaded if it exists, created (empty) if not.
    ///   - retainedDecisions: how many committed or rolled-back branches to remember.
    /// - Throws: `JournalError` when the journal cannot be read or created.
    public init(name: String, journal path: String? = nil, retainedDecisions: Int = 100_000) throws {
        self.name = name
        var ledger = Ledger(retainedDecisions: max(retainedDecisions, 1))
        if let path {
            let journal = Journal(path: path)
            let contents = try journal.load()
            for record in contents.branches { ledger.record(record) }
            for record in contents.barriers { ledger.record(record) }
            for record in contents.messages { ledger.record(record) }
            self.journal = journal
        } else {
            journal = nil
        }
        self.ledger = Mutex(ledger)
    }

    public func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> PrepareOutcome {
        try await prepare(branch, operation: operation, payload: payload, participants: nil)
    }

    /// PREPARE, or with `participants` 3PC's CANCOMMIT (which has no read-only vote).
    private func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]?) async throws -> PrepareOutcome {
        let digest = BranchDigest.of(operation: operation, payload: payload)
        return try await apply { ledger in
            let result = self.result(of: operation, payload, in: ledger)
            if let record = ledger.branches[branch] {
                switch record.state {
                case .prepared, .committed:
                    try record.check(digest)
                    return .prepared(result: record.result)
                case .rolledBack: throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot prepare again")
                }
            }
            try Self.checkVote(operation, payload)
            if participants == nil, payload?["readOnly"] == .bool(true) || operation == ConformanceOperation.read { return .readOnly(result: result) }
            ledger.record(BranchRecord(gid: branch.gid, branch: branch.branch, operation: operation, payload: payload, state: .prepared, result: result, digest: digest,
                                       participants: participants))
            return .prepared(result: result)
        }
    }

    public func commit(_ branch: BranchRef) async throws {
        try await apply { ledger in
            guard var record = ledger.branches[branch] else {
                throw BusinessError(code: "unknown_branch", message: "no record of branch \(branch): it was never prepared here, or forgotten long ago")
            }
            switch record.state {
            case .committed: return
            case .rolledBack: throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot commit")
            case .prepared:
                record.state = .committed
                ledger.record(record)
            }
        }
    }

    public func rollback(_ branch: BranchRef) async throws {
        try await apply { ledger in
            guard var record = ledger.branches[branch] else {
                // Never prepared (presumed abort): remember the rollback, so that a late
                // PREPARE for this branch refuses instead of preparing.
                ledger.record(BranchRecord(gid: branch.gid, branch: branch.branch, operation: "", state: .rolledBack))
                return
            }
            switch record.state {
            case .rolledBack: return
            case .committed: throw BusinessError(code: "already_committed", message: "branch \(branch) was already committed; it cannot roll back")
            case .prepared:
                record.state = .rolledBack
                ledger.record(record)
            }
        }
    }

    public func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        let digest = BranchDigest.of(operation: operation, payload: payload)
        return try await apply { ledger in
            let result = self.result(of: operation, payload, in: ledger)
            var record = ledger.branches[branch] ?? BranchRecord(gid: branch.gid, branch: branch.branch, operation: operation, payload: payload, state: .prepared, result: result, digest: digest)
            switch record.state {
            case .committed:
                try record.check(digest)
                return record.result
            case .rolledBack: throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot commit")
            case .prepared:
                try record.check(digest)
                try Self.checkVote(operation, payload)
                record.state = .committed
                ledger.record(record)
                return record.result
            }
        }
    }

    public func inDoubt() async throws -> [BranchRef] {
        ledger.withLock { ledger in ledger.branches.values.filter { $0.state == .prepared && $0.participants == nil }.map(\.ref) }
    }

    // MARK: 3PC

    public func canCommit(_ branch: BranchRef, operation: String, payload: JSONValue?, participants: [ThreePhasePeer]) async throws -> JSONValue? {
        switch try await prepare(branch, operation: operation, payload: payload, participants: participants) {
        case let .prepared(result), let .readOnly(result): return result
        }
    }

    public func preCommit(_ branch: BranchRef) async throws {
        try await apply { ledger in
            guard var record = ledger.branches[branch] else {
                throw BusinessError(code: "unknown_branch", message: "no record of branch \(branch): it was never prepared here")
            }
            switch record.state {
            case .committed: return
            case .rolledBack: throw BusinessError(code: "already_rolled_back", message: "branch \(branch) was already rolled back; it cannot pre-commit")
            case .prepared:
                guard record.preCommitted != true else { return }
                record.preCommitted = true
                ledger.record(record)
            }
        }
    }

    public func threePhaseBranch(_ branch: BranchRef) async throws -> ThreePhaseBranchRecord? {
        ledger.withLock { $0.branches[branch] }.map(Self.threePhaseRecord)
    }

    public func unfinishedThreePhaseBranches() async throws -> [ThreePhaseBranchRecord] {
        ledger.withLock { ledger in
            ledger.branches.values.filter { $0.state == .prepared && $0.participants != nil }.map(Self.threePhaseRecord)
        }
    }

    private static func threePhaseRecord(_ record: BranchRecord) -> ThreePhaseBranchRecord {
        let state: ThreePhaseState
        switch record.state {
        case .prepared: state = record.preCommitted == true ? .preCommitted : .prepared
        case .committed: state = .committed
        case .rolledBack: state = .aborted
        }
        return ThreePhaseBranchRecord(ref: record.ref, state: state, participants: record.participants ?? [])
    }

    /// Every branch remembered, ordered by gid and branch id.
    public func branches() -> [BranchRecord] {
        ledger.withLock { ledger in
            ledger.branches.values.sorted { ($0.gid, $0.branch) < ($1.gid, $1.branch) }
        }
    }

    // MARK: TCC and Saga

    /// Every barrier record remembered, ordered by gid, branch id and phase.
    public func barrierRecords() -> [BarrierRecord] {
        ledger.withLock { ledger in
            ledger.barriers.values.flatMap(\.values).sorted {
                ($0.gid, $0.branch, Self.order($0.phase)) < ($1.gid, $1.branch, Self.order($1.phase))
            }
        }
    }

    private static func order(_ phase: BarrierPhase) -> Int {
        BarrierPhase.allCases.firstIndex(of: phase) ?? 0
    }

    /// Runs a phase through the barrier; the business work is a no-op.
    public func runPhase(_ phase: BarrierPhase, _ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? {
        let digest = BranchDigest.of(operation: operation, payload: payload)
        return try await apply { ledger in
            var result = self.result(of: operation, payload, in: ledger)
            if case .object(var fields) = result, operation != ConformanceOperation.read {
                fields["phase"] = .string(phase.rawValue)
                result = .object(fields)
            }
            let recorded = (ledger.barriers[branch] ?? [:]).mapValues { BranchBarrier.Record(digest: $0.digest, result: $0.result) }
            let record = { (result: JSONValue?, nullCompensation: Bool) in
                BarrierRecord(gid: branch.gid, branch: branch.branch, phase: phase, operation: operation, payload: payload, digest: digest, result: result, nullCompensation: nullCompensation)
            }
            switch try BranchBarrier.step(for: phase, of: branch, digest: digest, recorded: recorded) {
            case .answer(let stored):
                return stored
            case .recordNullCompensation:
                ledger.record(record(nil, true))
                return nil
            case .run:
                if phase.isForward { try Self.checkVote(operation, payload) }
                ledger.record(record(result, false))
                return result
            }
        }
    }

    /// How message `gid`'s local transaction ended, if it did.
    public func messageOutcome(_ gid: String) -> String? {
        ledger.withLock { $0.messages[gid] }
    }

    /// A branch's result: what it did, or for `dtx.conformance.read` the counter's value.
    private func result(of operation: String, _ payload: JSONValue?, in ledger: Ledger) -> JSONValue {
        if operation == ConformanceOperation.read, let key = payload?["key"]?.stringValue {
            return .object(["value": .number(ledger.counter(key))])
        }
        return .object(["operation": .string(operation), "participant": .string(name)])
    }

    private static func checkVote(_ operation: String, _ payload: JSONValue?) throws {
        if payload?["vote"] == .string("no") {
            throw BusinessError(code: "voted_no", message: "branch refused by its payload")
        }
        if operation == ConformanceOperation.refuse {
            throw BusinessError(code: "refused", message: "the conformance run asked for a refusal (\(ConformanceOperation.refuse))")
        }
    }

    /// Runs `change` on the ledger. With a journal the change is made on a copy, which
    /// replaces the ledger only once the journal holds it durably, so a failed write
    /// changes nothing; changes are serialized on the journal's queue, which also keeps
    /// fsync off the concurrency pool's threads.
    private func apply<R: Sendable>(_ change: @escaping @Sendable (inout Ledger) throws -> R) async throws -> R {
        guard let journal else {
            return try ledger.withLock { ledger in try change(&ledger) }
        }
        return try await journal.serialize {
            var copy = self.ledger.withLock { $0 }
            let version = copy.version
            let result = try change(&copy)
            if copy.version != version {
                try journal.store(copy.journalContents())
                self.ledger.withLock { $0 = copy }
            }
            return result
        }
    }
}

/// The branches an `InMemoryResourceManager` remembers.
struct Ledger: Sendable {
    let retainedDecisions: Int
    private(set) var branches: [BranchRef: InMemoryResourceManager.BranchRecord] = [:]
    /// Committed and rolled-back branches, oldest decision first: the first to forget.
    private var decided = Queue<BranchRef>()
    /// The barrier records of TCC and saga branches, by branch and phase.
    private(set) var barriers: [BranchRef: [BarrierPhase: InMemoryResourceManager.BarrierRecord]] = [:]
    /// Branches with barrier records, in the order of their first record: the first to forget.
    private var barrierBranches = Queue<BranchRef>()
    /// Msg: each message's local outcome (`committed` or `rolled_back`), and the order
    /// they were recorded in: the first to forget.
    private(set) var messages: [String: String] = [:]
    private var messageOrder = Queue<String>()
    /// Counts changes, so that a no-op (a duplicate message) skips the journal.
    private(set) var version: UInt64 = 0

    init(retainedDecisions: Int) {
        self.retainedDecisions = retainedDecisions
    }

    /// Stores a new or changed record, forgetting the oldest decisions beyond the limit.
    mutating func record(_ record: InMemoryResourceManager.BranchRecord) {
        version &+= 1
        branches[record.ref] = record
        guard record.state != .prepared else { return }
        decided.append(record.ref)
        while decided.count > retainedDecisions, let oldest = decided.popFirst() {
            branches[oldest] = nil
        }
    }

    /// Stores a barrier record, forgetting the records of the oldest branches beyond the
    /// limit.
    mutating func record(_ record: InMemoryResourceManager.BarrierRecord) {
        version &+= 1
        if barriers[record.ref] == nil { barrierBranches.append(record.ref) }
        barriers[record.ref, default: [:]][record.phase] = record
        while barrierBranches.count > retainedDecisions, let oldest = barrierBranches.popFirst() {
            barriers[oldest] = nil
        }
    }

    /// The conformance counter `key`: the adds of committed branches, of confirmed Trys,
    /// and of actions that were not compensated.
    func counter(_ key: String) -> Double {
        var total = 0.0
        for record in branches.values where record.state == .committed {
            total += ConformanceOperation.amount(added: record.operation, record.payload, to: key)
        }
        for phases in barriers.values {
            for (phase, record) in phases where !record.nullCompensation {
                let amount = ConformanceOperation.amount(added: record.operation, record.payload, to: key)
                switch phase {
                case .confirm, .action: total += amount
                case .compensate: total -= amount
                case .try, .cancel: break
                }
            }
        }
        return total
    }

    /// Decided records in decision order, then the prepared ones; barrier records by
    /// branch in the order the branches were first recorded: recording them in this
    /// order rebuilds the ledger.
    func journalContents() -> Journal.Contents {
        Journal.Contents(
            branches: decided.elements.compactMap { branches[$0] } + branches.values.filter { $0.state == .prepared },
            barriers: barrierBranches.elements.flatMap { branch in
                BarrierPhase.allCases.compactMap { barriers[branch]?[$0] }
            },
            messages: messageOrder.elements.compactMap { gid in messages[gid].map { .init(gid: gid, outcome: $0) } })
    }

    /// Records how message `gid`'s local transaction ended (once: the first record stays).
    mutating func record(_ record: InMemoryResourceManager.MessageRecord) {
        guard messages[record.gid] == nil else { return }
        version &+= 1
        messages[record.gid] = record.outcome
        messageOrder.append(record.gid)
        while messageOrder.count > retainedDecisions, let oldest = messageOrder.popFirst() {
            messages[oldest] = nil
        }
    }
}

/// A first-in first-out queue with amortized O(1) operations.
struct Queue<Element: Sendable>: Sendable {
    private var storage: [Element] = []
    private var head = 0

    var count: Int { storage.count - head }
    var elements: ArraySlice<Element> { storage[head...] }

    mutating func append(_ element: Element) {
        storage.append(element)
    }

    mutating func popFirst() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head]
        head += 1
        // Reclaim the consumed prefix once it is at least half of the storage.
        if head >= 1024, head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }
}

/// Msg: a service's local transactions are no-ops here; the message's row is what is kept
/// (`MessageResourceManager`): the first of the local commit and the check-back's marker
/// settles the message.
extension InMemoryResourceManager: MessageResourceManager {
    public typealias Connection = Void

    public func write<T: Sendable>(message gid: String, _ body: @escaping @Sendable (()) throws -> T) async throws -> T {
        try await apply { ledger in
            guard ledger.messages[gid] == nil else { throw MessageRolledBack(gid: gid) }
            let value = try body(())
            ledger.record(MessageRecord(gid: gid, outcome: MessageCheckBack.committed))
            return value
        }
    }

    public func queryPrepared(gid: String) async throws -> String {
        try await apply { ledger in
            ledger.record(MessageRecord(gid: gid, outcome: MessageCheckBack.rolledBack))
            return ledger.messages[gid] ?? MessageCheckBack.rolledBack
        }
    }
}
