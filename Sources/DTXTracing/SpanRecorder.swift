import DTXAPI
import Synchronization
import Tracing

private enum TraceParentKey: ServiceContextKey {
    typealias Value = TraceParent
}

/// A span as the exporter sends it.
struct FinishedSpan: Sendable {
    var name: String
    var kind: SpanKind
    var identity: TraceParent
    /// 0: a root span.
    var parentSpanID: UInt64
    var start: UInt64
    var end: UInt64
    var attributes: SpanAttributes
    var status: SpanStatus?
}

/// The tracer dtx bootstraps for `--otlp-endpoint`: spans of W3C identity (parent-based
/// sampling, a ratio for new traces), kept in memory when they end until `TraceExporter`
/// sends them. Lean on purpose: starting a span is an allocation and two random numbers,
/// ending it an append under a lock (swift-otel's batch processor took a task hop per
/// span: tracing every transaction cost 43% of the throughput).
public final class SpanRecorder: Tracer, Sendable {
    public typealias Span = RecordedSpan

    /// The share of new traces recorded (a child follows its parent's decision).
    let ratio: Double
    /// Spans kept at most between two exports; beyond, new ones are dropped and counted.
    let capacity: Int
    private let finished = Mutex<(spans: [FinishedSpan], dropped: Int)>(([], 0))
    private let random: Mutex<UInt64>

    init(ratio: Double, capacity: Int = 1 << 16) {
        self.ratio = ratio
        self.capacity = capacity
        var seed = SystemRandomNumberGenerator()
        random = Mutex(seed.next())
    }

    /// SplitMix64: ids need to be unique, not secret.
    private func next() -> UInt64 {
        random.withLock { state in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    public func startSpan<Instant: TracerInstant>(_ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind,
                                                  at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt) -> RecordedSpan {
        var context = context()
        let parent = context[TraceParentKey.self]
        var spanID = next()
        if spanID == 0 { spanID = 1 }
        let identity: TraceParent
        if let parent {
            identity = TraceParent(traceHigh: parent.traceHigh, traceLow: parent.traceLow, spanID: spanID, sampled: parent.sampled)
        } else {
            let high = next(), low = next() | 1
            identity = TraceParent(traceHigh: high, traceLow: low, spanID: spanID, sampled: ratio >= 1 || Double(low >> 11) / Double(1 << 53) < ratio)
        }
        context[TraceParentKey.self] = identity
        return RecordedSpan(recorder: identity.sampled ? self : nil, name: operationName, kind: kind, context: context, identity: identity,
                            parentSpanID: parent?.spanID ?? 0, start: instant().nanosecondsSinceEpoch)
    }

    public func startAnySpan<Instant: TracerInstant>(_ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind,
                                                     at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt) -> any Tracing.Span {
        startSpan(operationName, context: context(), ofKind: kind, at: instant(), function: function, file: fileID, line: line)
    }

    public func activeSpan(identifiedBy context: ServiceContext) -> RecordedSpan? { nil }

    /// The exporter sends what has ended every interval, and at shutdown.
    public func forceFlush() {}

    public func inject<Carrier, Inject>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject)
    where Inject: Injector, Carrier == Inject.Carrier {
        guard let identity = context[TraceParentKey.self] else { return }
        injector.inject(identity.text, forKey: "traceparent", into: &carrier)
    }

    public func extract<Carrier, Extract>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract)
    where Extract: Extractor, Carrier == Extract.Carrier {
        guard let text = extractor.extract(key: "traceparent", from: carrier), let identity = TraceParent(parsing: text) else { return }
        context[TraceParentKey.self] = identity
    }

    func record(_ span: FinishedSpan) {
        finished.withLock { kept in
            if kept.spans.count < capacity { kept.spans.append(span) } else { kept.dropped += 1 }
        }
    }

    /// What ended since the last call, and how many were dropped meanwhile.
    func take() -> (spans: [FinishedSpan], dropped: Int) {
        finished.withLock { kept in
            defer { kept = ([], 0) }
            return kept
        }
    }
}

/// A span of `SpanRecorder`: one not sampled records nothing, but carries its identity
/// so that its trace's decision travels on.
public final class RecordedSpan: Tracing.Span, Sendable {
    private struct State {
        var name: String
        var attributes = SpanAttributes()
        var status: SpanStatus?
        var ended = false
    }

    public let context: ServiceContext
    private let recorder: SpanRecorder?
    private let kind: SpanKind
    private let identity: TraceParent
    private let parentSpanID: UInt64
    private let start: UInt64
    private let state: Mutex<State>

    init(recorder: SpanRecorder?, name: String, kind: SpanKind, context: ServiceContext, identity: TraceParent, parentSpanID: UInt64, start: UInt64) {
        self.recorder = recorder
        self.kind = kind
        self.context = context
        self.identity = identity
        self.parentSpanID = parentSpanID
        self.start = start
        state = Mutex(State(name: name))
    }

    public var isRecording: Bool { recorder != nil }

    public var operationName: String {
        get { state.withLock { $0.name } }
        set { state.withLock { $0.name = newValue } }
    }

    public var attributes: SpanAttributes {
        get { state.withLock { $0.attributes } }
        set {
            guard recorder != nil else { return }
            state.withLock { $0.attributes = newValue }
        }
    }

    public func setStatus(_ status: SpanStatus) {
        guard recorder != nil else { return }
        state.withLock { $0.status = status }
    }

    /// Events and links are not exported: dtx's spans have none.
    public func addEvent(_ event: SpanEvent) {}

    public func addLink(_ link: SpanLink) {}

    public func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {
        setStatus(SpanStatus(code: .error, message: "\(error)"))
    }

    public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        guard let recorder else { return }
        let end = instant().nanosecondsSinceEpoch
        let ended: FinishedSpan? = state.withLock { s in
            guard !s.ended else { return nil }
            s.ended = true
            return FinishedSpan(name: s.name, kind: kind, identity: identity, parentSpanID: parentSpanID, start: start, end: end, attributes: s.attributes, status: s.status)
        }
        if let ended { recorder.record(ended) }
    }
}
