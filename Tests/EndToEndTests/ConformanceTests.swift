import DTXTestSupport
import Foundation
import Testing

/// `dtx conformance` against real participant processes, each started and restarted
/// (SIGKILL) by a shell script the run gets as its --restart-cmd: every duty passes for the
/// kit's memory participant, the SQLite and PostgreSQL accounts services and the Python
/// reference participant; each deliberately broken participant fails the duty it breaks.
@Suite(.serialized) struct ConformanceTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    @Test func theMemoryParticipantKeepsEveryDuty() async throws {
        let subject = try ConformanceSubject("conf-memory") { port, coordinator, directory in
            "\(productsDirectory)/memory-participant --name conf-memory --listen 127.0.0.1:\(port) --coordinator \(coordinator) --journal \(directory)/journal --log-level error"
        }
        try await subject.expectEveryDutyPasses(protocols: ["2pc", "3pc", "tcc", "saga", "msg"])
    }

    @Test func theSQLiteAccountsServiceKeepsEveryDuty() async throws {
        let subject = try ConformanceSubject("conf-sqlite") { port, coordinator, directory in
            "\(productsDirectory)/accounts-service --name conf-sqlite --sqlite \(directory)/accounts.db --listen 127.0.0.1:\(port) --coordinator \(coordinator) --conformance --log-level error"
        }
        try await subject.expectEveryDutyPasses(protocols: ["2pc", "3pc", "tcc", "saga", "msg"])
    }

    @Test func thePostgreSQLAccountsServiceKeepsEveryDuty() async throws {
        let server = try PostgresServer()
        try await server.start()
        defer { Task { try? await server.stop() } }
        let connection = server.connectionString()
        let subject = try ConformanceSubject("conf-postgres") { port, coordinator, _ in
            "\(productsDirectory)/accounts-service --name conf-postgres --postgres '\(connection)' --listen 127.0.0.1:\(port) --coordinator \(coordinator) --conformance --log-level error"
        }
        try await subject.expectEveryDutyPasses(protocols: ["2pc", "3pc", "tcc", "saga", "msg"])
    }

    @Test func thePythonReferenceParticipantKeepsEveryDutyOfTheProtocolsItServes() async throws {
        let subject = try ConformanceSubject("conf-python") { port, coordinator, directory in
            "python3 \(Self.root)/Examples/PythonParticipant/participant.py --name conf-python --db \(directory)/py.db --listen 127.0.0.1:\(port) --coordinator \(coordinator) --batch"
        }
        let report = try await subject.expectEveryDutyPasses(protocols: nil)
        #expect(report.protocols == ["2pc", "tcc", "saga", "msg"])
        #expect(report.notServed == ["3pc"])
    }

    /// Each broken participant keeps every duty but one; the run fails that one, by name.
    @Test(arguments: [
        ("prepare-not-idempotent", "2pc.prepare-commit"),
        ("rollback-unknown-fails", "2pc.rollback-first"),
        ("prepare-after-rollback", "2pc.prepare-rollback"),
        ("rollback-keeps-work", "2pc.prepare-rollback"),
        ("one-phase-forgets", "2pc.one-phase"),
        ("commit-unknown-pretends", "2pc.commit-unknown"),
        ("no-null-compensation", "tcc.null-cancel"),
        ("hanging", "tcc.no-hanging"),
        ("confirm-twice", "tcc.try-confirm"),
        ("refused-action-leaves-work", "saga.refusal"),
        ("bad-request-accepted", "requests.bad"),
        ("batch-out-of-order", "batch"),
        ("not-durable", "2pc.durable"),
        ("check-back-guesses", "msg.check-back-unknown"),
    ])
    func aBrokenParticipantFailsTheDutyItBreaks(broken: String, duty: String) async throws {
        let subject = try ConformanceSubject("conf-\(broken)") { port, coordinator, directory in
            "python3 \(Self.root)/Tests/Fixtures/broken_participants.py --break \(broken) --name conf-broken --db \(directory)/py.db --listen 127.0.0.1:\(port) --coordinator \(coordinator) --batch"
        }
        defer { subject.stop() }
        try await subject.start()
        // Restarts (a Python start each) only where durability is what is broken.
        let (status, report, output) = try await subject.check(protocols: nil, restarts: broken == "not-durable")
        #expect(status == 1, "\(output)")
        let failed = report?.duties.filter { $0.outcome == "fail" }.map(\.id) ?? []
        #expect(failed.contains(duty), "\(broken): failed \(failed)\n\(output)")
    }
}

