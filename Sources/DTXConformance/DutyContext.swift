import DTXAPI
import DTXCore
import Foundation
import NIOHTTP1
import Synchronization

/// What a branch of the run asks the participant to do.
enum Work: Sendable {
    /// Add 1 to the counter `key`.
    case add(String)
    case read(String)
    /// Refused, adding nothing to the counter `key` its payload names.
    case refuse(String)

    var operation: String {
        switch self {
        case .add: ConformanceOperation.add
        case .read: ConformanceOperation.read
        case .refuse: ConformanceOperation.refuse
        }
    }

    var payload: JSONValue {
        switch self {
        case .add(let key): .object(["key": .string(key), "amount": .number(1)])
        case .read(let key): .object(["key": .string(key)])
        case .refuse(let key): .object(["key": .string(key), "amount": .number(1)])
        }
    }
}

/// What a duty's steps use: the participant, the run's own coordinator, fresh names, and
/// the restart command.
struct DutyContext: Sendable {
    let probe: Probe
    let coordinator: StandInCoordinator
    /// The participant's name, for the `participants` of a 3PC request.
    let participantName: String
    let restartCommand: String?
    let coordinatorURL: String
    private let run: String
    private let sequence: Sequence

    private final class Sequence: Sendable {
        let next = Atomic<Int>(0)
    }

    init(probe: Probe, coordinator: StandInCoordinator, coordinatorURL: String, participantName: String, restartCommand: String?) {
        self.probe = probe
        self.coordinator = coordinator
        self.coordinatorURL = coordinatorURL
        self.participantName = participantName
        self.restartCommand = restartCommand
        self.run = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        self.sequence = Sequence()
    }

    /// A gid no earlier run used: `conf-<run>-<n>`, pending at the run's coordinator until decided.
    func gid() -> String {
        let gid = "conf-\(run)-\(sequence.next.add(1, ordering: .relaxed).newValue)"
        coordinator.begin(gid)
        return gid
    }

    /// A counter no earlier run used.
    func key() -> String { "conf-\(run)-k\(sequence.next.add(1, ordering: .relaxed).newValue)" }

    func request(_ proto: TransactionProtocol, _ gid: String, _ work: Work, branch: BranchID = 0) -> ParticipantRequest {
        ParticipantRequest(gid: gid, branch: branch, operation: work.operation, payload: work.payload,
                           participants: proto == .threePhaseCommit ? [participantName] : nil)
    }

    /// Sends `message` once.
    func send(_ message: ParticipantMessage, _ proto: TransactionProtocol, _ gid: String, _ work: Work) async -> Answer {
        await probe.send(message, proto, request(proto, gid, work))
    }

    /// Sends `message` until it is not answered 425 or 503 (as the coordinator would, a
    /// few times), and expects 200 with one of `replies`.
    @discardableResult
    func expect(_ message: ParticipantMessage, _ proto: TransactionProtocol, _ gid: String, _ work: Work, replies: Set<String>, _ what: String? = nil) async throws -> Answer {
        let answer = await sendUntilAnswered(message, proto, gid, work)
        guard answer.status == 200, let reply = answer.reply, replies.contains(reply) else {
            throw DutyFailure(message: "\(what ?? Self.describe(message)) must be answered 200 \(Self.list(replies)); it was answered \(Self.describe(answer))")
        }
        return answer
    }

    /// Sends `message` until it is not answered 425 or 503, and expects 409 with an
    /// `Error` body (with `code`, when given).
    func expectRefusal(_ message: ParticipantMessage, _ proto: TransactionProtocol, _ gid: String, _ work: Work, code: String?, _ what: String) async throws {
        let answer = await sendUntilAnswered(message, proto, gid, work)
        let expected = "409 with an Error body" + (code.map { " whose code is `\($0)`" } ?? "")
        guard answer.status == 409, answer.hasErrorBody, code == nil || answer.errorCode == code else {
            throw DutyFailure(message: "\(what) must be answered \(expected); it was answered \(Self.describe(answer))")
        }
    }

    func sendUntilAnswered(_ message: ParticipantMessage, _ proto: TransactionProtocol, _ gid: String, _ work: Work) async -> Answer {
        var answer = await send(message, proto, gid, work)
        for _ in 0..<20 where answer.asksToRetry {
            try? await Task.sleep(for: .milliseconds(100))
            answer = await send(message, proto, gid, work)
        }
        return answer
    }

