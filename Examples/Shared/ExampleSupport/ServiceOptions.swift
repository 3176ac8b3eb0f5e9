import ArgumentParser
import DTXParticipant
import Foundation
import Hummingbird
import Logging

/// The options every example service takes, and the start-up they share: logging, the
/// database, the participant service and the HTTP server.
public struct ServiceOptions: ParsableArguments {
    @Option(help: "Database: sqlite:FILE or postgres:CONNECTION-STRING.")
    public var db: String

    @Option(help: "Address to listen on as host:port; port 0 picks a free port.")
    public var listen = "127.0.0.1:0"

    @Option(help: "URL of dtxd. (env DTX_URL, default http://127.0.0.1:7070)")
    public var coordinator: String?

    @Option(name: .customLong("coordinator-token"), help: "Bearer token for calls to dtxd. (env DTX_TOKEN)")
    public var coordinatorToken: String?

    @Option(help: "Seconds between heartbeats to dtxd.")
    public var heartbeat: Double = 5

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    public var logLevel = "info"

    public init() {}

    public func validate() throws {
        guard Database.isValid(db) else { throw ValidationError("--db is sqlite:FILE or postgres:CONNECTION-STRING") }
        guard heartbeat > 0 else { throw ValidationError("--heartbeat must be above 0") }
    }

    /// Opens the database, runs `schema` on it and lets `setUp` register the service's
    /// operations and its own routes, then serves until stopped, registered with dtxd as
    /// `name`. Prints `PROGRAM NAME listening on URL` once listening (tests wait for it).
    public func serve(
        program: String, name: String, schema: [String],
        setUp: (Database, ParticipantService, Router<BasicRequestContext>) -> Void
    ) async throws {
        let env = ProcessInfo.processInfo.environment
        guard let (host, port) = ParticipantHost.parseAddress(listen) else {
            throw ValidationError("cannot read listen address '\(listen)'; write it as host:port, e.g. 127.0.0.1:8091")
        }
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("unknown log level '\(logLevel)'") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: program)

        let database: Database
        do {
            database = try await Database.open(db, prefix: name, logger: logger)
            for statement in schema { try await database.query(statement) }
        } catch {
            FileHandle.standardError.write(Data("\(program): \(error)\n".utf8))
            throw ExitCode(1)
        }
        // Crash tests arm failpoints (DTX_PARTICIPANT_FAILPOINTS, or PUT /test/failpoints).
        let failpoints = Failpoints(logger: logger)
        do {
            try failpoints.arm(specification: env["DTX_PARTICIPANT_FAILPOINTS"] ?? "")
        } catch {
            throw ValidationError("DTX_PARTICIPANT_FAILPOINTS: \(error)")
        }
        let service = try ParticipantService(
            configuration: .init(
                name: name, advertisedURL: ParticipantHost.url(host: host, port: port),
                coordinatorURL: coordinator ?? env["DTX_URL"] ?? "http://127.0.0.1:7070",
                coordinatorToken: coordinatorToken ?? env["DTX_TOKEN"],
                heartbeatInterval: .milliseconds(Int64(heartbeat * 1000))
            ),
            resourceManager: FailpointResourceManager(base: database.resourceManager, failpoints: failpoints),
            failpoints: failpoints,
            logger: logger
        )
        let router = Router()
        service.addRoutes(to: router.group().add(middleware: RequestFailpointMiddleware(failpoints: failpoints)), failpoints: failpoints)
        failpoints.addRoutes(to: router)
        setUp(database, service, router)
        try await ParticipantHost.serve(service, router: router, host: host, port: port, serverName: program, logger: logger) { url in
            FileHandle.standardOutput.write(Data("\(program) \(name) listening on \(url)\n".utf8))
        }
    }
}
