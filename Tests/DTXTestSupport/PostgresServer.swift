import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A throwaway PostgreSQL server for tests: `start()` runs initdb into a new temporary
/// directory and starts `postgres` on a free port of 127.0.0.1 (as the `postgres` user
/// when the tests run as root, since PostgreSQL refuses to run as root); `stop()` shuts
/// it down and deletes the directory. `kill()` and `restart()` let crash tests SIGKILL
/// the server and bring it back on the same data directory and port.
///
/// The superuser is `dtx`, with trust authentication unless a password is configured.
/// Server output goes to `logPath`; failures include its tail. The binaries come from
/// `$DTX_POSTGRES_BIN`, or else the newest /usr/lib/postgresql/*/bin.
public final class PostgresServer: Sendable {
    public struct Options: Sendable {
        /// `max_prepared_transactions`; 0 makes a server that cannot prepare.
        public var maxPreparedTransactions: Int
        /// When set, TCP connections must authenticate with this password
        /// (scram-sha-256), and `connectionString` includes it.
        public var password: String?

        public init(maxPreparedTransactions: Int = 64, password: String? = nil) {
            self.maxPreparedTransactions = maxPreparedTransactions
            self.password = password
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// The superuser name.
    public let user = "dtx"
    /// The database `start()` creates.
    public let defaultDatabase = "dtx"
    public let options: Options
    /// The temporary directory: data directory, socket and log.
    public let directory: String
    public var dataDirectory: String { directory + "/data" }
    public var logPath: String { directory + "/server.log" }

    private let binDirectory: String
    private let runsAsRoot = geteuid() == 0
    private let state = Mutex(State())

    private struct State {
        var port = 0
        /// The launched process: `postgres` itself, or `runuser` running it.
        var process: Process?
        var started = false
    }

    /// Prepares a server; nothing runs until `start()`.
    public init(options: Options = Options()) throws {
        self.options = options
        binDirectory = try Self.findBinDirectory()
        // As root the directory must be reachable by the postgres user: /tmp is.
        let base = runsAsRoot ? "/tmp" : NSTemporaryDirectory()
        var template = Array("\(base)/dtx-postgres-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            throw Failure(description: "cannot create a temporary directory under \(base): \(String(cString: strerror(errno)))")
        }
        directory = String(cString: made)
    }

    deinit {
        // A test that failed before stop(): leave no server or directory behind.
        if let process = state.withLock({ $0.process }), process.isRunning {
            killServerProcesses()
            Glibc.kill(process.processIdentifier, SIGKILL)
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The TCP port (valid after `start()`).
    public var port: Int { state.withLock { $0.port } }

    /// A libpq connection string for `database`.
    public func connectionString(database: String? = nil) -> String {
        var text = "host=127.0.0.1 port=\(port) user=\(user) dbname=\(database ?? defaultDatabase)"
        if let password = options.password { text += " password=\(password)" }
        return text
    }

    /// Creates the cluster, starts the server, waits until it accepts connections and
    /// creates `defaultDatabase`.
    public func start() async throws {
        guard !state.withLock({ $0.started }) else { throw Failure(description: "the PostgreSQL server in \(directory) was already started") }
        if runsAsRoot { try chownToPostgres(directory) }
        try await initdb()
        // The port is free when chosen but another process may take it before postgres
        // binds it: try a few.
        var lastError: (any Error)?
        for _ in 0..<3 {
            state.withLock { $0.port = freeLoopbackPort() }
            do {
                try await launch()
                lastError = nil
                break
            } catch {
                lastError = error
            }
        }
        if let lastError { throw lastError }
        state.withLock { $0.started = true }
        try await createDatabase(defaultDatabase)
    }

    /// A streaming standby of this (started) server in a new directory, started: a base
    /// backup taken with `pg_basebackup -R`, connecting back as `name` (its
    /// `application_name`, which `synchronous_standby_names` on the primary can list).
    public func startStandby(name: String) async throws -> PostgresServer {
        let standby = try PostgresServer(options: options)
        if standby.runsAsRoot { try standby.chownToPostgres(standby.directory) }
        var environment = ProcessInfo.processInfo.environment
        if let password = options.password { environment["PGPASSWORD"] = password }
        let (status, output) = try await standby.run(binDirectory + "/pg_basebackup", [
            "-D", standby.dataDirectory, "-R", "-X", "stream", "--no-sync", "-c", "fast",
            "-d", "host=127.0.0.1 port=\(port) user=\(user) application_name=\(name)",
        ], asPostgres: standby.runsAsRoot, environment: environment)
        guard status == 0 else { throw Failure(description: "pg_basebackup failed (status \(status)): \(output)") }
        var lastError: (any Error)?
        for _ in 0..<3 {
            standby.state.withLock { $0.port = freeLoopbackPort() }
            do {
                try await standby.launch()
                lastError = nil
                break
            } catch {
                lastError = error
            }
        }
        if let lastError { throw lastError }
        standby.state.withLock { $0.started = true }
        return standby
    }

    /// Makes every commit wait until the standby `name` has it (synchronous replication),
    /// once that standby streams synchronously.
    public func requireSynchronousStandby(_ name: String) async throws {
        _ = try await psql("ALTER SYSTEM SET synchronous_standby_names = '\(name)'", database: "postgres")
        _ = try await psql("SELECT pg_reload_conf()", database: "postgres")
        for _ in 0..<300 {
            if try await psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = '\(name)' AND sync_state = 'sync'", database: "postgres") == "1" { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw Failure(description: "standby \(name) did not become synchronous. Server log:\n\(logTail())")
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    public func promote() async throws {
        let (status, output) = try await run(binDirectory + "/pg_ctl", ["promote", "-w", "-D", dataDirectory], asPostgres: runsAsRoot)
        guard status == 0 else { throw Failure(description: "pg_ctl promote failed (status \(status)): \(output)") }
    }

    /// Fast shutdown (disconnects clients, no crash recovery needed), then deletes the
    /// directory.
    public func stop() async throws {
        try await shutDown(signal: SIGINT, waitSeconds: 30)
        try FileManager.default.removeItem(atPath: directory)
    }

    /// SIGKILLs the postmaster and all its backends at once: a crash of the server.
    /// The data directory stays; `restart()` runs crash recovery on it.
    public func kill() async throws {
        try await shutDown(signal: SIGKILL, waitSeconds: 30)
    }

    /// Starts the server again on the same data directory and port.
    public func restart() async throws {
        try await launch()
    }

    /// Creates a database (name: letters, digits and `_`).
    public func createDatabase(_ name: String) async throws {
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
            throw Failure(description: "database name \"\(name)\" must be letters, digits and _ only")
        }
        _ = try await psql("CREATE DATABASE \"\(name)\"", database: "postgres")
    }

    /// Runs SQL with psql and returns its unaligned, tuples-only output: one line per
    /// row, columns separated by `|`. Throws with psql's message when the SQL fails.
    public func psql(_ sql: String, database: String? = nil) async throws -> String {
        let arguments = ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                         "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", database ?? defaultDatabase, "-c", sql]
        var environment = ProcessInfo.processInfo.environment
        if let password = options.password { environment["PGPASSWORD"] = password }
        let (status, output) = try await run(binDirectory + "/psql", arguments, asPostgres: false, environment: environment)
        guard status == 0 else { throw Failure(description: "psql failed (status \(status)) running \(sql): \(output)") }
        return output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // MARK: - Steps

    private func initdb() async throws {
        var arguments = ["-D", dataDirectory, "-U", user, "-E", "UTF8", "--no-sync", "--auth-local=trust"]
        if let password = options.password {
            let passwordFile = directory + "/password"
            try password.write(toFile: passwordFile, atomically: false, encoding: .utf8)
            if runsAsRoot { try chownToPostgres(passwordFile) }
            arguments += ["--auth-host=scram-sha-256", "--pwfile=" + passwordFile]
        } else {
            arguments += ["--auth-host=trust"]
        }
        let (status, output) = try await run(binDirectory + "/initdb", arguments, asPostgres: runsAsRoot)
        guard status == 0 else { throw Failure(description: "initdb failed (status \(status)) in \(dataDirectory):\n\(output)") }
    }

    /// Starts postgres and waits until it accepts connections.
    private func launch() async throws {
        let port = self.port
        let log = try logHandle()
        let process = Process()
        let postgres = [binDirectory + "/postgres", "-D", dataDirectory, "-p", String(port), "-k", directory,
                        "-c", "listen_addresses=127.0.0.1",
                        "-c", "max_prepared_transactions=\(options.maxPreparedTransactions)",
                        "-c", "fsync=on", "-c", "wal_level=replica", "-c", "max_wal_senders=4"]
        if runsAsRoot {
            process.executableURL = URL(fileURLWithPath: try Self.runuserPath())
            process.arguments = ["-u", "postgres", "--"] + postgres
        } else {
            process.executableURL = URL(fileURLWithPath: postgres[0])
            process.arguments = Array(postgres.dropFirst())
        }
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? log.close()
        state.withLock { $0.process = process }

        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            guard process.isRunning else {
                throw Failure(description: "postgres exited (status \(process.terminationStatus)) while starting on port \(port). Server log:\n\(logTail())")
            }
            let (status, _) = try await run(binDirectory + "/pg_isready", ["-q", "-h", "127.0.0.1", "-p", String(port), "-U", user, "-d", "postgres", "-t", "2"], asPostgres: false)
            if status == 0 { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        killServerProcesses()
        Glibc.kill(process.processIdentifier, SIGKILL)
        throw Failure(description: "postgres did not accept connections on port \(port) within 60 s. Server log:\n\(logTail())")
    }

    /// Signals the postmaster (SIGINT: fast shutdown; SIGKILL: crash, with every
    /// backend killed too) and waits for it to exit.
    private func shutDown(signal: Int32, waitSeconds: Double) async throws {
        guard let process = state.withLock({ $0.process }), process.isRunning else { return }
        var killed: [pid_t] = []
        if signal == SIGKILL {
            killed = killServerProcesses()
        } else if let postmaster = postmasterPID() {
            Glibc.kill(postmaster, signal)
        } else {
            process.interrupt()
        }
        // The launched process ends once the postmaster is gone (runuser waits for it
        // and reaps it: killing runuser first would leave the postmaster a zombie whose
        // pid, still in postmaster.pid, stops the next start).
        let deadline = Date().addingTimeInterval(waitSeconds)
        while process.isRunning {
            if Date() > deadline {
                killServerProcesses()
                Glibc.kill(process.processIdentifier, SIGKILL)
                throw Failure(description: "postgres did not shut down within \(waitSeconds) s; killed it. Server log:\n\(logTail())")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        // SIGKILL is delivered asynchronously: wait until the backends have exited too,
        // so that their sockets are closed, as after a real crash.
        while killed.contains(where: Self.isRunning), Date() < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        state.withLock { $0.process = nil }
    }

    /// SIGKILLs the postmaster and its children (the backends and auxiliary processes),
    /// the way a machine crash would stop them.
    @discardableResult
    private func killServerProcesses() -> [pid_t] {
        guard let postmaster = postmasterPID() else { return [] }
        let children = Self.children(of: postmaster)
        Glibc.kill(postmaster, SIGKILL)
        for child in children { Glibc.kill(child, SIGKILL) }
        return children
    }

    /// The postmaster's pid, from the first line of `postmaster.pid`.
    private func postmasterPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
              let line = text.split(separator: "\n").first
        else { return nil }
        return pid_t(line.trimmingCharacters(in: .whitespaces))
    }

    /// Whether `pid` still runs (exists and is not a zombie).
    private static func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.lastIndex(of: ")")
        else { return false }
        return stat[stat.index(after: end)...].split(separator: " ").first != "Z"
    }

    private static func children(of parent: pid_t) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> pid_t? in
            guard let pid = pid_t(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let end = stat.lastIndex(of: ")")
            else { return nil }
            // After "pid (comm) ": state, then the parent's pid.
            let fields = stat[stat.index(after: end)...].split(separator: " ")
            return fields.count > 1 && pid_t(fields[1]) == parent ? pid : nil
        }
    }

    // MARK: - Processes and files

    /// Runs a tool to completion; returns its status and combined output.
    private func run(_ path: String, _ arguments: [String], asPostgres: Bool, environment: [String: String]? = nil) async throws -> (Int32, String) {
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw Failure(description: "\(path) is missing: install PostgreSQL's server binaries (e.g. apt-get install postgresql-15) or set DTX_POSTGRES_BIN to the directory that holds initdb, postgres, pg_isready and psql")
        }
        let outputPath = directory + "/command-\(UUID().uuidString).out"
        guard FileManager.default.createFile(atPath: outputPath, contents: nil), let output = FileHandle(forWritingAtPath: outputPath) else {
            throw Failure(description: "cannot create \(outputPath)")
        }
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let process = Process()
        if asPostgres {
            process.executableURL = URL(fileURLWithPath: try Self.runuserPath())
            process.arguments = ["-u", "postgres", "--", path] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
        }
        if let environment { process.environment = environment }
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        // Run from a directory every user can enter (initdb as postgres cannot stay in
        // a root-only working directory).
        process.currentDirectoryURL = URL(fileURLWithPath: "/")
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { process in continuation.resume(returning: process.terminationStatus) }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: Failure(description: "cannot run \(path): \(error)"))
            }
        }
        try? output.close()
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return (status, text)
    }

