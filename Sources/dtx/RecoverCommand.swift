import ArgumentParser
import DTXClient

struct Recover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract: "Retry every pending delivery of unfinished transactions now.",
        discussion: """
        dtxd retries failed deliveries on its own with backoff; this skips the wait, \
        for example after a participant that was down is back. With --reason, each \
        transaction retried keeps an audit record of it (as dtx retry GID does for one).
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Option(help: ArgumentHelp("Why, kept in the audit of every transaction retried.", valueName: "text"))
    var reason: String?

    @OptionGroup(title: "Audit")
    var audit: OperatorOption

    func validate() throws {
        if let reason { try validateReason(reason, "say why every transaction is retried now, or leave --reason out") }
        if reason == nil, audit.flag != nil {
            throw ValidationError("--operator names who retried in the audit records, which only --reason makes: give --reason too")
        }
    }

    func run() async throws {
        let report = try await connection.withClient { try await $0.recover(reason: reason, operator: audit.name) }
        if connection.json {
            try JSONOutput.print(report)
        } else {
            print("retried \(report.deliveries) deliveries across \(report.transactions) transactions")
        }
    }
}
