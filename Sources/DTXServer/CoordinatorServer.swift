/// DTXServer: the daemon's HTTP API (routes, and later auth, limits and metrics).
import DTXLog
import Hummingbird
import Logging

public struct ServerConfiguration: Sendable {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
}

/// Builds the daemon's HTTP application. `onListening` receives the bound port
/// (useful when `port` is 0).
public func makeCoordinatorApplication(
    configuration: ServerConfiguration,
    log: WriteAheadLog,
    logger: Logger,
    onListening: @escaping @Sendable (Int) async -> Void
) -> some ApplicationProtocol {
    let router = Router()
    router.get("/healthz") { _, _ -> Health in
        let stats = log.statistics
        return Health(status: "ok", log: .init(directory: log.directory, nextLSN: log.nextLSN, fsyncs: stats.fsyncs, appends: stats.appends))
    }
    return Application(
        router: router,
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "dtxd"),
        onServerRunning: { channel in await onListening(channel.localAddress?.port ?? configuration.port) },
        logger: logger
    )
}

struct Health: ResponseEncodable {
    struct LogState: Encodable {
        var directory: String
        var nextLSN: UInt64
        var fsyncs: UInt64
        var appends: UInt64
    }

    var status: String
    var log: LogState
}
