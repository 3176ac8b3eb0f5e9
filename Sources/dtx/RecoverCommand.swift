import ArgumentParser
import DTXClient

struct Recover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract: "Retry every pending delivery of unfinished transactions now.",
        discussion: """
        dtxd retries failed deliveries on its own with backoff; this skips the wait, \
        for example after a participant that was down is back.
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    func run() async throws {
        let report = try await connection.withClient { try await $0.recover() }
        if connection.json {
            try JSONOutput.print(report)
        } else {
            print("retried \(report.deliveries) deliveries across \(report.transactions) transactions")
        }
    }
}
