import ArgumentParser
import DTXClient
import Foundation

/// Exit statuses of the online commands (the `wal` commands keep their own).
enum OnlineExit {
    /// dtxd answered with an error: the request was refused.
    static let refused = ExitCode(1)
    /// The input was wrong before anything was sent: a malformed file, an invalid URL.
    static let badInput = ExitCode(2)
    /// dtxd could not be reached.
    static let unreachable = ExitCode(3)
}

/// Where dtxd is and how to talk to it: shared by every command that calls the daemon.
struct ConnectionOptions: ParsableArguments {
    static let defaultURL = "http://127.0.0.1:7070"

    @Option(help: ArgumentHelp("Base URL of dtxd. (env DTX_URL, default \(ConnectionOptions.defaultURL))", valueName: "url"))
    var url: String?

    @Option(help: ArgumentHelp("Bearer token, when dtxd requires one. (env DTX_TOKEN)", valueName: "token"))
    var token: String?

    @Flag(help: "Print the daemon's answer as JSON (pretty, sorted keys, ISO 8601 dates) instead of text.")
    var json = false

    private static func environment(_ name: String) -> String? {
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else { return nil }
        return value
    }

    var baseURL: String { url ?? Self.environment("DTX_URL") ?? Self.defaultURL }

    var bearerToken: String? {
        if let token, !token.isEmpty { return token }
        return Self.environment("DTX_TOKEN")
    }

    /// Where the URL came from, so an invalid one can be fixed at its source.
    private var urlSource: String {
        if url != nil { return "--url" }
        return Self.environment("DTX_URL") != nil ? "DTX_URL" : "the default"
    }

    /// Runs `operation` with a client and shuts the client down. A failure to reach or
    /// a refusal by dtxd becomes one line on standard error and the matching exit status.
    /// `timeout` bounds each request; a request that waits for an outcome needs more
    /// than the default.
    func withClient<Result>(timeout: Duration = .seconds(90), _ operation: (CoordinatorClient) async throws -> Result) async throws -> Result {
        let client: CoordinatorClient
        do {
            client = try CoordinatorClient(baseURL: baseURL, token: bearerToken, timeout: timeout)
        } catch {
            let fix = urlSource == "DTX_URL" ? "fix DTX_URL or pass --url" : "pass e.g. --url \(Self.defaultURL)"
            printError("dtx: '\(baseURL)' (from \(urlSource)) is not an http:// or https:// URL with a host; \(fix)")
            throw OnlineExit.badInput
        }
        let outcome: Swift.Result<Result, Error>
        do {
            outcome = .success(try await operation(client))
        } catch {
            outcome = .failure(error)
        }
        // The HTTP client must be shut down before it is released, whatever happened.
        try? await client.shutdown()
        switch outcome {
        case let .success(value):
            return value
        case let .failure(error):
            throw report(error)
        }
    }

    /// Prints what went wrong and returns the exit status to throw.
    private func report(_ error: Error) -> Error {
        switch error {
        case let ClientError.unreachable(url, reason):
            printError(Text.oneLine("dtx: cannot reach dtxd at \(url): \(reason)"))
            return OnlineExit.unreachable
        case let ClientError.api(status, code, message):
            printError(Text.oneLine("dtx: \(message) (\(code), HTTP \(status))"))
            return OnlineExit.refused
        case let ClientError.unexpected(status, body):
            let excerpt = Text.truncate(body.trimmingCharacters(in: .whitespacesAndNewlines), to: 200)
            switch status {
            case 200..<300:
                printError(Text.oneLine("dtx: dtxd at \(baseURL) gave an answer this dtx cannot read (HTTP \(status)): \(excerpt); is dtx the same version as dtxd?"))
            case 500...:
                printError(Text.oneLine("dtx: dtxd at \(baseURL) failed with HTTP \(status) (a bug in dtxd; see its log): \(excerpt)"))
            default:
                printError(Text.oneLine("dtx: dtxd at \(baseURL) answered HTTP \(status): \(excerpt)"))
            }
            return OnlineExit.refused
        case let ClientError.invalidURL(url):
            printError("dtx: '\(url)' is not an http:// or https:// URL")
            return OnlineExit.badInput
        case is ExitCode, is CleanExit, is ValidationError:
            return error
        default:
            printError(Text.oneLine("dtx: talking to dtxd at \(baseURL) failed: \(error)"))
            return OnlineExit.refused
        }
    }
}
