import DTXAPI
import DTXCoordinator
import DTXCore
import Foundation
import Hummingbird

/// One route of the API: a method, a path template (`:name` marks a parameter) and its handler.
struct Route<Context: RequestContext>: Sendable {
    var method: HTTPRequest.Method
    var path: String
    var handler: @Sendable (Request, Context) async throws -> Response
}

/// The routes of Schemas/coordinator-api.yaml. A request about a gid whose shard another
/// node owns (a cluster) is forwarded to that node and its answer relayed.
struct CoordinatorRoutes: Sendable {
    let node: any CoordinatorNode
    let maxBodySize: Int
    let metrics: LogMetrics
    /// nil for a dtxd on its own log, whose node never places a gid elsewhere.
    let forwarder: Forwarder?
    /// Requests carry dtxd's bearer token: an audit record says `token`, else `local`.
    let authenticated: Bool

    /// `POST /v1/admin/recover`, with an operator's reason in an optional body.
    private func recover(_ request: Request) async throws -> Response {
        var request = request
        let retry = try decodeOptional(RetryRequest.self, .retry, from: try await request.collectBody(upTo: maxBodySize))
        return jsonResponse(try node.recoverNow(reason: retry?.reason, who: try who(retry?.operator)))
    }

    /// Who an audit record names: the operator's name the request gave, and how it was
    /// authenticated.
    private func who(_ name: String?) throws -> String {
        let how = authenticated ? "token" : "local"
        guard let name else { return how }
        guard (1...64).contains(name.unicodeScalars.count), !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw CoordinatorError(.invalid, "invalid_operator", "operator must be a name of 1 to 64 characters without control characters")
        }
        return "\(name) (\(how))"
    }

    func routes<Context: RequestContext>(_: Context.Type) -> [Route<Context>] {
        [
            Route(method: .get, path: "/healthz") { _, _ in
                let gauges = node.gauges()
                return jsonResponse(HealthAnswer(status: "ok", unfinishedTransactions: gauges.unfinished, stuckTransactions: gauges.stuck,
                                                 inDoubtTransactions: gauges.inDoubt, participants: gauges.participants))
            },
            Route(method: .get, path: "/metrics") { _, _ in
                Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                         body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.render())))
            },

            Route(method: .post, path: "/v1/participants") { request, _ in
                let registration = try await decode(ParticipantRegistration.self, .registration, from: request)
                let (info, created) = try await node.participants.register(registration)
                return jsonResponse(info, status: created ? 201 : 200)
            },
            Route(method: .get, path: "/v1/participants") { _, _ in
                jsonResponse(ParticipantList(participants: node.participants.all()))
            },
            Route(method: .get, path: "/v1/participants/:name") { _, context in
                jsonResponse(try node.participants.participant(try participantName(context)))
            },
            Route(method: .delete, path: "/v1/participants/:name") { _, context in
                try await node.participants.deregister(try participantName(context))
                return Response(status: .noContent)
            },
            Route(method: .post, path: "/v1/participants/:name/heartbeat") { _, context in
                jsonResponse(try node.participants.heartbeat(try participantName(context)))
            },

            Route(method: .post, path: "/v1/transactions") { request, _ in
                var request = request
                let buffer = try await request.collectBody(upTo: maxBodySize)
                var submission: TransactionSubmission
                do {
                    submission = try TransactionSubmission(json: try document(.submission, from: buffer))
                } catch let error as UnreadableJSON {
                    throw CoordinatorError(.invalid, "invalid_json", error.message)
                }
                let coordinator: Coordinator
                if let text = submission.gid {
                    let gid: GlobalTransactionID
                    do throws(GlobalTransactionID.Problem) {
                        gid = try GlobalTransactionID(validating: text)
                    } catch {
                        throw CoordinatorError(.invalid, "invalid_gid", error.description)
                    }
                    switch try await placement(of: gid, request, body: buffer) {
                    case .here(let here): coordinator = here
                    case .forwarded(let response): return response
                    }
                } else {
                    let (here, gid) = try await node.placeNewTransaction()
                    coordinator = here
                    submission.gid = gid.rawValue
                }
                // The transaction's spans continue the caller's W3C trace, if it sent one.
                let trace = TraceParent.context(request.headers.first { $0.name.canonicalName == "traceparent" }?.value)
                let (view, created) = try await coordinator.submit(submission, trace: trace)
                return jsonResponse(view, status: created ? 201 : 200)
            },
            Route(method: .get, path: "/v1/transactions") { request, _ in
                let query = try listQuery(request.uri.queryParameters)
                let here = try node.list(query)
                // A cluster node lists the cluster: every other live node's same page,
                // merged with its own (a forwarded request gets this node's alone).
                guard let forwarder, Forwarder.forwarder(of: request) == nil else { return jsonResponse(here) }
                let cluster: ClusterStatus
                do {
                    cluster = try await node.clusterStatus()
                } catch let error as CoordinatorError where error.code == "not_a_cluster" {
                    return jsonResponse(here)
                }
                let live = Set(cluster.nodes.filter(\.live).map(\.id))
                // A shard no live node holds (its node stopped; another takes it over once
                // the lease expires) is listed by nobody: say so rather than leave it out.
                if let orphan = cluster.shards.first(where: { $0.owner.map { !live.contains($0) } ?? true }) {
                    throw CoordinatorError(.unavailable, "shard_unowned", "shard \(orphan.shard) has no live owner (its node stopped; another node takes it over once the lease expires), so its transactions cannot be listed now: retry in a moment")
                }
                let others = cluster.nodes.filter { $0.live && $0.id != cluster.node }.map { (id: $0.id, url: $0.url) }
                let lists = try await forwarder.gatherLists(request, from: others)
                return jsonResponse(TransactionList.merging([here] + lists, limit: query.limit))
            },
            // (Each route switches on the placement itself: the Swift 6.3 optimiser crashed
            // on routes handing async closures to a helper.)
            Route(method: .get, path: "/v1/transactions/:gid") { request, context in
                let gid = try gid(context)
                switch try await placement(of: gid, request, body: ByteBuffer()) {
                case .forwarded(let answer): return answer
                case .here(let coordinator): return jsonResponse(try coordinator.transaction(gid))
                }
            },
            Route(method: .get, path: "/v1/transactions/:gid/outcome") { request, context in
                let gid = try gid(context)
                switch try await placement(of: gid, request, body: ByteBuffer()) {
                case .forwarded(let answer): return answer
                case .here(let coordinator): return jsonResponse(coordinator.outcome(gid: gid, branch: try branchQuery(request)))
                }
            },
            Route(method: .get, path: "/v1/transactions/:gid/state") { request, context in
                let gid = try gid(context)
                switch try await placement(of: gid, request, body: ByteBuffer()) {
                case .forwarded(let answer): return answer
                case .here(let coordinator):
                    return jsonResponse(ThreePhaseStateAnswer(gid: gid.rawValue, state: coordinator.threePhaseState(gid: gid, branch: try branchQuery(request))))
                }
            },
            Route(method: .post, path: "/v1/transactions/:gid/branches") { request, context in
                let gid = try gid(context)
                let (served, body) = try await posted(about: gid, request)
                switch served {
                case .forwarded(let answer): return answer
                case .here(let coordinator):
                    let enlist = try decode(EnlistRequest.self, .enlistment, from: body)
                    return jsonResponse(try await coordinator.enlist(gid: gid, enlist), status: 201)
                }
            },
            resolution(.commit),
            resolution(.abort),
            Route(method: .post, path: "/v1/transactions/:gid/branches/:branch/resolve") { request, context in
                let gid = try gid(context)
                let text = try pathParameter("branch", context, code: "invalid_branch")
                guard let branch = QueryNumber.branch(text) else {
                    throw CoordinatorError(.invalid, "invalid_branch", "the branch in the path must be a branch number (0 or more), not '\(text)'")
                }
                let (served, body) = try await posted(about: gid, request)
                switch served {
                case .forwarded(let answer): return answer
                case .here(let coordinator):
                    let resolution = try decode(BranchResolution.self, .branchResolution, from: body)
                    guard let outcome = Decision(outcome: resolution.outcome) else {
                        throw CoordinatorError(.invalid, "invalid_outcome", "outcome must be committed or aborted (how the branch ended), not '\(resolution.outcome)'")
                    }
                    return jsonResponse(try await coordinator.resolveBranch(gid: gid, branch: branch, as: outcome, reason: resolution.reason, who: try who(resolution.operator)))
                }
            },
            Route(method: .post, path: "/v1/transactions/:gid/retry") { request, context in
                let gid = try gid(context)
                let (served, body) = try await posted(about: gid, request)
                switch served {
                case .forwarded(let answer): return answer
                case .here(let coordinator):
                    let retry = try decode(RetryRequest.self, .retry, from: body)
                    return jsonResponse(try coordinator.retry(gid: gid, reason: retry.reason, who: try who(retry.operator)))
                }
            },

            Route(method: .post, path: "/v1/admin/recover") { request, _ in try await recover(request) },
            Route(method: .get, path: "/v1/cluster") { _, _ in
                jsonResponse(try await node.clusterStatus())
            },
        ]
    }

    /// `POST /v1/transactions/{gid}/commit` and `/abort`: the application's own
    /// decision, or (with a reason) an operator's.
    private func resolution<Context: RequestContext>(_ decision: Decision) -> Route<Context> {
        Route(method: .post, path: "/v1/transactions/:gid/\(decision == .commit ? "commit" : "abort")") { request, context in
            let gid = try gid(context)
            let (served, body) = try await posted(about: gid, request)
            switch served {
            case .forwarded(let answer): return answer
            case .here(let coordinator):
                var resolution = ResolveRequest()
                if body.readableBytes > 0 {
                    do {
                        resolution = try ResolveRequest(json: try document(.resolution, from: body))
                    } catch let error as UnreadableJSON {
                        throw CoordinatorError(.invalid, "invalid_json", error.message)
                    }
                }
                let who = try who(resolution.operator)
                return jsonResponse(decision == .commit ? try await coordinator.commit(gid: gid, reason: resolution.reason, wait: resolution.wait ?? false, who: who)
                                                        : try await coordinator.abort(gid: gid, reason: resolution.reason, wait: resolution.wait ?? false, who: who))
            }
        }
    }

    /// A POST about `gid`: its body, and the gid's coordinator here or the answer of the
    /// node that owns it. (No helper taking the answer as an async closure: the Swift 6.3
    /// optimiser crashes splitting such a route's coroutine, so each route switches.)
    private func posted(about gid: GlobalTransactionID, _ request: Request) async throws -> (Served, ByteBuffer) {
        var request = request
        let body = try await request.collectBody(upTo: maxBodySize)
        return (try await placement(of: gid, request, body: body), body)
    }

    private enum Served {
        case here(Coordinator)
        case forwarded(Response)
    }

    /// The coordinator here for `gid`, or the owner's answer. An owner that cannot be
    /// reached may be dead: its shard is looked up again until its lease expires and this
    /// node takes the shard over (or another node does, which is then asked).
    private func placement(of gid: GlobalTransactionID, _ request: Request, body: ByteBuffer) async throws -> Served {
        let deadline = ContinuousClock.now + (forwarder?.patience ?? .zero)
        // Every request about a gid may be sent again but an enlistment, which would
        // add a second branch if the first had taken effect.
        let repeatable = !(request.method == .post && request.uri.path.hasSuffix("/branches"))
        while true {
            switch try await node.placement(of: gid) {
            case .here(let coordinator):
                return .here(coordinator)
            case let .elsewhere(owner, url):
                guard let forwarder else {
                    throw CoordinatorError(.unavailable, "not_owner", "node \(owner) owns this transaction's shard and this dtxd cannot forward requests; send it to \(url)")
                }
                let node = node
                let outcome = try await forwarder.forward(request, body: body, to: url, owner: owner) {
                    guard case .elsewhere(owner, _)? = try? await node.placement(of: gid) else { return false }
                    return true
                }
                switch outcome {
                case .answered(let response):
                    return .forwarded(response)
                case .notSent(let why) where ContinuousClock.now >= deadline, .noAnswer(let why) where ContinuousClock.now >= deadline:
                    throw CoordinatorError(.unavailable, "owner_unreachable", "node \(owner), which owns this transaction's shard, did not answer at \(url) (\(why)); retry: if it is gone, another node takes the shard over once its lease expires")
                case .noAnswer(let why) where !repeatable:
                    throw CoordinatorError(.unavailable, "owner_unreachable", "node \(owner) did not answer the enlistment (\(why)), so whether it took effect is unknown: look at the transaction's branches (GET /v1/transactions/\(gid)) before enlisting again")
                case .notSent, .noAnswer:
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        }
    }

    /// The gid in the path, percent-decoded once and validated: a request for an invalid
    /// gid is refused (400), never looked up and never answered by presumed abort.
    private func gid(_ context: some RequestContext) throws(CoordinatorError) -> GlobalTransactionID {
        let text = try pathParameter("gid", context, code: "invalid_gid")
        do {
            return try GlobalTransactionID(validating: text)
        } catch {
            throw CoordinatorError(.invalid, "invalid_gid", "the gid in the path: \(error.description)")
        }
    }

    /// The participant name in the path, percent-decoded once and validated.
    private func participantName(_ context: some RequestContext) throws(CoordinatorError) -> String {
        let text = try pathParameter("name", context, code: "invalid_name")
        guard ParticipantName.isValid(text) else {
            throw CoordinatorError(.invalid, "invalid_name", "the participant name in the path must be \(ParticipantName.rule), not '\(text)'")
        }
        return text
    }

    private func pathParameter(_ name: String, _ context: some RequestContext, code: String) throws(CoordinatorError) -> String {
        let raw = context.parameters.get(name) ?? ""
        guard let text = PathSegment.decode(raw) else {
            throw CoordinatorError(.invalid, code, "the \(name) in the path is not percent-encoded correctly: '\(raw)' (encode each byte outside A-Z a-z 0-9 - . _ ~ as %XX)")
        }
        return text
    }

    /// The optional `branch` query parameter of the questions participants ask.
    private func branchQuery(_ request: Request) throws -> BranchID? {
        guard let text = request.uri.queryParameters["branch"] else { return nil }
        guard let value = QueryNumber.branch(text) else {
            throw CoordinatorError(.invalid, "invalid_query", "branch must be a branch number (0 or more), not '\(text)'")
        }
        return value
    }

    private func listQuery(_ parameters: Parameters) throws -> Coordinator.ListQuery {
        var query = Coordinator.ListQuery()
        let statuses = TransactionStatus.allCases.map(\.rawValue) + ["stuck", "in_doubt"]
        if let status = parameters["status"].map(String.init) {
            guard statuses.contains(status) else {
                throw CoordinatorError(.invalid, "invalid_query", "status must be one of \(statuses.joined(separator: ", ")), not '\(status)'")
            }
            query.status = status
        }
        if let text = parameters["protocol"].map(String.init) {
            guard let proto = TransactionProtocol(rawValue: text) else {
                throw CoordinatorError(.invalid, "invalid_query", "protocol must be 2pc, 3pc, tcc or saga, not '\(text)'")
            }
            query.protocol = proto
        }
        if let name = parameters["participant"].map(String.init) {
            guard ParticipantName.isValid(name) else {
                throw CoordinatorError(.invalid, "invalid_query", "participant must be a participant name, \(ParticipantName.rule), not '\(name)'")
            }
            query.participant = name
        }
        if let text = parameters["olderThan"].map(String.init) {
            // A JSON number, as the document declares it (no hex, no "inf").
            guard case .number(let seconds)? = try? JSONValue(parsingStrictly: Array(text.utf8)), seconds.isFinite, seconds >= 0 else {
                throw CoordinatorError(.invalid, "invalid_query", "olderThan must be a number of seconds (0 or more), not '\(text)'")
            }
            query.olderThan = seconds
        }
        if let text = parameters["limit"].map(String.init) {
            guard let limit = QueryNumber.whole(text, digits: 4), (1...1000).contains(limit) else {
                throw CoordinatorError(.invalid, "invalid_query", "limit must be a whole number from 1 to 1000, not '\(text)'")
            }
            query.limit = limit
        }
        if let text = parameters["cursor"].map(String.init) {
            guard let cursor = QueryNumber.whole(text, digits: 18).map(UInt64.init) else {
                throw CoordinatorError(.invalid, "invalid_query", "cursor must be a value returned as nextCursor, not '\(text)'")
            }
            query.cursor = cursor
        }
        return query
    }

    private func decode<Body: Decodable>(_ type: Body.Type, _ shape: RequestShape, from request: Request) async throws -> Body {
        var request = request
        return try decode(type, shape, from: try await request.collectBody(upTo: maxBodySize))
    }

    /// nil for an empty body; a clear 400 for anything that is not the expected JSON.
    private func decodeOptional<Body: Decodable>(_ type: Body.Type, _ shape: RequestShape, from buffer: ByteBuffer) throws -> Body? {
        guard buffer.readableBytes > 0 else { return nil }
        return try decode(type, shape, from: buffer)
    }

    /// The body decoded with Codable; a clear 400 for an empty body, JSON that is not
    /// strictly valid (duplicate keys, invalid UTF-8), a property `shape` does not
    /// define, or anything else that is not the expected JSON.
    private func decode<Body: Decodable>(_ type: Body.Type, _ shape: RequestShape, from buffer: ByteBuffer) throws -> Body {
        _ = try document(shape, from: buffer)
        do {
            return try JSONDecoder.dtx().decode(type, from: Data(buffer.readableBytesView))
        } catch let error as DecodingError {
            throw CoordinatorError(.invalid, "invalid_json", describe(error))
        } catch {
            throw CoordinatorError(.invalid, "invalid_json", "the body cannot be read: \(error)")
        }
    }

    /// The body as JSON, refused (400) when empty, not strictly valid JSON (duplicate keys,
    /// invalid UTF-8) or holding a property `shape` does not define.
    private func document(_ shape: RequestShape, from buffer: ByteBuffer) throws -> JSONValue {
        guard buffer.readableBytes > 0 else { throw CoordinatorError(.invalid, "invalid_json", "the request needs a JSON body") }
        let document: JSONValue
        do {
            document = try JSONValue(parsingStrictly: Array(buffer.readableBytesView))
        } catch {
            throw CoordinatorError(.invalid, "invalid_json", "the body is not valid JSON: \(error)")
        }
        if let (path, allowed) = shape.unknownProperty(in: document) {
            throw CoordinatorError(.invalid, "invalid_json", "\(path) is not a property of this request; the properties allowed there are \(allowed.joined(separator: ", "))")
        }
        return document
    }

    private func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            let text = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return text.isEmpty ? "the body" : String(text.drop { $0 == "." })
        }
        switch error {
        case let .keyNotFound(key, context):
            let parent = path(context)
            return "\(parent == "the body" ? "" : parent + ".")\(key.stringValue) is required"
        case let .typeMismatch(type, context):
            return "\(path(context)) has the wrong type (expected \(type))"
        case let .valueNotFound(type, context):
            return "\(path(context)) must not be null (expected \(type))"
        case let .dataCorrupted(context):
            if context.codingPath.isEmpty { return "the body is not valid JSON" }
            return "\(path(context)): \(context.debugDescription)"
        @unknown default:
            return "the body cannot be read: \(error)"
        }
    }
}

/// `GET /v1/transactions/{gid}/state`: the coordinator's 3PC state, which a participant
/// running the termination protocol acts on.
struct ThreePhaseStateAnswer: Encodable {
    var gid: String
    var state: ThreePhaseState
}
