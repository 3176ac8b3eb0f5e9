import ArgumentParser
import DTXCoordinator
import DTXLog
import DTXServer
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle

/// `dtxd`: parses configuration and wires the log and the HTTP server together.
@main
struct Daemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dtxd",
        abstract: "The dtx transaction coordinator daemon.",
        discussion: """
        Every option can also be set through the environment variable named in its \
        help; a flag wins over the variable. With no configuration the daemon keeps \
        its log in ./dtx-data and listens on 127.0.0.1:7070. SIGTERM or SIGINT shut \
        it down cleanly: it stops accepting requests, stops driving transactions (every \
        unfinished one resumes from the log at the next start), then syncs and closes \
        the log. On a non-loopback address a bearer token is required (--token).

        DTXD_THREADS sets the number of event-loop threads, which also run the engine's \
        tasks (default: one per core).

        Tests only: DTXD_FAILPOINTS=name[,name] kills the daemon with SIGKILL at a named \
        point (\(DaemonFailpoints.Point.allCases.map(\.rawValue).joined(separator: ", "))).
        """
    )

    @Option(name: .customLong("data-dir"), help: "Directory of the write-ahead log; created if missing. (env DTXD_DATA_DIR, default ./dtx-data)")
    var dataDir: String?

    @Option(help: "Address to listen on as host:port; port 0 picks a free port. (env DTXD_LISTEN, default 127.0.0.1:7070)")
    var listen: String?

    @Option(name: .customLong("segment-size"), help: "Size of each log segment in MiB. (env DTXD_SEGMENT_SIZE_MB, default 64)")
    var segmentSizeMB: Int?

    @Option(help: "Bearer token every API request must carry (all but /healthz). Required on a non-loopback address. (env DTXD_TOKEN)")
    var token: String?

    @Option(name: .customLong("max-body-size"), help: "Largest request body accepted, in KiB. (env DTXD_MAX_BODY_KB, default 1024)")
    var maxBodyKB: Int?

    @Option(name: .customLong("default-timeout"), help: "Seconds phase one may take when a submission names no timeout. (env DTXD_DEFAULT_TIMEOUT, default 30)")
    var defaultTimeout: Double?

    @Option(name: .customLong("request-timeout"), help: "Seconds to wait for a participant's answer to one message. (env DTXD_REQUEST_TIMEOUT, default 10)")
    var requestTimeout: Double?

    @Option(name: .customLong("checkpoint-interval"), help: "Seconds between log checkpoints. (env DTXD_CHECKPOINT_INTERVAL, default 30)")
    var checkpointInterval: Double?

    @Option(name: .customLong("group-commit-delay"), help: "Milliseconds a forced log write may wait for others to share its fdatasync, when others are committing too (0 turns it off). (env DTXD_GROUP_COMMIT_DELAY_MS, default 1)")
    var groupCommitDelayMS: Double?

    @Option(name: .customLong("last-agent"), help: "on: a 2PC transaction's last branch commits in one phase and decides, saving its PREPARE round; the transaction then waits for that branch's participant (see docs/PROTOCOLS.md). off: every branch prepares. (env DTXD_LAST_AGENT, default off)")
    var lastAgent: String?

    @Option(name: .customLong("history"), help: "Finished transactions kept for queries and idempotent resubmission. (env DTXD_HISTORY, default 10000)")
    var history: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (env DTXD_LOG_LEVEL, default info)")
    var logLevel: String?

    /// Swift concurrency runs on NIO's event loops: a transaction's tasks and its HTTP
    /// calls then share threads instead of hopping between two pools.
    static func main() async {
        if let text = ProcessInfo.processInfo.environment["DTXD_THREADS"], let threads = Int(text), threads > 0 {
            NIOSingletons.groupLoopCountSuggestion = threads
        }
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await main(nil)
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let directory = dataDir ?? env["DTXD_DATA_DIR"] ?? "./dtx-data"
        let address = listen ?? env["DTXD_LISTEN"] ?? "127.0.0.1:7070"
        let levelName = logLevel ?? env["DTXD_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ValidationError("unknown log level '\(levelName)'; use trace, debug, info, notice, warning, error or critical")
        }
        guard let (host, port) = Self.parseAddress(address) else {
            throw ValidationError("cannot read listen address '\(address)'; write it as host:port, e.g. 127.0.0.1:7070")
        }
        func number<T: LosslessStringConvertible>(_ flag: T?, _ variable: String, _ fallback: T, _ valid: (T) -> Bool, _ rule: String) throws -> T {
            let value: T
            if let flag {
                value = flag
            } else if let text = env[variable] {
                guard let parsed = T(text) else { throw ValidationError("\(variable) must be \(rule), not '\(text)'") }
                value = parsed
            } else {
                value = fallback
            }
            guard valid(value) else { throw ValidationError("\(variable.lowercased()) must be \(rule), not \(value)") }
            return value
        }
        let segmentMB = try number(segmentSizeMB, "DTXD_SEGMENT_SIZE_MB", 64, { (1...1024).contains($0) }, "a whole number of MiB from 1 to 1024")
        let bodyKB = try number(maxBodyKB, "DTXD_MAX_BODY_KB", 1024, { (1...65536).contains($0) }, "a whole number of KiB from 1 to 65536")
        let timeoutSeconds = try number(defaultTimeout, "DTXD_DEFAULT_TIMEOUT", 30, { $0 > 0 && $0 <= 3600 }, "seconds above 0, at most 3600")
        let requestSeconds = try number(requestTimeout, "DTXD_REQUEST_TIMEOUT", 10, { $0 > 0 && $0 <= 600 }, "seconds above 0, at most 600")
        let checkpointSeconds = try number(checkpointInterval, "DTXD_CHECKPOINT_INTERVAL", 30, { $0 >= 1 && $0 <= 86400 }, "seconds from 1 to 86400")
        let groupCommitMS = try number(groupCommitDelayMS, "DTXD_GROUP_COMMIT_DELAY_MS", 1, { $0 >= 0 && $0 <= 100 }, "milliseconds from 0 to 100")
        let historyLimit = try number(history, "DTXD_HISTORY", 10_000, { (0...10_000_000).contains($0) }, "a whole number from 0 to 10000000")
        let bearer = token ?? env["DTXD_TOKEN"]
        var server = ServerConfiguration(host: host, port: port, token: bearer, maxBodySize: bodyKB << 10)
        if !server.isLoopback, bearer == nil {
            throw ValidationError("listening on \(host), which is not a loopback address, needs a bearer token: pass --token or set DTXD_TOKEN")
        }
        if bearer?.isEmpty == true { server.token = nil }
        let lastAgentText = lastAgent ?? env["DTXD_LAST_AGENT"] ?? "off"
        guard let lastAgentOn = ["on": true, "off": false][lastAgentText.lowercased()] else {
            throw ValidationError("last-agent must be on or off, not '\(lastAgentText)'")
        }
        var engine = CoordinatorConfiguration()
        engine.lastAgent = lastAgentOn
        engine.defaultTimeout = Duration(apiSeconds: timeoutSeconds)
        engine.checkpointInterval = .milliseconds(Int64(checkpointSeconds * 1000))
        engine.historyLimit = historyLimit
        do {
            engine.failpoints = try DaemonFailpoints(parsing: env["DTXD_FAILPOINTS"] ?? "")
        } catch {
            throw ValidationError("DTXD_FAILPOINTS: \(error)")
        }

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "dtxd")
        let metrics = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: metrics))

        let log: WriteAheadLog
        let coordinator: Coordinator
        do {
            let opened = try WriteAheadLog.open(directory: directory, configuration: .init(segmentSize: segmentMB << 20, groupCommitDelay: .microseconds(Int64(groupCommitMS * 1000))))
            log = opened.log
            if let torn = opened.recovery.truncatedTail {
                logger.notice("truncated a torn log tail", metadata: ["file": "\(torn.file)", "offset": "\(torn.offset)"])
            }
            logger.info("log open", metadata: ["directory": "\(directory)", "records": "\(opened.recovery.records.count)", "nextLSN": "\(log.nextLSN)"])
            coordinator = try Coordinator(store: WALStore(log: log, records: opened.recovery.records),
                                          transport: HTTPTransport(requestTimeout: Duration(apiSeconds: requestSeconds)),
                                          configuration: engine, logger: logger)
        } catch let error as LogError {
            FileHandle.standardError.write(Data("dtxd: \(error)\n".utf8))
            throw ExitCode(1)
        } catch let error as CoordinatorError {
            FileHandle.standardError.write(Data("dtxd: \(error.message)\n".utf8))
            throw ExitCode(1)
        }

        let app = makeCoordinatorApplication(
            configuration: server, coordinator: coordinator, metrics: metrics, logger: logger,
            onListening: { port in
                // Written unbuffered: scripts and tests wait for this line.
                FileHandle.standardOutput.write(Data("dtxd listening on http://\(host):\(port) (data directory \(directory))\n".utf8))
            }
        )
        // Services shut down in reverse order: the server stops accepting first, then the
        // engine stops driving transactions, then the log is synced and closed.
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: LogService(log: log)), .init(service: EngineService(coordinator: coordinator)), .init(service: app)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
        logger.info("stopped cleanly")
    }

    static func parseAddress(_ text: String) -> (String, Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.isEmpty ? nil : (host, port)
    }
}

/// Keeps the log open for the daemon's lifetime and closes it on shutdown.
struct LogService: Service {
    let log: WriteAheadLog

    func run() async throws {
        try? await gracefulShutdown()
        try await log.close()
    }
}

/// Runs the engine's maintenance (checkpoints) and stops it on shutdown.
struct EngineService: Service {
    let coordinator: Coordinator

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await coordinator.runMaintenance()
        }
        await coordinator.shutdown()
    }
}
