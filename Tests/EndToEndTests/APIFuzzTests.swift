import Foundation
import Testing

/// schemathesis (from PyPI; `.ci/run` installs it) generates requests from Schemas/ and
/// checks every answer against the documents: no 5xx, every status, header and body as
/// documented, schema-invalid requests refused, schema-valid ones accepted (see
/// Tests/Tools/schemathesis.toml for the statuses that count as accepted), 405 with
/// `Allow` for methods a path does not list. A fixed seed and example count keep each
/// run the same size; the run's report says how many requests it made.
@Suite(.serialized) struct APIFuzzTests {
    private static let repository: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    private static let seed = "20261204"

    /// What one `st run` did.
    private struct FuzzRun {
        var status: Int32
        var output: String
        /// Requests sent, from the run's HAR report.
        var requests: Int

        /// The end of the output (the failures and the summary), for a failed expectation.
        var report: String { String(output.suffix(12_000)) }
    }

    private func fuzz(_ document: String, url: String, directory: String, examples: Int, headers: [String] = []) async throws -> FuzzRun {
        let har = directory + "/fuzz-\(UUID().uuidString.prefix(8)).har"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.arguments = ["st", "--config-file", Self.repository + "/Tests/Tools/schemathesis.toml", "run", document,
                             "--url", url, "--checks", "all", "--seed", Self.seed, "--max-examples", String(examples),
                             // One worker: with two, hypothesis's strategy cache raised a KeyError
                             // inside schemathesis 4.32 (not a finding about dtx).
                             "--workers", "1",
                             // The document's example submission waits (`wait: true`) for a
                             // transaction whose participant the examples re-register at an
                             // address nobody serves: its PREPARE is resent until the example's
                             // 30 s timeout aborts it.
                             "--request-timeout", "45", "--report", "har", "--report-har-path", har]
            + headers.flatMap { ["--header", $0] }
        let log = directory + "/fuzz-\(UUID().uuidString.prefix(8)).log"
        guard FileManager.default.createFile(atPath: log, contents: nil) else { throw CocoaError(.fileWriteUnknown) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        var environment = ProcessInfo.processInfo.environment
        environment["NO_COLOR"] = "1"
        process.environment = environment
        do {
            try process.run()
        } catch {
            Issue.record("cannot start schemathesis: \(error); install it with `python3 -m pip install schemathesis` (.ci/run does)")
            throw error
        }
        while process.isRunning { try await Task.sleep(for: .milliseconds(200)) }
        try handle.close()
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        if process.terminationStatus == 127 {
            Issue.record("schemathesis (`st`) is not installed: run `python3 -m pip install schemathesis` (.ci/run does)")
        }
        var requests = 0
        if let data = FileManager.default.contents(atPath: har),
           let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
           let entries = (json["log"] as? [String: Any])?["entries"] as? [Any] {
            requests = entries.count
        }
        print("schemathesis \((document as NSString).lastPathComponent) at \(url): exit \(process.terminationStatus), \(requests) requests")
        return FuzzRun(status: process.terminationStatus, output: output, requests: requests)
    }

    /// The coordinator API without a token, as dtxd serves on loopback by default. Two
    /// memory participants carry the document's example names, so generated
    /// transactions reach real participants. The document's `security` lists the empty
    /// alternative (no token configured, none needed), so the auth checks have nothing
    /// to check here; the next test runs them.
    @Test func theCoordinatorAPIKeepsItsDocument() async throws {
        let cluster = try Cluster("e2e-fuzz-coordinator")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["accounts-eu", "accounts-us"] { try await cluster.startParticipant(name) }

        let run = try await fuzz(Self.repository + "/Schemas/coordinator-api.yaml", url: cluster.url, directory: cluster.directory, examples: 60)
        #expect(run.status == 0, "\(run.report)")
        #expect(run.requests > 1000, "the run must make a real number of requests (\(run.requests))\n\(run.report)")
        #expect(try await http("GET", cluster.url + "/healthz").status == 200, "dtxd is still up")
    }

    /// With a token configured the daemon requires it everywhere but /healthz: the
    /// document without its empty `security` alternative says exactly that, so the
    /// auth checks (a request without the token, or with a wrong one, must get 401) apply.
    @Test func theCoordinatorAPIWithATokenRefusesRequestsWithoutIt() async throws {
        let cluster = try Cluster("e2e-fuzz-token")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: ["--token", "fuzz-token"])
        let document = try String(contentsOfFile: Self.repository + "/Schemas/coordinator-api.yaml", encoding: .utf8)
        let withToken = document.replacingOccurrences(of: "security:\n  - bearerAuth: []\n  - {}\n", with: "security:\n  - bearerAuth: []\n")
        #expect(withToken != document, "the document's global security lists bearerAuth and the empty alternative")
        let path = cluster.directory + "/coordinator-api-token.yaml"
        try withToken.write(toFile: path, atomically: true, encoding: .utf8)

        let run = try await fuzz(path, url: cluster.url, directory: cluster.directory, examples: 15, headers: ["Authorization: Bearer fuzz-token"])
        #expect(run.status == 0, "\(run.report)")
        #expect(run.requests > 200, "(\(run.requests) requests)\n\(run.report)")
    }

    /// The participant protocol against a memory participant on the kit, called directly.
    @Test func theParticipantKitKeepsTheParticipantProtocol() async throws {
        let cluster = try Cluster("e2e-fuzz-participant")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        let participant = try await cluster.startParticipant("accounts-eu")

        let run = try await fuzz(Self.repository + "/Schemas/participant-api.yaml", url: participant, directory: cluster.directory, examples: 60)
        #expect(run.status == 0, "\(run.report)")
        #expect(run.requests > 1000, "(\(run.requests) requests)\n\(run.report)")
    }
}
