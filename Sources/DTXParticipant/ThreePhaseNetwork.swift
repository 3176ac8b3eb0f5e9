import AsyncHTTPClient
import DTXAPI
import DTXClient
import DTXCore
import Foundation
import NIOCore
import Synchronization

/// The calls 3PC termination makes: the coordinator's state, the peers' states, PRECOMMIT
/// to peers; and, at CANCOMMIT, the peers' base URLs from the coordinator's registry.
/// Every failure (unreachable, timed out, an answer that is not a state) reads as "could
/// not be reached": the termination rule is safe when unreachable means crashed.
final class ThreePhaseNetwork: Sendable {
    /// The process-wide client: nothing to shut down, and peers' answers are small.
    private var http: HTTPClient { .shared }
    private let coordinatorURL: String
    private let coordinator: CoordinatorClient
    /// Sent to the coordinator, as the service's other calls are.
    private let coordinatorToken: String?
    /// Sent to peers: a peer checks its own callback token, so participants of one
    /// deployment that use callback tokens share one.
    private let peerToken: String?
    private let timeout: TimeAmount
    /// The registry's name → URL, fetched when a CANCOMMIT names a participant not in it.
    private let directory = Mutex<[String: String]>([:])

    init(coordinatorURL: String, coordinator: CoordinatorClient, coordinatorToken: String?, peerToken: String?, timeout: Duration) {
        self.coordinatorURL = coordinatorURL.hasSuffix("/") ? String(coordinatorURL.dropLast()) : coordinatorURL
        self.coordinator = coordinator
        self.coordinatorToken = coordinatorToken
        self.peerToken = peerToken
        self.timeout = TimeAmount(timeout)
    }

    /// Every branch's participant with its base URL, from the names CANCOMMIT lists.
    /// - Throws: `ClientError` when the registry is needed and cannot be read.
    func resolve(_ names: [String]) async throws -> [ThreePhasePeer] {
        if directory.withLock({ known in !names.allSatisfy { known[$0] != nil } }) {
            let listed = try await coordinator.participants()
            directory.withLock { known in
                for participant in listed { known[participant.name] = participant.url }
            }
        }
        return directory.withLock { known in names.map { ThreePhasePeer(name: $0, url: known[$0]) } }
    }

    /// The coordinator's state for the transaction, nil when it cannot be reached.
    func coordinatorState(of ref: BranchRef) async -> ThreePhaseState? {
        let path = "/v1/transactions/\(PathSegment.encode(ref.gid))/state?branch=\(ref.branch)"
        guard let json = await call(coordinatorURL + path, token: coordinatorToken, posting: nil) else { return nil }
        return json["state"]?.stringValue.flatMap(ThreePhaseState.init(rawValue:))
    }

    /// The states of the peers that answered `GET {base}/dtx/state`.
    func peerStates(gid: String, _ peers: [BranchID], of participants: [ThreePhasePeer]) async -> [BranchID: ThreePhaseState] {
        await ask(peers, of: participants) { id, url in
            let json = await self.call(url + ParticipantRoute.statePath + "?gid=\(PathSegment.encode(gid))&branch=\(id)", token: self.peerToken, posting: nil)
            return json?["status"]?.stringValue.flatMap(ThreePhaseState.init(rawValue:))
        }
    }

    /// Sends PRECOMMIT to peers; the states of those that answered.
    func preCommit(gid: String, _ peers: [BranchID], of participants: [ThreePhasePeer]) async -> [BranchID: ThreePhaseState] {
        await ask(peers, of: participants) { id, url in
            // A peer does not know the branch's operation; PRECOMMIT needs only the branch.
            let body = HTTPClientRequest.Body.bytes(ByteBuffer(bytes: ParticipantRequest(gid: gid, branch: id, operation: "").jsonBytes()))
            guard let json = await self.call(url + ParticipantRoute(.threePhaseCommit, .preCommit)!.path, token: self.peerToken, posting: body) else { return nil }
            if json["error"]?["code"]?.stringValue == "already_aborted" { return .aborted }
            return json["status"]?.stringValue.flatMap(ThreePhaseState.init(rawValue:))
        }
    }

    /// Asks every peer with a URL at once; peers without one, or without an answer, are left out.
    private func ask(_ peers: [BranchID], of participants: [ThreePhasePeer],
                     _ question: @escaping @Sendable (BranchID, String) async -> ThreePhaseState?) async -> [BranchID: ThreePhaseState] {
        await withTaskGroup(of: (BranchID, ThreePhaseState?).self) { group in
            for id in peers {
                guard participants.indices.contains(id), let url = participants[id].url else { continue }
                group.addTask { (id, await question(id, url)) }
            }
            var answers: [BranchID: ThreePhaseState] = [:]
            for await (id, state) in group {
                if let state { answers[id] = state }
            }
            return answers
        }
    }

    /// GET `url`, or POST `body` to it: the JSON of a 200 answer, or of a 409's error
    /// body; nil for anything else.
    private func call(_ url: String, token: String?, posting body: HTTPClientRequest.Body?) async -> JSONValue? {
        var request = HTTPClientRequest(url: url)
        request.method = body == nil ? .GET : .POST
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = body
        }
        do {
            let response = try await http.execute(request, timeout: timeout)
            let bytes = try await response.body.collect(upTo: 1 << 20)
            guard response.status.code == 200 || response.status.code == 409 else { return nil }
            return try? JSONValue(parsing: Array(bytes.readableBytesView))
        } catch {
            return nil
        }
    }
}
