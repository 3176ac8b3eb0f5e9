import CLibPQ
import Foundation
import Logging

/// One libpq connection (`PGconn`). Every call blocks the calling thread until the
/// server answers, so use it from a `PostgresPool` worker thread (the pool hands it to
/// your closure), never from Swift's cooperative thread pool.
///
/// Not `Sendable`: libpq allows a connection to be used by one thread at a time only.
/// The pool creates each connection on its worker thread and keeps it there.
public final class PostgresConnection {
    private let handle: OpaquePointer
    private let logger: Logger
    /// Statements prepared on this connection (server-side, for the session), by SQL
    /// text: planning the same statements again was about a third of the server's time.
    private var prepared: [String: String] = [:]
    private var preparedCount = 0
    /// Beyond this many, statements run unprepared (SQL built with literals would
    /// otherwise fill the server's memory).
    private static let preparedLimit = 256

    /// Connects with a libpq connection string, e.g.
    /// `host=127.0.0.1 port=5432 user=app dbname=accounts`.
    /// - Throws: `PostgresError` with code `.authenticationFailed` when the server rejects
    ///   the credentials, `.connectionFailed` for every other failure to connect.
    public init(_ connectionString: String, logger: Logger) throws {
        guard let handle = PQconnectdb(connectionString) else {
            throw PostgresError(code: .connectionFailed, message: "libpq could not allocate a connection (out of memory)")
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            let error = Self.connectError(handle)
            PQfinish(handle)
            throw error
        }
        self.handle = handle
        self.logger = logger
        // Server notices (e.g. WARNING) go to the logger instead of libpq's default,
        // which writes to the process's standard error.
        PQsetNoticeReceiver(handle, { context, notice in
            guard let context, let notice else { return }
            let connection = Unmanaged<PostgresConnection>.fromOpaque(context).takeUnretainedValue()
            connection.logNotice(notice)
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        PQfinish(handle)
    }

    /// `host:port` of the server, for messages.
    public var endpoint: String { Self.endpoint(handle) }

    /// Runs one statement with `$1`, `$2`… parameters (sent as text; nil is NULL).
    /// - Throws: `PostgresError`: `.server` with the SQLSTATE when the server refused
    ///   the statement, `.connectionLost` when the connection broke.
    ///
    /// SELECT, INSERT, UPDATE, DELETE, WITH and VALUES statements are prepared on their
    /// first run and reuse the prepared statement after.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [PostgresValue?] = []) throws -> PostgresResult {
        let name = try preparedName(for: sql)
        let result = try withArguments(sql, parameters) { count, arguments in
            if let name { PQexecPrepared(handle, name, count, arguments, nil, nil, 0) } else { PQexecParams(handle, sql, count, nil, arguments, nil, nil, 0) }
        }
        guard let result else {
            throw failure(of: sql, sqlState: nil, serverMessage: Self.errorMessage(handle))
        }
        defer { PQclear(result) }
        do {
            return try read(result, of: sql)
        } catch let error as PostgresError {
            forgetPrepared(after: error, sql: sql)
            throw error
        }
    }

    /// Runs a script of statements separated by semicolons, with no parameters (schema
    /// creation). Outside a transaction block they run as one implicit transaction.
    /// - Throws: `PostgresError` as `execute` does.
    public func executeScript(_ sql: String) throws {
        guard let result = PQexec(handle, sql) else {
            throw failure(of: sql, sqlState: nil, serverMessage: Self.errorMessage(handle))
        }
        defer { PQclear(result) }
        _ = try read(result, of: sql)
    }

    /// After "cached plan must not change result type" (0A000: the table changed) the
    /// statement is prepared afresh next time; after "prepared statement does not
    /// exist" (26000: something ran DISCARD or DEALLOCATE) every one is.
    private func forgetPrepared(after error: PostgresError, sql: String) {
        switch error.sqlState {
        case "0A000": prepared[sql] = nil
        case "26000": prepared.removeAll()
        default: break
        }
    }

    /// Runs `statements` in order in one round trip (libpq's pipeline mode). The server
    /// runs each after the one before has finished; after a failure it skips the rest.
    /// Outside a transaction block they run as one implicit transaction.
    /// - Returns: each statement's result.
    /// - Throws: the first failure, as `execute` does.
    @discardableResult
    public func executeInOneRoundTrip(_ statements: [(sql: String, parameters: [PostgresValue?])]) throws -> [PostgresResult] {
        guard PQenterPipelineMode(handle) == 1 else {
            throw failure(of: statements.first?.sql ?? "", sqlState: nil, serverMessage: Self.errorMessage(handle))
        }
        defer { PQexitPipelineMode(handle) }
        // A statement run here for the first time is prepared in the same round trip:
        // its preparation's result comes first.
        var preparing: [Int: String] = [:]
        for (index, (sql, parameters)) in statements.enumerated() {
            var name = prepared[sql] ?? preparing.first { statements[$0.key].sql == sql }?.value
            if name == nil, Self.isPreparable(sql), prepared.count + preparing.count < Self.preparedLimit {
                let fresh = nextPreparedName()
                guard PQsendPrepare(handle, fresh, sql, 0, nil) == 1 else { throw failure(of: sql, sqlState: nil, serverMessage: Self.errorMessage(handle)) }
                preparing[index] = fresh
                name = fresh
            }
            let sent = try withArguments(sql, parameters) { count, arguments in
                if let name { PQsendQueryPrepared(handle, name, count, arguments, nil, nil, 0) } else { PQsendQueryParams(handle, sql, count, nil, arguments, nil, nil, 0) }
            }
            guard sent == 1 else { throw failure(of: sql, sqlState: nil, serverMessage: Self.errorMessage(handle)) }
        }
        guard PQpipelineSync(handle) == 1 else {
            throw failure(of: statements.first?.sql ?? "", sqlState: nil, serverMessage: Self.errorMessage(handle))
        }
        // Every result is read, up to the sync, even after a failure: the connection is
        // then ready for the next call.
        var results: [PostgresResult] = []
        var firstFailure: (any Error)?
        for (index, (sql, _)) in statements.enumerated() {
            if let name = preparing[index] {
                while let result = PQgetResult(handle) {
                    defer { PQclear(result) }
                    if PQresultStatus(result) == PGRES_PIPELINE_ABORTED || firstFailure != nil { continue }
                    do {
                        _ = try read(result, of: sql)
                        prepared[sql] = name
                    } catch {
                        firstFailure = error
                    }
                }
            }
            while let result = PQgetResult(handle) {
                defer { PQclear(result) }
                if PQresultStatus(result) == PGRES_PIPELINE_ABORTED || firstFailure != nil { continue }
                do {
                    results.append(try read(result, of: sql))
                } catch {
                    if let error = error as? PostgresError { forgetPrepared(after: error, sql: sql) }
                    firstFailure = error
                }
            }
        }
        var synced = false
        while let result = PQgetResult(handle) {
            defer { PQclear(result) }
            if PQresultStatus(result) == PGRES_PIPELINE_SYNC { synced = true; break }
        }
        if let firstFailure { throw firstFailure }
        guard synced, results.count == statements.count else {
            throw failure(of: statements.last?.sql ?? "", sqlState: nil, serverMessage: Self.errorMessage(handle))
        }
        return results
    }

    /// The prepared statement for `sql`, preparing it now if it is a kind that can be;
    /// nil to run it unprepared.
    /// - Throws: the server's refusal of the statement (as running it would have).
    private func preparedName(for sql: String) throws -> String? {
        if let name = prepared[sql] { return name }
        guard Self.isPreparable(sql), prepared.count < Self.preparedLimit else { return nil }
        let name = nextPreparedName()
        guard let result = PQprepare(handle, name, sql, 0, nil) else {
            throw failure(of: sql, sqlState: nil, serverMessage: Self.errorMessage(handle))
        }
        defer { PQclear(result) }
        _ = try read(result, of: sql)
        prepared[sql] = name
        return name
    }

    private func nextPreparedName() -> String {
        preparedCount += 1
        return "dtx_statement_\(preparedCount)"
    }

    /// Plannable statements; transaction control and other utility statements are not.
    static func isPreparable(_ sql: String) -> Bool {
        let keyword = sql.utf8.drop { $0 == 32 || $0 == 10 || $0 == 9 || $0 == 13 }.prefix { ($0 | 0x20) >= 97 && ($0 | 0x20) <= 122 }
        switch String(decoding: keyword, as: UTF8.self).uppercased() {
        case "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES": return true
        default: return false
        }
    }

    /// Calls `body` with the parameters as C strings (NULL for nil).
    private func withArguments<T>(_ sql: String, _ parameters: [PostgresValue?], _ body: (Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> T) throws -> T {
        let texts = parameters.map { $0?.textForm }
        if let index = texts.firstIndex(where: { $0?.utf8.contains(0) == true }) {
            throw PostgresError(code: .invalidValue, message: "parameter $\(index + 1) contains a NUL character, which PostgreSQL text cannot hold", sql: sql)
        }
        let cStrings = texts.map { $0.flatMap { strdup($0) } }
        defer { cStrings.forEach { free($0) } }
        let arguments = cStrings.map { UnsafePointer($0) }
        return arguments.withUnsafeBufferPointer { buffer in body(Int32(buffer.count), buffer.baseAddress) }
    }

    private func read(_ result: OpaquePointer, of sql: String) throws -> PostgresResult {
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            return Self.read(result)
        default:
            let sqlState = PQresultErrorField(result, DiagnosticField.sqlState).map { String(cString: $0) }
            let message = PQresultErrorMessage(result).map { String(cString: $0) } ?? ""
            throw failure(of: sql, sqlState: sqlState, serverMessage: Self.trimmed(message))
        }
    }

    /// Whether a transaction block is open (and possibly failed) on this connection.
    public var isInTransaction: Bool {
        let status = PQtransactionStatus(handle)
        return status == PQTRANS_INTRANS || status == PQTRANS_INERROR || status == PQTRANS_ACTIVE
    }

    /// Rolls back an open transaction block, if any. Used on error paths, where the
    /// first error is the one to report: a failure here is only logged.
    public func rollbackIfInTransaction() {
        guard isInTransaction else { return }
        do {
            try execute("ROLLBACK")
        } catch {
            logger.warning("cannot roll back a failed transaction", metadata: ["error": "\(error)"])
        }
    }

    /// Makes sure the connection is usable, reconnecting when the server closed it (it
    /// restarted, or the connection was terminated).
    func reconnectIfBroken() throws {
        if isAlive { return }
        logger.warning("connection to PostgreSQL lost; reconnecting", metadata: ["server": .string(endpoint), "error": .string(Self.errorMessage(handle))])
        PQreset(handle)
        prepared.removeAll()  // a new session has none
        guard PQstatus(handle) == CONNECTION_OK else {
            var error = Self.connectError(handle)
            error.message = "lost the connection to PostgreSQL and cannot reconnect: " + error.message
            throw error
        }
        logger.info("reconnected to PostgreSQL", metadata: ["server": .string(endpoint)])
    }

    /// Whether the server kept the idle connection open. libpq's socket is
    /// non-blocking, so reading never waits: a closed socket reads as end of file, which
    /// libpq turns into a bad status. A server that ends a session first sends its
    /// reason (handed to the notice receiver by `PQisBusy`) and then closes, hence two
    /// reads.
    private var isAlive: Bool {
        for _ in 0..<2 {
            guard PQstatus(handle) == CONNECTION_OK, PQconsumeInput(handle) == 1 else { return false }
            _ = PQisBusy(handle)
        }
        return PQstatus(handle) == CONNECTION_OK
    }

    private func failure(of sql: String, sqlState: String?, serverMessage: String) -> PostgresError {
        if PQstatus(handle) != CONNECTION_OK {
            return PostgresError(
                code: .connectionLost,
                message: "lost the connection to PostgreSQL at \(endpoint): \(serverMessage). Whether the statement took effect is unknown; the connection is re-established before its next use",
                sqlState: sqlState, sql: sql)
        }
        return PostgresError(code: .server, message: serverMessage, sqlState: sqlState, sql: sql)
    }

    private func logNotice(_ notice: OpaquePointer) {
        let severity = PQresultErrorField(notice, DiagnosticField.severity).map { String(cString: $0) } ?? "NOTICE"
        let text = PQresultErrorField(notice, DiagnosticField.primaryMessage).map { String(cString: $0) } ?? ""
        let level: Logger.Level = ["WARNING", "ERROR", "FATAL", "PANIC"].contains(severity) ? .warning : .debug
        logger.log(level: level, "PostgreSQL: \(text)", metadata: ["severity": .string(severity), "server": .string(endpoint)])
    }

    private static func read(_ result: OpaquePointer) -> PostgresResult {
        let columns = (0..<PQnfields(result)).map { String(cString: PQfname(result, $0)) }
        let rows = (0..<PQntuples(result)).map { row in
            PostgresRow(columns: columns, values: (0..<Int32(columns.count)).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            })
        }
        let commandTag = PQcmdStatus(result).map { String(cString: $0) } ?? ""
        let affectedRows = PQcmdTuples(result).flatMap { Int(String(cString: $0)) } ?? 0
        return PostgresResult(columns: columns, rows: rows, commandTag: commandTag, affectedRows: affectedRows)
    }

