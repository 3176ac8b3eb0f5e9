import DTXAPI
import DTXCore
import Foundation
import Hummingbird
import Logging
import Synchronization

/// The coordinator API a participant calls, as far as a conformance run needs it: the
/// run is the coordinator of its transactions, so it answers the participant's questions
/// about them (`outcome`, 3PC `state`) from its own decisions, and takes registrations
/// and heartbeats so that a participant pointed at it starts as it would against dtxd.
/// A gid it never ran is answered as dtxd answers one: aborted (presumed abort).
final class StandInCoordinator: Sendable {
    private struct State {
        /// Every gid the run has used: undecided ones are pending, not presumed aborted.
        var begun: Set<String> = []
        var decisions: [String: Decision] = [:]
        var threePhase: [String: ThreePhaseState] = [:]
        var participants: [String: ParticipantInfo] = [:]
    }

    private let state = Mutex(State())

    /// The run uses `gid`: until it is decided, a participant asking is told it is pending.
    func begin(_ gid: String) {
        state.withLock { _ = $0.begun.insert(gid) }
    }

    /// The decision of `gid`, which its participant is told when it asks.
    func decide(_ gid: String, _ decision: Decision) {
        state.withLock { $0.decisions[gid] = decision }
    }

    /// A 3PC transaction's state, which termination is told when it asks.
    func set(_ gid: String, _ threePhase: ThreePhaseState) {
        state.withLock { $0.threePhase[gid] = threePhase }
    }

    /// The registered participants' names.
    var registeredNames: [String] { state.withLock { $0.participants.keys.sorted() } }

    /// Serves on `host:port` until the task is cancelled; `onListening` gets the base URL.
    func run(host: String, port: Int, onListening: @escaping @Sendable (String) -> Void) async throws {
        let router = Router()
        router.post("/v1/participants") { request, context -> Response in
            let registration = try await request.decode(as: ParticipantRegistration.self, context: context)
            let info = ParticipantInfo(name: registration.name, url: registration.url, protocols: registration.protocols ?? [.twoPhaseCommit],
                                       hasToken: registration.token != nil, registeredAt: Date(), lastSeen: Date(), unfinishedBranches: 0,
                                       batch: registration.batch ?? false)
            let known = self.state.withLock { state in
                defer { state.participants[info.name] = info }
                return state.participants[info.name] != nil
            }
            return try Self.json(info, status: known ? .ok : .created)
        }
        router.post("/v1/participants/{name}/heartbeat") { _, context -> Response in
            let name = context.parameters.get("name") ?? ""
            guard let info = self.state.withLock({ $0.participants[name] }) else {
                return try Self.json(APIErrorBody(code: "unknown_participant", message: "no participant \(name) is registered"), status: .notFound)
            }
            return try Self.json(info, status: .ok)
        }
        router.get("/v1/participants") { _, _ -> Response in
            try Self.json(ParticipantList(participants: self.state.withLock { Array($0.participants.values) }), status: .ok)
        }
        router.get("/v1/participants/{name}") { _, context -> Response in
            let name = context.parameters.get("name") ?? ""
            guard let info = self.state.withLock({ $0.participants[name] }) else {
                return try Self.json(APIErrorBody(code: "unknown_participant", message: "no participant \(name) is registered"), status: .notFound)
            }
            return try Self.json(info, status: .ok)
        }
        router.get("/v1/transactions/{gid}/outcome") { _, context -> Response in
            let gid = context.parameters.get("gid") ?? ""
            let outcome = self.state.withLock { state in
                switch state.decisions[gid] {
                case .commit: "committed"
                case .abort: "aborted"
                case nil: state.begun.contains(gid) ? "pending" : "aborted"
                }
            }
            return try Self.json(["gid": gid, "outcome": outcome], status: .ok)
        }
        router.get("/v1/transactions/{gid}/state") { _, context -> Response in
            let gid = context.parameters.get("gid") ?? ""
            // Undecided: still collecting votes (the participant waits and asks again).
            let answer = self.state.withLock { $0.threePhase[gid] ?? ($0.begun.contains(gid) ? .prepared : .aborted) }
            return try Self.json(["gid": gid, "state": answer.rawValue], status: .ok)
        }
        var logger = Logger(label: "dtx-conformance-coordinator")
        logger.logLevel = .critical
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "dtx-conformance"),
            onServerRunning: { channel in onListening("http://\(host):\(channel.localAddress?.port ?? port)") },
            logger: logger
        )
        try await app.runService(gracefulShutdownSignals: [])
    }

    private static func json(_ value: some Encodable, status: HTTPResponse.Status) throws -> Response {
        let data = try JSONEncoder.dtx().encode(value)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
