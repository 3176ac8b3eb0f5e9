import ArgumentParser
import AsyncHTTPClient
import DTXAPI
import Foundation
import NIOCore
import Synchronization

/// The processes a benchmark starts (siblings of this executable), stopped at the end.
final class BenchProcesses: Sendable {
    private let started = Mutex<[Process]>([])

    /// Starts a sibling executable and waits for its "… listening on URL" line.
    func start(_ name: String, _ arguments: [String], environment: [String: String], marker: String) throws -> (Process, String) {
        let directory = ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]) as NSString
        let process = Process()
        process.executableURL = URL(fileURLWithPath: directory.deletingLastPathComponent + "/" + name)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        started.withLock { $0.append(process) }
        var text = ""
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let data = output.fileHandleForReading.availableData
            if data.isEmpty { break }
            text += String(decoding: data, as: UTF8.self)
            if let range = text.range(of: marker), let end = text[range.upperBound...].firstIndex(of: "\n") {
                let line = String(text[range.upperBound..<end])
                return (process, String(line.split(separator: " ").first ?? ""))
            }
        }
        process.terminate()
        throw ValidationError("\(name) did not start (build it with -c release beside dtx-bench): \(text)")
    }

    /// Stops every process started and waits for them to exit.
    func stopAll() {
        let processes = started.withLock { $0 }
        for process in processes where process.isRunning { process.terminate() }
        for process in processes { process.waitUntilExit() }
    }
}

/// Waits until dtxd lists `count` participants.
func waitForRegistrations(_ http: HTTPClient, _ daemonURL: String, count: Int) async throws {
    for _ in 0..<400 {
        let response = try await http.execute(HTTPClientRequest(url: daemonURL + "/v1/participants"), timeout: .seconds(5))
        let body = try await response.body.collect(upTo: 1 << 20)
        if let list = try? JSONDecoder.dtx().decode(ParticipantList.self, from: Data(body.readableBytesView)), list.participants.count == count { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw ValidationError("participants did not register with dtxd")
}

/// One unlabelled sample from dtxd's /metrics.
func metric(_ http: HTTPClient, _ daemonURL: String, _ name: String) async throws -> Double {
    try await metrics(http, daemonURL, [name])[0]
}

/// Unlabelled samples from one read of dtxd's /metrics, in the order of `names` (0 when absent).
func metrics(_ http: HTTPClient, _ daemonURL: String, _ names: [String]) async throws -> [Double] {
    let response = try await http.execute(HTTPClientRequest(url: daemonURL + "/metrics"), timeout: .seconds(5))
    let text = String(buffer: try await response.body.collect(upTo: 16 << 20))
    var values = [Double](repeating: 0, count: names.count)
    for line in text.split(separator: "\n") {
        let fields = line.split(separator: " ")
        if fields.count == 2, let index = names.firstIndex(where: { $0 == fields[0] }) { values[index] = Double(fields[1]) ?? 0 }
    }
    return values
}

struct LoadResult {
    var successes = 0
    var failures = 0
    /// Seconds, sorted.
    var latencies: [Double] = []
    /// Each success as (seconds from the start when it completed, its latency), for timelines.
    var completions: [(at: Double, latency: Double)] = []
    var elapsed: Double = 0
}

/// `concurrency` workers call `operation` back to back for `seconds`; latencies sorted.
func load(concurrency: Int, seconds: Double, _ operation: @escaping @Sendable () async throws -> Bool) async throws -> LoadResult {
    let clock = ContinuousClock()
    let start = clock.now
    let deadline = start + .milliseconds(Int64(seconds * 1000))
    var total = LoadResult()
    try await withThrowingTaskGroup(of: LoadResult.self) { group in
        for _ in 0..<concurrency {
            group.addTask {
                var result = LoadResult()
                while clock.now < deadline {
                    let begun = clock.now
                    if try await operation() {
                        let now = clock.now
                        result.successes += 1
                        result.completions.append(((now - start).seconds, (now - begun).seconds))
                    } else {
                        result.failures += 1
                    }
                }
                return result
            }
        }
        for try await result in group {
            total.successes += result.successes
            total.failures += result.failures
            total.completions += result.completions
        }
    }
    total.elapsed = (clock.now - start).seconds
    total.latencies = total.completions.map(\.latency).sorted()
    return total
}

/// The load generator's HTTP client: one connection per concurrent client.
func benchHTTPClient() -> HTTPClient {
    var configuration = HTTPClient.Configuration()
    configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 1024
    return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
}

/// Submits a transaction (`body`: a `TransactionSubmission` with `wait: true`) and tells
/// whether it ended with status `expected`.
func submitTransaction(_ http: HTTPClient, _ daemonURL: String, _ body: Data, expected: String) async throws -> Bool {
    var request = HTTPClientRequest(url: daemonURL + "/v1/transactions")
    request.method = .POST
    request.headers.add(name: "Content-Type", value: "application/json")
    request.body = .bytes(ByteBuffer(bytes: body))
    let response = try await http.execute(request, timeout: .seconds(60))
    let answer = try await response.body.collect(upTo: 1 << 20)
    guard response.status.code == 201 else { return false }
    // Only the status matters: look for it without decoding the whole view.
    return String(buffer: answer).contains("\"status\":\"\(expected)\"")
}
