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
        /// `end` ran: a message sent after (a driver stopping on another thread) gets no span.
        var ended = false
    }

    private let spans: Mutex<Spans>
    private let gid: String
    private let proto: TransactionProtocol
    /// The sampler kept the transaction's span: else no phase or message span is made,
    /// and messages carry the transaction's context (not sampled, so nor are theirs).
    private let recording: Bool

    /// `parent`: the submission's context; a transaction resumed from the log starts a
    /// trace of its own (its submission's is not kept).
    init(gid: GlobalTransactionID, proto: TransactionProtocol, parent: ServiceContext, recovered: Bool) {
        self.gid = gid.rawValue
        self.proto = proto
        // Attributes are set at once: each assignment to a span's copies them.
        let span = startSpan("dtx.transaction", context: parent, ofKind: .internal)
        var attributes = SpanAttributes()
        attributes["dtx.gid"] = gid.rawValue
        attributes["dtx.protocol"] = proto.rawValue
        if recovered { attributes["dtx.recovered"] = true }
        span.attributes = attributes
        recording = span.isRecording
        spans = Mutex(Spans(transaction: span))
    }

    /// The machine's status after an event: a new status starts a new phase span.
    func status(_ status: TransactionStatus) {
        guard recording else { return }
        spans.withLock { s in
            guard !s.ended, s.phase?.status != status, status != .committed, status != .aborted else { return }
            s.phase?.span.end()
            let span = startSpan("dtx.phase", context: s.transaction.context, ofKind: .internal)
            var attributes = SpanAttributes()
            attributes["dtx.gid"] = gid
            attributes["dtx.phase"] = status.rawValue
            span.attributes = attributes
            s.phase = (status, span)
        }
    }

    /// A message goes to a branch; its `traceparent`, to send along.
    func sent(_ message: ParticipantMessage, branch: BranchID, participant: String) -> String? {
        spans.withLock { s in
            guard recording, !s.ended else { return TraceParent.of(s.transaction.context) }
            let span = startSpan("dtx.message", context: (s.phase?.span ?? s.transaction).context, ofKind: .client)
            var attributes = SpanAttributes()
            attributes["dtx.gid"] = gid
            attributes["dtx.protocol"] = proto.rawValue
            attributes["dtx.branch"] = branch
            attributes["dtx.participant"] = participant
            attributes["dtx.message"] = message.rawValue
            span.attributes = attributes
            s.messages.append((branch, message, span))
            return TraceParent.of(span.context)
        }
    }

    /// The answer to a message sent: ends its span.
    func answered(_ message: ParticipantMessage, branch: BranchID, _ response: ParticipantResponse) {
        guard recording else { return }
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
            guard !s.ended else { return }
            s.ended = true
            for (_, _, span) in s.messages { span.end() }
            s.messages = []
            s.phase?.span.end()
            s.phase = nil
            s.transaction.attributes["dtx.outcome"] = outcome
            s.transaction.end()
        }
    }
}
