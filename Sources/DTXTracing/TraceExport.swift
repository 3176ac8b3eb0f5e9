import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import Tracing

/// Traces for an executable's `--otlp-endpoint`: bootstraps `SpanRecorder` as the
/// process's tracer (W3C `traceparent` in and out) and returns the service that sends
/// the recorded spans over OTLP/HTTP, JSON encoding, to `<endpoint>/v1/traces`.
public enum TraceExport {
    /// Once per process. The standard variables choose the sampling of new traces
    /// (`OTEL_TRACES_SAMPLER`: `always_on`, `always_off`, `traceidratio` or their
    /// `parentbased_` forms, all parent-based here; `OTEL_TRACES_SAMPLER_ARG`: the ratio)
    /// and the export interval (`OTEL_BSP_SCHEDULE_DELAY`, milliseconds, default 250:
    /// small batches, so that encoding one does not hold a thread long).
    public static func bootstrap(serviceName: String, endpoint: String, logger: Logger,
                                 environment: [String: String] = ProcessInfo.processInfo.environment) throws(TraceExportError) -> TraceExporter {
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://"), endpoint.count > "https://".count else {
            throw TraceExportError(message: "otlp-endpoint must be the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318 (spans go to its /v1/traces), not '\(endpoint)'")
        }
        let sampler = environment["OTEL_TRACES_SAMPLER"] ?? "parentbased_always_on"
        let ratio: Double
        switch sampler {
        case "always_on", "parentbased_always_on": ratio = 1
        case "always_off", "parentbased_always_off": ratio = 0
        case "traceidratio", "parentbased_traceidratio":
            let text = environment["OTEL_TRACES_SAMPLER_ARG"] ?? "1"
            guard let value = Double(text), (0...1).contains(value) else {
                throw TraceExportError(message: "OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, not '\(text)'")
            }
            ratio = value
        default:
            throw TraceExportError(message: "OTEL_TRACES_SAMPLER must be always_on, always_off, traceidratio or their parentbased_ forms, not '\(sampler)'")
        }
        var interval = Duration.milliseconds(250)
        if let text = environment["OTEL_BSP_SCHEDULE_DELAY"] {
            guard let milliseconds = Int(text), (1...600_000).contains(milliseconds) else {
                throw TraceExportError(message: "OTEL_BSP_SCHEDULE_DELAY must be milliseconds from 1 to 600000, not '\(text)'")
            }
            interval = .milliseconds(milliseconds)
        }
        let recorder = SpanRecorder(ratio: ratio)
        InstrumentationSystem.bootstrap(recorder)
        let url = (endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint) + "/v1/traces"
        return TraceExporter(recorder: recorder, url: url, serviceName: serviceName, interval: interval, logger: logger)
    }
}

public struct TraceExportError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Sends the recorded spans every interval, in requests of at most 4096, and the last
/// ones at shutdown. A collector that fails loses that batch (logged), never the process.
public final class TraceExporter: Service, Sendable {
    private let recorder: SpanRecorder
    private let url: String
    private let serviceName: String
    private let interval: Duration
    private let logger: Logger
    /// When the collector last failed, and how many failures went unlogged since: one
    /// warning per 10 s, however often it fails.
    private let failures = Mutex<(lastLogged: ContinuousClock.Instant?, unlogged: Int)>((nil, 0))

    init(recorder: SpanRecorder, url: String, serviceName: String, interval: Duration, logger: Logger) {
        self.recorder = recorder
        self.url = url
        self.serviceName = serviceName
        self.interval = interval
        self.logger = logger
    }

    public func run() async throws {
        // The loop stops at shutdown (its sleep is cancelled); the last spans, those the
        // engine ended while stopping included, go after it, from this task, which is
        // not cancelled: within 5 s, or not at all if the collector does not answer.
        await cancelWhenGracefulShutdown {
            while true {
                do { try await Task.sleep(for: self.interval) } catch { break }
                await self.send(timeout: .seconds(10))
            }
        }
        await send(timeout: .seconds(5))
    }

