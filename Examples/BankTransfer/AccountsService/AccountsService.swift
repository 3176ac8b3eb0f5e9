import ArgumentParser
import DTXAPI
import DTXCore
import DTXParticipant
import DTXPostgres
import DTXPostgresClient
import Foundation
import Hummingbird
import Logging

/// `accounts-service`: a bank's accounts in one database (SQLite or PostgreSQL), taking
/// part in dtx transactions as a participant: it registers with dtxd at start and serves
/// the `debit` and `credit` branch operations in 2PC, 3PC, TCC and sagas.
@main
struct AccountsService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "accounts-service",
        abstract: "A bank accounts service on SQLite or PostgreSQL that joins dtx transactions.",
        discussion: """
        Give exactly one database: --sqlite FILE (created if missing) or --postgres \
        "host=... port=... user=... dbname=..." (the server needs max_prepared_transactions \
        above 0). Once listening it prints 'accounts-service NAME listening on URL' and \
        registers with dtxd under NAME.

        HTTP: GET /accounts lists balances and their total; POST /accounts \
        {"id": ..., "balance": cents} opens an account; POST /accounts/ID/debit and \
        /credit {"amount": cents} move money in a plain local transaction, outside any \
        global transaction (what an application without a coordinator would call); the \
        participant protocol is under /dtx/2pc/, /dtx/3pc/ (with GET /dtx/state for \
        3PC peers), /dtx/tcc/ and /dtx/saga/, where debit and credit are operations of \
        each protocol (a TCC debit holds the money in the \
        holds table from its try until its confirm or cancel). Failpoints for crash tests: DTX_PARTICIPANT_FAILPOINTS (see \
        memory-participant --help) and PUT /test/failpoints.
        """
    )

    @Option(help: "Participant name registered with dtxd, e.g. accounts-eu.")
    var name: String

    @Option(help: "SQLite database file.")
    var sqlite: String?

    @Option(help: "PostgreSQL connection string.")
    var postgres: String?

    @Option(help: "Prefix of this service's prepared-transaction names in PostgreSQL (letters and digits, at most 16; default: from --name).")
    var prefix: String?

    @Option(help: "Address to listen on as host:port; port 0 picks a free port.")
    var listen = "127.0.0.1:0"

    @Option(help: "URL of dtxd. (env DTX_URL, default http://127.0.0.1:7070)")
    var coordinator: String?

    @Option(name: .customLong("coordinator-token"), help: "Bearer token for calls to dtxd. (env DTX_TOKEN)")
    var coordinatorToken: String?

    @Option(help: "Seconds between heartbeats to dtxd.")
    var heartbeat: Double?

    @Option(name: .customLong("recovery-interval"), help: "Seconds between in-doubt recovery passes.")
    var recoveryInterval: Double?

    @Option(name: .customLong("three-phase-timeout"), help: "3PC: seconds a branch waits for the next message before it acts alone (q: abort; w, p: termination). (env DTX_PARTICIPANT_3PC_TIMEOUT, default 5)")
    var threePhaseTimeout: Double?

    @Flag(help: "Also serve the conformance operations (dtx.conformance.add, .read, .refuse) over a conformance_counters table, so that `dtx conformance` can check this service; for tests.")
    var conformance = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"

    func validate() throws {
        guard (sqlite == nil) != (postgres == nil) else {
            throw ValidationError("give exactly one database: --sqlite FILE or --postgres CONNECTION-STRING")
        }
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        guard let (host, port) = ParticipantHost.parseAddress(listen) else {
            throw ValidationError("cannot read listen address '\(listen)'; write it as host:port, e.g. 127.0.0.1:8081")
        }
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
        let heartbeatInterval: Duration
        let recoveryEvery: Duration
        let threePhaseWait: Duration
        do {
            heartbeatInterval = try ParticipantHost.seconds(heartbeat, variable: "DTX_PARTICIPANT_HEARTBEAT", flag: "--heartbeat")
            recoveryEvery = try ParticipantHost.seconds(recoveryInterval, variable: "DTX_PARTICIPANT_RECOVERY_INTERVAL", flag: "--recovery-interval")
            threePhaseWait = try ParticipantHost.seconds(threePhaseTimeout, variable: "DTX_PARTICIPANT_3PC_TIMEOUT", flag: "--three-phase-timeout")
        } catch {
            throw ValidationError(error.message)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "accounts-service")

        let store: any AccountsStore
        do {
            if let sqlite {
                store = try await SQLiteAccounts(path: sqlite, conformance: conformance)
            } else {
                let pool = try await PostgresPool(postgres ?? "", size: 4, logger: logger)
                store = try await PostgresAccounts(pool: pool, prefix: prefix ?? Self.prefix(from: name), conformance: conformance, logger: logger)
            }
        } catch {
            FileHandle.standardError.write(Data("accounts-service: \(error)\n".utf8))
            throw ExitCode(1)
        }

        let failpoints = Failpoints(logger: logger)
        do {
            try failpoints.arm(specification: env["DTX_PARTICIPANT_FAILPOINTS"] ?? "")
        } catch {
            throw ValidationError("DTX_PARTICIPANT_FAILPOINTS: \(error)")
        }
        let service: ParticipantService
        do {
            service = try ParticipantService(
                configuration: .init(
                    name: name, advertisedURL: ParticipantHost.url(host: host, port: port),
                    coordinatorURL: coordinator ?? env["DTX_URL"] ?? "http://127.0.0.1:7070",
                    coordinatorToken: coordinatorToken ?? env["DTX_TOKEN"],
                    heartbeatInterval: heartbeatInterval, recoveryInterval: recoveryEvery,
                    threePhaseTimeout: threePhaseWait
                ),
                resourceManager: FailpointResourceManager(base: store.resourceManager, failpoints: failpoints),
                logger: logger
            )
        } catch {
            throw ValidationError("invalid coordinator URL: \(error)")
        }

        let router = Router()
        service.addRoutes(to: router.group().add(middleware: RequestFailpointMiddleware(failpoints: failpoints)), failpoints: failpoints)
        failpoints.addRoutes(to: router)
        addAccountRoutes(to: router, store: store)
        try await ParticipantHost.serve(service, router: router, host: host, port: port, serverName: "accounts-service", logger: logger) { url in
            FileHandle.standardOutput.write(Data("accounts-service \(name) listening on \(url)\n".utf8))
        }
    }

    /// A prepared-transaction prefix from the service name: its letters and digits, at most 16.
    static func prefix(from name: String) -> String {
        let letters = name.filter { $0.isASCII && ($0.isLetter || $0.isNumber) }
        return letters.isEmpty ? "dtx" : String(letters.prefix(16))
    }
}

