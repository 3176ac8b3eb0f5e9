import ArgumentParser
import DTXAPI
import DTXClient
import DTXCore
import Foundation

/// `--protocol` values: the protocols' wire names.
struct ProtocolArgument: ExpressibleByArgument {
    var value: TransactionProtocol

    init?(argument: String) {
        guard let value = TransactionProtocol(rawValue: argument.lowercased()) else { return nil }
        self.value = value
    }

    static var allValueStrings: [String] { TransactionProtocol.allCases.map(\.rawValue) }

    var defaultValueDescription: String { value.rawValue }
}

/// A gid argument is checked against the model's rule before anything is sent.
private func validateGID(_ gid: String) throws {
    do {
        _ = try GlobalTransactionID(validating: gid)
    } catch {
        throw ValidationError("\(error.description) (got '\(gid)')")
    }
}

struct ListTransactions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List transactions, with filters.",
        discussion: """
        One page at a time (the daemon's page size, or --limit); when there are more, \
        the last line says which --cursor to pass for the next page. --all fetches \
        every page. The STATUS column flags transactions whose phase two keeps failing \
        (stuck) and those whose outcome an operator forced (heuristic).
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Option(help: ArgumentHelp("Only transactions with this status (a status word of the API, e.g. active, preparing, committing, aborting, committed, aborted), or stuck (needing an operator), or in_doubt (participants may hold prepared work awaiting the outcome).", valueName: "status"))
    var status: String?

    @Option(name: .customLong("protocol"), help: ArgumentHelp("Only transactions of this protocol.", valueName: "protocol"))
    var protocolFilter: ProtocolArgument?

    @Option(help: ArgumentHelp("Only transactions with a branch on this participant.", valueName: "name"))
    var participant: String?

    @Option(name: .customLong("older-than"), help: ArgumentHelp("Only transactions created at least this many seconds ago.", valueName: "seconds"))
    var olderThan: Double?

    @Option(help: ArgumentHelp("At most this many transactions per page.", valueName: "n"))
    var limit: Int?

    @Option(help: ArgumentHelp("Start at this page (from a previous 'next page' line).", valueName: "cursor"))
    var cursor: String?

    @Flag(help: "Follow the cursors and list every page.")
    var all = false

    func validate() throws {
        if let status, status.trimmingCharacters(in: .whitespaces).isEmpty {
            throw ValidationError("--status is empty; give a status word such as committing or aborted, or stuck, or in_doubt")
        }
        if let olderThan, !(olderThan >= 0 && olderThan.isFinite) {
            throw ValidationError("--older-than must be a number of seconds, 0 or more (got \(olderThan))")
        }
        if let limit, limit < 1 {
            throw ValidationError("--limit must be 1 or more (got \(limit))")
        }
    }

    func run() async throws {
        var filter = CoordinatorClient.ListFilter(status: status, protocol: protocolFilter?.value, participant: participant,
                                                  olderThan: olderThan, limit: limit, cursor: cursor)
        let list = try await connection.withClient { client in
            var page = try await client.transactions(filter)
            guard all else { return page }
            var everything = page.transactions
            var seen: Set<String> = []
            while let next = page.nextCursor {
                guard seen.insert(next).inserted else {
                    printError("dtx: dtxd returned the cursor '\(next)' twice; stopping after \(everything.count) transactions")
                    throw OnlineExit.refused
                }
                filter.cursor = next
                page = try await client.transactions(filter)
                everything += page.transactions
            }
            return TransactionList(transactions: everything, nextCursor: nil)
        }

        if connection.json {
            try JSONOutput.print(list)
            return
        }
        if list.transactions.isEmpty {
            print("no transactions match")
        } else {
            let now = Date()
            var table = TextTable([
                .init("GID"), .init("PROTOCOL"), .init("STATUS"), .init("AGE", alignRight: true), .init("PARTICIPANTS", maxWidth: 60),
            ])
            for summary in list.transactions {
                table.append([summary.gid, summary.protocol.rawValue,
                              Format.status(summary.status, stuck: summary.stuck, heuristic: summary.heuristic),
                              Format.age(since: summary.createdAt, now: now),
                              summary.participants.isEmpty ? "-" : summary.participants.joined(separator: ",")])
            }
            print(table.render())
        }
        if let next = list.nextCursor {
            print("next page: --cursor \(next)")
        }
    }
}

struct ShowTransaction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Show one transaction: its state, its branches and its timeline."
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Argument(help: "The transaction's gid.")
    var gid: String

    func validate() throws {
        try validateGID(gid)
    }

    func run() async throws {
        let view = try await connection.withClient { try await $0.transaction(gid) }
        if connection.json {
            try JSONOutput.print(view)
        } else {
            print(TransactionReport.render(view))
        }
    }
}

struct SubmitTransaction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "submit",
        abstract: "Submit a transaction described in a JSON file.",
        discussion: """
        The file holds the body of POST /v1/transactions, for example:

          {"gid": "order-42", "protocol": "2pc", "timeout": 30,
           "branches": [
             {"participant": "accounts", "operation": "debit", "payload": {"n": 5}},
             {"participant": "stock", "operation": "reserve", "payload": {"sku": "A1"}}
           ]}

        Keys: gid (optional; submitting the same gid and spec again returns the same \
        transaction), protocol (2pc, 3pc, tcc, saga or msg), branches (participant, \
        operation, optional payload), timeout in seconds, wait, interactive, and for \
        msg the service that prepares the message (submit it with `dtx commit GID`). \
        A malformed file is reported with the place of the mistake, and nothing is \
        sent (exit status 2).
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Argument(help: ArgumentHelp("The JSON transaction spec, or - to read it from standard input.", valueName: "file"))
    var file: String

    @Flag(help: "Wait for the outcome before printing (sets \"wait\": true).")
    var wait = false

    func run() async throws {
        var submission: TransactionSubmission
        do {
            submission = try SubmissionFile.load(file)
        } catch {
            printError("dtx: \(error.description)")
            throw OnlineExit.badInput
        }
        if wait { submission.wait = true }
        let spec = submission
        // dtxd waits for the outcome at most the transaction's timeout + 30 s.
        var requestTimeout = Duration.seconds(90)
        if spec.wait == true {
            // Capped at a week so that an absurd timeout cannot overflow the Duration.
            requestTimeout = max(requestTimeout, .seconds(min(spec.timeout ?? 30, 7 * 86_400) + 45))
        }
        let view = try await connection.withClient(timeout: requestTimeout) { try await $0.submit(spec) }
        if connection.json {
            try JSONOutput.print(view)
        } else {
            print(TransactionReport.render(view))
        }
    }
}

