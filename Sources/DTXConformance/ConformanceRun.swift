import AsyncHTTPClient
import DTXAPI
import DTXCore
import Foundation

/// What a conformance run checks, and how it reaches the participant.
public struct ConformanceConfiguration: Sendable {
    /// The participant's base URL, as it registers it.
    public var participantURL: String
    /// The protocols to check; nil: every protocol the participant serves.
    public var protocols: [TransactionProtocol]?
    /// Run by `/bin/sh -c`: SIGKILLs the participant and starts it again (in the
    /// background), then exits. Without one, the durability duties are skipped.
    public var restartCommand: String?
    /// The token the participant expects on calls (`Authorization: Bearer`); with one,
    /// calls without it are checked to be refused.
    public var callbackToken: String?
    /// The participant's registered name (3PC requests list it); by default the name it
    /// registered with the run's coordinator, or `conformance`.
    public var participantName: String?
    /// Where the run serves the coordinator API the participant calls (port 0: any).
    public var coordinatorHost: String
    public var coordinatorPort: Int
    public var requestTimeout: Duration

    public init(participantURL: String, protocols: [TransactionProtocol]? = nil, restartCommand: String? = nil, callbackToken: String? = nil,
                participantName: String? = nil, coordinatorHost: String = "127.0.0.1", coordinatorPort: Int = 0, requestTimeout: Duration = .seconds(10)) {
        self.participantURL = participantURL
        self.protocols = protocols
        self.restartCommand = restartCommand
        self.callbackToken = callbackToken
        self.participantName = participantName
        self.coordinatorHost = coordinatorHost
        self.coordinatorPort = coordinatorPort
        self.requestTimeout = requestTimeout
    }
}

/// How one duty fared.
public struct DutyResult: Sendable, Codable, Equatable {
    public enum Outcome: String, Sendable, Codable {
        case pass, fail, skip
    }

    public var id: String
    public var `protocol`: String?
    public var duty: String
    public var outcome: Outcome
    /// Why it failed or was skipped.
    public var reason: String?
    /// A failed duty's last exchanges, the failing one last.
    public var exchanges: [Exchange]?
    public var seconds: Double
}

public struct ConformanceReport: Sendable, Codable {
    public var participant: String
    /// Where the run answered the participant's calls to its coordinator.
    public var coordinator: String
    /// The protocols checked.
    public var protocols: [String]
    /// Protocols the participant answered `protocol_not_served` for (not checked).
    public var notServed: [String]
    public var duties: [DutyResult]
    public var passed: Bool
    public var seconds: Double
}

/// Why a run could not be made at all.
public struct ConformanceError: Error, CustomStringConvertible {
    public enum Kind: Sendable { case badInput, unreachable }
    public var kind: Kind
    public var description: String
}

/// `dtx conformance`: plays the coordinator against one participant and checks each duty
/// of Schemas/participant-api.yaml, one after the other, with fresh gids.
public enum Conformance {
    /// `announce` gets the run's coordinator URL once it serves (so that a participant can
    /// be pointed at it); `progress` each duty's result as it comes.
    public static func run(_ configuration: ConformanceConfiguration, announce: @escaping @Sendable (String) -> Void = { _ in },
                           progress: @escaping @Sendable (DutyResult) -> Void = { _ in }) async throws -> ConformanceReport {
        guard ParticipantRegistration.isValidURL(configuration.participantURL) else {
            throw ConformanceError(kind: .badInput, description: "'\(configuration.participantURL)' is not a participant base URL; write it as http://host:port[/path]")
        }
        let started = ContinuousClock.now
        let coordinator = StandInCoordinator()
        let (urls, listening) = AsyncStream.makeStream(of: String.self)
        let server = Task {
            try await coordinator.run(host: configuration.coordinatorHost, port: configuration.coordinatorPort) { url in
                listening.yield(url)
                listening.finish()
            }
        }
        defer { server.cancel() }
        var coordinatorURL: String?
        for await url in urls { coordinatorURL = url }
        guard let coordinatorURL else {
            let why = await server.result
            throw ConformanceError(kind: .badInput, description: "cannot serve the coordinator API on \(configuration.coordinatorHost):\(configuration.coordinatorPort): \(why)")
        }
        announce(coordinatorURL)

        let http = HTTPClient(eventLoopGroupProvider: .singleton)
        let probe = Probe(base: configuration.participantURL, token: configuration.callbackToken, http: http, timeout: configuration.requestTimeout)
        do {
            let report = try await check(configuration, coordinator: coordinator, coordinatorURL: coordinatorURL, probe: probe, started: started, progress: progress)
            try await http.shutdown()
            return report
        } catch {
            try? await http.shutdown()
            throw error
        }
    }

