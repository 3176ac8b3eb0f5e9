/// An error from PostgreSQL, from libpq or from this module's use of them.
///
/// `code` says what kind of failure it is; `message` says what happened and what to do;
/// `sqlState` is the server's SQLSTATE when the server reported the error.
public struct PostgresError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The kind of failure.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String

        private init(_ rawValue: String) { self.rawValue = rawValue }

        /// The server could not be reached, or refused the connection for a reason
        /// other than credentials (no such database, too many connections…).
        public static let connectionFailed = Code("connection_failed")
        /// The server rejected the user name or password.
        public static let authenticationFailed = Code("authentication_failed")
        /// An established connection broke while a statement ran: whether the statement
        /// took effect is unknown. The pool reconnects before its next use.
        public static let connectionLost = Code("connection_lost")
        /// The server answered a statement with an error; see `sqlState`.
        public static let server = Code("server")
        /// The server has `max_prepared_transactions = 0`.
        public static let preparedTransactionsDisabled = Code("prepared_transactions_disabled")
        /// A value could not be sent or read as the requested type.
        public static let invalidValue = Code("invalid_value")
        /// A pool or resource manager was configured with values it cannot work with.
        public static let invalidConfiguration = Code("invalid_configuration")
        /// The pool was closed before the work could run.
        public static let poolClosed = Code("pool_closed")
        /// Another PREPARE, one-phase commit or ROLLBACK of the same branch is running;
        /// retrying later is safe.
        public static let branchBusy = Code("branch_busy")

        public var description: String { rawValue }
    }

    public var code: Code
    /// What happened and what to do about it.
    public var message: String
    /// The server's SQLSTATE (e.g. `42704`), when the server reported the error.
    public var sqlState: String?
    /// The statement that failed, when a statement failed.
    public var sql: String?

    public init(code: Code, message: String, sqlState: String? = nil, sql: String? = nil) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
        self.sql = sql
    }

    /// SQLSTATE class of the error (its first two characters), e.g. `23` for an
    /// integrity constraint violation.
    public var sqlStateClass: Substring? { sqlState?.prefix(2) }

    public var description: String {
        var text = message
        if let sqlState { text += " (SQLSTATE \(sqlState))" }
        if let sql { text += " [statement: \(sql)]" }
        return text
    }
}
