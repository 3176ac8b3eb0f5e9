import Tracing

/// A trace's W3C `traceparent`, as it travels on a submission (the HTTP header) and on
/// each participant message (its body's `traceparent`, so that a batched message carries
/// its own): written from a span's context and read back into one through the
/// instrument the process bootstrapped (`DTXTracing`; none: no traces, nothing written).
public enum TraceParent {
    /// `traceparent` of `context`, when the bootstrapped instrument propagates one.
    public static func of(_ context: ServiceContext) -> String? {
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: FieldInjector())
        return carrier["traceparent"]
    }

    /// The context a `traceparent` continues; nil when there is none. A malformed one
    /// starts a new trace, as W3C Trace Context says, rather than failing the request.
    public static func context(_ traceparent: String?) -> ServiceContext? {
        guard let traceparent else { return nil }
        var context = ServiceContext.topLevel
        InstrumentationSystem.instrument.extract(["traceparent": traceparent], into: &context, using: FieldExtractor())
        return context
    }

    /// Whether a well-formed `traceparent` (`00-<trace>-<span>-<flags>`) says its trace is
    /// sampled: a participant makes no span under one that is not.
    public static func isSampled(_ traceparent: String) -> Bool {
        guard traceparent.utf8.count == 55, let flags = UInt8(traceparent.suffix(2), radix: 16) else { return true }
        return flags & 1 == 1
    }

    private struct FieldInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    private struct FieldExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }
}
