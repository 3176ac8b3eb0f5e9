import DTXAPI
import DTXCore
import DTXParticipant
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

/// The TCC and saga routes of the participant kit, over Hummingbird's test client: status
/// codes and bodies, the 404 of a participant that does not serve a protocol, and the
/// failpoints around the phases.
@Suite struct BarrierRouteTests {
    private static let logger: Logger = {
        var logger = Logger(label: "dtx.participant.tests")
        logger.logLevel = .warning
        return logger
    }()

    /// An answer: status and parsed JSON body.
    private struct Answer {
        var status: HTTPResponse.Status
        var body: JSONValue?

        var errorCode: String? { body?["error"]?["code"]?.stringValue }
        var errorMessage: String? { body?["error"]?["message"]?.stringValue }
    }

    /// Runs `test` against the routes of a service over `resourceManager`, with the
    /// failpoint middleware and routes when `failpoints` is given.
    private func withRoutes(
        _ resourceManager: some ResourceManager, failpoints: Failpoints? = nil, callbackToken: String? = nil,
        _ test: @escaping @Sendable (ParticipantService, @escaping @Sendable (String, String, String?) async throws -> Answer) async throws -> Void
    ) async throws {
        let service = try ParticipantService(
            configuration: .init(name: "p", advertisedURL: "http://127.0.0.1:1", coordinatorURL: "http://127.0.0.1:1", callbackToken: callbackToken),
            resourceManager: resourceManager, logger: Self.logger)
        let router = Router()
        if let failpoints {
            service.addRoutes(to: router.group().add(middleware: RequestFailpointMiddleware(failpoints: failpoints)), failpoints: failpoints)
            failpoints.addRoutes(to: router)
        } else {
            service.addRoutes(to: router)
        }
        let app = Application(router: router, logger: Self.logger)
        do {
            try await app.test(.router) { client in
                try await test(service) { method, uri, body in
                    var headers: HTTPFields = [.contentType: "application/json"]
                    if let callbackToken, method != "NOAUTH" { headers[.authorization] = "Bearer \(callbackToken)" }
                    let verb: HTTPRequest.Method = method == "GET" ? .get : .post
                    return try await client.execute(uri: uri, method: verb, headers: headers, body: body.map { ByteBuffer(string: $0) }) { response in
                        let bytes = Array(response.body.readableBytesView)
                        return Answer(status: response.status, body: bytes.isEmpty ? nil : try JSONValue(parsing: bytes))
                    }
                }
            }
        } catch {
            try await service.shutdown()
            throw error
        }
        try await service.shutdown()
    }

    private static func request(_ gid: String, _ branch: Int = 0, operation: String = "freeze", payload: String? = #"{"amount":10}"#) -> String {
        #"{"gid":"\#(gid)","branch":\#(branch),"operation":"\#(operation)"\#(payload.map { #","payload":\#($0)"# } ?? "")}"#
    }

    private static func result(_ phase: String, _ operation: String = "freeze") -> JSONValue {
        .object(["operation": .string(operation), "participant": .string("p"), "phase": .string(phase)])
    }

    @Test func tccPhasesAnswerTheirStatusAndRepeatsTheStoredResult() async throws {
        let store = try InMemoryResourceManager(name: "p")
        try await withRoutes(store) { service, post in
            #expect(service.servedProtocols == [.twoPhaseCommit, .threePhaseCommit, .tcc, .saga, .msg])
            let tried = try await post("POST", "/dtx/tcc/try", Self.request("g1"))
            #expect(tried.status == .ok)
            #expect(tried.body == .object(["status": .string("tried"), "result": Self.result("try")]))
            let again = try await post("POST", "/dtx/tcc/try", Self.request("g1"))
            #expect(again.status == .ok)
            #expect(again.body == tried.body)
            let confirmed = try await post("POST", "/dtx/tcc/confirm", Self.request("g1"))
            #expect(confirmed.body == .object(["status": .string("confirmed"), "result": Self.result("confirm")]))
            // A cancel after the confirm is a business refusal with the error body.
            let cancelled = try await post("POST", "/dtx/tcc/cancel", Self.request("g1"))
            #expect(cancelled.status == .conflict)
            #expect(cancelled.errorCode == "already_confirmed")
            #expect(cancelled.errorMessage?.contains("g1/0") == true)
        }
        #expect(store.barrierRecords().map(\.phase) == [.try, .confirm])
    }