private let resolveDiscussion = """
For an interactive transaction that is still open this is the application's own \
decision. For any other unfinished transaction it is an operator forcing the \
outcome: dtxd logs the reason, and marks the transaction heuristic when the forced \
outcome overrides a decision it had already logged. For a prepared message (msg), \
without --reason this is its service's submit (commit) or abort; with --reason an \
operator decides in the service's place (heuristic).
"""

struct CommitTransaction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "commit",
        abstract: "Commit a transaction, or force an unfinished one to commit.",
        discussion: resolveDiscussion + " dtxd refuses to force an outcome without --reason."
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Argument(help: "The transaction's gid.")
    var gid: String

    @Option(help: ArgumentHelp("Why, for the log, the timeline and the audit (required to force an outcome).", valueName: "text"))
    var reason: String?

    @OptionGroup(title: "Audit")
    var audit: OperatorOption

    @Flag(help: "Wait for the outcome before printing.")
    var wait = false

    func validate() throws {
        try validateGID(gid)
        if let reason { try validateReason(reason, "say why this transaction is being committed") }
    }

    func run() async throws {
        let view = try await connection.withClient { try await $0.commit(gid: gid, reason: reason, wait: wait, operator: audit.name) }
        try TransactionReport.printBrief(view, json: connection.json)
    }
}

