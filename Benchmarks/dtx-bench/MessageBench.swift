import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation
import NIOCore
import Synchronization

/// `dtx-bench msg`: transactional messages against sagas of the same shape, in one run
/// on one dtxd: runs alternate (saga, msg, saga, msg) at each concurrency level. A
/// message is what a service sends: its prepare (`POST /v1/transactions`, protocol msg,
/// the first participant as the service), then its submit (`POST …/commit` with
/// `wait: true`), answered once every branch is done; the service's local transaction
/// itself is not part of it. A saga is one submission with `wait: true`. Both have one
/// branch (step) per participant, run in order.
extension ProtocolBench {
    struct MessageReport: Codable {
        var benchmark = "msg"
        var machine: Machine
        var participants: Int
        var durationSeconds: Double
        var runs: [Sample]
        /// Per concurrency level: the mean msg rate over the mean saga rate.
        var ratios: [String: Double]

        struct Sample: Codable {
            var transactionProtocol: String
            var run: Run

            enum CodingKeys: String, CodingKey {
                case transactionProtocol = "protocol"
                case run
            }
        }

        enum CodingKeys: String, CodingKey {
            case benchmark, machine, participants, runs, ratios
            case durationSeconds = "duration_s"
        }
    }

    func runMessageComparison() async throws {
        let processes = BenchProcesses()
        let directory = NSTemporaryDirectory() + "dtx-bench-msg-\(getpid())"
        defer {
            processes.stopAll()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let (daemon, daemonURL, participantPIDs, _) = try startCluster(processes, directory: directory, dtxdArguments: [])
        let http = benchHTTPClient()
        try await waitForRegistrations(http, daemonURL, count: options.participants)
        let pids = CPUPids(daemon: daemon.processIdentifier, participants: participantPIDs)
        let branches = (0..<options.participants).map { BranchSpec(participant: "p\($0)", operation: "noop") }
        let saga = try JSONEncoder().encode(TransactionSubmission(protocol: .saga, branches: branches, timeout: 30, wait: true))
        let branchesJSON = String(decoding: try JSONEncoder().encode(branches), as: UTF8.self)
        let sent = Counter()
        let prefix = "m\(getpid())-"
        let message: @Sendable () async throws -> Bool = {
            let gid = prefix + String(sent.next())
            let prepare = Data(#"{"gid":"\#(gid)","protocol":"msg","service":"p0","timeout":30,"branches":\#(branchesJSON)}"#.utf8)
            guard try await submitTransaction(http, daemonURL, prepare, expected: "prepared") else { return false }
            var submit = HTTPClientRequest(url: daemonURL + "/v1/transactions/\(gid)/commit")
            submit.method = .POST
            submit.headers.add(name: "Content-Type", value: "application/json")
            submit.body = .bytes(ByteBuffer(string: #"{"wait":true}"#))
            let response = try await http.execute(submit, timeout: .seconds(60))
            let answer = try await response.body.collect(upTo: 1 << 20)
            return response.status.code == 200 && String(buffer: answer).contains(#""status":"committed""#)
        }

        let machine = Machine.current()
        print("msg vs saga: \(options.participants) no-op participants, \(options.duration)s per run, runs alternating, \(machine.cpus) cpus, \(machine.build) build")
        print("  proto  conc       tx/s    p50 ms    p99 ms   fsync/tx  forced/tx    bare rt/s    ratio   cpu µs/tx: dtxd  participants  client")
        var samples: [MessageReport.Sample] = []
        var ratios: [String: Double] = [:]
        for level in options.levels {
            var rates: [TransactionProtocol: [Double]] = [:]
            for _ in 0..<2 {
                for proto in [TransactionProtocol.saga, .msg] {
                    let run = proto == .msg
                        ? try await measure(http, daemonURL, pids, concurrency: level, message)
                        : try await measure(http, daemonURL, pids, concurrency: level) { try await submitTransaction(http, daemonURL, saga, expected: "committed") }
                    samples.append(.init(transactionProtocol: proto.rawValue, run: run))
                    rates[proto, default: []].append(run.transactionsPerSecond)
                    print("  \(proto.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0))", terminator: "")
                    printRun(run)
                }
            }
            let mean = { (values: [Double]) in values.reduce(0, +) / Double(max(values.count, 1)) }
            let ratio = mean(rates[.msg] ?? []) / max(mean(rates[.saga] ?? []), 1)
            ratios[String(level)] = ratio
            print(String(format: "  concurrency %d: msg / saga = %.3f", level, ratio))
        }
        try await http.shutdown()
        if let json = options.json {
            try writeJSON(MessageReport(machine: machine, participants: options.participants, durationSeconds: options.duration, runs: samples, ratios: ratios), to: json)
            print("wrote \(json)")
        }
    }
}

/// Numbers for gids, one after the other, from any task.
private final class Counter: Sendable {
    private let value = Mutex(0)

    func next() -> Int {
        value.withLock { value in
            value += 1
            return value
        }
    }
}