    @Test func aCancelBeforeItsTryAnswersCancelledAndTheLateTryIs409() async throws {
        let store = try InMemoryResourceManager(name: "p")
        try await withRoutes(store) { _, post in
            let cancelled = try await post("POST", "/dtx/tcc/cancel", Self.request("g2", 3))
            #expect(cancelled.status == .ok)
            #expect(cancelled.body == .object(["status": .string("cancelled")]))
            let late = try await post("POST", "/dtx/tcc/try", Self.request("g2", 3))
            #expect(late.status == .conflict)
            #expect(late.errorCode == "already_cancelled")
            #expect(late.errorMessage?.contains("g2/3") == true)
        }
        #expect(store.barrierRecords().map(\.nullCompensation) == [true])
    }

    @Test func sagaPhasesAnswerDoneAndCompensated() async throws {
        let store = try InMemoryResourceManager(name: "p")
        try await withRoutes(store) { _, post in
            let done = try await post("POST", "/dtx/saga/action", Self.request("s1", operation: "book"))
            #expect(done.status == .ok)
            #expect(done.body == .object(["status": .string("done"), "result": Self.result("action", "book")]))
            let compensated = try await post("POST", "/dtx/saga/compensate", Self.request("s1", operation: "book"))
            #expect(compensated.body == .object(["status": .string("compensated"), "result": Self.result("compensate", "book")]))
            // Compensate before action, then the late action.
            #expect(try await post("POST", "/dtx/saga/compensate", Self.request("s2", operation: "book")).body == .object(["status": .string("compensated")]))
            let late = try await post("POST", "/dtx/saga/action", Self.request("s2", operation: "book"))
            #expect(late.status == .conflict)
            #expect(late.errorCode == "already_compensated")
            // A refused action (the payload votes no) is a 409 and records nothing.
            let refused = try await post("POST", "/dtx/saga/action", Self.request("s3", operation: "book", payload: #"{"vote":"no"}"#))
            #expect(refused.status == .conflict)
            #expect(refused.errorCode == "voted_no")
        }
        #expect(store.barrierRecords().map(\.gid) == ["s1", "s1", "s2"])
    }

    @Test func badRequestsAreRefusedAndChangeNothing() async throws {
        let store = try InMemoryResourceManager(name: "p")
        try await withRoutes(store) { _, post in
            let malformed = try await post("POST", "/dtx/tcc/try", #"{"gid": "g1""#)
            #expect(malformed.status == .badRequest)
            #expect(malformed.errorCode == "bad_request")
            let missing = try await post("POST", "/dtx/saga/action", #"{"gid":"g1","branch":0}"#)
            #expect(missing.status == .badRequest)
            #expect(missing.errorMessage?.contains("operation") == true)
            let badGid = try await post("POST", "/dtx/tcc/cancel", Self.request("bad gid"))
            #expect(badGid.status == .badRequest)
            let negative = try await post("POST", "/dtx/tcc/cancel", Self.request("g1", -1))
            #expect(negative.status == .badRequest)
            let get = try await post("GET", "/dtx/tcc/try", nil)
            #expect(get.status == .methodNotAllowed)
            let unknown = try await post("POST", "/dtx/tcc/commit", Self.request("g1"))
            #expect(unknown.status == .notFound)
            #expect(unknown.errorMessage?.contains("/dtx/tcc/try") == true)
        }
        #expect(store.barrierRecords().isEmpty)
    }

    @Test func aParticipantWithoutTCCSagasOr3PCAnswers404AndRegistersOnly2PC() async throws {
        for manager in [TwoPhaseOnly() as any ResourceManager, FailpointResourceManager(base: TwoPhaseOnly(), failpoints: Failpoints(logger: Self.logger))] {
            try await withRoutes(manager) { service, post in
                #expect(service.servedProtocols == [.twoPhaseCommit])
                for path in ["/dtx/tcc/try", "/dtx/tcc/confirm", "/dtx/tcc/cancel", "/dtx/saga/action", "/dtx/saga/compensate",
                             "/dtx/3pc/can_commit", "/dtx/3pc/pre_commit", "/dtx/3pc/do_commit", "/dtx/3pc/rollback", "/dtx/state?gid=g1&branch=0"] {
                    let answer = try await post(path.hasPrefix("/dtx/state") ? "GET" : "POST", path, path.hasPrefix("/dtx/state") ? nil : Self.request("g1"))
                    #expect(answer.status == .notFound, "\(path)")
                    #expect(answer.errorCode == "protocol_not_served", "\(path)")
                    #expect(answer.errorMessage?.contains("does not serve") == true, "\(path)")
                }
                let prepared = try await post("POST", "/dtx/2pc/prepare", Self.request("g1"))
                #expect(prepared.status == .ok)
                #expect(prepared.body?["status"] == .string("prepared"))
                let unknown = try await post("POST", "/dtx/nothing", Self.request("g1"))
                #expect(unknown.errorMessage?.contains("/dtx/tcc") == false)
            }
        }
        let wrapped = FailpointResourceManager(base: try InMemoryResourceManager(name: "p"), failpoints: Failpoints(logger: Self.logger))
        #expect(wrapped.servesTCC && wrapped.servesSagas)
    }

    @Test func failpointsAroundAPhaseFailItOrLoseItsAnswer() async throws {
        let store = try InMemoryResourceManager(name: "p")
        let failpoints = Failpoints(logger: Self.logger)
        try await withRoutes(FailpointResourceManager(base: store, failpoints: failpoints), failpoints: failpoints) { _, post in
            // On arrival: refused before anything runs.
            try failpoints.arm(specification: "try=no")
            let refused = try await post("POST", "/dtx/tcc/try", Self.request("f1"))
            #expect(refused.status == .conflict)
            #expect(refused.errorCode == "voted_no")
            failpoints.clear()
            #expect(store.barrierRecords().isEmpty)

            // Before the work: 503, nothing done.
            try failpoints.arm(specification: "before-try=unavailable")
            #expect(try await post("POST", "/dtx/tcc/try", Self.request("f1")).status == .serviceUnavailable)
            #expect(store.barrierRecords().isEmpty)
            failpoints.clear()

            // After the work: done and recorded, but the answer is lost (503); the
            // coordinator's retry gets the stored result without running it again.
            try failpoints.arm(specification: "after-try=unavailable")
            let lost = try await post("POST", "/dtx/tcc/try", Self.request("f1"))
            #expect(lost.status == .serviceUnavailable)
            #expect(lost.errorCode == "unavailable")
            #expect(store.barrierRecords().map(\.phase) == [.try])
            failpoints.clear()
            let retried = try await post("POST", "/dtx/tcc/try", Self.request("f1"))
            #expect(retried.body == .object(["status": .string("tried"), "result": Self.result("try")]))

            try failpoints.arm(specification: "after-compensate=unavailable")
            #expect(try await post("POST", "/dtx/saga/compensate", Self.request("f2", operation: "book")).status == .serviceUnavailable)
            #expect(store.barrierRecords().filter { $0.gid == "f2" }.map(\.nullCompensation) == [true])
        }
        #expect(FailpointName(rawValue: "before-cancel") == .beforeCancel)
        #expect(FailpointName(rawValue: "after-action") == .afterAction)
        #expect(FailpointName(rawValue: "compensate") == .compensate)
    }

    @Test func theCallbackTokenIsRequiredOnTheNewRoutes() async throws {
        let store = try InMemoryResourceManager(name: "p")
        try await withRoutes(store, callbackToken: "s3cret") { _, post in
            let refused = try await post("NOAUTH", "/dtx/tcc/try", Self.request("t1"))
            #expect(refused.status == .unauthorized)
            #expect(refused.errorCode == "unauthorized")
            #expect(try await post("POST", "/dtx/tcc/try", Self.request("t1")).status == .ok)
        }
        #expect(store.barrierRecords().count == 1)
    }

    private static func batch(_ items: [(String, String)]) -> String {
        #"{"messages":["# + items.map { #"{"path":"\#($0.0)","request":\#($0.1)}"# }.joined(separator: ",") + "]}"
    }

    /// `POST /dtx/batch`: each message answered in order as its own path answers it,
    /// including refusals, bad messages and arrival failpoints.
    @Test func aBatchAnswersEachMessageAsItsOwnPathWould() async throws {
        let store = try InMemoryResourceManager(name: "p")
        let failpoints = Failpoints(logger: Self.logger)
        try await withRoutes(store, failpoints: failpoints) { _, post in
            let alone = try await post("POST", "/dtx/saga/action", Self.request("alone", operation: "book"))
            let batched = try await post("POST", "/dtx/batch", Self.batch([
                ("/dtx/2pc/prepare", Self.request("b1", operation: "debit")),
                ("/dtx/2pc/prepare", Self.request("b2", operation: "debit")),
                ("/dtx/saga/action", Self.request("b3", operation: "book")),
                ("/dtx/saga/action", Self.request("b4", operation: "book", payload: #"{"vote":"no"}"#)),
                ("/dtx/2pc/prepare", #"{"branch":0,"operation":"debit"}"#),
                ("/dtx/3pc/can_commit", Self.request("b6")),
            ]))
            #expect(batched.status == .ok)
            guard case .array(let answers)? = batched.body?["answers"], answers.count == 6 else {
                Issue.record("not six answers: \(String(describing: batched.body))")
                return
            }
            #expect(answers.map { $0["status"]?.doubleValue } == [200, 200, 200, 409, 400, 404])
            #expect(answers[0]["body"] == .object(["status": .string("prepared"), "result": .object(["operation": .string("debit"), "participant": .string("p")])]))
            // The same body as the message posted alone.
            #expect(answers[2]["body"] == alone.body)
            #expect(answers[3]["body"]?["error"]?["code"]?.stringValue == "voted_no")
            #expect(answers[4]["body"]?["error"]?["message"]?.stringValue?.contains("missing field 'gid'") == true)
            #expect(answers[5]["body"]?["error"]?["code"]?.stringValue == "not_found")
            #expect(Set(try await store.inDoubt().map(\.gid)) == ["b1", "b2"])

            // Phase two in one batch; a repeat alone is idempotent.
            let second = try await post("POST", "/dtx/batch", Self.batch([
                ("/dtx/2pc/commit", Self.request("b1", operation: "debit")),
                ("/dtx/2pc/rollback", Self.request("b2", operation: "debit")),
            ]))
            #expect(second.body?["answers"] == .array([
                .object(["status": .number(200), "body": .object(["status": .string("committed")])]),
                .object(["status": .number(200), "body": .object(["status": .string("rolled_back")])]),
            ]))
            #expect(try await post("POST", "/dtx/2pc/commit", Self.request("b1", operation: "debit")).body == .object(["status": .string("committed")]))
            #expect(try await store.inDoubt().isEmpty)

            // The arrival failpoint of each batched message is checked, as the middleware
            // checks it for a message posted alone.
            try failpoints.arm(specification: "prepare=no")
            let refused = try await post("POST", "/dtx/batch", Self.batch([("/dtx/2pc/prepare", Self.request("b7", operation: "debit"))]))
            guard case .array(let refusals)? = refused.body?["answers"] else {
                Issue.record("no answers: \(String(describing: refused.body))")
                return
            }
            #expect(refusals.first?["body"]?["error"]?["code"]?.stringValue == "voted_no")
            #expect(try await store.inDoubt().isEmpty)
        }
    }

    @Test func aBadBatchIsRefusedWholeAndDoesNothing() async throws {
        let store = try InMemoryResourceManager(name: "p")
        try await withRoutes(store, callbackToken: "s3cret") { _, post in
            let one = Self.batch([("/dtx/2pc/prepare", Self.request("x1", operation: "debit"))])
            #expect(try await post("NOAUTH", "/dtx/batch", one).status == .unauthorized)
            for body in ["", "[1,2]", #"{"messages":[]}"#, #"{"messages":{}}"#,
                         Self.batch(Array(repeating: ("/dtx/2pc/prepare", Self.request("x2", operation: "debit")), count: 257))] {
                let answer = try await post("POST", "/dtx/batch", body)
                #expect(answer.status == .badRequest, "\(body.prefix(40))")
                #expect(answer.errorCode == "bad_request")
            }
            #expect(try await post("GET", "/dtx/batch", nil).status == .methodNotAllowed)
        }
        #expect(try await store.inDoubt().isEmpty)
    }
}

/// A resource manager that serves 2PC only.
private struct TwoPhaseOnly: ResourceManager {
    func prepare(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> PrepareOutcome { .prepared(result: nil) }
    func commit(_ branch: BranchRef) async throws {}
    func rollback(_ branch: BranchRef) async throws {}
    func commitOnePhase(_ branch: BranchRef, operation: String, payload: JSONValue?) async throws -> JSONValue? { nil }
    func inDoubt() async throws -> [BranchRef] { [] }
}
