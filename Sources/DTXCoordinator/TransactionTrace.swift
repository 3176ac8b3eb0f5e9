import DTXAPI
import DTXCore
import Synchronization
import Tracing

/// The spans of one transaction, when dtxd traces (`--otlp-endpoint`): the transaction's
/// (a child of the submission's `traceparent`, else a new trace), one per phase (the
/// machine's status while it lasts) under it, and one per message sent to a branch under
/// its phase, ended by the answer. The message span's `traceparent` travels with the
/// message, so the participant's spans join the same trace.
final class TransactionTrace: Sendable {
    private struct Spans {
        var transaction: any Span
        var phase: (status: TransactionStatus, span: any Span)?
        var messages: [(branch: BranchID, message: ParticipantMessage, span: any Span)] = []
    }

    private let spans: Mutex<Spans>
    private let gid: String
    private let proto: TransactionProtocol

    /// `parent`: the submission's context; a transaction resumed from the log starts a
    /// trace of its own (its submission's is not kept).
    init(gid: GlobalTransactionID, proto: TransactionProtocol, parent: ServiceContext, recovered: Bool) {
        self.gid = gid.rawValue
        self.proto = proto
        let span = startSpan("dtx.transaction", context: parent, ofKind: .internal)
        span.attributes["dtx.gid"] = gid.rawValue
        span.attributes["dtx.protocol"] = proto.rawValue
        if recovered { span.attributes["dtx.recovered"] = true }
        spans = Mutex(Spans(transaction: span))
    }

    /// The machine's status after an event: a new status starts a new phase span.
    func status(_ status: TransactionStatus) {
        spans.withLock { s in
            guard s.phase?.status != status, status != .committed, status != .aborted else { return }
            s.phase?.span.end()
            let span = startSpan("dtx.phase", context: s.transaction.context, ofKind: .internal)
            span.attributes["dtx.gid"] = gid
            span.attributes["dtx.phase"] = status.rawValue
            s.phase = (status, span)
        }
    }

    /// A message goes to a branch; its `traceparent`, to send along.
    func sent(_ message: ParticipantMessage, branch: BranchID, participant: String) -> String? {
        spans.withLock { s in
            let span = startSpan("dtx.message", context: (s.phase?.span ?? s.transaction).context, ofKind: .client)
            span.attributes["dtx.gid"] = gid
            span.attributes["dtx.protocol"] = proto.rawValue
            span.attributes["dtx.branch"] = branch
            span.attributes["dtx.participant"] = participant
            span.attributes["dtx.message"] = message.rawValue
            s.messages.append((branch, message, span))
            return TraceParent.of(span.context)
        }
    }

    /// The answer to a message sent: ends its span.
    func answered(_ message: ParticipantMessage, branch: BranchID, _ response: ParticipantResponse) {
        spans.withLock { s in
            guard let index = s.messages.firstIndex(where: { $0.branch == branch && $0.message == message }) else { return }
            let span = s.messages.remove(at: index).span
            switch response {
            case .done(let status, _):
                span.attributes["dtx.answer"] = status
            case .refused(let code, let text):
                span.attributes["dtx.answer"] = "refused"
                span.attributes["dtx.error"] = "\(code): \(text)"
            case .failed(let error):
                span.attributes["dtx.answer"] = "failed"
                span.setStatus(SpanStatus(code: .error, message: error))
            case .undelivered(let error):
                span.attributes["dtx.answer"] = "not delivered"
                span.setStatus(SpanStatus(code: .error, message: error))
            }
            span.end()
        }
    }

    /// The transaction finished (`committed`, `aborted`) or stopped here (`halted`).
    func end(_ outcome: String) {
        spans.withLock { s in
            for (_, _, span) in s.messages { span.end() }
            s.messages = []
            s.phase?.span.end()
            s.phase = nil
            s.transaction.attributes["dtx.outcome"] = outcome
            s.transaction.end()
        }
    }
}
