import ArgumentParser
import DTXAPI
import DTXClient
import DTXCore
import Foundation

/// `transfer`: moves money between two accounts held by two account services (for
/// example one on SQLite and one on PostgreSQL) in one 2PC (or, with `--protocol 3pc`,
/// 3PC) global transaction.
@main
struct Transfer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "transfer",
        abstract: "Move money between accounts in different databases, atomically, through dtxd.",
        discussion: """
        Accounts are named SERVICE:ACCOUNT, the service being the name an accounts \
        service registered with dtxd. Exit status 0 when the transfer committed, 1 when \
        it was refused (e.g. insufficient funds) and rolled back everywhere, 3 when dtxd \
        cannot be reached.
        """
    )

    @Option(help: "Account to debit, as SERVICE:ACCOUNT.")
    var from: String

    @Option(help: "Account to credit, as SERVICE:ACCOUNT.")
    var to: String

    @Option(help: "Amount, a whole number of cents above 0.")
    var amount: Int

    @Option(name: .customLong("protocol"), help: "Atomic-commit protocol: 2pc, or 3pc (three-phase commit: the services finish the transfer by themselves if dtxd dies and stays down).")
    var commitProtocol: CommitProtocol = .twoPhase

    @Option(help: "Global transaction id (default: generated). Submitting the same id again is safe.")
    var gid: String?

    @Option(help: "URL of dtxd. (env DTX_URL, default http://127.0.0.1:7070)")
    var url: String?

    @Option(help: "Bearer token for dtxd. (env DTX_TOKEN)")
    var token: String?

    func validate() throws {
        guard amount > 0 else { throw ValidationError("--amount must be above 0") }
        _ = try Self.split(from)
        _ = try Self.split(to)
    }

    static func split(_ text: String) throws -> (service: String, account: String) {
        let parts = text.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw ValidationError("'\(text)' is not SERVICE:ACCOUNT, e.g. accounts-eu:alice")
        }
        return (parts[0], parts[1])
    }

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        let client = try CoordinatorClient(baseURL: url ?? env["DTX_URL"] ?? "http://127.0.0.1:7070", token: token ?? env["DTX_TOKEN"])
        defer { Task { try? await client.shutdown() } }
        let (debitService, debitAccount) = try Self.split(from)
        let (creditService, creditAccount) = try Self.split(to)
        let submission = TransactionSubmission(
            gid: gid, protocol: commitProtocol.wire,
            branches: [
                BranchSpec(participant: debitService, operation: "debit", payload: .object(["account": .string(debitAccount), "amount": .number(Double(amount))])),
                BranchSpec(participant: creditService, operation: "credit", payload: .object(["account": .string(creditAccount), "amount": .number(Double(amount))])),
            ],
            timeout: 30, wait: true
        )
        let view: TransactionView
        do {
            view = try await client.submit(submission)
        } catch let error as ClientError {
            FileHandle.standardError.write(Data("transfer: \(error)\n".utf8))
            if case .unreachable = error { throw ExitCode(3) }
            throw ExitCode(1)
        }
        switch view.decision {
        case .commit?:
            print("committed: moved \(amount) from \(from) to \(to) (gid \(view.gid), \(view.status))")
        case .abort?:
            print("rolled back: \(view.error ?? "refused") (gid \(view.gid))")
            throw ExitCode(1)
        case nil:
            print("undecided after waiting: \(view.status) (gid \(view.gid)); see `dtx show \(view.gid)`")
            throw ExitCode(1)
        }
    }
}

/// The protocols a transfer can run in: the atomic ones (TCC and sagas go through `dtx submit`).
enum CommitProtocol: String, CaseIterable, ExpressibleByArgument {
    case twoPhase = "2pc"
    case threePhase = "3pc"

    var wire: TransactionProtocol {
        switch self {
        case .twoPhase: .twoPhaseCommit
        case .threePhase: .threePhaseCommit
        }
    }
}
