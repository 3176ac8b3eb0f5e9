import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// The web console in a real browser: headless Chromium, driven by Selenium
/// (`Tests/Browser/console_test.py`), against a real dtxd with a token and four memory
/// participants, over a committed, an aborted, a stuck and an open transaction. The
/// script checks the list, a filter, the diagram's arrows, an operator's abort and a
/// by-hand resolution with their audit, the participants page, and a wrong token; it
/// writes a screenshot per step where its output says.
@Suite struct ConsoleBrowserTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    @Test func theConsoleShowsAndActsOnTransactionsInABrowser() async throws {
        let cluster = try Cluster("console", token: "console-token")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon(arguments: ["--stuck-after", "2"])
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "commit=unavailable")
        try await cluster.startParticipant("c")
        try await cluster.startParticipant("d", failpoints: "prepare=no")

        let committed = try await cluster.client.submit(TransactionSubmission(
            gid: "ui-committed", branches: [BranchSpec(participant: "a", operation: "debit"), BranchSpec(participant: "c", operation: "credit")], wait: true))
        #expect(committed.status == "committed")
        let aborted = try await cluster.client.submit(TransactionSubmission(
            gid: "ui-aborted", branches: [BranchSpec(participant: "a", operation: "debit"), BranchSpec(participant: "d", operation: "credit")], wait: true))
        #expect(aborted.status == "aborted")
        _ = try await cluster.client.submit(TransactionSubmission(
            gid: "ui-stuck", branches: [BranchSpec(participant: "a", operation: "debit"), BranchSpec(participant: "b", operation: "credit")], wait: false))
        _ = try await cluster.client.submit(TransactionSubmission(gid: "ui-open", timeout: 600, interactive: true))
        #expect(try await eventually { try await cluster.client.transaction("ui-stuck").stuck })

        let screenshots = cluster.directory + "/screenshots"
        let browser = try await run("/usr/bin/env", ["python3",
            Self.root + "/Tests/Browser/console_test.py", "--url", cluster.url, "--token", "console-token", "--screenshots", screenshots,
            "--committed", "ui-committed", "--aborted", "ui-aborted", "--stuck", "ui-stuck", "--open", "ui-open", "--participants", "a,b,c,d",
        ])
        print("console browser test (screenshots in \(screenshots)):\n\(browser.out)\(browser.err)")
        #expect(browser.status == 0, "\(browser.out)\(browser.err)")

        // What the browser did is what dtxd now says.
        let opened = try await cluster.client.transaction("ui-open")
        #expect(opened.status == "aborted" && opened.audit?.contains { $0.reason == "browser test: operator abort" } == true, "\(opened)")
        let resolved = try await cluster.client.transaction("ui-stuck")
        #expect(resolved.status == "committed" && resolved.audit?.contains { $0.reason == "browser test: fixed b by hand" && $0.branch == 1 } == true, "\(resolved)")
    }

    /// The console's files need no token (they hold no data); the API behind them does.
    @Test func theConsoleIsServedWithoutATokenAndItsDataIsNot() async throws {
        let cluster = try Cluster("console-files", token: "files-token")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()

        // /ui is redirected to /ui/ (the client follows), whose relative links then resolve.
        for path in ["/ui", "/ui/"] {
            let page = try await http("GET", cluster.url + path)
            #expect(page.status == 200 && page.contentType?.hasPrefix("text/html") == true, "\(path): \(page)")
            let html = String(decoding: page.body, as: UTF8.self)
            #expect(html.contains("console.js") && !html.contains("http://") && !html.contains("https://"), "no external assets: \(html)")
        }
        for (file, type) in [("console.js", "text/javascript"), ("console.css", "text/css")] {
            let answer = try await http("GET", cluster.url + "/ui/" + file)
            #expect(answer.status == 200 && answer.contentType?.hasPrefix(type) == true, "\(file): \(answer)")
        }
        let missing = try await http("GET", cluster.url + "/ui/secrets.txt")
        #expect(missing.status == 404 && missing.errorCode == "not_found", "\(missing)")
        let data = try await http("GET", cluster.url + "/v1/transactions")
        #expect(data.status == 401, "\(data)")
    }
}
