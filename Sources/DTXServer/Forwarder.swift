import AsyncHTTPClient
import DTXAPI
import DTXCoordinator
import Foundation
import Hummingbird
import NIOCore
import NIOHTTP1

/// Relays a request about a gid to the cluster node that owns its shard, and that
/// node's answer back. A forwarded request says so (`dtx-forwarded-by`), and a node
/// that receives one about a shard it does not own either takes the shard over (when
/// its owner's lease expired) or refuses it: never a second hop.
struct Forwarder: Sendable {
    static let header = "dtx-forwarded-by"

    /// This node's id, sent along.
    let node: String
    let client: HTTPClient
    /// How long the owner may take: as long as a waiting request may wait.
    let timeout: TimeAmount
    /// How long an unreachable owner is retried (looking its shard up again each time):
    /// longer than a lease, so that a dead owner's shard is taken over meanwhile.
    let patience: Duration

    enum Outcome: Sendable {
        case answered(Response)
        /// No connection could be made: the request was not sent.
        case notSent(String)
        /// Sent, but no answer came (the connection broke, or `stillOwner` said the
        /// owner lost the shard meanwhile): whether it took effect there is unknown.
        case noAnswer(String)
    }

    /// Sends the request to the owner and relays its answer. While waiting, asks
    /// `stillOwner` every half second; once it says the owner no longer holds the shard
    /// (its lease expired and the shard was taken over), stops waiting.
    func forward(_ request: Request, body: ByteBuffer, to url: String, owner: String,
                 stillOwner: @escaping @Sendable () async -> Bool) async throws -> Outcome {
        if let from = Self.forwarder(of: request) {
            throw CoordinatorError(.unavailable, "not_owner", "node \(node) received from \(from) a request for a shard that node \(owner) owns now; the cluster is moving shards: retry")
        }
        var outgoing = relayed(request, to: url)
        if body.readableBytes > 0 { outgoing.body = .bytes(body) }
        let (client, timeout, sent) = (client, timeout, outgoing)
        return await withTaskGroup(of: Outcome?.self) { group in
            group.addTask {
                do {
                    let answer = try await client.execute(sent, timeout: timeout)
                    let bytes = try await answer.body.collect(upTo: 64 << 20)
                    var response = Response(status: HTTPResponse.Status(code: Int(answer.status.code)), body: ResponseBody(byteBuffer: bytes))
                    if let type = answer.headers.first(name: "content-type") { response.headers[.contentType] = type }
                    if let allow = answer.headers.first(name: "allow") { response.headers[.allow] = allow }
                    return .answered(response)
                } catch {
                    return Self.connectionNeverMade(error) ? .notSent("\(error)") : .noAnswer("\(error)")
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(500))
                    if Task.isCancelled { return nil }
                    if await !stillOwner() { return .noAnswer("node \(owner) no longer owns the shard") }
                }
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? .noAnswer("cancelled")
        }
    }

    /// The same page of the transaction list from each of `nodes` (id, URL), asked
    /// at once; a node that does not answer with one fails the whole list.
    func gatherLists(_ request: Request, from nodes: [(id: String, url: String)]) async throws -> [TransactionList] {
        let client = client
        return try await withThrowingTaskGroup(of: TransactionList.self) { group in
            for (id, url) in nodes {
                let outgoing = relayed(request, to: url)
                group.addTask {
                    do {
                        let answer = try await client.execute(outgoing, timeout: .seconds(10))
                        let bytes = try await answer.body.collect(upTo: 64 << 20)
                        guard answer.status == .ok else {
                            throw CoordinatorError(.unavailable, "owner_unreachable", "node \(id) answered HTTP \(answer.status.code) when asked for its transactions: \(String(buffer: bytes).prefix(300)); retry")
                        }
                        return try JSONDecoder.dtx().decode(TransactionList.self, from: bytes)
                    } catch let error as CoordinatorError {
                        throw error
                    } catch {
                        throw CoordinatorError(.unavailable, "owner_unreachable", "node \(id) at \(url) did not list its transactions (\(error)); retry: a node that is gone leaves the cluster once its lease expires")
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
    }

    /// The node that forwarded `request`, if another node did.
    static func forwarder(of request: Request) -> String? {
        request.headers.first(where: { $0.name.canonicalName == header })?.value
    }

    /// `request` (its method, path, query and headers) addressed to the node at `url`,
    /// marked as forwarded by this node.
    private func relayed(_ request: Request, to url: String) -> HTTPClientRequest {
        var outgoing = HTTPClientRequest(url: url + request.uri.description)
        outgoing.method = HTTPMethod(rawValue: request.method.rawValue)
        for field in request.headers where !["host", "content-length", "connection"].contains(field.name.canonicalName) {
            outgoing.headers.add(name: field.name.rawName, value: field.value)
        }
        outgoing.headers.add(name: Self.header, value: node)
        return outgoing
    }

    /// Errors that mean no connection was made, so the request was never sent.
    private static func connectionNeverMade(_ error: any Error) -> Bool {
        if let error = error as? HTTPClientError, error == .connectTimeout { return true }
        let text = "\(error)".lowercased()
        return text.contains("connection refused") || text.contains("connect timeout") || text.contains("connecttimeout")
    }
}
