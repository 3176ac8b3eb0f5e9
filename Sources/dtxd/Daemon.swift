import ArgumentParser
import DTXLog
import DTXServer
import Foundation
import Logging
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
        it down cleanly: it stops accepting requests, then syncs and closes the log.
        """
    )

    @Option(name: .customLong("data-dir"), help: "Directory of the write-ahead log; created if missing. (env DTXD_DATA_DIR, default ./dtx-data)")
    var dataDir: String?

    @Option(help: "Address to listen on as host:port; port 0 picks a free port. (env DTXD_LISTEN, default 127.0.0.1:7070)")
    var listen: String?

    @Option(name: .customLong("segment-size"), help: "Size of each log segment in MiB. (env DTXD_SEGMENT_SIZE_MB, default 64)")
    var segmentSizeMB: Int?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (env DTXD_LOG_LEVEL, default info)")
    var logLevel: String?

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
        let segmentMB = try segmentSizeMB ?? env["DTXD_SEGMENT_SIZE_MB"].map { value in
            guard let mb = Int(value) else { throw ValidationError("DTXD_SEGMENT_SIZE_MB must be a whole number of MiB, not '\(value)'") }
            return mb
        } ?? 64
        guard (1...1024).contains(segmentMB) else {
            throw ValidationError("segment size must be between 1 and 1024 MiB, not \(segmentMB)")
        }

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "dtxd")

        let log: WriteAheadLog
        do {
            let opened = try WriteAheadLog.open(directory: directory, configuration: .init(segmentSize: segmentMB << 20))
            log = opened.log
            if let torn = opened.recovery.truncatedTail {
                logger.notice("truncated a torn log tail", metadata: ["file": "\(torn.file)", "offset": "\(torn.offset)"])
            }
            logger.info("log open", metadata: ["directory": "\(directory)", "records": "\(opened.recovery.records.count)", "nextLSN": "\(log.nextLSN)"])
        } catch let error as LogError {
            FileHandle.standardError.write(Data("dtxd: \(error)\n".utf8))
            throw ExitCode(1)
        }

        let server = makeCoordinatorApplication(
            configuration: .init(host: host, port: port), log: log, logger: logger,
            onListening: { port in
                // Written unbuffered: scripts and tests wait for this line.
                FileHandle.standardOutput.write(Data("dtxd listening on http://\(host):\(port) (data directory \(directory))\n".utf8))
            }
        )
        // Services shut down in reverse order: the server stops accepting first, then
        // the log is synced and closed.
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: LogService(log: log)), .init(service: server)],
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
