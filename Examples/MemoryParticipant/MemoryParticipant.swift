import ArgumentParser
import DTXParticipant
import DTXTracing
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// `memory-participant`: a participant service on the participant kit with a no-op,
/// optionally journalled resource manager (2PC, 3PC, TCC and sagas), and failpoints that tests arm to make it
/// vote no, fail, stall or crash at chosen points.
@main
struct MemoryParticipant: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory-participant",
        abstract: "A no-op dtx participant service for tests, examples and benchmarks.",
        discussion: """
        Every option can also be set through the environment variable named in its \
        help; a flag wins over the variable. Once listening it prints one line, \
        'memory-participant NAME listening on http://HOST:PORT', then registers with \
        the coordinator (retrying until it answers) and keeps the registration alive.

        It serves 2PC, 3PC (POST /dtx/3pc/can_commit, /pre_commit, /do_commit, \
        /rollback and GET /dtx/state, with timers and the termination protocol), TCC \
        (POST /dtx/tcc/try, /confirm, /cancel) and sagas (POST /dtx/saga/action, \
        /compensate); TCC and saga phases are no-ops behind the branch barrier \
        (idempotent, null compensation, no hanging). A branch's payload \
        steers its vote: {"vote": "no"} refuses a prepare, a try or an action; \
        {"readOnly": true} votes read-only.

        Failpoints (env DTX_PARTICIPANT_FAILPOINTS, e.g. "prepare=no,commit=unavailable", \
        or at run time: PUT /test/failpoints {"name": ..., "action": ...}, DELETE \
        /test/failpoints to clear). Names: prepare, commit, rollback, commit_one_phase, \
        try, confirm, cancel, action, compensate, can_commit, pre_commit, do_commit \
        (when that request arrives), before-can-commit and after-can-commit (around \
        3PC's prepare, w), before-pre-commit and after-pre-commit (around recording p), \
        after-prepare (once the prepare is durable, before answering), before-commit \
        (before any commit, including one-phase and recovery), before-PHASE and \
        after-PHASE for each TCC or saga phase (before its work; once its work is \
        committed, before answering). Actions: no (409 voted_no), unavailable (503), \
        stall:SECONDS (sleep, then go on), crash (SIGKILL itself). GET /test/state \
        lists the branches and the barrier records.

        Tests only: DTX_PARTICIPANT_RECORD=1 records every protocol message received (its \
        time, path, gid and dtx-node header), listed by GET /test/messages.

        DTX_PARTICIPANT_THREADS sets the number of event-loop threads (default: one per \
        core); on a small machine shared with dtxd, 1 avoids needless context switches.
        """
    )

    @Option(help: "Participant name registered with the coordinator. (env DTX_PARTICIPANT_NAME, required)")
    var name: String?

    @Option(help: "Base URL of dtxd. (env DTX_URL, default http://127.0.0.1:7070)")
    var coordinator: String?

    @Option(name: .customLong("coordinator-token"), help: "Bearer token for calls to dtxd. (env DTX_TOKEN)")
    var coordinatorToken: String?

    @Option(help: "Address to listen on as host:port; port 0 picks a free port. (env DTX_PARTICIPANT_LISTEN, default 127.0.0.1:0)")
    var listen: String?

    @Option(help: "Journal file that makes branch states durable; without it they live in memory only. (env DTX_PARTICIPANT_JOURNAL)")
    var journal: String?

    @Option(name: .customLong("callback-token"), help: "Bearer token the coordinator must send on its calls. (env DTX_PARTICIPANT_CALLBACK_TOKEN)")
    var callbackToken: String?

    @Option(help: "Seconds between heartbeats to the coordinator. (env DTX_PARTICIPANT_HEARTBEAT, default 5)")
    var heartbeat: Double?

    @Option(name: .customLong("recovery-interval"), help: "Seconds between in-doubt recovery passes. (env DTX_PARTICIPANT_RECOVERY_INTERVAL, default 5)")
    var recoveryInterval: Double?

    @Option(name: .customLong("three-phase-timeout"), help: "3PC: seconds a branch waits for the next message before it acts alone (q: abort; w, p: termination). (env DTX_PARTICIPANT_3PC_TIMEOUT, default 5)")
    var threePhaseTimeout: Double?

    @Option(help: "Length of the listen queue: connections the kernel holds before the server accepts them; beyond it, new connections are dropped (small values reproduce a participant that cannot keep up with dtxd's connections). (env DTX_PARTICIPANT_BACKLOG, default 256, 1-65535)")
    var backlog: Int?

    @Option(name: .customLong("otlp-endpoint"), help: "Continue dtxd's traces in a span per message and export them over OTLP/HTTP (JSON) to this collector base URL, e.g. http://127.0.0.1:4318. (env DTX_PARTICIPANT_OTLP_ENDPOINT)")
    var otlpEndpoint: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical. (env DTX_PARTICIPANT_LOG_LEVEL, default info)")
    var logLevel: String?

    /// Event-loop threads (env DTX_PARTICIPANT_THREADS, default: one per core) are set
    /// before anything starts, and Swift concurrency runs on them.
    static func main() async {
        if let text = ProcessInfo.processInfo.environment["DTX_PARTICIPANT_THREADS"], let threads = Int(text), threads > 0 {
            NIOSingletons.groupLoopCountSuggestion = threads
        }
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await main(nil)
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        guard let name = name ?? env["DTX_PARTICIPANT_NAME"], !name.isEmpty else {
            throw ValidationError("a participant name is required: pass --name NAME or set DTX_PARTICIPANT_NAME")
        }
        let coordinatorURL = coordinator ?? env["DTX_URL"] ?? "http://127.0.0.1:7070"
        let address = listen ?? env["DTX_PARTICIPANT_LISTEN"] ?? "127.0.0.1:0"
        guard let (host, port) = ParticipantHost.parseAddress(address) else {
            throw ValidationError("cannot read listen address '\(address)'; write it as host:port, e.g. 127.0.0.1:8081")
        }
        let backlogText = backlog.map(String.init) ?? env["DTX_PARTICIPANT_BACKLOG"] ?? "256"
        guard let backlog = Int(backlogText), (1...65535).contains(backlog) else {
            throw ValidationError("--backlog must be a whole number from 1 to 65535, not '\(backlogText)'")
        }
        let levelName = logLevel ?? env["DTX_PARTICIPANT_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else {
            throw ValidationError("unknown log level '\(levelName)'; use trace, debug, info, notice, warning, error or critical")
        }
        let heartbeatInterval: Duration
        let recoveryInterval: Duration
        let threePhaseTimeout: Duration
        do {
            heartbeatInterval = try ParticipantHost.seconds(heartbeat, variable: "DTX_PARTICIPANT_HEARTBEAT", flag: "--heartbeat")
            recoveryInterval = try ParticipantHost.seconds(self.recoveryInterval, variable: "DTX_PARTICIPANT_RECOVERY_INTERVAL", flag: "--recovery-interval")
            threePhaseTimeout = try ParticipantHost.seconds(self.threePhaseTimeout, variable: "DTX_PARTICIPANT_3PC_TIMEOUT", flag: "--three-phase-timeout")
        } catch {
            throw ValidationError(error.message)
        }

        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "memory-participant")
        var tracing: [any Service] = []
        if let endpoint = otlpEndpoint ?? env["DTX_PARTICIPANT_OTLP_ENDPOINT"] {
            do {
                tracing.append(try TraceExport.bootstrap(serviceName: name, endpoint: endpoint, logger: logger))
            } catch {
                throw ValidationError(error.message)
            }
        }

        let failpoints = Failpoints(logger: logger)
        do {
            try failpoints.arm(specification: env["DTX_PARTICIPANT_FAILPOINTS"] ?? "")
        } catch {
            throw ValidationError("DTX_PARTICIPANT_FAILPOINTS: \(error)")
        }
        let store: InMemoryResourceManager
        do {
            store = try InMemoryResourceManager(name: name, journal: journal ?? env["DTX_PARTICIPANT_JOURNAL"])
        } catch let error as JournalError {
            FileHandle.standardError.write(Data("memory-participant: \(error)\n".utf8))
            throw ExitCode(1)
        }
        let service: ParticipantService
        do {
            service = try ParticipantService(
                configuration: .init(
                    name: name,
                    advertisedURL: ParticipantHost.url(host: host, port: port),
                    coordinatorURL: coordinatorURL,
                    coordinatorToken: coordinatorToken ?? env["DTX_TOKEN"],
                    callbackToken: callbackToken ?? env["DTX_PARTICIPANT_CALLBACK_TOKEN"],
                    heartbeatInterval: heartbeatInterval,
                    recoveryInterval: recoveryInterval,
                    threePhaseTimeout: threePhaseTimeout
                ),
                resourceManager: FailpointResourceManager(base: store, failpoints: failpoints),
                logger: logger
            )
        } catch {
            throw ValidationError("invalid coordinator URL: \(error)")
        }

        let router = Router()
        if env["DTX_PARTICIPANT_RECORD"] == "1" {
            let recorder = MessageRecorder()
            router.add(middleware: MessageRecordingMiddleware(recorder: recorder))
            addMessageRoutes(to: router, recorder: recorder)
        }
        service.addRoutes(to: router.group().add(middleware: RequestFailpointMiddleware(failpoints: failpoints)), failpoints: failpoints)
        addTestRoutes(to: router, store: store, service: service, failpoints: failpoints)

        // Written unbuffered: tests wait for this line and read the port from it.
        try await ParticipantHost.serve(service, router: router, host: host, port: port, backlog: backlog, serverName: "memory-participant", logger: logger,
                                         alongside: tracing) { url in
            FileHandle.standardOutput.write(Data("memory-participant \(name) listening on \(url)\n".utf8))
        }
    }
}
