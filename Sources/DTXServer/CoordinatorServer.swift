/// DTXServer: the daemon's HTTP API (routes, auth, limits, metrics) over the engine.
import AsyncHTTPClient
import DTXAPI
import DTXCoordinator
import DTXCore
import Foundation
import Hummingbird
import Logging
import Prometheus

public struct ServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// When set, every request but `/healthz` and the console's files (`/ui/`) must carry `Authorization: Bearer <token>`.
    public var token: String?
    /// Largest request body accepted, in bytes.
    public var maxBodySize: Int
    /// Where the web console's files are read from; nil: the copies compiled into dtxd.
    public var consoleDirectory: String?

    public init(host: String, port: Int, token: String? = nil, maxBodySize: Int = 1 << 20) {
        self.host = host
        self.port = port
        self.token = token
        self.maxBodySize = maxBodySize
    }

    /// Loopback addresses need no token; any other address does.
    public var isLoopback: Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}

/// Builds the daemon's HTTP application. `onListening` receives the bound port (useful
/// when `port` is 0). `metrics` is the registry the daemon bootstrapped swift-metrics with.
/// How a cluster node reaches the others: its id (sent along with forwarded requests),
/// an HTTP client the caller shuts down after the application stops, and how long an
/// unreachable owner is retried (longer than a lease, so that a dead owner's shard is
/// taken over meanwhile).
public struct Forwarding: Sendable {
    public var nodeID: String
    public var client: HTTPClient
    public var patience: Duration

    public init(nodeID: String, client: HTTPClient, patience: Duration) {
        self.nodeID = nodeID
        self.client = client
        self.patience = patience
    }

    /// A client whose connection attempts give up after a second (the shared client keeps
    /// retrying a refused connection for 90 s): the shard is then looked up again.
    public static func makeClient() -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.timeout.connect = .seconds(1)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }
}

/// `node`: the coordinator itself, or a cluster node (with `forwarding`).
public func makeCoordinatorApplication(
    configuration: ServerConfiguration,
    node: any CoordinatorNode,
    forwarding: Forwarding? = nil,
    metrics: PrometheusCollectorRegistry,
    logger: Logger,
    onListening: @escaping @Sendable (Int) async -> Void
) -> some ApplicationProtocol {
    let router = Router()
    let forwarder = forwarding.map { Forwarder(node: $0.nodeID, client: $0.client, timeout: .seconds(3600 + 60), patience: $0.patience) }
    let api = CoordinatorRoutes(node: node, maxBodySize: configuration.maxBodySize, metrics: LogMetrics(registry: metrics, node: node), forwarder: forwarder,
                                authenticated: configuration.token != nil)
    let routes = api.routes(BasicRequestContext.self)
    let console = ConsoleFiles(directory: configuration.consoleDirectory).routes(BasicRequestContext.self)
    // Middleware wraps the routes added after it, and the router's not-found answer.
    router.add(middleware: JSONErrorMiddleware(logger: logger, methods: AllowedMethods(routes + console)))
    // The console's files hold no data and need no token: the page asks for it.
    for route in console {
        router.on(RouterPath(route.path), method: route.method, use: route.handler)
    }
    if let token = configuration.token {
        router.add(middleware: BearerTokenMiddleware(token: token))
    }
    for route in routes {
        router.on(RouterPath(route.path), method: route.method, use: route.handler)
    }
    return Application(
        router: router,
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "dtxd"),
        onServerRunning: { channel in await onListening(channel.localAddress?.port ?? configuration.port) },
        logger: logger
    )
}

/// The methods each path of the API serves, for the 405 answer (with `Allow`) to a
/// request that names a path of the API with a method the document does not list.
struct AllowedMethods: Sendable {
    private let templates: [(segments: [Substring], methods: [HTTPRequest.Method])]

    init<Context>(_ routes: [Route<Context>]) {
        var templates: [(segments: [Substring], methods: [HTTPRequest.Method])] = []
        for route in routes {
            let segments = route.path.split(separator: "/")
            if let index = templates.firstIndex(where: { $0.segments == segments }) {
                templates[index].methods.append(route.method)
            } else {
                templates.append((segments, [route.method]))
            }
        }
        self.templates = templates
    }