    /// Sends what has ended, in requests of at most 4096 spans; stops at the first that
    /// fails (the collector is down or slow: the rest is lost, as it would be next time).
    private func send(timeout: Duration) async {
        let (spans, dropped) = recorder.take()
        if dropped > 0 {
            logger.warning("spans dropped: more ended between two exports than are kept", metadata: ["dropped": "\(dropped)", "kept": "\(recorder.capacity)"])
        }
        let deadline = ContinuousClock.now + timeout
        var start = 0
        while start < spans.count {
            let batch = spans[start..<min(start + 4096, spans.count)]
            start += batch.count
            var request = HTTPClientRequest(url: url)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: Self.document(batch, serviceName: serviceName)))
            do {
                let left = deadline - ContinuousClock.now
                guard left > .zero else { throw CancellationError() }
                let response = try await HTTPClient.shared.execute(request, timeout: TimeAmount(left))
                _ = try await response.body.collect(upTo: 1 << 20)
                guard response.status.code < 300 else {
                    failed("the collector refused spans", ["status": "\(response.status.code)", "spans": "\(spans.count - start + batch.count)"])
                    return
                }
            } catch {
                failed("cannot send spans to the collector", ["error": "\(error)", "spans": "\(spans.count - start + batch.count)"])
                return
            }
        }
    }

    private func failed(_ message: Logger.Message, _ metadata: Logger.Metadata) {
        let now = ContinuousClock.now
        let unlogged: Int? = failures.withLock { state in
            if let last = state.lastLogged, now - last < .seconds(10) {
                state.unlogged += 1
                return nil
            }
            defer { state = (now, 0) }
            return state.unlogged
        }
        guard let unlogged else { return }
        logger.warning(message, metadata: metadata.merging(["url": "\(url)", "failures_not_logged": "\(unlogged)"]) { $1 })
    }

    /// An OTLP `ExportTraceServiceRequest` in the JSON encoding: ids in hex, times in
    /// nanoseconds as strings (int64), enums as numbers.
    static func document(_ spans: some Collection<FinishedSpan>, serviceName: String) -> [UInt8] {
        var json = JSONWriter(capacity: 512 * spans.count)
        json.member(#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"#, serviceName)
        json.raw(#"}}]},"scopeSpans":[{"scope":{"name":"dtx"},"spans":["#)
        for (index, span) in spans.enumerated() {
            if index > 0 { json.raw(",") }
            json.member(#"{"traceId":"#, span.identity.traceID)
            json.member(#","spanId":"#, TraceParent.hex(span.identity.spanID))
            if span.parentSpanID != 0 { json.member(#","parentSpanId":"#, TraceParent.hex(span.parentSpanID)) }
            json.member(#","name":"#, span.name)
            json.member(#","kind":"#, kindNumber(span.kind))
            json.member(#","startTimeUnixNano":"#, String(span.start))
            json.member(#","endTimeUnixNano":"#, String(span.end))
            json.raw(#","attributes":["#)
            var first = true
            span.attributes.forEach { key, value in
                if !first { json.raw(",") }
                first = false
                json.member(#"{"key":"#, key)
                json.raw(#","value":"#)
                Self.value(value, into: &json)
                json.raw("}")
            }
            json.raw("]")
            if let status = span.status {
                json.member(#","status":{"code":"#, status.code == .error ? 2 : 1)
                if let message = status.message { json.member(#","message":"#, message) }
                json.raw("}")
            }
            json.raw("}")
        }
        json.raw("]}]}]}")
        return json.bytes
    }

    private static func kindNumber(_ kind: SpanKind) -> Int {
        switch kind {
        case .internal: 1
        case .server: 2
        case .client: 3
        case .producer: 4
        case .consumer: 5
        }
    }

    private static func value(_ attribute: SpanAttribute, into json: inout JSONWriter) {
        switch attribute {
        case .string(let text): json.member(#"{"stringValue":"#, text)
        case .int32(let number): json.member(#"{"intValue":"#, String(number))
        case .int64(let number): json.member(#"{"intValue":"#, String(number))
        case .double(let number):
            // The JSON mapping's names for what JSON numbers cannot say.
            json.member(#"{"doubleValue":"#, number.isFinite ? .number(number) : .string(number.isNaN ? "NaN" : number > 0 ? "Infinity" : "-Infinity"))
        case .bool(let flag): json.member(#"{"boolValue":"#, flag)
        case .stringArray(let texts): array(texts.map { .string($0) }, "stringValue", into: &json)
        case .int32Array(let numbers): array(numbers.map { .string(String($0)) }, "intValue", into: &json)
        case .int64Array(let numbers): array(numbers.map { .string(String($0)) }, "intValue", into: &json)
        case .doubleArray(let numbers): array(numbers.map { .number($0) }, "doubleValue", into: &json)
        case .boolArray(let flags): array(flags.map { .bool($0) }, "boolValue", into: &json)
        default: json.member(#"{"stringValue":"#, "\(attribute)")
        }
        json.raw("}")
    }

    private static func array(_ values: [JSONValue], _ kind: StaticString, into json: inout JSONWriter) {
        json.raw(#"{"arrayValue":{"values":["#)
        for (index, value) in values.enumerated() {
            if index > 0 { json.raw(",") }
            json.raw(#"{""#)
            json.raw(kind)
            json.raw(#"":"#)
            json.value(value)
            json.raw("}")
        }
        json.raw("]}")
    }
}