    /// Classifies a failed connection attempt. libpq gives no SQLSTATE for it, so the
    /// authentication case is recognised by libpq's own signals and message.
    private static func connectError(_ handle: OpaquePointer) -> PostgresError {
        let endpoint = endpoint(handle)
        let detail = errorMessage(handle)
        if PQconnectionNeedsPassword(handle) == 1 {
            return PostgresError(
                code: .authenticationFailed,
                message: "PostgreSQL at \(endpoint) requires a password and the connection string gives none: add password=… to it (or a ~/.pgpass entry). libpq: \(detail)")
        }
        if detail.contains("authentication failed") || detail.contains("pg_hba.conf") {
            return PostgresError(
                code: .authenticationFailed,
                message: "PostgreSQL at \(endpoint) rejected the credentials: \(detail). Check user and password in the connection string, and the server's pg_hba.conf")
        }
        return PostgresError(
            code: .connectionFailed,
            message: "cannot connect to PostgreSQL at \(endpoint): \(detail). Check that the server is running and that host, port and database in the connection string are right")
    }

    private static func endpoint(_ handle: OpaquePointer) -> String {
        let host = PQhost(handle).map { String(cString: $0) } ?? ""
        let port = PQport(handle).map { String(cString: $0) } ?? ""
        return "\(host.isEmpty ? "localhost" : host):\(port.isEmpty ? "5432" : port)"
    }

    private static func errorMessage(_ handle: OpaquePointer) -> String {
        trimmed(PQerrorMessage(handle).map { String(cString: $0) } ?? "")
    }

    /// libpq messages end with a newline and continue on tab-indented lines.
    private static func trimmed(_ message: String) -> String {
        message.split(whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
            .joined(separator: " ")
    }
}

/// libpq's `PG_DIAG_*` field codes (postgres_ext.h), which are character literals that
/// Swift does not import.
private enum DiagnosticField {
    static let sqlState = Int32(UInt8(ascii: "C"))
    static let severity = Int32(UInt8(ascii: "V"))
    static let primaryMessage = Int32(UInt8(ascii: "M"))
}
