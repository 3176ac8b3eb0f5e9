import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Logging
import Synchronization

/// Serves the participant protocol for one `ResourceManager`, keeps the service
/// registered with the coordinator and resolves its in-doubt branches. When the resource
/// manager also conforms to `TCCResourceManager`, `SagaResourceManager` or
/// `ThreePhaseResourceManager`, the service serves those protocols too and registers them.
///
/// Add the protocol's routes to the service's HTTP router with `addRoutes(to:)`, then
/// call `run()` once the server is listening.
public final class ParticipantService: Sendable {
    public struct Configuration: Sendable {
        /// Name registered with the coordinator; branches name their participant by it.
        public var name: String
        /// Base URL the coordinator calls, e.g. `http://127.0.0.1:8081`.
        public var advertisedURL: String
        /// Base URL of dtxd, e.g. `http://127.0.0.1:7070`.
        public var coordinatorURL: String
        /// Bearer token for this service's calls to dtxd.
        public var coordinatorToken: String?
        /// Bearer token the coordinator must send on its calls to this service; requests
        /// without it are refused with 401. Registered with the coordinator.
        public var callbackToken: String?
        /// Time between heartbeats while registered.
        public var heartbeatInterval: Duration
        /// Time between two passes over the in-doubt branches.
        public var recoveryInterval: Duration
        /// 3PC: how long a branch waits for the next message before it acts alone (q:
        /// abort; w or p: termination), and the limit of each question termination asks.
        /// Longer than the coordinator's round trips, shorter than what a participant may
        /// hold its resources for.
        public var threePhaseTimeout: Duration
        /// How long the records of finished branches are kept (a resource manager that is
        /// `RecordRetaining` deletes older ones, 1000 per local transaction, every
        /// `retentionInterval`); nil keeps them for ever.
        public var retention: Duration?
        public var retentionInterval: Duration

        public init(
            name: String,
            advertisedURL: String,
            coordinatorURL: String,
            coordinatorToken: String? = nil,
            callbackToken: String? = nil,
            heartbeatInterval: Duration = .seconds(5),
            recoveryInterval: Duration = .seconds(5),
            threePhaseTimeout: Duration = .seconds(5),
            retention: Duration? = .seconds(7 * 86_400),
            retentionInterval: Duration = .seconds(60)
        ) {
            self.retention = retention
            self.retentionInterval = retentionInterval
            self.name = name
            self.advertisedURL = advertisedURL
            self.coordinatorURL = coordinatorURL
            self.coordinatorToken = coordinatorToken
            self.callbackToken = callbackToken
            self.heartbeatInterval = heartbeatInterval
            self.recoveryInterval = recoveryInterval
            self.threePhaseTimeout = threePhaseTimeout
        }
    }

    public let configuration: Configuration
    let resourceManager: any ResourceManager
    let tccResourceManager: (any TCCResourceManager)?
    let sagaResourceManager: (any SagaResourceManager)?
    /// Msg: the local transactions of messages and the check-back, when the resource
    /// manager keeps messages (`MessageResourceManager`).
    let messageResourceManager: (any MessageResourceManager)?
    /// Checked by `transactionalMessage` (`before-local-commit`, `after-local-commit`).
    let failpoints: Failpoints?
    /// 3PC's branches in progress, when the resource manager serves 3PC.
    let threePhase: ThreePhaseBranches?
    /// The protocols this service serves and registers: 2PC, and 3PC, TCC, Saga and msg
    /// (the check-back) when its resource manager serves them.
    public let servedProtocols: [TransactionProtocol]
    let logger: Logger
    let client: CoordinatorClient
    private let clientIsShutDown = Mutex(false)
    /// The other URL the coordinator last listed this participant's name at, if any.
    private let listedElsewhere = Mutex<String?>(nil)

    /// Registration retries back off from this delay, doubling up to `maximumBackoff`.
    private static let initialBackoff: Duration = .milliseconds(200)
    private static let maximumBackoff: Duration = .seconds(5)

    /// - Throws: `ClientError.invalidURL` when `coordinatorURL` is not an http(s) URL.
    public init(configuration: Configuration, resourceManager: some ResourceManager, failpoints: Failpoints? = nil, logger: Logger) throws {
        self.configuration = configuration
        self.resourceManager = resourceManager
        self.failpoints = failpoints
        messageResourceManager = ((resourceManager as? FailpointResourceManager)?.base ?? resourceManager) as? any MessageResourceManager
        tccResourceManager = (resourceManager as? any TCCResourceManager).flatMap { $0.servesTCC ? $0 : nil }
        sagaResourceManager = (resourceManager as? any SagaResourceManager).flatMap { $0.servesSagas ? $0 : nil }
        var logger = logger
        logger[metadataKey: "participant"] = .string(configuration.name)
        self.logger = logger
        let client = try CoordinatorClient(baseURL: configuration.coordinatorURL, token: configuration.coordinatorToken, timeout: .seconds(10))
        self.client = client
        threePhase = (resourceManager as? any ThreePhaseResourceManager).flatMap { $0.servesThreePhaseCommit ? $0 : nil }.map {
            let network = ThreePhaseNetwork(coordinatorURL: client.baseURL, coordinator: client, coordinatorToken: configuration.coordinatorToken,
                                            peerToken: configuration.callbackToken, timeout: configuration.threePhaseTimeout)
            return ThreePhaseBranches(resourceManager: $0, network: network, timeout: configuration.threePhaseTimeout, logger: logger)
        }
        servedProtocols = [.twoPhaseCommit] + (threePhase == nil ? [] : [.threePhaseCommit]) + (tccResourceManager == nil ? [] : [.tcc])
            + (sagaResourceManager == nil ? [] : [.saga]) + (messageResourceManager == nil ? [] : [.msg])
    }