    private func logHandle() throws -> FileHandle {
        let exists = FileManager.default.fileExists(atPath: logPath) || FileManager.default.createFile(atPath: logPath, contents: nil)
        guard exists, let handle = FileHandle(forWritingAtPath: logPath) else {
            throw Failure(description: "cannot open the server log \(logPath)")
        }
        try handle.seekToEnd()
        return handle
    }

    /// The last lines of the server log, for error messages.
    public func logTail(lines: Int = 40) -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "(no log at \(logPath))"
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    private func chownToPostgres(_ path: String) throws {
        guard let account = getpwnam("postgres") else {
            throw Failure(description: "running as root, the server must run as the postgres user, which does not exist: create it (useradd postgres) or run the tests as another user")
        }
        guard chown(path, account.pointee.pw_uid, account.pointee.pw_gid) == 0 else {
            throw Failure(description: "cannot give \(path) to the postgres user: \(String(cString: strerror(errno)))")
        }
    }

    private static func runuserPath() throws -> String {
        for path in ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"] where FileManager.default.isExecutableFile(atPath: path) {
            return path
        }
        throw Failure(description: "running as root, the server must be started with runuser (util-linux), which was not found")
    }

    private static func findBinDirectory() throws -> String {
        if let configured = ProcessInfo.processInfo.environment["DTX_POSTGRES_BIN"], !configured.isEmpty {
            return configured
        }
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap(Int.init)
            .sorted(by: >)
        for version in versions where FileManager.default.isExecutableFile(atPath: "\(root)/\(version)/bin/initdb") {
            return "\(root)/\(version)/bin"
        }
        throw Failure(description: "no PostgreSQL server binaries (initdb) under \(root): install them (e.g. apt-get install postgresql-15) or set DTX_POSTGRES_BIN to the directory that holds initdb and postgres")
    }
}
