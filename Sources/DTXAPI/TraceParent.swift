import Tracing

/// What a W3C `traceparent` carries: the trace, the span, whether the trace is sampled.
/// The one reader and writer of its text (`00-<trace id>-<span id>-<flags>`).
public struct TraceParent: Sendable, Equatable {
    public var traceHigh: UInt64
    public var traceLow: UInt64
    public var spanID: UInt64
    public var sampled: Bool

    /// `00-<trace id>-<span id>-<flags>`, written in one buffer (one per message sent).
    public var text: String {
        String(unsafeUninitializedCapacity: 55) { buffer in
            var at = 0
            func put(_ byte: UInt8) { buffer[at] = byte; at += 1 }
            func put(hex value: UInt64) {
                for shift in stride(from: 60, through: 0, by: -4) { put(Self.digits[Int((value >> UInt64(shift)) & 0xF)]) }
            }
            put(0x30); put(0x30); put(0x2D)
            put(hex: traceHigh); put(hex: traceLow); put(0x2D)
            put(hex: spanID); put(0x2D)
            put(0x30); put(sampled ? 0x31 : 0x30)
            return at
        }
    }

    /// The trace id in hex, as OTLP's JSON writes it.
    public var traceID: String { Self.hex(traceHigh) + Self.hex(traceLow) }

    private static let digits = Array("0123456789abcdef".utf8)

    /// A `traceparent` read as W3C Trace Context says: version 00 (or a later one, read
    /// as 00, which may add fields after a dash), ids of lowercase hex not all zero; nil
    /// for anything else.
    public init?(parsing text: String) {
        var text = text
        let parsed: TraceParent? = text.withUTF8 { bytes in
            guard bytes.count == 55 || (bytes.count > 55 && bytes[55] == 0x2D), bytes[2] == 0x2D, bytes[35] == 0x2D, bytes[52] == 0x2D else { return nil }
            func hex(_ range: Range<Int>) -> UInt64? {
                var value: UInt64 = 0
                for index in range {
                    let byte = bytes[index]
                    switch byte {
                    case 0x30...0x39: value = value << 4 | UInt64(byte - 0x30)
                    case 0x61...0x66: value = value << 4 | UInt64(byte - 0x61 + 10)
                    default: return nil
                    }
                }
                return value
            }
            guard let version = hex(0..<2), version != 0xFF, version != 0 || bytes.count == 55,
                  let high = hex(3..<19), let low = hex(19..<35), let span = hex(36..<52), let flags = hex(53..<55),
                  high != 0 || low != 0, span != 0 else { return nil }
            return TraceParent(traceHigh: high, traceLow: low, spanID: span, sampled: flags & 1 == 1)
        }
        guard let parsed else { return nil }
        self = parsed
    }

    public init(traceHigh: UInt64, traceLow: UInt64, spanID: UInt64, sampled: Bool) {
        self.traceHigh = traceHigh
        self.traceLow = traceLow
        self.spanID = spanID
        self.sampled = sampled
    }

    /// 16 lowercase hex digits.
    public static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.utf8.count) + digits
    }
}

/// A trace's W3C `traceparent`, as it travels on a submission (the HTTP header) and on
/// each participant message (its body's `traceparent`, so that a batched message carries
/// its own): written from a span's context and read back into one through the
/// instrument the process bootstrapped (`DTXTracing`; none: no traces, nothing written).
extension TraceParent {
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
    /// A malformed one is left to the tracer (which starts a new trace).
    public static func isSampled(_ traceparent: String) -> Bool {
        TraceParent(parsing: traceparent)?.sampled ?? true
    }

    private struct FieldInjector: Injector {
        func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
    }

    private struct FieldExtractor: Extractor {
        func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
    }
}
