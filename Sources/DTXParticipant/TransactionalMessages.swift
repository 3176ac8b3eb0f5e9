import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Hummingbird

/// The local side of a service that sends transactional messages (protocol `msg`): its
/// local transactions, each tied to a message, and the check-back.
///
/// Each message has one row in the service's own database (`dtx_messages`): `committed`,
/// written by the message's local transaction itself, or `rolled_back`, a marker written
/// by the check-back when it finds none. Whichever is written first settles the message
/// for good: a local transaction that finds the marker fails, and a check-back that
/// finds the committed row answers `committed`. While the local transaction runs, the
/// check-back's insert waits on its lock, so it never answers too early.
public protocol MessageResourceManager<Connection>: Sendable {
    /// What the local transaction's work runs on (a database connection).
    associatedtype Connection

    /// Runs `body` as a local transaction that also writes message `gid`'s committed
    /// row, and commits both together.
    /// - Throws: `MessageRolledBack` when a check-back marked the message rolled back
    ///   first (nothing is written); what `body` throws (nothing is written).
    func write<T: Sendable>(message gid: String, _ body: @escaping @Sendable (Connection) throws -> T) async throws -> T

    /// The check-back (`query_prepared`): `committed` when message `gid`'s local
    /// transaction committed; otherwise writes the rollback marker and answers
    /// `rolled_back`; `running` when the local transaction still holds its row after the
    /// resource manager's lock wait (dtxd asks again). One of `MessageCheckBack.answers`.
    func queryPrepared(gid: String) async throws -> String
}

/// A check-back marked the message rolled back before its local transaction could
/// commit (it ran past the message's timeout, and dtxd asked): nothing was written, and
/// the message will not be delivered.
public struct MessageRolledBack: Error, CustomStringConvertible, Sendable {
    public var gid: String

    public init(gid: String) {
        self.gid = gid
    }

    public var description: String {
        "message \(gid) was rolled back by dtxd's check-back before its local transaction committed; nothing was written — send it again with a new gid"
    }
}

/// What `transactionalMessage` did.
public struct SentMessage<Value: Sendable>: Sendable {
    public var gid: String
    /// What the local transaction's body returned.
    public var value: Value
    /// The message once submitted (with `waitForDelivery`, once delivered or past the
    /// wait); nil when the submit got no answer: the local commit stands, and dtxd's
    /// check-back delivers the message.
    public var view: TransactionView?
}

extension ParticipantService {
    /// Sends a transactional message: prepares it with dtxd (its `branches`, with this
    /// service to check back with), runs `body` in a local transaction on the resource
    /// manager together with the message's committed row, commits, and submits. Once
    /// this returns, the branches are delivered — each retried until it is done, even if
    /// this process dies right after its local commit (dtxd then checks back and finds
    /// the row).
    ///
    /// - Parameters:
    ///   - gid: the message's id; a new one when nil.
    ///   - timeout: seconds dtxd waits for the submit before it checks back (default 30).
    ///   - waitForDelivery: answer once every branch is done (or the coordinator's wait ends).
    /// - Throws: `ProtocolNotServed` when the resource manager is no `MessageResourceManager`
    ///   of `Connection`; `ClientError` when dtxd refuses the prepare (nothing was done);
    ///   `MessageRolledBack`, or what `body` throws, after which the message is aborted.
    public func transactionalMessage<Connection, Value: Sendable>(
        gid: String? = nil, branches: [BranchSpec], timeout: Double? = nil, waitForDelivery: Bool = false,
        _ body: @escaping @Sendable (Connection) throws -> Value
    ) async throws -> SentMessage<Value> {
        guard let local = messageResourceManager as? any MessageResourceManager<Connection> else {
            throw ProtocolNotServed(transactionProtocol: .msg)
        }
        let gid = gid ?? "msg-" + UUID().uuidString.lowercased()
        _ = try await client.submit(TransactionSubmission(gid: gid, protocol: .msg, branches: branches, timeout: timeout, service: configuration.name))
        let value: Value
        let failpoints = failpoints
        do {
            value = try await local.write(message: gid) { connection in
                let value = try body(connection)
                // Inside the local transaction, its locks held.
                try failpoints?.reachSynchronously(.beforeLocalCommit)
                return value
            }
        } catch {
            // Best effort: a lost abort is found by the check-back (the local transaction left no row).
            _ = try? await client.abort(gid: gid)
            throw error
        }
        try await failpoints?.reach(.afterLocalCommit, branch: BranchRef(gid: gid, branch: 0))
        do {
            return SentMessage(gid: gid, value: value, view: try await client.commit(gid: gid, wait: waitForDelivery))
        } catch {
            logger.warning("the submit of a message got no answer; dtxd delivers it after checking back", metadata: ["gid": .string(gid), "error": "\(error)"])
            return SentMessage(gid: gid, value: value, view: nil)
        }
    }

    /// `POST /dtx/msg/query_prepared`, when the resource manager keeps messages.
    func addMessageRoute<Context: RequestContext>(to router: some RouterMethods<Context>, unauthorized: @escaping @Sendable (Request) -> Response?) {
        guard let local = messageResourceManager else { return }
        let path = ParticipantRoute(.msg, .queryPrepared)!.path
        router.post(RouterPath(path)) { request, context -> Response in
            if let refused = unauthorized(request) { return refused }
            let gid: String
            do throws(Rejection) {
                let bytes = try await Self.collectBody(request, context: context)
                do throws(UnreadableJSON) {
                    gid = try MessageCheckBack.read(bytes).gid
                } catch {
                    throw Rejection(.badRequest, code: "bad_request", message: error.message)
                }
                do {
                    _ = try GlobalTransactionID(validating: gid)
                } catch {
                    throw Rejection(.badRequest, code: "bad_request", message: "invalid 'gid': \(error)")
                }
            } catch {
                return error.response
            }
            do {
                let answer = try await local.queryPrepared(gid: gid)
                return Answer(status: .ok, body: ParticipantReply(status: answer).jsonBytes()).response
            } catch {
                self.logger.warning("check-back failed; dtxd asks again", metadata: ["gid": .string(gid), "error": "\(error)"])
                return Answer.error(.serviceUnavailable, code: "unavailable", message: "query_prepared failed: \(error); retry later").response
            }
        }
        Self.refuseOtherMethods(on: path, allowing: [.post], router)
    }
}
