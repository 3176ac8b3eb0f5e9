import ArgumentParser
import DTXConformance
import DTXCore
import Foundation

struct ConformanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "conformance",
        abstract: "Check that a participant keeps the participant contract (Schemas/participant-api.yaml).",
        discussion: """
        Plays the coordinator against the participant at --participant, with fresh gids, \
        and checks each duty of the contract: idempotent repeats, duplicate and \
        out-of-order delivery, null compensation, no hanging, presumed abort, the \
        one-phase commit's duty, refusals, bad requests, batches, 3PC states and, with \
        --restart-cmd, that prepared, tried and pre-committed branches survive a SIGKILL. \
        The participant serves the conformance operations dtx.conformance.add, .read and \
        .refuse (see the contract's "Conformance run"), which let the run see what each \
        branch's work left behind.

        The run also serves the coordinator API a participant calls (registration, \
        heartbeats, outcome and 3PC state questions, answered from the run's own \
        decisions) at --coordinator-listen: start the participant with that URL as its \
        coordinator. --restart-cmd runs with /bin/sh -c and must SIGKILL the participant, \
        start it again in the background and exit; it gets the run's coordinator URL in \
        DTX_CONFORMANCE_COORDINATOR and the participant URL in DTX_CONFORMANCE_PARTICIPANT.

        Prints one line per duty, with the request and answer of each failure. Exit \
        status: 0 every duty passed; 1 a duty failed; 2 bad input; 3 the participant \
        does not answer.
        """
    )

    @Option(help: ArgumentHelp("Base URL of the participant to check.", valueName: "url"))
    var participant: String

    @Option(help: ArgumentHelp("Comma-separated protocols to check: 2pc, 3pc, tcc, saga, msg (its check-back). (default: every protocol the participant serves)", valueName: "list"))
    var protocols: String?

    @Option(name: .customLong("restart-cmd"), help: ArgumentHelp("Shell command that SIGKILLs the participant and starts it again; enables the durability duties.", valueName: "command"))
    var restartCommand: String?

    @Option(name: .customLong("callback-token"), help: ArgumentHelp("The bearer token the participant expects on calls; calls without it are checked to be refused.", valueName: "token"))
    var callbackToken: String?

    @Option(name: .customLong("name"), help: ArgumentHelp("The participant's name, listed in 3PC requests. (default: the name it registers with the run, or 'conformance')", valueName: "name"))
    var participantName: String?

    @Option(name: .customLong("coordinator-listen"), help: ArgumentHelp("host:port where the run serves the coordinator API the participant calls; port 0 picks one. (default 127.0.0.1:0)", valueName: "address"))
    var coordinatorListen: String = "127.0.0.1:0"

    @Option(name: .customLong("request-timeout"), help: ArgumentHelp("Seconds the run waits for each answer. (default 10)", valueName: "seconds"))
    var requestTimeout: Double = 10

    @Flag(help: "Print the report as JSON.")
    var json = false

    func run() async throws {
        let configuration: ConformanceConfiguration
        do {
            configuration = try makeConfiguration()
        } catch let error as ValidationError {
            FileHandle.standardError.write(Data("dtx conformance: \(error.message)\n".utf8))
            throw OnlineExit.badInput
        }
        let json = json
        let report: ConformanceReport
        do {
            report = try await Conformance.run(configuration, announce: { url in
                guard !json else { return }
                print("checking \(configuration.participantURL); the run's coordinator API is at \(url)")
            }, progress: { result in
                guard !json else { return }
                print(Self.line(result))
            })
        } catch let error as ConformanceError {
            FileHandle.standardError.write(Data("dtx conformance: \(error.description)\n".utf8))
            throw error.kind == .unreachable ? OnlineExit.unreachable : OnlineExit.badInput
        }
        if json {
            try JSONOutput.print(report)
        } else {
            print(Self.summary(report))
        }
        if !report.passed { throw ExitCode(1) }
    }

    private func makeConfiguration() throws -> ConformanceConfiguration {
        var chosen: [TransactionProtocol]?
        if let protocols {
            chosen = try protocols.split(separator: ",").map { name in
                guard let proto = TransactionProtocol(rawValue: name.trimmingCharacters(in: .whitespaces).lowercased()) else {
                    throw ValidationError("--protocols: unknown protocol '\(name)'; use 2pc, 3pc, tcc, saga or msg")
                }
                return proto
            }
            guard chosen?.isEmpty == false else { throw ValidationError("--protocols names no protocol; use 2pc, 3pc, tcc, saga or msg") }
        }
        guard let colon = coordinatorListen.lastIndex(of: ":"), let port = Int(coordinatorListen[coordinatorListen.index(after: colon)...]),
              (0...65535).contains(port), colon > coordinatorListen.startIndex else {
            throw ValidationError("--coordinator-listen: cannot read '\(coordinatorListen)'; write it as host:port, e.g. 127.0.0.1:0")
        }
        guard requestTimeout > 0, requestTimeout <= 600 else {
            throw ValidationError("--request-timeout must be above 0 and at most 600 seconds, not \(requestTimeout)")
        }
        return ConformanceConfiguration(participantURL: participant, protocols: chosen, restartCommand: restartCommand, callbackToken: callbackToken,
                                        participantName: participantName, coordinatorHost: String(coordinatorListen[..<colon]), coordinatorPort: port,
                                        requestTimeout: Duration(apiSeconds: requestTimeout))
    }

    static func line(_ result: DutyResult) -> String {
        var text = "\(result.outcome.rawValue.uppercased().padding(toLength: 5, withPad: " ", startingAt: 0)) \(result.id.padding(toLength: 24, withPad: " ", startingAt: 0)) \(result.duty)"
        if let reason = result.reason {
            text += "\n      " + reason
        }
        for exchange in result.exchanges ?? [] {
            text += "\n      " + exchange.description.replacingOccurrences(of: "\n", with: "\n      ")
        }
        return text
    }

    static func summary(_ report: ConformanceReport) -> String {
        let count = { (outcome: DutyResult.Outcome) in report.duties.filter { $0.outcome == outcome }.count }
        var text = "\(report.duties.count) duties of \(report.protocols.joined(separator: ", ")): \(count(.pass)) passed, \(count(.fail)) failed, \(count(.skip)) skipped"
        if !report.notServed.isEmpty { text += "; not served: \(report.notServed.joined(separator: ", "))" }
        return text + String(format: " (%.1f s)", report.seconds)
    }
}