    private static func check(_ configuration: ConformanceConfiguration, coordinator: StandInCoordinator, coordinatorURL: String, probe: Probe,
                              started: ContinuousClock.Instant, progress: @escaping @Sendable (DutyResult) -> Void) async throws -> ConformanceReport {
        let context = DutyContext(probe: probe, coordinator: coordinator, coordinatorURL: coordinatorURL,
                                  participantName: configuration.participantName ?? coordinator.registeredNames.first ?? "conformance",
                                  restartCommand: configuration.restartCommand)
        // Which protocols it serves: a finishing message for a branch never seen is a no-op.
        var served: [TransactionProtocol] = []
        var notServed: [TransactionProtocol] = []
        var results: [DutyResult] = []
        for proto in configuration.protocols ?? TransactionProtocol.allCases {
            let answer = await context.send(DutyContext.finishing(proto), proto, context.gid(), .refuse(context.key()))
            _ = probe.takeTrace()
            guard let status = answer.status else {
                throw ConformanceError(kind: .unreachable, description: "the participant at \(configuration.participantURL) does not answer: \(DutyContext.describe(answer))")
            }
            if status == 404, configuration.protocols == nil {
                notServed.append(proto)
            } else if status == 404 {
                let result = DutyResult(id: "\(proto.rawValue).served", protocol: proto.rawValue, duty: "the participant serves \(proto.rawValue)", outcome: .fail,
                                        reason: "\(proto.rawValue) was asked for, and the participant answered \(DutyContext.describe(answer))", exchanges: nil, seconds: 0)
                results.append(result)
                progress(result)
            } else {
                served.append(proto)
            }
        }

        var duties = served.flatMap(Duties.of)
        // The duties of every protocol go through a protocol with work to do (msg's only message is its check-back).
        if let first = served.first(where: { $0 != .msg }) {
            duties.append(Duties.badRequests(first))
            if let batchable = served.first(where: { $0 != .threePhaseCommit && $0 != .msg }) { duties.append(Duties.batch(batchable)) }
            if configuration.callbackToken != nil { duties.append(Duties.callbackToken(first)) }
        }
        for duty in duties {
            let result = await run(duty, context)
            results.append(result)
            progress(result)
        }
        return ConformanceReport(participant: configuration.participantURL, coordinator: coordinatorURL, protocols: served.map(\.rawValue),
                                 notServed: notServed.map(\.rawValue), duties: results, passed: !results.contains { $0.outcome == .fail },
                                 seconds: (ContinuousClock.now - started).apiSeconds)
    }

    private static func run(_ duty: Duty, _ context: DutyContext) async -> DutyResult {
        let started = ContinuousClock.now
        _ = context.probe.takeTrace()
        var result = DutyResult(id: duty.id, protocol: duty.proto?.rawValue, duty: duty.title, outcome: .pass, reason: nil, exchanges: nil, seconds: 0)
        if duty.needsRestart, context.restartCommand == nil {
            result.outcome = .skip
            result.reason = "needs --restart-cmd"
            return result
        }
        do {
            try await duty.check(context)
        } catch let skip as Skip {
            result.outcome = .skip
            result.reason = skip.reason
        } catch {
            result.outcome = .fail
            result.reason = (error as? DutyFailure)?.message ?? "\(error)"
            result.exchanges = Array(context.probe.takeTrace().suffix(3))
        }
        result.seconds = (ContinuousClock.now - started).apiSeconds
        return result
    }
}
