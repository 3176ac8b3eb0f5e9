import DTXCore
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle

/// Runs a participant service's HTTP server and its registration with the coordinator:
/// the server binds (port 0 picks a free one), `onListening` gets the real base URL
/// (services print it: scripts and tests wait for that line), then the service registers
/// that URL and keeps it registered. SIGTERM/SIGINT stop the server gracefully, and the
/// registration loop with it; `services` run alongside the server. `backlog` is the listen queue's length: connections the
/// kernel holds before the server accepts them (beyond it, new ones are dropped).
public enum ParticipantHost {
    public static func serve(
        _ service: ParticipantService,
        router: Router<BasicRequestContext>,
        host: String,
        port: Int,
        backlog: Int = 256,
        serverName: String,
        logger: Logger,
        alongside services: [any Service] = [],
        onListening: @escaping @Sendable (String) -> Void
    ) async throws {
        let (boundPorts, boundPort) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: serverName, backlog: backlog),
            onServerRunning: { channel in
                let bound = channel.localAddress?.port ?? port
                onListening(url(host: host, port: bound))
                boundPort.yield(bound)
                boundPort.finish()
            },
            logger: logger
        )
        do {
            try await run(service, app, services: services, boundPorts: boundPorts, host: host, logger: logger)
        } catch {
            // A server that could not start (its port taken) never ran the service, whose
            // coordinator client must still be shut down.
            try? await service.shutdown()
            throw error
        }
    }

    private static func run(_ service: ParticipantService, _ app: some Service, services: [any Service], boundPorts: AsyncStream<Int>,
                            host: String, logger: Logger) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            // `services` (a trace exporter) start first and stop last, after the server.
            group.addTask {
                try await ServiceGroup(configuration: .init(services: services.map { .init(service: $0) } + [.init(service: app)],
                                                            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)).run()
            }
            group.addTask {
                for await bound in boundPorts {
                    try await service.run(advertisedURL: url(host: host, port: bound))
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    public static func url(host: String, port: Int) -> String {
        host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)"
    }

    /// `host:port` (IPv6 in brackets) → (host, port), or nil.
    public static func parseAddress(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }

    /// A positive number of seconds from an option or its environment variable; `fallback` otherwise.
    public static func seconds(_ option: Double?, variable: String, flag: String, fallback: Duration = .seconds(5)) throws(HostConfigurationError) -> Duration {
        var value = option
        if value == nil, let text = ProcessInfo.processInfo.environment[variable] {
            guard let parsed = Double(text) else { throw HostConfigurationError(message: "\(variable) must be a number of seconds, not '\(text)'") }
            value = parsed
        }
        guard let seconds = value else { return fallback }
        guard seconds > 0, seconds <= 86_400 else { throw HostConfigurationError(message: "\(flag) must be a number of seconds above 0 and at most 86400, not \(seconds)") }
        return Duration(apiSeconds: seconds)
    }
}

public struct HostConfigurationError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