/// The parts of `dtx conformance --json` the tests read.
struct ConformanceReportJSON: Decodable {
    struct Duty: Decodable {
        var id: String
        var outcome: String
        var reason: String?
    }

    var protocols: [String]
    var notServed: [String]
    var duties: [Duty]
    var passed: Bool
    var seconds: Double
}

/// A participant run by a script that SIGKILLs the one it started before, if any, and
/// starts it again in the background on the same port: the run's --restart-cmd.
final class ConformanceSubject: Sendable {
    let directory: String
    let port: Int
    let coordinatorPort: Int
    let script: String

    var url: String { "http://127.0.0.1:\(port)" }

    init(_ name: String, command: (_ port: Int, _ coordinator: String, _ directory: String) -> String) throws {
        directory = makeTemporaryDirectory(name)
        port = freeLoopbackPort()
        coordinatorPort = freeLoopbackPort()
        script = directory + "/restart.sh"
        let pid = directory + "/pid"
        let text = """
        if [ -f \(pid) ]; then
            kill -9 $(cat \(pid)) 2>/dev/null
            while kill -0 $(cat \(pid)) 2>/dev/null; do sleep 0.05; done
        fi
        \(command(port, "http://127.0.0.1:\(coordinatorPort)", directory)) >> \(directory)/participant.log 2>&1 &
        echo $! > \(pid)

        """
        try text.write(toFile: script, atomically: true, encoding: .utf8)
    }

    /// Starts the participant and waits until it answers.
    func start() async throws {
        // Not waited for: Foundation's Process would wait for descriptors the participant inherits.
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sh")
        shell.arguments = [script]
        try shell.run()
        let up = await eventually(seconds: 30) {
            (try? await http("POST", url + "/dtx/2pc/rollback", body: #"{"gid":"conf-up","branch":0,"operation":"noop"}"#)) != nil
        }
        guard up else { throw ProcessError.timedOut("the participant did not answer: \(log)") }
    }

    func stop() {
        if let pid = try? String(contentsOfFile: directory + "/pid", encoding: .utf8), let number = Int32(pid.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(number, SIGKILL)
        }
    }

    var log: String { (try? String(contentsOfFile: directory + "/participant.log", encoding: .utf8)) ?? "" }

    /// `dtx conformance --json` against the participant: its exit status, report and output.
    func check(protocols: [String]?, restarts: Bool = true) async throws -> (Int32, ConformanceReportJSON?, String) {
        var arguments = ["conformance", "--participant", url, "--coordinator-listen", "127.0.0.1:\(coordinatorPort)", "--json"]
        if restarts { arguments += ["--restart-cmd", "sh \(script)"] }
        if let protocols { arguments += ["--protocols", protocols.joined(separator: ",")] }
        let (status, out, err) = try await run("dtx", arguments)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let report = try? decoder.decode(ConformanceReportJSON.self, from: Data(out.utf8))
        return (status, report, out + err + "\nparticipant log:\n" + log.suffix(2000))
    }

    /// Every duty of `protocols` (nil: those it serves) passes, none skipped, in under 10 s a protocol.
    @discardableResult
    func expectEveryDutyPasses(protocols: [String]?) async throws -> ConformanceReportJSON {
        defer { stop() }
        try await start()
        let (status, report, output) = try await check(protocols: protocols)
        let result = try #require(report, "\(output)")
        #expect(status == 0, "\(output)")
        let notPassed = result.duties.filter { $0.outcome != "pass" }.map { "\($0.id): \($0.outcome) \($0.reason ?? "")" }
        #expect(notPassed.isEmpty, "\(notPassed)")
        #expect(result.seconds < 10 * Double(max(result.protocols.count, 1)), "\(result.seconds) s")
        return result
    }
}
