import DTXAPI
import DTXCore
import Foundation
import Logging
import Synchronization

/// The participants API (register, look up, heartbeat, deregister) over a registry.
/// Where a change is kept is given: the engine's own store for one dtxd (the
/// registry's records in its log), a table every node reads for a cluster.
public final class Participants: Sendable {
    let registry: ParticipantRegistry
    /// Keeps a registry record (`ParticipantRegistry.RecordType`) durably; returns its
    /// position, which `ParticipantRegistry.Entry.lsn` keeps.
    private let persist: @Sendable (UInt16, [UInt8]) async throws -> UInt64
    /// Unfinished branches on a participant, in the transactions this node drives.
    private let counter = Mutex<StoredFunction<@Sendable (String) -> Int>?>(nil)
    private let now: @Sendable () -> Date
    private let logger: Logger

    public init(registry: ParticipantRegistry, persist: @escaping @Sendable (UInt16, [UInt8]) async throws -> UInt64,
                now: @escaping @Sendable () -> Date, logger: Logger) {
        self.registry = registry
        self.persist = persist
        self.now = now
        self.logger = logger
    }

    /// How to count a participant's unfinished branches (deregistration is refused while
    /// there are any; the participants list shows them).
    public func countUnfinishedBranches(with body: @escaping @Sendable (String) -> Int) {
        counter.withLock { $0 = StoredFunction(body) }
    }

    private let refresher = Mutex<StoredFunction<@Sendable () async -> Void>?>(nil)
    private let heard = Mutex<StoredFunction<@Sendable (String) -> Void>?>(nil)

    /// Told of every heartbeat (a cluster node passes them on to the other nodes).
    public func whenHeard(_ body: @escaping @Sendable (String) -> Void) {
        heard.withLock { $0 = StoredFunction(body) }
    }
    private let clusterCount = Mutex<StoredFunction<@Sendable (String) async throws -> Int>?>(nil)

    /// How to count, before a deregistration, the unfinished transactions on other nodes
    /// of a cluster that have a branch on the participant.
    public func countUnfinishedElsewhere(with body: @escaping @Sendable (String) async throws -> Int) {
        clusterCount.withLock { $0 = StoredFunction(body) }
    }

    /// How to read registrations made elsewhere (another node of a cluster) at once,
    /// when a request names a participant this node has not heard of yet.
    public func refreshWith(_ body: @escaping @Sendable () async -> Void) {
        refresher.withLock { $0 = StoredFunction(body) }
    }

    /// Reads registrations made elsewhere when any of `names` is unknown here.
    func refresh(ifUnknown names: [String]) async {
        guard names.contains(where: { registry.entry($0) == nil }), let refresh = refresher.withLock({ $0 })?.call else { return }
        await refresh()
    }

    private func unfinishedBranches(_ name: String) -> Int {
        counter.withLock { $0 }?.call(name) ?? 0
    }

    public func register(_ registration: ParticipantRegistration) async throws(CoordinatorError) -> (ParticipantInfo, created: Bool) {
        guard ParticipantName.isValid(registration.name) else {
            throw CoordinatorError(.invalid, "invalid_name", "name must be \(ParticipantName.rule)")
        }
        guard ParticipantRegistration.isValidURL(registration.url) else {
            throw CoordinatorError(.invalid, "invalid_url", "url must be an http:// or https:// base URL with a host, an optional port (1-65535) and no query, e.g. http://127.0.0.1:8081")
        }
        var url = registration.url
        while url.hasSuffix("/") { url.removeLast() }
        let protocols = registration.protocols ?? [.twoPhaseCommit]
        guard !protocols.isEmpty, Set(protocols).count == protocols.count else {
            throw CoordinatorError(.invalid, "invalid_protocols", "protocols must name at least one of 2pc, 3pc, tcc, saga, each once")
        }
        if let token = registration.token, !(1...512).contains(token.unicodeScalars.count) {
            throw CoordinatorError(.invalid, "invalid_token", "token must be 1 to 512 characters")
        }
        let now = now()
        let previous = registry.entry(registration.name)
        let batch = registration.batch ?? false
        if let previous, previous.url == url, previous.protocols == protocols, previous.token == registration.token, previous.batch == batch {
            registry.touch(registration.name, at: now)
            return (info(registry.entry(registration.name) ?? previous), false)
        }
        var entry = ParticipantRegistry.Entry(name: registration.name, url: url, protocols: protocols, token: registration.token, batch: batch,
                                              registeredAt: previous?.registeredAt ?? now, lastSeen: now, lsn: 0)
        do {
            try await registry.changing {
                entry.lsn = try await persist(ParticipantRegistry.RecordType.registered.rawValue, ParticipantRegistry.registrationRecord(entry))
                registry.store(entry)
            }
        } catch {
            throw CoordinatorError(.unavailable, "log_unavailable", "the coordinator's log cannot be written: \(error)")
        }
        logger.info(previous == nil ? "participant registered" : "participant re-registered", metadata: ["name": "\(entry.name)", "url": "\(entry.url)"])
        return (info(entry), previous == nil)
    }

    public func all() -> [ParticipantInfo] {
        registry.all().map(info)
    }

    public func participant(_ name: String) throws(CoordinatorError) -> ParticipantInfo {
        guard let entry = registry.entry(name) else { throw unknown(name) }
        return info(entry)
    }

    public func heartbeat(_ name: String) throws(CoordinatorError) -> ParticipantInfo {
        guard registry.touch(name, at: now()), let entry = registry.entry(name) else { throw unknown(name) }
        heard.withLock { $0 }?.call(name)
        return info(entry)
    }

    public func deregister(_ name: String) async throws(CoordinatorError) {
        guard registry.entry(name) != nil else { throw unknown(name) }
        let unfinished = unfinishedBranches(name)
        guard unfinished == 0 else {
            throw CoordinatorError(.conflict, "participant_busy", "participant '\(name)' has \(unfinished) unfinished branch(es); deregister it once they finish (see dtx list --participant \(name))")
        }
        if let count = clusterCount.withLock({ $0 })?.call {
            let elsewhere: Int
            do {
                elsewhere = try await count(name)
            } catch {
                throw CoordinatorError(.unavailable, "store_unavailable", "cannot check the cluster's unfinished transactions on '\(name)': \(error); retry")
            }
            guard elsewhere == 0 else {
                throw CoordinatorError(.conflict, "participant_busy", "participant '\(name)' has branches in \(elsewhere) unfinished transaction(s) of the cluster; deregister it once they finish")
            }
        }
        do {
            try await registry.changing {
                let position = try await persist(ParticipantRegistry.RecordType.deregistered.rawValue, ParticipantRegistry.deregistrationRecord(name))
                registry.remove(name, at: position)
            }
        } catch {
            throw CoordinatorError(.unavailable, "log_unavailable", "the coordinator's log cannot be written: \(error)")
        }
        logger.info("participant deregistered", metadata: ["name": "\(name)"])
    }

    public var count: Int { registry.count }

    private func unknown(_ name: String) -> CoordinatorError {
        CoordinatorError(.notFound, "unknown_participant", "no participant named '\(name)' is registered")
    }

    private func info(_ entry: ParticipantRegistry.Entry) -> ParticipantInfo {
        ParticipantInfo(name: entry.name, url: entry.url, protocols: entry.protocols, hasToken: entry.token != nil,
                        registeredAt: entry.registeredAt, lastSeen: entry.lastSeen, unfinishedBranches: unfinishedBranches(entry.name),
                        batch: entry.batch)
    }
}
