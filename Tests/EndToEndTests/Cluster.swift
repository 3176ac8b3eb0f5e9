import DTXAPI
import DTXClient
import DTXCore
import DTXTestSupport
import Foundation
import AsyncHTTPClient
import NIOCore
import NIOHTTP1

/// Polls `condition` until it holds (true) or `seconds` pass (false).
func eventually(seconds: Double = 20, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

/// One HTTP exchange, raw: for bad input, status codes and schema validation.
struct Exchange: Sendable {
    var method: String
    var path: String
    var status: Int
    var contentType: String?
    var body: Data
    /// The `Allow` header (of a 405).
    var allow: String? = nil

    var json: Any? { try? JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed]) }
    var errorCode: String? { ((json as? [String: Any])?["error"] as? [String: Any])?["code"] as? String }
}

/// Over AsyncHTTPClient, not URLSession: FoundationNetworking's async `data(for:)` blocks a
/// cooperative thread on a dispatch queue, and cancelling such a call from another one
/// (a test stopping its load) deadlocked the whole test process on this 2-core machine.
func http(_ method: String, _ url: String, body: String? = nil, headers: [String: String] = [:]) async throws -> Exchange {
    var request = HTTPClientRequest(url: url)
    request.method = HTTPMethod(rawValue: method)
    if let body {
        request.body = .bytes(ByteBuffer(string: body))
        request.headers.add(name: "Content-Type", value: "application/json")
    }
    for (name, value) in headers { request.headers.replaceOrAdd(name: name, value: value) }
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
    let data = try await response.body.collect(upTo: 64 << 20)
    let path = String(url.drop { $0 != "/" }.dropFirst(2).drop { $0 != "/" })
    return Exchange(method: method, path: path, status: Int(response.status.code), contentType: response.headers.first(name: "Content-Type"),
                    body: Data(data.readableBytesView), allow: response.headers.first(name: "Allow"))
}

/// A real dtxd and real participant processes on loopback, in a temporary directory.
final class Cluster: @unchecked Sendable {
    // Safe: a test drives its cluster from one task at a time.
    let directory: String
    let port: Int
    private(set) var daemon: ChildProcess?
    private(set) var participants: [String: ChildProcess] = [:]
    private(set) var participantURLs: [String: String] = [:]
    let client: CoordinatorClient

    var url: String { "http://127.0.0.1:\(port)" }

    /// dtxd's bearer token, if it requires one (participants and the client carry it).
    let token: String?

    init(_ name: String, token: String? = nil) throws {
        directory = makeTemporaryDirectory(name)
        port = freeLoopbackPort()
        self.token = token
        client = try CoordinatorClient(baseURL: "http://127.0.0.1:\(port)", token: token, timeout: .seconds(60))
    }

    /// Starts dtxd (again) on the cluster's port and data directory.
    func startDaemon(failpoints: String? = nil, arguments: [String] = [], environment: [String: String] = [:]) async throws {
        var environment = environment
        if let failpoints { environment["DTXD_FAILPOINTS"] = failpoints }
        let child = try ChildProcess("dtxd", ["--data-dir", directory + "/data", "--listen", "127.0.0.1:\(port)", "--log-level", "warning"]
                                         + (token.map { ["--token", $0] } ?? []) + arguments,
                                     environment: environment)
        daemon = child
        _ = try await child.waitForOutput { $0.contains("dtxd listening on") ? true : nil }
    }

    /// Starts a memory participant that registers itself; returns once dtxd lists it at its new URL.
    @discardableResult
    func startParticipant(_ name: String, failpoints: String? = nil, arguments: [String] = [], environment: [String: String] = [:]) async throws -> String {
        var environment = environment
        if let failpoints { environment["DTX_PARTICIPANT_FAILPOINTS"] = failpoints }
        let child = try ChildProcess("memory-participant", [
            "--name", name, "--coordinator", url, "--listen", "127.0.0.1:0", "--journal", directory + "/\(name).journal",
            "--heartbeat", "1", "--recovery-interval", "1", "--log-level", "warning",
        ] + (token.map { ["--coordinator-token", $0] } ?? []) + arguments, environment: environment)
        participants[name] = child
        let participantURL = try await child.waitForOutput { text -> String? in
            guard let range = text.range(of: "memory-participant \(name) listening on ") else { return nil }
            let rest = text[range.upperBound...]
            guard let end = rest.firstIndex(of: "\n") else { return nil }
            return String(rest[..<end])
        }
        participantURLs[name] = participantURL
        let registered = await eventually {
            (try? await client.participant(name))?.url == participantURL
        }
        guard registered else { throw ProcessError.timedOut("\(name) did not register at \(participantURL)") }
        return participantURL
    }

    func killParticipant(_ name: String) async throws {
        guard let child = participants[name] else { return }
        child.kill(SIGKILL)
        try await child.waitForExit()
    }

    func killDaemon() async throws {
        guard let daemon else { return }
        daemon.kill(SIGKILL)
        try await daemon.waitForExit()
    }

    /// The branch states a participant holds for `gid`, by branch id (from its /test/state).
    func branchStates(_ name: String, gid: String) async throws -> [Int: String] {
        guard let base = participantURLs[name] else { return [:] }
        let exchange = try await http("GET", base + "/test/state")
        let branches = ((exchange.json as? [String: Any])?["branches"] as? [[String: Any]]) ?? []
        var states: [Int: String] = [:]
        for branch in branches where branch["gid"] as? String == gid {
            if let id = branch["branch"] as? Int, let state = branch["state"] as? String { states[id] = state }
        }
        return states
    }

    /// Every branch of `gid` on `names` is in `state` (a participant that never saw a branch has none).
    func all(_ names: [String], gid: String, are state: String, expected: Int) async throws -> Bool {
        var seen = 0
        for name in names {
            let states = try await branchStates(name, gid: gid)
            guard states.values.allSatisfy({ $0 == state }) else { return false }
            seen += states.count
        }
        return seen == expected
    }

    /// Kills every process at once (a test's `defer`: nothing may outlive the test).
    func stopProcesses() {
        for child in participants.values where child.process.isRunning { child.kill(SIGKILL) }
        if let daemon, daemon.process.isRunning { daemon.kill(SIGKILL) }
    }

    func shutdown() async {
        stopProcesses()
        for child in Array(participants.values) + [daemon].compactMap({ $0 }) { _ = try? await child.waitForExit() }
        try? await client.shutdown()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
