import DTXAPI
import DTXCore
import Foundation
import Synchronization

/// The participant registry. Registrations and deregistrations are logged (forced, they
/// are rare), so the registry survives restarts; heartbeats only touch memory.
public final class ParticipantRegistry: Sendable {
    /// Log record types of the registry (protocol records use 1–15).
    public enum RecordType: UInt16, Sendable {
        case registered = 16
        case deregistered = 17
    }

    struct Entry: Sendable, Codable, Equatable {
        var name: String
        var url: String
        var protocols: [TransactionProtocol]
        var token: String?
        /// Serves `POST {base}/dtx/batch`.
        var batch: Bool
        var registeredAt: Date
        /// Not logged: nil after a restart until the participant is heard from.
        var lastSeen: Date?
        /// LSN of the registration record that holds this entry (the checkpoint keeps it).
        var lsn: UInt64

        private enum CodingKeys: String, CodingKey {
            case name, url, protocols, token, batch, registeredAt
        }

        init(name: String, url: String, protocols: [TransactionProtocol], token: String?, batch: Bool = false, registeredAt: Date, lastSeen: Date?, lsn: UInt64) {
            self.name = name
            self.url = url
            self.protocols = protocols
            self.token = token
            self.batch = batch
            self.registeredAt = registeredAt
            self.lastSeen = lastSeen
            self.lsn = lsn
        }

        init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            name = try container.decode(String.self, forKey: .name)
            url = try container.decode(String.self, forKey: .url)
            protocols = try container.decode([TransactionProtocol].self, forKey: .protocols)
            token = try container.decodeIfPresent(String.self, forKey: .token)
            batch = try container.decode(Bool.self, forKey: .batch)
            registeredAt = try container.decode(Date.self, forKey: .registeredAt)
            lsn = 0
        }

        var endpoint: ParticipantEndpoint { ParticipantEndpoint(name: name, url: url, token: token, batch: batch) }
    }

    private struct Deregistration: Codable {
        var name: String
    }

    private let entries = Mutex<[String: Entry]>([:])
    /// The position (log LSN, or a cluster's row version) of the newest change applied to
    /// each name, a deregistration included: an older change arriving late (a cluster
    /// node's poll that started before its own write) changes nothing.
    private let newest = Mutex<[String: UInt64]>([:])

    public init() {}
    /// Registrations and deregistrations whose record is being written and whose change
    /// to memory has not been made yet.
    private let changesInFlight = Mutex(0)

    // MARK: Replay and checkpoint

    /// Applies a registry record found in the log (or a cluster's registry table) unless
    /// a newer change of that name was applied; false when the type is not the registry's.
    public func replay(type: UInt16, payload: [UInt8], lsn: UInt64) throws -> Bool {
        switch RecordType(rawValue: type) {
        case .registered:
            var entry = try JSONDecoder.dtx().decode(Entry.self, from: Data(payload))
            entry.lsn = lsn
            guard isNewer(entry.name, lsn) else { return true }
            // Heard from since (a cluster node reading a registration it made itself).
            entries.withLock { entries in
                entry.lastSeen = entries[entry.name]?.lastSeen
                entries[entry.name] = entry
            }
            return true
        case .deregistered:
            let gone = try JSONDecoder.dtx().decode(Deregistration.self, from: Data(payload))
            guard isNewer(gone.name, lsn) else { return true }
            entries.withLock { _ = $0.removeValue(forKey: gone.name) }
            return true
        case nil:
            return false
        }
    }

    /// Whether a change at `position` is newer than any applied to `name`; if so, it is
    /// the newest from now on.
    private func isNewer(_ name: String, _ position: UInt64) -> Bool {
        newest.withLock { newest in
            guard position > newest[name] ?? 0 else { return false }
            newest[name] = position
            return true
        }
    }

    /// Whether a registry record is still needed (nil: not a registry record): the
    /// current registration of each participant. `register` and `deregister` write the
    /// log first and change memory after the write is durable; while one is between the
    /// two (`changing`), every registry record is kept, since memory may not name the
    /// newest yet. Dropping it would bring the older state back at the next start.
    func isLive(type: UInt16, lsn: UInt64) -> Bool? {
        guard let recordType = RecordType(rawValue: type) else { return nil }
        if changesInFlight.withLock({ $0 > 0 }) { return true }
        guard recordType == .registered else { return false }
        return entries.withLock { $0.values.contains { $0.lsn == lsn } }
    }

    // MARK: Operations

    static func registrationRecord(_ entry: Entry) -> [UInt8] {
        Array((try? JSONEncoder.dtx().encode(entry)) ?? Data())
    }

    static func deregistrationRecord(_ name: String) -> [UInt8] {
        Array((try? JSONEncoder.dtx().encode(Deregistration(name: name))) ?? Data())
    }

    func entry(_ name: String) -> Entry? {
        entries.withLock { $0[name] }
    }

    func all() -> [Entry] {
        entries.withLock { Array($0.values) }.sorted { $0.name < $1.name }
    }

    var count: Int { entries.withLock { $0.count } }

    /// Runs `change`, which logs a registry record and then changes memory, with
    /// checkpoints keeping every registry record meanwhile.
    func changing<T>(_ change: () async throws -> T) async rethrows -> T {
        changesInFlight.withLock { $0 += 1 }
        defer { changesInFlight.withLock { $0 -= 1 } }
        return try await change()
    }

    func store(_ entry: Entry) {
        guard isNewer(entry.name, entry.lsn) else { return }
        entries.withLock { $0[entry.name] = entry }
    }

    /// `position`: of the deregistration record.
    func remove(_ name: String, at position: UInt64) {
        guard isNewer(name, position) else { return }
        entries.withLock { _ = $0.removeValue(forKey: name) }
    }

    /// Marks a participant as heard from now; false when it is not registered.
    @discardableResult
    func touch(_ name: String, at now: Date = Date()) -> Bool {
        entries.withLock { entries in
            guard entries[name] != nil else { return false }
            entries[name]!.lastSeen = now
            return true
        }
    }

    /// Another node heard from the participant at `time`: kept if it is later than what
    /// this node heard.
    public func heardElsewhere(_ name: String, at time: Date) {
        entries.withLock { entries in
            guard let entry = entries[name], entry.lastSeen.map({ $0 < time }) ?? true else { return }
            entries[name]!.lastSeen = time
        }
    }
}
