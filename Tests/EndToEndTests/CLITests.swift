import DTXAPI
import DTXClient
import DTXCore
import Foundation
import Testing

/// What one run of `dtx` did.
private struct CLIRun: CustomStringConvertible {
    var status: Int32
    var out: String
    var err: String

    /// Standard error's non-empty lines.
    var errLines: [String] { err.split(separator: "\n").map(String.init) }
    var outLines: [String] { out.split(separator: "\n").map(String.init) }
    var json: Any? { try? JSONSerialization.jsonObject(with: Data(out.utf8)) }

    var description: String { "exit \(status)\n--- stdout\n\(out)--- stderr\n\(err)" }
}

/// Runs `dtx` to completion with `arguments`, in an environment without DTX_URL and
/// DTX_TOKEN (plus `environment`), feeding `stdin` through a pipe (or /dev/null).
private func dtx(_ arguments: [String], environment: [String: String] = [:], stdin: String? = nil, seconds: Double = 120) async throws -> CLIRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: productsDirectory + "/dtx")
    process.arguments = arguments
    var inherited = ProcessInfo.processInfo.environment
    inherited["DTX_URL"] = nil
    inherited["DTX_TOKEN"] = nil
    process.environment = inherited.merging(environment) { $1 }

    // Output goes to files: nothing to drain while the child runs, nothing lost at exit.
    let scratch = makeTemporaryDirectory("dtx-cli-run")
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let outPath = scratch + "/stdout", errPath = scratch + "/stderr"
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    let outHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
    let errHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
    process.standardOutput = outHandle
    process.standardError = errHandle
    let input = Pipe()
    process.standardInput = stdin == nil ? FileHandle.nullDevice : input
    try process.run()
    if let stdin {
        try input.fileHandleForWriting.write(contentsOf: Data(stdin.utf8))
        try input.fileHandleForWriting.close()
    }
    let deadline = Date().addingTimeInterval(seconds)
    while process.isRunning {
        if Date() > deadline {
            kill(process.processIdentifier, SIGKILL)
            throw ProcessError.timedOut("dtx \(arguments.joined(separator: " ")) did not exit within \(seconds)s")
        }
        try await Task.sleep(for: .milliseconds(10))
    }
    try outHandle.close()
    try errHandle.close()
    let out = try String(contentsOfFile: outPath, encoding: .utf8)
    let err = try String(contentsOfFile: errPath, encoding: .utf8)
    return CLIRun(status: process.terminationStatus, out: out, err: err)
}

/// The value of a `label: value` line of `show`, `submit`, `commit` or `abort` output.
private func field(_ label: String, in output: String) -> String? {
    for line in output.split(separator: "\n") where line.hasPrefix(label + ":") {
        return line.dropFirst(label.count + 1).trimmingCharacters(in: .whitespaces)
    }
    return nil
}

/// A table row's cells (columns are separated by two or more blanks).
private func cells(_ line: String) -> [String] {
    line.components(separatedBy: "  ").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
}

/// The gids in `dtx list --json` output.
private func listedGIDs(_ run: CLIRun) -> [String]? {
    guard let transactions = (run.json as? [String: Any])?["transactions"] as? [[String: Any]] else { return nil }
    return transactions.compactMap { $0["gid"] as? String }
}

