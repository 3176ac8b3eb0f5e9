import OTel
import ServiceLifecycle
import Tracing

/// Exports the process's spans over OTLP/HTTP to a collector (`--otlp-endpoint`), and
/// makes W3C `traceparent` the propagation format. Logs and metrics are not exported:
/// the executables keep their own (stderr and `/metrics`).
public enum TraceExport {
    /// The encodings OTLP/HTTP has, by their OTLP names.
    public static let encodings = ["http/protobuf", "http/json"]

    /// Bootstraps the tracer, once per process; returns the exporter's service, which must
    /// run (in the process's `ServiceGroup`) for spans to leave, and flushes at shutdown.
    /// `endpoint` is the collector's base URL: spans go to `<endpoint>/v1/traces`.
    /// `encoding`: `http/protobuf` (nil) or `http/json`.
    public static func bootstrap(serviceName: String, endpoint: String, encoding: String?) throws(TraceExportError) -> some Service {
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://"), endpoint.count > "https://".count else {
            throw TraceExportError(message: "otlp-endpoint must be the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318 (spans go to its /v1/traces), not '\(endpoint)'")
        }
        let encoding = encoding ?? "http/protobuf"
        guard encodings.contains(encoding) else {
            throw TraceExportError(message: "otlp-protocol must be \(encodings.joined(separator: " or ")), not '\(encoding)'")
        }
        var configuration = OTel.Configuration.default
        configuration.serviceName = serviceName
        configuration.logs.enabled = false
        configuration.metrics.enabled = false
        configuration.traces.exporter = .otlp
        configuration.traces.otlpExporter.endpoint = (endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint) + "/v1/traces"
        configuration.traces.otlpExporter.protocol = encoding == "http/json" ? .httpJSON : .httpProtobuf
        do {
            return try OTel.bootstrap(configuration: configuration)
        } catch {
            throw TraceExportError(message: "cannot start exporting traces: \(error)")
        }
    }
}

public struct TraceExportError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