    /// The methods served on `path`; empty when no route has this path.
    func methods(for path: String) -> [HTTPRequest.Method] {
        // As the router reads a path: empty segments do not count.
        let segments = path.split(separator: "/")
        return templates.first { template in
            template.segments.count == segments.count
                && zip(template.segments, segments).allSatisfy { pattern, segment in pattern.hasPrefix(":") ? !segment.isEmpty : pattern == segment }
        }?.methods ?? []
    }
}

/// Turns every error into the JSON error body (`Error` in Schemas/coordinator-api.yaml).
struct JSONErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger
    let methods: AllowedMethods

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as CoordinatorError {
            return jsonError(status: error.kind.httpStatus, code: error.code, message: error.message)
        } catch let error as HTTPResponseError {
            let status = error.status
            switch status {
            case .notFound:
                let allowed = methods.methods(for: request.uri.path)
                guard allowed.isEmpty else {
                    let list = allowed.map(\.rawValue).joined(separator: ", ")
                    var response = jsonError(status: 405, code: "method_not_allowed", message: "\(request.method) is not served on \(request.uri.path); use \(list) (see Schemas/coordinator-api.yaml)")
                    response.headers[.allow] = list
                    return response
                }
                return jsonError(status: 404, code: "not_found", message: "no route \(request.method) \(request.uri.path); see Schemas/coordinator-api.yaml")
            case .contentTooLarge:
                return jsonError(status: 413, code: "body_too_large", message: "the request body is larger than the limit; send less (see dtxd --max-body-size)")
            default:
                let message = (error as? HTTPError)?.body ?? status.reasonPhrase
                return jsonError(status: Int(status.code), code: status.code < 500 ? "bad_request" : "internal", message: message)
            }
        } catch {
            logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
            return jsonError(status: 500, code: "internal", message: "internal error: \(error)")
        }
    }
}

struct BearerTokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path == "/healthz" { return try await next(request, context) }
        guard let header = request.headers[.authorization], header == "Bearer \(token)" else {
            throw CoordinatorError(.unauthorized, "unauthorized", "this dtxd requires a bearer token: send Authorization: Bearer <token> (dtx --token or DTX_TOKEN)")
        }
        return try await next(request, context)
    }
}

func jsonError(status: Int, code: String, message: String) -> Response {
    jsonResponse(APIErrorBody(code: code, message: message), status: status)
}

func jsonResponse<Body: Encodable>(_ body: Body, status: Int = 200) -> Response {
    let data = (try? JSONEncoder.dtx().encode(body)) ?? Data()
    return jsonResponse(bytes: Array(data), status: status)
}

/// A transaction view is on every submission's path: written without Codable.
func jsonResponse(_ view: TransactionView, status: Int = 200) -> Response {
    jsonResponse(bytes: view.jsonBytes(), status: status)
}

func jsonResponse(bytes: [UInt8], status: Int) -> Response {
    Response(
        status: HTTPResponse.Status(code: status),
        headers: [.contentType: "application/json"],
        body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes))
    )
}

/// Publishes the log's own counters and the engine's gauges at scrape time.
struct LogMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let node: any CoordinatorNode

    private func gauge(_ name: String, _ help: String) -> Gauge {
        registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help))
    }

    func render() -> String {
        for metric in node.storeMetrics { gauge(metric.name, metric.help).set(metric.value) }
        let gauges = node.gauges()
        gauge("dtx_unfinished_transactions", "Transactions not yet finished").set(Double(gauges.unfinished))
        gauge("dtx_in_doubt_transactions", "Unfinished transactions whose branches may hold prepared work").set(Double(gauges.inDoubt))
        gauge("dtx_stuck_transactions", "Unfinished transactions whose deliveries keep failing").set(Double(gauges.stuck))
        gauge("dtx_participants", "Registered participants").set(Double(gauges.participants))
        return registry.emitToString()
    }
}

extension CoordinatorError.Kind {
    /// The one place an engine refusal becomes an HTTP status.
    var httpStatus: Int {
        switch self {
        case .invalid: 400
        case .unauthorized: 401
        case .notFound: 404
        case .conflict: 409
        case .unserviceable: 422
        case .broken: 500
        case .unavailable: 503
        }
    }
}