private func writeSpec(_ text: String, to path: String) throws {
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

/// `dtx` against a real dtxd and real memory participants.
@Suite(.serialized) struct CLITests {
    @Test func participantsListsTheRegisteredParticipantsAsATableAndAsJSON() async throws {
        let cluster = try Cluster("cli-participants")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        let table = try await dtx(["participants", "--url", cluster.url])
        #expect(table.status == 0, "\(table)")
        #expect(table.err.isEmpty, "\(table)")
        let lines = table.outLines
        #expect(lines.count == 3, "\(table)")
        #expect(cells(lines.first ?? "") == ["NAME", "URL", "PROTOCOLS", "LAST SEEN", "UNFINISHED"], "\(table)")
        for name in ["a", "b"] {
            let row = lines.dropFirst().map(cells).first { $0.first == name }
            #expect(row?[1] == cluster.participantURLs[name], "\(table)")
            #expect(row?[2].contains("2pc") == true, "\(table)")
            #expect(row?.last == "0", "no unfinished branches yet: \(table)")
        }

        let json = try await dtx(["participants", "--url", cluster.url, "--json"])
        #expect(json.status == 0, "\(json)")
        let participants = (json.json as? [String: Any])?["participants"] as? [[String: Any]]
        #expect(participants?.compactMap { $0["name"] as? String }.sorted() == ["a", "b"], "\(json)")
        #expect(participants?.first { $0["name"] as? String == "a" }?["url"] as? String == cluster.participantURLs["a"], "\(json)")

        // One participant by name; an unknown one is the daemon's refusal (exit 1).
        let one = try await dtx(["participants", "b", "--url", cluster.url])
        #expect(one.status == 0, "\(one)")
        #expect(field("name", in: one.out) == "b", "\(one)")
        #expect(field("url", in: one.out) == cluster.participantURLs["b"], "\(one)")
        let unknown = try await dtx(["participants", "nobody", "--url", cluster.url])
        #expect(unknown.status == 1, "\(unknown)")
        #expect(unknown.errLines.count == 1 && unknown.err.hasPrefix("dtx: "), "\(unknown)")
    }

    @Test func submitFromAFileCommitsAndShowAndListReportIt() async throws {
        let cluster = try Cluster("cli-submit")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        let specPath = cluster.directory + "/transfer.json"
        try writeSpec("""
        {"gid": "cli-commit", "protocol": "2pc", "timeout": 10,
         "branches": [
           {"participant": "a", "operation": "debit", "payload": {"amount": 5}},
           {"participant": "b", "operation": "credit", "payload": {"amount": 5}}
         ]}
        """, to: specPath)
        let submitted = try await dtx(["submit", specPath, "--url", cluster.url, "--wait"])
        #expect(submitted.status == 0, "\(submitted)")
        #expect(field("gid", in: submitted.out) == "cli-commit", "\(submitted)")
        #expect(field("status", in: submitted.out) == "committed", "\(submitted)")
        #expect(field("decision", in: submitted.out) == "commit", "\(submitted)")
        #expect(try await cluster.all(["a", "b"], gid: "cli-commit", are: "committed", expected: 2))

        let show = try await dtx(["show", "cli-commit", "--url", cluster.url])
        #expect(show.status == 0, "\(show)")
        #expect(field("status", in: show.out) == "committed", "\(show)")
        #expect(field("protocol", in: show.out) == "2pc", "\(show)")
        let showLines = show.outLines
        let branchRows = showLines.map(cells).filter { $0.count >= 5 && ["0", "1"].contains($0[0]) && ["a", "b"].contains($0[1]) }
        #expect(branchRows.map { Array($0.prefix(4)) } == [["0", "a", "debit", "committed"], ["1", "b", "credit", "committed"]], "\(show)")
        #expect(showLines.contains("branches:") && showLines.contains("timeline:"), "\(show)")
        #expect(showLines.contains { cells($0) == ["ID", "PARTICIPANT", "OPERATION", "STATE", "ATTEMPTS", "NEXT RETRY", "LAST ERROR", "RESULT"] }, "\(show)")
        #expect(showLines.contains { $0.hasPrefix("TIME") && $0.contains("EVENT") }, "\(show)")
        #expect(show.out.contains("decided commit") && show.out.contains("finished committed"), "\(show)")

        let showJSON = try await dtx(["show", "cli-commit", "--url", cluster.url, "--json"])
        let view = showJSON.json as? [String: Any]
        #expect(view?["status"] as? String == "committed", "\(showJSON)")
        #expect((view?["branches"] as? [[String: Any]])?.compactMap { $0["state"] as? String } == ["committed", "committed"], "\(showJSON)")

        let list = try await dtx(["list", "--url", cluster.url])
        #expect(list.status == 0, "\(list)")
        #expect(cells(list.outLines.first ?? "") == ["GID", "PROTOCOL", "STATUS", "AGE", "PARTICIPANTS"], "\(list)")
        let row = list.outLines.map(cells).first { $0.first == "cli-commit" }
        #expect(row?[1] == "2pc" && row?[2] == "committed" && row?.last == "a,b", "\(list)")
        #expect(!list.out.contains("next page"), "\(list)")

        let aborted = try await dtx(["list", "--url", cluster.url, "--status", "aborted"])
        #expect(aborted.status == 0, "\(aborted)")
        #expect(!aborted.out.contains("cli-commit"), "\(aborted)")
        #expect(aborted.out.contains("no transactions match"), "\(aborted)")

        let committed = try await dtx(["list", "--url", cluster.url, "--status", "committed", "--json"])
        #expect(committed.status == 0, "\(committed)")
        #expect(listedGIDs(committed) == ["cli-commit"], "\(committed)")

        // A second transaction: one per page, newest first, with the cursor to the next.
        let second = try await cluster.client.submit(TransactionSubmission(
            gid: "cli-commit-2", branches: [BranchSpec(participant: "a", operation: "debit")], timeout: 10, wait: true))
        #expect(second.status == "committed")
        let json = try await dtx(["list", "--url", cluster.url, "--json"])
        #expect(json.status == 0, "\(json)")
        #expect(listedGIDs(json) == ["cli-commit-2", "cli-commit"], "\(json)")
        #expect((json.json as? [String: Any])?["nextCursor"] == nil, "\(json)")

        let first = try await dtx(["list", "--url", cluster.url, "--limit", "1"])
        #expect(first.status == 0, "\(first)")
        let firstRows = first.outLines.dropFirst().filter { !$0.hasPrefix("next page") }
        #expect(firstRows.count == 1 && cells(firstRows[0]).first == "cli-commit-2", "\(first)")
        let hint = first.outLines.last ?? ""
        #expect(hint.hasPrefix("next page: --cursor "), "\(first)")
        let cursor = String(hint.dropFirst("next page: --cursor ".count))
        #expect(!cursor.isEmpty, "\(first)")

        let next = try await dtx(["list", "--url", cluster.url, "--limit", "1", "--cursor", cursor])
        #expect(next.status == 0, "\(next)")
        #expect(next.outLines.dropFirst().map { cells($0).first } == ["cli-commit"], "\(next)")
        #expect(!next.out.contains("next page"), "the last page has no cursor: \(next)")

        let everything = try await dtx(["list", "--url", cluster.url, "--limit", "1", "--all", "--json"])
        #expect(listedGIDs(everything) == ["cli-commit-2", "cli-commit"], "\(everything)")
    }

    @Test func submitReadsTheSpecFromStandardInput() async throws {
        let cluster = try Cluster("cli-stdin")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        let spec = #"{"gid":"cli-stdin","protocol":"2pc","timeout":10,"branches":[{"participant":"a","operation":"debit"},{"participant":"b","operation":"credit"}]}"#
        let submitted = try await dtx(["submit", "-", "--url", cluster.url, "--wait"], stdin: spec)
        #expect(submitted.status == 0, "\(submitted)")
        #expect(field("gid", in: submitted.out) == "cli-stdin", "\(submitted)")
        #expect(field("status", in: submitted.out) == "committed", "\(submitted)")
        #expect(try await cluster.client.transaction("cli-stdin").status == "committed")
        #expect(try await cluster.all(["a", "b"], gid: "cli-stdin", are: "committed", expected: 2))

        // --json prints the daemon's view, which parses.
        let again = try await dtx(["submit", "-", "--url", cluster.url, "--json"], stdin: spec)
        #expect(again.status == 0, "\(again)")
        #expect((again.json as? [String: Any])?["gid"] as? String == "cli-stdin", "\(again)")

        // Malformed standard input is reported as such, and nothing is sent.
        let broken = try await dtx(["submit", "-", "--url", cluster.url], stdin: #"{"protocol":"2pc","branches":["#)
        #expect(broken.status == 2, "\(broken)")
        #expect(broken.errLines.count == 1 && broken.err.contains("standard input"), "\(broken)")
    }

    @Test func aMalformedSpecFileIsRefusedBeforeAnythingIsSent() async throws {
        let cluster = try Cluster("cli-malformed")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")

        let before = try await dtx(["list", "--url", cluster.url, "--json"])
        #expect(before.status == 0, "\(before)")
        let gidsBefore = try #require(listedGIDs(before), "\(before)")

        let cases: [(file: String, text: String, mentions: String)] = [
            // Cut short: a syntax error.
            ("truncated.json", #"{"gid": "cli-bad-1", "protocol": "2pc", "branches": [{"participant": "a", "operation": "x"}"#, "not valid JSON"),
            // A misspelt key, which a typed decode would drop.
            ("misspelt.json", #"{"gid": "cli-bad-2", "protocol": "2pc", "branchs": [{"participant": "a", "operation": "x"}]}"#, "branchs"),
            // An unknown protocol.
            ("protocol.json", #"{"gid": "cli-bad-3", "protocol": "4pc", "branches": [{"participant": "a", "operation": "x"}]}"#, "protocol"),
        ]
        for (file, text, mentions) in cases {
            let path = cluster.directory + "/" + file
            try writeSpec(text, to: path)
            let submitted = try await dtx(["submit", path, "--url", cluster.url, "--wait"])
            #expect(submitted.status == 2, "\(file): \(submitted)")
            #expect(submitted.errLines.count == 1, "\(file): one line on stderr: \(submitted)")
            #expect(submitted.err.hasPrefix("dtx: ") && submitted.err.contains(path), "\(file): names the file: \(submitted)")
            #expect(submitted.err.contains(mentions), "\(file): says what is wrong: \(submitted)")
            #expect(submitted.out.isEmpty, "\(file): \(submitted)")
        }
        let missing = try await dtx(["submit", cluster.directory + "/nope.json", "--url", cluster.url])
        #expect(missing.status == 2, "\(missing)")
        #expect(missing.errLines.count == 1 && missing.err.contains(cluster.directory + "/nope.json"), "\(missing)")

        let after = try await dtx(["list", "--url", cluster.url, "--json"])
        #expect(after.status == 0, "\(after)")
        #expect(listedGIDs(after) == gidsBefore, "nothing was submitted: \(after)")
        for gid in ["cli-bad-1", "cli-bad-2", "cli-bad-3"] {
            let show = try await dtx(["show", gid, "--url", cluster.url])
            #expect(show.status == 1, "\(gid) is unknown to dtxd: \(show)")
        }
    }

    @Test func anUnreachableDaemonIsExitThreeWithOneLine() async throws {
        let cluster = try Cluster("cli-unreachable")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()

        let flag = try await dtx(["list", "--url", "http://127.0.0.1:1"])
        #expect(flag.status == 3, "\(flag)")
        #expect(flag.errLines.count == 1, "\(flag)")
        #expect(flag.err.hasPrefix("dtx: cannot reach dtxd at http://127.0.0.1:1"), "\(flag)")
        #expect(flag.out.isEmpty, "\(flag)")

        let variable = try await dtx(["list"], environment: ["DTX_URL": "http://127.0.0.1:1"])
        #expect(variable.status == 3, "\(variable)")
        #expect(variable.errLines.count == 1, "\(variable)")
        #expect(variable.err.hasPrefix("dtx: cannot reach dtxd at http://127.0.0.1:1"), "\(variable)")

        // DTX_URL at the live daemon works; a flag wins over the variable.
        let live = try await dtx(["list"], environment: ["DTX_URL": cluster.url])
        #expect(live.status == 0, "\(live)")
        #expect(live.out.contains("no transactions match"), "\(live)")
        let flagWins = try await dtx(["list", "--url", "http://127.0.0.1:1"], environment: ["DTX_URL": cluster.url])
        #expect(flagWins.status == 3, "\(flagWins)")
        #expect(flagWins.err.hasPrefix("dtx: cannot reach dtxd at http://127.0.0.1:1"), "\(flagWins)")

        // Not a URL: bad input (2), before anything is sent, naming where it came from.
        let invalid = try await dtx(["list"], environment: ["DTX_URL": "nonsense"])
        #expect(invalid.status == 2, "\(invalid)")
        #expect(invalid.errLines.count == 1 && invalid.err.contains("DTX_URL"), "\(invalid)")
    }

    @Test func abortNeedsAReasonAndAnAbortedTransactionCannotBeCommitted() async throws {
        let cluster = try Cluster("cli-aborted")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        let noReason = try await dtx(["abort", "cli-no", "--url", cluster.url])
        #expect(noReason.status == 64, "\(noReason)")
        #expect(noReason.err.contains("--reason"), "\(noReason)")
        let emptyReason = try await dtx(["abort", "cli-no", "--reason", " ", "--url", cluster.url])
        #expect(emptyReason.status == 64, "\(emptyReason)")
        #expect(emptyReason.err.contains("--reason"), "\(emptyReason)")

        let specPath = cluster.directory + "/refused.json"
        try writeSpec("""
        {"gid": "cli-no", "protocol": "2pc", "timeout": 10,
         "branches": [
           {"participant": "a", "operation": "debit", "payload": {"vote": "no"}},
           {"participant": "b", "operation": "credit"}
         ]}
        """, to: specPath)
        let submitted = try await dtx(["submit", specPath, "--url", cluster.url])
        #expect(submitted.status == 0, "\(submitted)")
        #expect(try await eventually { try await cluster.client.transaction("cli-no").status == "aborted" })

        for extra in [[], ["--reason", "operator insists"], ["--wait"]] {
            let commit = try await dtx(["commit", "cli-no", "--url", cluster.url] + extra)
            #expect(commit.status == 1, "\(extra): \(commit)")
            #expect(commit.errLines.count == 1, "\(extra): \(commit)")
            #expect(commit.err.hasPrefix("dtx: ") && commit.err.contains("already aborted"), "\(extra): \(commit)")
            #expect(commit.out.isEmpty, "\(extra): \(commit)")
        }

        let show = try await dtx(["show", "cli-no", "--url", cluster.url])
        #expect(show.status == 0, "\(show)")
        #expect(field("status", in: show.out) == "aborted", "\(show)")
        #expect(field("decision", in: show.out) == "abort", "\(show)")
        // b prepared and is rolled back; a refused PREPARE, so it holds nothing to commit.
        #expect(try await eventually { try await cluster.all(["b"], gid: "cli-no", are: "rolled_back", expected: 1) })
        #expect(try await cluster.branchStates("a", gid: "cli-no").values.allSatisfy { $0 == "rolled_back" })

        let list = try await dtx(["list", "--url", cluster.url, "--status", "aborted", "--json"])
        #expect(listedGIDs(list) == ["cli-no"], "\(list)")
    }

    @Test func anInteractiveTransactionIsCommittedThroughTheCLI() async throws {
        let cluster = try Cluster("cli-interactive")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        for name in ["a", "b"] { try await cluster.startParticipant(name) }

        let begun = try await dtx(["submit", "-", "--url", cluster.url], stdin: #"{"protocol":"2pc","interactive":true,"gid":"cli-xa","timeout":30}"#)
        #expect(begun.status == 0, "\(begun)")
        #expect(field("status", in: begun.out) == "active", "\(begun)")
        #expect(field("interactive", in: begun.out) == "yes", "\(begun)")
        #expect(begun.out.contains("branches: none"), "\(begun)")

        let prepared = try await http("POST", cluster.participantURLs["a"]! + "/dtx/2pc/prepare", body: #"{"gid":"cli-xa","branch":0,"operation":"reserve"}"#)
        #expect(prepared.status == 200)
        let enlisted = try await cluster.client.enlist(gid: "cli-xa", EnlistRequest(participant: "a", operation: "reserve"))
        #expect(enlisted.branch == 0)
        #expect(try await cluster.branchStates("a", gid: "cli-xa") == [0: "prepared"])

        let commit = try await dtx(["commit", "cli-xa", "--url", cluster.url, "--wait"])
        #expect(commit.status == 0, "\(commit)")
        #expect(field("gid", in: commit.out) == "cli-xa", "\(commit)")
        #expect(field("status", in: commit.out) == "committed", "\(commit)")
        #expect(field("decision", in: commit.out) == "commit", "\(commit)")
        #expect(try await cluster.branchStates("a", gid: "cli-xa") == [0: "committed"])
        #expect(try await cluster.client.transaction("cli-xa").status == "committed")

        // Committing again is the same answer; aborting now is refused.
        let again = try await dtx(["commit", "cli-xa", "--url", cluster.url])
        #expect(again.status == 0 && field("status", in: again.out) == "committed", "\(again)")
        let abort = try await dtx(["abort", "cli-xa", "--reason", "too late", "--url", cluster.url])
        #expect(abort.status == 1, "\(abort)")
        #expect(abort.errLines.count == 1 && abort.err.contains("already committed"), "\(abort)")

        let show = try await dtx(["show", "cli-xa", "--url", cluster.url])
        #expect(show.out.contains("enlisted") && show.out.contains("commit requested"), "\(show)")
    }

    @Test func recoverRetriesPendingDeliveriesNow() async throws {
        let cluster = try Cluster("cli-recover")
        defer { cluster.stopProcesses(); Task { await cluster.shutdown() } }
        try await cluster.startDaemon()
        try await cluster.startParticipant("a")
        try await cluster.startParticipant("b", failpoints: "commit=crash")

        // Nothing unfinished: nothing to retry.
        let idle = try await dtx(["recover", "--url", cluster.url])
        #expect(idle.status == 0, "\(idle)")
        #expect(idle.out == "retried 0 deliveries across 0 transactions\n", "\(idle)")

        // b dies on COMMIT: the delivery to it stays pending.
        _ = try await cluster.client.submit(TransactionSubmission(
            gid: "cli-stuck", branches: [BranchSpec(participant: "a", operation: "debit"), BranchSpec(participant: "b", operation: "credit")],
            timeout: 10, wait: false))
        #expect(try await cluster.participants["b"]?.waitForExit() == SIGKILL)
        #expect(try await eventually { try await cluster.client.transaction("cli-stuck").branches[1].attempts >= 2 })
        // A retry may be in flight at the instant of the call; then the timer is not due.
        var pending: CLIRun?
        #expect(try await eventually {
            pending = try await dtx(["recover", "--url", cluster.url])
            return pending?.out == "retried 1 deliveries across 1 transactions\n"
        }, "\(pending.map(String.init(describing:)) ?? "-")")
        #expect(pending?.status == 0)
        let json = try await dtx(["recover", "--url", cluster.url, "--json"])
        #expect(json.status == 0, "\(json)")
        let report = json.json as? [String: Any]
        #expect(report?["transactions"] as? Int != nil && report?["deliveries"] as? Int != nil, "\(json)")

        // With a reason, each transaction retried keeps an audit record of it.
        var audited: CLIRun?
        #expect(try await eventually {
            audited = try await dtx(["recover", "--url", cluster.url, "--reason", "b is being restarted", "--operator", "ops"])
            return try await cluster.client.transaction("cli-stuck").audit?.contains {
                $0.action.hasPrefix("retry all now") && $0.who == "ops (local)" && $0.reason == "b is being restarted"
            } == true
        }, "\(audited.map(String.init(describing:)) ?? "-")")
        let blank = try await dtx(["recover", "--url", cluster.url, "--reason", "  "])
        #expect(blank.status != 0 && blank.err.contains("--reason is empty"), "\(blank)")

        // b is back: the retry delivers COMMIT.
        try await cluster.startParticipant("b")
        _ = try await dtx(["recover", "--url", cluster.url])
        #expect(try await eventually(seconds: 40) { try await cluster.client.transaction("cli-stuck").status == "committed" })
        #expect(try await cluster.all(["a", "b"], gid: "cli-stuck", are: "committed", expected: 2))
    }
}