    /// Registers with the coordinator (retrying with capped backoff until it answers),
    /// then sends a heartbeat every `heartbeatInterval` and resolves in-doubt branches
    /// right after the first registration and every `recoveryInterval`. A failed
    /// heartbeat (coordinator down, or restarted and no longer knowing this service)
    /// makes the next contact a full registration again.
    ///
    /// 3PC branches found in w or p (a restart) run termination first.
    ///
    /// Returns when the task is cancelled, after shutting down the coordinator client.
    ///
    /// - Parameter advertisedURL: the URL to register instead of
    ///   `configuration.advertisedURL`, for a server whose port is known only once bound.
    public func run(advertisedURL: String? = nil) async throws {
        let registration = ParticipantRegistration(
            name: configuration.name,
            url: advertisedURL ?? configuration.advertisedURL,
            protocols: servedProtocols,
            token: configuration.callbackToken,
            batch: true  // addRoutes serves /dtx/batch
        )
        await threePhase?.resumeUnfinished()
        let clock = ContinuousClock()
        var registered = false
        var failures = 0
        var nextContact = clock.now
        var nextRecovery = clock.now
        var nextRetention = clock.now
        while !Task.isCancelled {
            if clock.now >= nextRetention {
                await forgetFinished()
                nextRetention = clock.now + configuration.retentionInterval
            }
            if clock.now >= nextContact {
                if await contact(registration, registered: &registered, failures: failures) {
                    failures = 0
                    nextContact = clock.now + configuration.heartbeatInterval
                } else {
                    failures += 1
                    nextContact = clock.now + Self.backoff(afterFailures: failures)
                }
            }
            if registered, clock.now >= nextRecovery {
                await recoverInDoubt()
                nextRecovery = clock.now + configuration.recoveryInterval
            }
            let wake = min(registered ? min(nextContact, nextRecovery) : nextContact, nextRetention)
            try? await Task.sleep(until: wake, clock: clock)
        }
        try await shutdown()
    }

    /// Deletes the records of branches finished longer than `configuration.retention`
    /// ago, in local transactions of at most 1000 records, until none is left; returns
    /// how many. Nothing when the resource manager keeps no such records or retention is off.
    @discardableResult
    public func forgetFinished(now: Date = Date()) async -> Int {
        guard let retention = configuration.retention, let retaining = resourceManager as? any RecordRetaining else { return 0 }
        let cutoff = now.addingTimeInterval(-retention.apiSeconds)
        var total = 0
        do {
            while true {
                let deleted = try await retaining.forgetFinished(before: cutoff, limit: 1000)
                total += deleted
                if deleted < 1000 { break }
            }
        } catch {
            logger.warning("cannot delete the records of finished branches; trying again later", metadata: ["error": "\(error)"])
        }
        if total > 0 { logger.info("deleted the records of finished branches", metadata: ["records": "\(total)"]) }
        return total
    }

    /// Shuts down the connection pool to the coordinator. `run()` does this when it
    /// returns; call it yourself when you never call `run()`. Calling it again does nothing.
    public func shutdown() async throws {
        let alreadyShutDown = clientIsShutDown.withLock { done in
            defer { done = true }
            return done
        }
        if !alreadyShutDown { try await client.shutdown() }
    }

