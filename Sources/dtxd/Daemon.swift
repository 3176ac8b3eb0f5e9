import ArgumentParser
import AsyncHTTPClient
import DTXCluster
import DTXClusterPostgres
import DTXCoordinator
import DTXLog
import DTXServer
import DTXTracing
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

    @Option(help: "Bearer token every API request must carry (all but /healthz and the web console's files at /ui/, whose page asks for it). Required on a non-loopback address. (env DTXD_TOKEN)")
    var token: String?

    @Option(name: .customLong("console-dir"), help: "Serve the web console (/ui/) from this directory's index.html, console.js and console.css, read at each request, instead of the copies built into dtxd: for working on the console. (env DTXD_CONSOLE_DIR)")
    var consoleDirectory: String?

    @Option(name: .customLong("max-body-size"), help: "Largest request body accepted, in KiB. (env DTXD_MAX_BODY_KB, default 1024)")
    var maxBodyKB: Int?

    @Option(name: .customLong("default-timeout"), help: "Seconds phase one may take when a submission names no timeout. (env DTXD_DEFAULT_TIMEOUT, default 30)")
    var defaultTimeout: Double?

    @Option(name: .customLong("request-timeout"), help: "Seconds to wait for a participant's answer to one message. (env DTXD_REQUEST_TIMEOUT, default 10)")
    var requestTimeout: Double?

    @Option(name: .customLong("connect-timeout"), help: "Seconds to wait for a connection to a participant to be made; a message whose connection could not be made was not delivered (Schemas/participant-api.yaml, Timing). (env DTXD_CONNECT_TIMEOUT, default 1)")
    var connectTimeout: Double?

    @Option(name: .customLong("stuck-after"), help: "Deliveries of one branch's message after which its transaction shows as stuck, needing an operator (the view says why). (env DTXD_STUCK_AFTER, default 5, 1-1000)")
    var stuckAfter: Int?

    @Option(name: .customLong("stuck-age"), help: "Seconds past its timeout after which an unfinished transaction shows as stuck; 0: never by age. (env DTXD_STUCK_AGE, default 600)")
    var stuckAge: Double?

    @Option(name: .customLong("checkpoint-interval"), help: "Seconds between log checkpoints. (env DTXD_CHECKPOINT_INTERVAL, default 30)")
    var checkpointInterval: Double?

    @Option(name: .customLong("group-commit-delay"), help: "Milliseconds a forced log write may wait for others to share its fdatasync, when others are committing too (0 turns it off). (env DTXD_GROUP_COMMIT_DELAY_MS, default 1)")
    var groupCommitDelayMS: Double?

    @Option(name: .customLong("last-agent"), help: "on: a 2PC transaction's last branch commits in one phase and decides, saving its PREPARE round; the transaction then waits for that branch's participant (see docs/PROTOCOLS.md). off: every branch prepares. (env DTXD_LAST_AGENT, default off)")
    var lastAgent: String?

    @Option(name: .customLong("history-max"), help: "Finished transactions kept at most, for queries and idempotent resubmission: the oldest beyond it are forgotten, as are any older than --history-retention. (env DTXD_HISTORY_MAX, default 10000)")
    var history: Int?

    @Option(name: .customLong("history-retention"), help: "Seconds a finished transaction is kept at most, however few are kept; the next checkpoint deletes its records. (env DTXD_HISTORY_RETENTION, default 604800: 7 days)")
    var historyRetention: Double?

    @Option(help: "Where transactions are kept: wal (the write-ahead log in --data-dir) or postgres (a PostgreSQL store shared by the nodes of a cluster; see docs/CLUSTER.md). (env DTXD_STORE, default wal)")
    var store: String?

    @Option(name: .customLong("store-url"), help: "With --store postgres: the libpq connection string of the store, e.g. 'host=db1,db2 dbname=dtx user=dtx target_session_attrs=read-write'. (env DTXD_STORE_URL)")
    var storeURL: String?

    @Option(name: .customLong("node-id"), help: "With --store postgres: this node's name in the cluster. (env DTXD_NODE_ID, default: generated once and kept in --data-dir)")
    var nodeID: String?

    @Option(name: .customLong("advertise-url"), help: "With --store postgres: the base URL other nodes forward requests to. (env DTXD_ADVERTISE_URL, default http://<listen address>)")
    var advertiseURL: String?

    @Option(name: .customLong("lease-ttl"), help: "With --store postgres: seconds after its last renewal that a node's shards may be taken over. (env DTXD_LEASE_TTL, default 5)")
    var leaseTTL: Double?

    @Option(help: "With --store postgres, when the cluster is created: its number of shards, fixed for ever. (env DTXD_SHARDS, default 64)")
    var shards: Int?

    @Option(name: .customLong("otlp-endpoint"), help: "Trace every transaction (its phases and each participant message, continuing a submission's W3C traceparent) and export the spans over OTLP/HTTP, JSON encoding, to this collector base URL, e.g. http://127.0.0.1:4318 (to its /v1/traces). OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG choose the sampling. Unset: no traces. (env DTXD_OTLP_ENDPOINT)")
    var otlpEndpoint: String?

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
        let connectSeconds = try number(connectTimeout, "DTXD_CONNECT_TIMEOUT", 1, { $0 >= 0.01 && $0 <= 60 }, "seconds from 0.01 to 60")
        let stuckAttempts = try number(stuckAfter, "DTXD_STUCK_AFTER", 5, { (1...1000).contains($0) }, "a whole number from 1 to 1000")
        let stuckSeconds = try number(stuckAge, "DTXD_STUCK_AGE", 600, { $0 >= 0 && $0 <= 30 * 86_400 }, "seconds from 0 (never) to 2592000 (30 days)")
        let checkpointSeconds = try number(checkpointInterval, "DTXD_CHECKPOINT_INTERVAL", 30, { $0 >= 1 && $0 <= 86400 }, "seconds from 1 to 86400")
        let groupCommitMS = try number(groupCommitDelayMS, "DTXD_GROUP_COMMIT_DELAY_MS", 1, { $0 >= 0 && $0 <= 100 }, "milliseconds from 0 to 100")
        let historyLimit = try number(history, "DTXD_HISTORY_MAX", 10_000, { (0...10_000_000).contains($0) }, "a whole number from 0 to 10000000")
        let retentionSeconds = try number(historyRetention, "DTXD_HISTORY_RETENTION", 604_800, { $0 >= 1 && $0 <= 3650 * 86_400 }, "seconds from 1 to 315360000 (10 years)")
        let bearer = token ?? env["DTXD_TOKEN"]
        var server = ServerConfiguration(host: host, port: port, token: bearer, maxBodySize: bodyKB << 10)
        if !server.isLoopback, bearer == nil {
            throw ValidationError("listening on \(host), which is not a loopback address, needs a bearer token: pass --token or set DTXD_TOKEN")
        }
        if bearer?.isEmpty == true { server.token = nil }
        server.consoleDirectory = consoleDirectory ?? env["DTXD_CONSOLE_DIR"]
        if let directory = server.consoleDirectory {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw ValidationError("console-dir: '\(directory)' is not a directory; name the one holding index.html, console.js and console.css (Sources/DTXServer/Console)")
            }
        }
        let lastAgentText = lastAgent ?? env["DTXD_LAST_AGENT"] ?? "off"
        guard let lastAgentOn = ["on": true, "off": false][lastAgentText.lowercased()] else {
            throw ValidationError("last-agent must be on or off, not '\(lastAgentText)'")
        }
        var engine = CoordinatorConfiguration()
        engine.lastAgent = lastAgentOn
        engine.defaultTimeout = Duration(apiSeconds: timeoutSeconds)
        engine.checkpointInterval = .milliseconds(Int64(checkpointSeconds * 1000))
        engine.historyLimit = historyLimit
        engine.stuckAfterAttempts = stuckAttempts
        engine.stuckAfterAge = stuckSeconds > 0 ? Duration(apiSeconds: stuckSeconds) : nil
        engine.historyRetention = Duration(apiSeconds: retentionSeconds)
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
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let endpoint = otlpEndpoint ?? env["DTXD_OTLP_ENDPOINT"] {
            // First in the group, so stopped last: the engine's last spans are flushed.
            do {
                services.append(.init(service: try TraceExport.bootstrap(serviceName: "dtxd", endpoint: endpoint, logger: logger)))
            } catch {
                throw ValidationError(error.message)
            }
            engine.tracing = true
        }
        let metrics = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: metrics)
        factory.durationHistogramBuckets[ClusterNode.commitDurationMetric] = ClusterNode.commitDurationBuckets
        MetricsSystem.bootstrap(factory)

        let storeKind = (store ?? env["DTXD_STORE"] ?? "wal").lowercased()
        guard ["wal", "postgres"].contains(storeKind) else {
            throw ValidationError("store must be wal or postgres, not '\(storeKind)'")
        }
        if storeKind == "postgres" {
            guard let url = storeURL ?? env["DTXD_STORE_URL"], !url.isEmpty else {
                throw ValidationError("--store postgres needs --store-url (or DTXD_STORE_URL): the libpq connection string of the cluster's PostgreSQL, e.g. 'host=127.0.0.1 dbname=dtx user=dtx'")
            }
            let ttl = try number(leaseTTL, "DTXD_LEASE_TTL", 5, { $0 >= 0.5 && $0 <= 600 }, "seconds from 0.5 to 600")
            let shardCount: Int? = try (shards ?? env["DTXD_SHARDS"].map { text in
                guard let value = Int(text) else { throw ValidationError("DTXD_SHARDS must be a whole number from 1 to 4096, not '\(text)'") }
                return value
            })
            if let shardCount, !(1...4096).contains(shardCount) { throw ValidationError("shards must be a whole number from 1 to 4096, not \(shardCount)") }
            let id = try nodeID ?? env["DTXD_NODE_ID"] ?? Self.keptNodeID(in: directory)
            guard !id.isEmpty, id.utf8.count <= 128, id.unicodeScalars.allSatisfy({ $0.isASCII && $0.value > 0x20 && $0.value < 0x7F }) else {
                throw ValidationError("node-id must be 1 to 128 printable ASCII characters without spaces, not '\(id)'")
            }
            let advertised = advertiseURL ?? env["DTXD_ADVERTISE_URL"]
            if advertised == nil, port == 0 || host == "0.0.0.0" || host == "::" {
                throw ValidationError("listening on \(address), other nodes cannot know where to forward requests: pass --advertise-url (or DTXD_ADVERTISE_URL), e.g. http://10.0.0.5:7070")
            }
            let transport = HTTPTransport(requestTimeout: Duration(apiSeconds: requestSeconds), connectTimeout: Duration(apiSeconds: connectSeconds), sender: id)
            var cluster = ClusterConfiguration(storeURL: url, nodeID: id, advertiseURL: advertised ?? "http://\(host.contains(":") ? "[\(host)]" : host):\(port)")
            cluster.leaseTTL = .milliseconds(Int64(ttl * 1000))
            cluster.shards = shardCount
            cluster.groupCommitDelay = .microseconds(Int64(groupCommitMS * 1000))
            let node: ClusterNode
            do {
                node = try await ClusterNode(configuration: cluster, transport: transport, engine: engine, logger: logger)
            } catch {
                FileHandle.standardError.write(Data("dtxd: cannot join the cluster through the store: \(error)\n".utf8))
                throw ExitCode(1)
            }
            let client = Forwarding.makeClient()
            let app = makeCoordinatorApplication(
                configuration: server, node: node, forwarding: Forwarding(nodeID: id, client: client, patience: .milliseconds(Int64(ttl * 3000))),
                metrics: metrics, logger: logger,
                onListening: { port in
                    FileHandle.standardOutput.write(Data("dtxd listening on http://\(host):\(port) (cluster node \(id), \(node.shardMap.count) shards)\n".utf8))
                }
            )
            let group = ServiceGroup(
                configuration: .init(
                    services: services + [.init(service: ClusterService(node: node, client: client)), .init(service: app)],
                    gracefulShutdownSignals: [.sigterm, .sigint],
                    logger: logger
                )
            )
            try await group.run()
            logger.info("stopped cleanly")
            return
        }

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
                                          transport: HTTPTransport(requestTimeout: Duration(apiSeconds: requestSeconds), connectTimeout: Duration(apiSeconds: connectSeconds)),
                                          configuration: engine, logger: logger)
        } catch let error as LogError {
            FileHandle.standardError.write(Data("dtxd: \(error)\n".utf8))
            throw ExitCode(1)
        } catch let error as CoordinatorError {
            FileHandle.standardError.write(Data("dtxd: \(error.message)\n".utf8))
            throw ExitCode(1)
        }

        let app = makeCoordinatorApplication(
            configuration: server, node: coordinator, metrics: metrics, logger: logger,
            onListening: { port in
                // Written unbuffered: scripts and tests wait for this line.
                FileHandle.standardOutput.write(Data("dtxd listening on http://\(host):\(port) (data directory \(directory))\n".utf8))
            }
        )
        // Services shut down in reverse order: the server stops accepting first, then the
        // engine stops driving transactions, then the log is synced and closed.
        let group = ServiceGroup(
            configuration: .init(
                services: services + [.init(service: LogService(log: log)), .init(service: EngineService(coordinator: coordinator)), .init(service: app)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await group.run()
        logger.info("stopped cleanly")
    }

    /// The node id kept in the data directory, made on first use.
    static func keptNodeID(in directory: String) throws -> String {
        let path = (directory as NSString).appendingPathComponent("node-id")
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !id.isEmpty { return id }
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let id = "node-" + UUID().uuidString.lowercased().prefix(8)
            try Data((id + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
            return id
        } catch {
            throw ValidationError("cannot keep a node id in \(path): \(error); pass --node-id or fix the data directory")
        }
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

/// Runs a cluster node (leases, balancing, the record writer) and leaves the cluster on
/// shutdown.
struct ClusterService: Service {
    let node: ClusterNode
    /// The forwarding client, shut down once the server stopped.
    let client: HTTPClient

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await node.run()
        }
        await node.shutdown()
        try? await client.shutdown()
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