    /// The counter's committed value, read with `proto`'s work message.
    func value(of key: String, via proto: TransactionProtocol) async throws -> Double {
        let gid = gid()
        let answer: Answer
        switch proto {
        case .twoPhaseCommit:
            answer = try await expect(.prepare, proto, gid, .read(key), replies: ["read_only", "prepared"], "a PREPARE of `\(ConformanceOperation.read)`")
            if answer.reply == "prepared" { try await expect(.rollback, proto, gid, .read(key), replies: ["rolled_back"]) }
        case .tcc:
            answer = try await expect(.try, proto, gid, .read(key), replies: ["tried"], "a TRY of `\(ConformanceOperation.read)`")
            try await expect(.cancel, proto, gid, .read(key), replies: ["cancelled"])
        case .saga:
            answer = try await expect(.action, proto, gid, .read(key), replies: ["done"], "an ACTION of `\(ConformanceOperation.read)`")
        case .threePhaseCommit:
            answer = try await expect(.canCommit, proto, gid, .read(key), replies: ["prepared"], "a CANCOMMIT of `\(ConformanceOperation.read)`")
            try await expect(.rollback, proto, gid, .read(key), replies: ["aborted"])
        case .msg:
            throw DutyFailure(message: "msg has no message that reads a counter (its branches are saga actions)")
        }
        guard let value = answer.result?["value"]?.doubleValue else {
            throw DutyFailure(message: "`\(ConformanceOperation.read)` must answer with `result.value`, the counter's value; it answered \(Self.describe(answer)). A participant serves the conformance operations of Schemas/participant-api.yaml (\"Conformance run\") to be checked")
        }
        return value
    }

    /// Reads the counter and expects `expected`.
    func expectValue(_ key: String, via proto: TransactionProtocol, _ expected: Double, _ what: String) async throws {
        let value = try await value(of: key, via: proto)
        guard value == expected else {
            throw DutyFailure(message: "\(what): the counter `\(key)` must be \(Self.number(expected)), and it is \(Self.number(value))")
        }
    }

    /// Sends `copies` copies of `message` at once; each must be answered 200 with one of
    /// `replies`, or 425/503 (not done); at least one 200.
    func expectConcurrently(_ copies: Int, _ message: ParticipantMessage, _ proto: TransactionProtocol, _ gid: String, _ work: Work, replies: Set<String>) async throws {
        let answers = await withTaskGroup(of: Answer.self) { group in
            for _ in 0..<copies { group.addTask { await send(message, proto, gid, work) } }
            return await group.reduce(into: [Answer]()) { $0.append($1) }
        }
        let done = answers.filter { $0.status == 200 && $0.reply.map(replies.contains) == true }
        guard let wrong = answers.first(where: { !($0.asksToRetry || ($0.status == 200 && $0.reply.map(replies.contains) == true)) }) else {
            guard !done.isEmpty else {
                throw DutyFailure(message: "\(copies) concurrent copies of \(Self.describe(message)): at least one must be answered 200 \(Self.list(replies)); all asked to retry")
            }
            return
        }
        throw DutyFailure(message: "\(copies) concurrent copies of \(Self.describe(message)) must each be answered 200 \(Self.list(replies)) (or 425/503: not done); one was answered \(Self.describe(wrong))")
    }

    /// Runs the restart command (which SIGKILLs the participant and starts it again) and
    /// waits until the participant answers again.
    func restart(_ proto: TransactionProtocol) async throws {
        guard let command = restartCommand else { throw DutyFailure(message: "needs --restart-cmd") }
        let environment = ProcessInfo.processInfo.environment.merging([
            "DTX_CONFORMANCE_COORDINATOR": coordinatorURL, "DTX_CONFORMANCE_PARTICIPANT": probe.base,
        ]) { $1 }
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("dtx-conformance-restart-\(getpid()).txt").path
        defer { try? FileManager.default.removeItem(atPath: output) }
        // Spawned and reaped directly: Foundation's Process waits for the descriptors the
        // restarted participant inherits, so it never sees the command end.
        let status = try await ShellCommand.run(command, environment: environment, output: output, seconds: 60)
        guard let status else {
            throw DutyFailure(message: "the restart command did not finish within 60 s (it must start the participant in the background and return): \(command)")
        }
        guard status == 0 else {
            let text = (try? String(contentsOfFile: output, encoding: .utf8)).map { String($0.prefix(400)) } ?? ""
            throw DutyFailure(message: "the restart command exited with status \(status): \(command)\n\(text)")
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let answer = await probe.send(Self.finishing(proto), proto, request(proto, gid(), .refuse(key())), traced: false)
            if answer.status != nil { return }  // it serves again (its answer is checked by the duties)
            try await Task.sleep(for: .milliseconds(100))
        }
        throw DutyFailure(message: "the participant did not answer within 30 s of its restart")
    }

    /// The message that finishes a branch without its work: a no-op for a branch never seen.
    static func finishing(_ proto: TransactionProtocol) -> ParticipantMessage {
        switch proto {
        case .twoPhaseCommit, .threePhaseCommit: .rollback
        case .tcc: .cancel
        case .saga: .compensate
        case .msg: .queryPrepared
        }
    }

    static func describe(_ message: ParticipantMessage) -> String {
        message.rawValue.uppercased()
    }

    static func describe(_ answer: Answer) -> String {
        guard let status = answer.status else { return "nothing (\(String(decoding: answer.body, as: UTF8.self)))" }
        let body = String(decoding: answer.body.prefix(300), as: UTF8.self)
        return body.isEmpty ? "\(status)" : "\(status) \(body)"
    }

    static func list(_ replies: Set<String>) -> String {
        replies.sorted().map { "`\($0)`" }.joined(separator: " or ")
    }

    static func number(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