    /// Asks the coordinator for the outcome of every in-doubt branch and commits or rolls
    /// back those that are decided; branches whose transaction is still pending stay
    /// prepared. Returns how many branches it resolved.
    @discardableResult
    public func recoverInDoubt() async -> Int {
        let branches: [BranchRef]
        do {
            branches = try await resourceManager.inDoubt()
        } catch {
            logger.error("cannot list in-doubt branches", metadata: ["error": "\(error)"])
            return 0
        }
        var resolved = 0
        for ref in branches {
            let metadata: Logger.Metadata = ["gid": .string(ref.gid), "branch": .stringConvertible(ref.branch)]
            do {
                switch try await client.outcome(gid: ref.gid, branch: ref.branch) {
                case "committed":
                    try await resourceManager.commit(ref)
                    resolved += 1
                    logger.info("committed in-doubt branch", metadata: metadata)
                case "aborted":
                    try await resourceManager.rollback(ref)
                    resolved += 1
                    logger.info("rolled back in-doubt branch", metadata: metadata)
                case "pending":
                    logger.debug("in-doubt branch still pending", metadata: metadata)
                case let other:
                    logger.warning("coordinator gave an unknown outcome for an in-doubt branch", metadata: metadata.merging(["outcome": .string(other)]) { $1 })
                }
            } catch let error as ClientError where error.status == nil {
                // The coordinator is unreachable: asking about the other branches would
                // only wait for the same timeout again. The next pass retries them.
                logger.warning("cannot ask the coordinator about in-doubt branches", metadata: ["error": "\(error)", "inDoubt": .stringConvertible(branches.count)])
                break
            } catch {
                logger.warning("cannot resolve in-doubt branch", metadata: metadata.merging(["error": "\(error)"]) { $1 })
            }
        }
        if resolved > 0 {
            logger.info("in-doubt recovery pass", metadata: ["inDoubt": .stringConvertible(branches.count), "resolved": .stringConvertible(resolved)])
        }
        return resolved
    }

    /// Interactive TCC: enlists a branch of this service in the open transaction `gid`
    /// with the coordinator, then runs the branch's Try here, inside the branch barrier.
    /// The application that began the transaction calls this (through the service's own
    /// API) for each service it involves, then asks the coordinator to confirm, or to
    /// cancel when a Try failed.
    ///
    /// The branch is enlisted before its Try runs, so the coordinator knows every branch
    /// that may have tried: a crash between the two leaves a branch whose Cancel finds no
    /// Try (a null compensation), never a Try the coordinator cannot cancel.
    ///
    /// - Throws: `ProtocolNotServed` when the resource manager does not serve TCC;
    ///   `ClientError` when the coordinator refuses the enlistment (the transaction is not
    ///   open, or unknown) or cannot be reached; what the Try throws (`BusinessError` for
    ///   a refusal), after the branch is enlisted.
    public func tryEnlisted(gid: String, operation: String, payload: JSONValue?) async throws -> (branch: BranchID, result: JSONValue?) {
        guard let tcc = tccResourceManager else { throw ProtocolNotServed(transactionProtocol: .tcc) }
        let answer = try await client.enlist(gid: gid, EnlistRequest(participant: configuration.name, operation: operation, payload: payload))
        let ref = BranchRef(gid: gid, branch: answer.branch)
        return (answer.branch, try await tcc.try(ref, operation: operation, payload: payload))
    }

    /// One register (when not registered) or heartbeat; true when the coordinator
    /// accepted it.
    private func contact(_ registration: ParticipantRegistration, registered: inout Bool, failures: Int) async -> Bool {
        do {
            if registered {
                let listed = try await client.heartbeat(registration.name)
                var url = registration.url
                while url.hasSuffix("/") { url.removeLast() }  // as dtxd stores it
                if listed.url != url {
                    // Another process took the name (a new deployment), or dtxd runs on
                    // an older copy of its log. Taking the name back would make two
                    // processes take turns: say so, once per URL, and leave it.
                    let isNew = listedElsewhere.withLock { last in
                        defer { last = listed.url }
                        return last != listed.url
                    }
                    if isNew {
                        logger.warning("the coordinator lists this participant's name at another URL; another process has it, or the coordinator's registry is out of date (restart this service to register it here again)",
                                       metadata: ["coordinator": .string(client.baseURL), "listedURL": .string(listed.url), "url": .string(url)])
                    }
                } else if Set(listed.protocols) != Set(registration.protocols ?? [.twoPhaseCommit]) || listed.batch != (registration.batch ?? false) {
                    // This process, listed with what it served before: register what it serves now.
                    try await client.register(registration)
                    logger.info("registered again with the protocols this process serves", metadata: ["coordinator": .string(client.baseURL), "url": .string(url)])
                }
            } else {
                try await client.register(registration)
                registered = true
                logger.info("registered with the coordinator", metadata: ["coordinator": .string(client.baseURL), "url": .string(registration.url)])
            }
            return true
        } catch {
            // A cancelled call is the service stopping, not the coordinator failing.
            if Task.isCancelled { return false }
            let metadata: Logger.Metadata = ["coordinator": .string(client.baseURL), "error": "\(error)"]
            if registered {
                registered = false
                logger.warning("heartbeat failed; will register again", metadata: metadata)
            } else if failures == 0 {
                logger.warning("cannot register with the coordinator; retrying", metadata: metadata)
            } else {
                logger.debug("cannot register with the coordinator; retrying", metadata: metadata)
            }
            return false
        }
    }

    private static func backoff(afterFailures failures: Int) -> Duration {
        let doublings = min(failures - 1, 16)
        return min(initialBackoff * (1 << doublings), maximumBackoff)
    }
}