struct AbortTransaction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "abort",
        abstract: "Abort a transaction, or force an unfinished one to abort.",
        discussion: resolveDiscussion
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Argument(help: "The transaction's gid.")
    var gid: String

    @Option(help: ArgumentHelp("Why, for the log, the timeline and the audit.", valueName: "text"))
    var reason: String

    @OptionGroup(title: "Audit")
    var audit: OperatorOption

    @Flag(help: "Wait for the outcome before printing.")
    var wait = false

    func validate() throws {
        try validateGID(gid)
        try validateReason(reason, "say why this transaction is being aborted")
    }

    func run() async throws {
        let view = try await connection.withClient { try await $0.abort(gid: gid, reason: reason, wait: wait, operator: audit.name) }
        try TransactionReport.printBrief(view, json: connection.json)
    }
}

struct RetryTransaction: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retry",
        abstract: "Send a transaction's pending deliveries now, instead of at their backoff.",
        discussion: """
        For a stuck transaction whose participant is back: every branch waiting for its \
        next retry (NEXT RETRY in dtx show) is sent its message now. The reason is kept \
        in the transaction's audit. dtx recover does this for every transaction.
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Argument(help: "The transaction's gid.")
    var gid: String

    @Option(help: ArgumentHelp("Why, for the audit (required).", valueName: "text"))
    var reason: String

    @OptionGroup(title: "Audit")
    var audit: OperatorOption

    func validate() throws {
        try validateGID(gid)
        try validateReason(reason, "say why this transaction is retried now")
    }

    func run() async throws {
        let view = try await connection.withClient { try await $0.retry(gid: gid, reason: reason, operator: audit.name) }
        try TransactionReport.printBrief(view, json: connection.json)
    }
}

/// Who an operator action's audit record names.
struct OperatorOption: ParsableArguments {
    @Option(name: .customLong("operator"), help: ArgumentHelp("Your name, for the audit record. (env DTX_OPERATOR)", valueName: "name"))
    var flag: String?

    var name: String? { flag ?? ProcessInfo.processInfo.environment["DTX_OPERATOR"] }
}

struct ResolveBranch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve",
        abstract: "Declare how one branch ended, after settling it outside dtx.",
        discussion: """
        For a stuck transaction whose participant cannot finish a branch (its database \
        was restored, the branch was fixed by hand): say how the branch ended, and dtxd \
        sends it nothing more. The transaction finishes once no branch is owed anything; \
        it is marked heuristic when the branch ended against the decision. Only a branch \
        still being sent the decision can be resolved. The reason is kept in the audit.
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Argument(help: "The transaction's gid.")
    var gid: String

    @Argument(help: "The branch's id (dtx show lists them).")
    var branch: Int

    @Option(help: ArgumentHelp("How the branch ended: committed or aborted.", valueName: "outcome"))
    var outcome: String

    @Option(help: ArgumentHelp("Why, for the audit (required).", valueName: "text"))
    var reason: String

    @OptionGroup(title: "Audit")
    var audit: OperatorOption

    func validate() throws {
        try validateGID(gid)
        guard branch >= 0 else { throw ValidationError("the branch id is 0 or more, not \(branch)") }
        guard Decision(outcome: outcome) != nil else {
            throw ValidationError("--outcome must be committed or aborted (how the branch ended), not '\(outcome)'")
        }
        try validateReason(reason, "say how the branch was settled")
    }

    func run() async throws {
        let view = try await connection.withClient {
            try await $0.resolveBranch(gid: gid, branch: branch, outcome: outcome, reason: reason, operator: audit.name)
        }
        try TransactionReport.printBrief(view, json: connection.json)
    }
}

/// A `--reason` says something; `what` tells the user what to write.
func validateReason(_ reason: String, _ what: String) throws {
    if reason.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
        throw ValidationError("--reason is empty; \(what)")
    }
}