private struct AccountList: Encodable {
    struct Account: Encodable {
        var id: String
        var balance: Int
    }

    var accounts: [Account]
    var total: Int
}

private struct OpenRequest: Decodable {
    var id: String
    var balance: Int
}

func addAccountRoutes(to router: Router<BasicRequestContext>, store: any AccountsStore) {
    router.get("/accounts") { _, _ -> Response in
        let accounts = try await store.accounts()
        return json(AccountList(accounts: accounts.map { .init(id: $0.id, balance: $0.balance) }, total: accounts.reduce(0) { $0 + $1.balance }))
    }
    router.post("/accounts") { request, context -> Response in
        var request = request
        let body = try await request.collectBody(upTo: 64 << 10)
        guard let open = try? JSONDecoder().decode(OpenRequest.self, from: Data(body.readableBytesView)), !open.id.isEmpty, open.balance >= 0 else {
            return json(APIErrorBody(code: "bad_request", message: "send {\"id\": ACCOUNT, \"balance\": cents (0 or more)}"), status: .badRequest)
        }
        do {
            try await store.open(open.id, balance: open.balance)
        } catch {
            return json(APIErrorBody(code: "cannot_open", message: "cannot open account \(open.id): \(error)"), status: .conflict)
        }
        return json(AccountList(accounts: [.init(id: open.id, balance: open.balance)], total: open.balance), status: .created)
    }
    for debit in [true, false] {
        router.post("/accounts/:id/\(debit ? "debit" : "credit")") { request, context -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 64 << 10)
            let payload = try? JSONValue(parsing: Array(body.readableBytesView))
            let account = context.parameters.get("id") ?? ""
            do {
                let movement = try Movement(.object(["account": .string(account), "amount": payload?["amount"] ?? .null]))
                let balance = try await store.move(movement, debit: debit)
                return json(AccountList(accounts: [.init(id: account, balance: balance)], total: balance))
            } catch let error as BusinessError {
                return json(APIErrorBody(code: error.code, message: error.message), status: .conflict)
            }
        }
    }
}

private func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
