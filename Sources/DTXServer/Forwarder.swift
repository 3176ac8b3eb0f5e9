import AsyncHTTPClient
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

    func forward(_ request: Request, body: ByteBuffer, to url: String, owner: String) async throws -> Response {
        if let from = request.headers.first(where: { $0.name.canonicalName == Self.header })?.value {
            throw CoordinatorError(.unavailable, "not_owner", "node \(node) received from \(from) a request for a shard that node \(owner) owns now; the cluster is moving shards: retry")
        }
        var outgoing = HTTPClientRequest(url: url + request.uri.description)
        outgoing.method = HTTPMethod(rawValue: request.method.rawValue)
        for field in request.headers where !["host", "content-length", "connection"].contains(field.name.canonicalName) {
            outgoing.headers.add(name: field.name.rawName, value: field.value)
        }
        outgoing.headers.add(name: Self.header, value: node)
        if body.readableBytes > 0 { outgoing.body = .bytes(body) }
        let answer: HTTPClientResponse
        let bytes: ByteBuffer
        do {
            answer = try await client.execute(outgoing, timeout: timeout)
            bytes = try await answer.body.collect(upTo: 64 << 20)
        } catch {
            throw CoordinatorError(.unavailable, "owner_unreachable", "node \(owner), which owns this transaction's shard, cannot be reached at \(url) (\(error)); retry: if it is gone, another node takes the shard over once its lease expires")
        }
        var response = Response(status: HTTPResponse.Status(code: Int(answer.status.code)), body: ResponseBody(byteBuffer: bytes))
        if let type = answer.headers.first(name: "content-type") { response.headers[.contentType] = type }
        if let allow = answer.headers.first(name: "allow") { response.headers[.allow] = allow }
        return response
    }
}
