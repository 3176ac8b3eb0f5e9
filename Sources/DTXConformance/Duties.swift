import DTXAPI
import DTXCore
import Foundation

/// One duty of the participant contract and the steps that check it.
struct Duty: Sendable {
    /// `<protocol>.<name>`, or `<name>` for a duty of every protocol.
    var id: String
    var proto: TransactionProtocol?
    /// What the duty is, for people.
    var title: String
    var needsRestart = false
    var check: @Sendable (DutyContext) async throws -> Void
}

/// The duties of Schemas/participant-api.yaml, per protocol. Every check uses fresh gids
/// and counters, so runs never interfere with each other or with real work.
enum Duties {
    static func of(_ proto: TransactionProtocol) -> [Duty] {
        switch proto {
        case .twoPhaseCommit: twoPhase
        case .tcc: tcc
        case .saga: saga
        case .threePhaseCommit: threePhase
        case .msg: message
        }
    }

    // MARK: Msg

    static let message: [Duty] = {
        let p = TransactionProtocol.msg
        return [
            Duty(id: "msg.check-back-unknown", proto: p, title: "a check-back for a message never prepared answers rolled_back, and answers it again") { c in
                let g = c.gid()
                try await c.expect(.queryPrepared, p, g, .refuse(c.key()), replies: [MessageCheckBack.rolledBack],
                                   "a QUERY_PREPARED of a gid whose local transaction never ran (its rollback marker is inserted)")
                try await c.expect(.queryPrepared, p, g, .refuse(c.key()), replies: [MessageCheckBack.rolledBack],
                                   "a repeated QUERY_PREPARED (the answer is settled once and for all)")
            },
        ]
    }()

    // MARK: 2PC

    static let twoPhase: [Duty] = {
        let p = TransactionProtocol.twoPhaseCommit
        return [
            Duty(id: "2pc.prepare-commit", proto: p, title: "PREPARE and COMMIT, each sent twice, do the work once") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expect(.prepare, p, g, .add(k), replies: ["prepared"])
                try await c.expect(.prepare, p, g, .add(k), replies: ["prepared"], "a repeated PREPARE of a prepared branch")
                c.coordinator.decide(g, .commit)
                try await c.expect(.commit, p, g, .add(k), replies: ["committed"])
                try await c.expect(.commit, p, g, .add(k), replies: ["committed"], "a repeated COMMIT of a committed branch")
                try await c.expectValue(k, via: p, before + 1, "after PREPARE and COMMIT")
            },
            Duty(id: "2pc.prepare-rollback", proto: p, title: "PREPARE then ROLLBACK leaves nothing, and a late PREPARE is refused") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expect(.prepare, p, g, .add(k), replies: ["prepared"])
                c.coordinator.decide(g, .abort)
                try await c.expect(.rollback, p, g, .add(k), replies: ["rolled_back"])
                try await c.expect(.rollback, p, g, .add(k), replies: ["rolled_back"], "a repeated ROLLBACK")
                try await c.expectRefusal(.prepare, p, g, .add(k), code: "already_rolled_back", "a PREPARE after the branch's ROLLBACK")
                try await c.expectValue(k, via: p, before, "after PREPARE and ROLLBACK")
            },
            Duty(id: "2pc.rollback-first", proto: p, title: "ROLLBACK of a branch never prepared succeeds and is remembered (presumed abort)") { c in
                let (g, g2, k) = (c.gid(), c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                c.coordinator.decide(g2, .abort)
                try await c.expect(.rollback, p, g, .add(k), replies: ["rolled_back"], "a ROLLBACK of a branch never prepared")
                try await c.expectRefusal(.prepare, p, g, .add(k), code: "already_rolled_back", "a PREPARE that arrives after its ROLLBACK")
                try await c.expect(.rollback, p, g2, .add(k), replies: ["rolled_back"], "a ROLLBACK of a branch never prepared")
                try await c.expectRefusal(.commitOnePhase, p, g2, .add(k), code: "already_rolled_back", "a COMMIT_ONE_PHASE that arrives after its ROLLBACK")
                try await c.expectValue(k, via: p, before, "after work that arrived after its ROLLBACK")
            },
            Duty(id: "2pc.one-phase", proto: p, title: "COMMIT_ONE_PHASE decides: repeated it answers committed, and ROLLBACK after it is refused (duty 3a)") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expect(.commitOnePhase, p, g, .add(k), replies: ["committed"])
                try await c.expect(.commitOnePhase, p, g, .add(k), replies: ["committed"], "a repeated COMMIT_ONE_PHASE")
                try await c.expectValue(k, via: p, before + 1, "after COMMIT_ONE_PHASE")
                try await c.expectRefusal(.rollback, p, g, .add(k), code: "already_committed", "a ROLLBACK of a branch committed in one phase")
                try await c.expectValue(k, via: p, before + 1, "after COMMIT_ONE_PHASE and a refused ROLLBACK")
            },
            Duty(id: "2pc.refusal", proto: p, title: "a refused PREPARE or COMMIT_ONE_PHASE (409 with an Error body) does nothing, and its ROLLBACK succeeds") { c in
                let (g, g2, k) = (c.gid(), c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                c.coordinator.decide(g2, .abort)
                try await c.expectRefusal(.prepare, p, g, .refuse(k), code: nil, "a PREPARE of `\(ConformanceOperation.refuse)`")
                try await c.expect(.rollback, p, g, .refuse(k), replies: ["rolled_back"], "the ROLLBACK after a NO vote")
                try await c.expectRefusal(.commitOnePhase, p, g2, .refuse(k), code: nil, "a COMMIT_ONE_PHASE of `\(ConformanceOperation.refuse)`")
                try await c.expect(.rollback, p, g2, .refuse(k), replies: ["rolled_back"], "the ROLLBACK after a refused COMMIT_ONE_PHASE")
                try await c.expectValue(k, via: p, before, "after refused work")
            },
            Duty(id: "2pc.commit-unknown", proto: p, title: "COMMIT of a branch never prepared is refused, not pretended") { c in
                try await c.expectRefusal(.commit, p, c.gid(), .add(c.key()), code: "unknown_branch", "a COMMIT of a branch never prepared")
            },
            Duty(id: "2pc.duplicates", proto: p, title: "concurrent copies of one PREPARE do the work once") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expectConcurrently(4, .prepare, p, g, .add(k), replies: ["prepared"])
                c.coordinator.decide(g, .commit)
                try await c.expect(.commit, p, g, .add(k), replies: ["committed"])
                try await c.expectValue(k, via: p, before + 1, "after four concurrent PREPAREs and a COMMIT")
            },
            Duty(id: "2pc.durable", proto: p, title: "prepared branches and remembered rollbacks survive a SIGKILL and restart", needsRestart: true) { c in
                let (g1, k1, g2, k2, g3) = (c.gid(), c.key(), c.gid(), c.key(), c.gid())
                try await c.expect(.prepare, p, g1, .add(k1), replies: ["prepared"])
                try await c.expect(.prepare, p, g2, .add(k2), replies: ["prepared"])
                c.coordinator.decide(g1, .commit)
                c.coordinator.decide(g2, .abort)
                c.coordinator.decide(g3, .abort)
                try await c.expect(.rollback, p, g3, .add(k2), replies: ["rolled_back"], "a ROLLBACK of a branch never prepared")
                try await c.restart(p)
                try await c.expectRefusal(.prepare, p, g3, .add(k2), code: "already_rolled_back", "a PREPARE after its ROLLBACK and a restart")
                try await c.expect(.commit, p, g1, .add(k1), replies: ["committed"], "a COMMIT of a branch prepared before the restart")
                try await c.expect(.rollback, p, g2, .add(k2), replies: ["rolled_back"], "a ROLLBACK of a branch prepared before the restart")
                try await c.expectValue(k1, via: p, 1, "the branch committed after the restart")
                try await c.expectValue(k2, via: p, 0, "the branch rolled back after the restart")
            },
        ]
    }()

    // MARK: TCC

    static let tcc: [Duty] = {
        let p = TransactionProtocol.tcc
        return [
            Duty(id: "tcc.try-confirm", proto: p, title: "TRY and CONFIRM, each sent twice, do the work once") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expect(.try, p, g, .add(k), replies: ["tried"])
                try await c.expect(.try, p, g, .add(k), replies: ["tried"], "a repeated TRY")
                c.coordinator.decide(g, .commit)
                try await c.expect(.confirm, p, g, .add(k), replies: ["confirmed"])
                try await c.expect(.confirm, p, g, .add(k), replies: ["confirmed"], "a repeated CONFIRM")
                try await c.expectValue(k, via: p, before + 1, "after TRY and CONFIRM")
            },
            Duty(id: "tcc.try-cancel", proto: p, title: "TRY then CANCEL, sent twice, leaves nothing") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expect(.try, p, g, .add(k), replies: ["tried"])
                c.coordinator.decide(g, .abort)
                try await c.expect(.cancel, p, g, .add(k), replies: ["cancelled"])
                try await c.expect(.cancel, p, g, .add(k), replies: ["cancelled"], "a repeated CANCEL")
                try await c.expectValue(k, via: p, before, "after TRY and CANCEL")
            },
            Duty(id: "tcc.null-cancel", proto: p, title: "CANCEL of a TRY that never ran succeeds and does nothing (null compensation)") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                try await c.expect(.cancel, p, g, .add(k), replies: ["cancelled"], "a CANCEL of a branch whose TRY never arrived")
                try await c.expectValue(k, via: p, before, "after a CANCEL without TRY")
            },
            Duty(id: "tcc.no-hanging", proto: p, title: "a TRY that arrives after its CANCEL is refused and does nothing (no hanging)") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                try await c.expect(.cancel, p, g, .add(k), replies: ["cancelled"], "a CANCEL of a branch whose TRY never arrived")
                try await c.expectRefusal(.try, p, g, .add(k), code: "already_cancelled", "a TRY that arrives after its CANCEL")
                try await c.expectValue(k, via: p, before, "after a TRY that arrived after its CANCEL")
            },
            Duty(id: "tcc.refusal", proto: p, title: "a refused TRY (409 with an Error body) leaves nothing, and its CANCEL succeeds") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                try await c.expectRefusal(.try, p, g, .refuse(k), code: nil, "a TRY of `\(ConformanceOperation.refuse)`")
                try await c.expect(.cancel, p, g, .refuse(k), replies: ["cancelled"], "the CANCEL after a refused TRY")
                try await c.expectValue(k, via: p, before, "after a refused TRY and its CANCEL")
            },
            Duty(id: "tcc.duplicates", proto: p, title: "concurrent copies of one TRY do the work once") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expectConcurrently(4, .try, p, g, .add(k), replies: ["tried"])
                c.coordinator.decide(g, .commit)
                try await c.expect(.confirm, p, g, .add(k), replies: ["confirmed"])
                try await c.expectValue(k, via: p, before + 1, "after four concurrent TRYs and a CONFIRM")
            },
            Duty(id: "tcc.durable", proto: p, title: "tried branches and null-cancel markers survive a SIGKILL and restart", needsRestart: true) { c in
                let (g1, k1, g2, k2, g3) = (c.gid(), c.key(), c.gid(), c.key(), c.gid())
                try await c.expect(.try, p, g1, .add(k1), replies: ["tried"])
                try await c.expect(.try, p, g2, .add(k2), replies: ["tried"])
                c.coordinator.decide(g1, .commit)
                c.coordinator.decide(g2, .abort)
                c.coordinator.decide(g3, .abort)
                try await c.expect(.cancel, p, g3, .add(k2), replies: ["cancelled"], "a CANCEL of a branch whose TRY never arrived")
                try await c.restart(p)
                try await c.expectRefusal(.try, p, g3, .add(k2), code: "already_cancelled", "a TRY after its CANCEL and a restart")
                try await c.expect(.confirm, p, g1, .add(k1), replies: ["confirmed"], "a CONFIRM of a branch tried before the restart")
                try await c.expect(.cancel, p, g2, .add(k2), replies: ["cancelled"], "a CANCEL of a branch tried before the restart")
                try await c.expectValue(k1, via: p, 1, "the branch confirmed after the restart")
                try await c.expectValue(k2, via: p, 0, "the branch cancelled after the restart")
            },
        ]
    }()

    // MARK: Saga

    static let saga: [Duty] = {
        let p = TransactionProtocol.saga
        return [
            Duty(id: "saga.action", proto: p, title: "an ACTION sent twice does the work once") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expect(.action, p, g, .add(k), replies: ["done"])
                try await c.expect(.action, p, g, .add(k), replies: ["done"], "a repeated ACTION")
                try await c.expectValue(k, via: p, before + 1, "after an ACTION")
            },
            Duty(id: "saga.compensate", proto: p, title: "COMPENSATE, sent twice, undoes the ACTION once") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expect(.action, p, g, .add(k), replies: ["done"])
                c.coordinator.decide(g, .abort)
                try await c.expect(.compensate, p, g, .add(k), replies: ["compensated"])
                try await c.expect(.compensate, p, g, .add(k), replies: ["compensated"], "a repeated COMPENSATE")
                try await c.expectValue(k, via: p, before, "after ACTION and COMPENSATE")
            },
            Duty(id: "saga.null-compensation", proto: p, title: "COMPENSATE of an ACTION that never ran succeeds and does nothing") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                try await c.expect(.compensate, p, g, .add(k), replies: ["compensated"], "a COMPENSATE of a step whose ACTION never arrived")
                try await c.expectValue(k, via: p, before, "after a COMPENSATE without ACTION")
            },
            Duty(id: "saga.no-hanging", proto: p, title: "an ACTION that arrives after its COMPENSATE is refused and does nothing (no hanging)") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                try await c.expect(.compensate, p, g, .add(k), replies: ["compensated"], "a COMPENSATE of a step whose ACTION never arrived")
                try await c.expectRefusal(.action, p, g, .add(k), code: "already_compensated", "an ACTION that arrives after its COMPENSATE")
                try await c.expectValue(k, via: p, before, "after an ACTION that arrived after its COMPENSATE")
            },
            Duty(id: "saga.refusal", proto: p, title: "a refused ACTION (409 with an Error body) leaves nothing, and its COMPENSATE succeeds") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.decide(g, .abort)
                try await c.expectRefusal(.action, p, g, .refuse(k), code: nil, "an ACTION of `\(ConformanceOperation.refuse)`")
                try await c.expect(.compensate, p, g, .refuse(k), replies: ["compensated"], "the COMPENSATE after a refused ACTION")
                try await c.expectValue(k, via: p, before, "after a refused ACTION and its COMPENSATE")
            },
            Duty(id: "saga.duplicates", proto: p, title: "concurrent copies of one ACTION do the work once") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                try await c.expectConcurrently(4, .action, p, g, .add(k), replies: ["done"])
                try await c.expectValue(k, via: p, before + 1, "after four concurrent ACTIONs")
            },
            Duty(id: "saga.durable", proto: p, title: "done steps and null-compensation markers survive a SIGKILL and restart", needsRestart: true) { c in
                let (g, k, g2) = (c.gid(), c.key(), c.gid())
                try await c.expect(.action, p, g, .add(k), replies: ["done"])
                c.coordinator.decide(g2, .abort)
                try await c.expect(.compensate, p, g2, .add(k), replies: ["compensated"], "a COMPENSATE of a step whose ACTION never arrived")
                try await c.restart(p)
                try await c.expectRefusal(.action, p, g2, .add(k), code: "already_compensated", "an ACTION after its COMPENSATE and a restart")
                try await c.expect(.action, p, g, .add(k), replies: ["done"], "an ACTION repeated after the restart")
                try await c.expectValue(k, via: p, 1, "an ACTION done before the restart and repeated after it")
                c.coordinator.decide(g, .abort)
                try await c.expect(.compensate, p, g, .add(k), replies: ["compensated"], "a COMPENSATE after the restart")
                try await c.expectValue(k, via: p, 0, "the step compensated after the restart")
            },
        ]
    }()

    // MARK: 3PC

    static let threePhase: [Duty] = {
        let p = TransactionProtocol.threePhaseCommit
        return [
            Duty(id: "3pc.commit", proto: p, title: "CANCOMMIT, PRECOMMIT and DOCOMMIT, each sent twice, do the work once; the state answers committed") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.set(g, .prepared)
                try await c.expect(.canCommit, p, g, .add(k), replies: ["prepared"])
                try await c.expect(.canCommit, p, g, .add(k), replies: ["prepared"], "a repeated CANCOMMIT")
                c.coordinator.set(g, .preCommitted)
                try await c.expect(.preCommit, p, g, .add(k), replies: ["pre_committed"])
                try await c.expect(.preCommit, p, g, .add(k), replies: ["pre_committed"], "a repeated PRECOMMIT")
                c.coordinator.set(g, .committed)
                c.coordinator.decide(g, .commit)
                try await c.expect(.doCommit, p, g, .add(k), replies: ["committed"])
                try await c.expect(.doCommit, p, g, .add(k), replies: ["committed"], "a repeated DOCOMMIT")
                try await c.expectValue(k, via: p, before + 1, "after CANCOMMIT, PRECOMMIT and DOCOMMIT")
                try await expectState(c, g, "committed")
            },
            Duty(id: "3pc.rollback", proto: p, title: "CANCOMMIT then ROLLBACK leaves nothing; a late CANCOMMIT is refused already_aborted") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.set(g, .prepared)
                try await c.expect(.canCommit, p, g, .add(k), replies: ["prepared"])
                c.coordinator.set(g, .aborted)
                c.coordinator.decide(g, .abort)
                try await c.expect(.rollback, p, g, .add(k), replies: ["aborted"])
                try await c.expect(.rollback, p, g, .add(k), replies: ["aborted"], "a repeated ROLLBACK")
                try await c.expectRefusal(.canCommit, p, g, .add(k), code: "already_aborted", "a CANCOMMIT after the branch's ROLLBACK")
                try await c.expectValue(k, via: p, before, "after CANCOMMIT and ROLLBACK")
                try await expectState(c, g, "aborted")
            },
            Duty(id: "3pc.rollback-first", proto: p, title: "ROLLBACK of a branch never asked succeeds (aborted) and a late CANCOMMIT is refused") { c in
                let (g, k) = (c.gid(), c.key())
                c.coordinator.set(g, .aborted)
                try await c.expect(.rollback, p, g, .add(k), replies: ["aborted"], "a ROLLBACK of a branch never asked CANCOMMIT")
                try await c.expectRefusal(.canCommit, p, g, .add(k), code: "already_aborted", "a CANCOMMIT that arrives after its ROLLBACK")
            },
            Duty(id: "3pc.state", proto: p, title: "GET /dtx/state of a branch never seen answers aborted, and the branch never votes yes after") { c in
                let (g, k) = (c.gid(), c.key())
                c.coordinator.set(g, .aborted)
                try await expectState(c, g, "aborted")
                try await c.expectRefusal(.canCommit, p, g, .add(k), code: "already_aborted", "a CANCOMMIT after the branch answered its state aborted")
                let missing = await c.probe.call(.GET, ParticipantRoute.statePath + "?gid=\(g)")
                guard missing.status == 400 else {
                    throw DutyFailure(message: "GET /dtx/state without `branch` must be answered 400; it was answered \(DutyContext.describe(missing))")
                }
            },
            Duty(id: "3pc.refusal", proto: p, title: "a refused CANCOMMIT (409 with an Error body) is a NO, and does nothing") { c in
                let (g, k) = (c.gid(), c.key())
                let before = try await c.value(of: k, via: p)
                c.coordinator.set(g, .aborted)
                try await c.expectRefusal(.canCommit, p, g, .refuse(k), code: nil, "a CANCOMMIT of `\(ConformanceOperation.refuse)`")
                try await c.expect(.rollback, p, g, .refuse(k), replies: ["aborted"], "the ROLLBACK after a NO")
                try await c.expectValue(k, via: p, before, "after a refused CANCOMMIT")
            },
            Duty(id: "3pc.durable", proto: p, title: "a pre-committed branch survives a SIGKILL and restart, and commits", needsRestart: true) { c in
                let (g, k) = (c.gid(), c.key())
                c.coordinator.set(g, .prepared)
                try await c.expect(.canCommit, p, g, .add(k), replies: ["prepared"])
                c.coordinator.set(g, .preCommitted)
                try await c.expect(.preCommit, p, g, .add(k), replies: ["pre_committed"])
                c.coordinator.set(g, .committed)
                c.coordinator.decide(g, .commit)
                try await c.restart(p)
                try await c.expect(.doCommit, p, g, .add(k), replies: ["committed"], "a DOCOMMIT of a branch pre-committed before the restart")
                try await c.expectValue(k, via: p, 1, "the branch committed after the restart")
            },
        ]
    }()

    private static func expectState(_ c: DutyContext, _ gid: String, _ expected: String) async throws {
        let answer = await c.probe.call(.GET, ParticipantRoute.statePath + "?gid=\(gid)&branch=0")
        guard answer.status == 200, answer.reply == expected else {
            throw DutyFailure(message: "GET /dtx/state must answer 200 `\(expected)`; it was answered \(DutyContext.describe(answer))")
        }
    }

    // MARK: Every protocol

    /// Bad requests to the work path of `proto`: refused with the documented errors, and nothing done.
    static func badRequests(_ proto: TransactionProtocol) -> Duty {
        Duty(id: "requests.bad", proto: nil, title: "bad requests are refused with the documented errors (400, 404, 405) and change nothing") { c in
            let work = work(of: proto)
            let path = ParticipantRoute(proto, work)!.path
            let k = c.key()
            let valid = c.request(proto, c.gid(), .add(k)).jsonBytes()
            let cases: [(String, [UInt8])] = [
                ("a body that is not JSON", Array("prepare please".utf8)),
                ("a body without gid, branch and operation", Array("{}".utf8)),
                ("an invalid gid", Array(#"{"gid":"not a gid!","branch":0,"operation":"\#(ConformanceOperation.add)","payload":{"key":"\#(k)","amount":1}}"#.utf8)),
                ("a negative branch", Array(#"{"gid":"\#(c.gid())","branch":-1,"operation":"\#(ConformanceOperation.add)","payload":{"key":"\#(k)","amount":1}}"#.utf8)),
                ("a branch that is not a number", Array(#"{"gid":"\#(c.gid())","branch":"0","operation":"\#(ConformanceOperation.add)","payload":{"key":"\#(k)","amount":1}}"#.utf8)),
            ]
            for (what, body) in cases {
                let answer = await c.probe.call(.POST, path, body: body)
                guard answer.status == 400, answer.hasErrorBody else {
                    throw DutyFailure(message: "POST \(path) with \(what) must be answered 400 with an Error body; it was answered \(DutyContext.describe(answer))")
                }
            }
            let get = await c.probe.call(.GET, path)
            guard get.status == 405, get.headers["Allow"].joined(separator: ",").contains("POST") else {
                throw DutyFailure(message: "GET \(path) must be answered 405 with `Allow: POST`; it was answered \(DutyContext.describe(get)) (Allow: \(get.headers["Allow"].joined(separator: ",")))")
            }
            let unknown = await c.probe.call(.POST, "/dtx/\(proto.rawValue)/no_such_message", body: valid)
            guard unknown.status == 404 else {
                throw DutyFailure(message: "POST /dtx/\(proto.rawValue)/no_such_message must be answered 404; it was answered \(DutyContext.describe(unknown))")
            }
            try await c.expectValue(k, via: proto, 0, "after bad requests")
        }
    }

    /// `POST /dtx/batch`: each item answered as its own path would, in order. Skipped when
    /// the participant does not take batches.
    static func batch(_ proto: TransactionProtocol) -> Duty {
        Duty(id: "batch", proto: nil, title: "a batch is answered item by item, in order, each as its own path would") { c in
            let (g1, g2, g3, k) = (c.gid(), c.gid(), c.gid(), c.key())
            let work = work(of: proto)
            let finish = DutyContext.finishing(proto)
            let items: [(path: String, body: [UInt8])] = [
                (ParticipantRoute(proto, work)!.path, c.request(proto, g1, .add(k)).jsonBytes()),
                (ParticipantRoute(proto, work)!.path, c.request(proto, g2, .refuse(k)).jsonBytes()),
                (ParticipantRoute(proto, finish)!.path, c.request(proto, g3, .add(k)).jsonBytes()),
                (ParticipantRoute(proto, work)!.path, Array(#"{"branch":0,"operation":"x"}"#.utf8)),
            ]
            c.coordinator.decide(g2, .abort)
            c.coordinator.decide(g3, .abort)
            let answer = await c.probe.call(.POST, ParticipantBatch.path, body: ParticipantBatch.body(items))
            if answer.status == 404 { throw Skip(reason: "the participant does not take batches (POST /dtx/batch answered 404)") }
            guard answer.status == 200, let answers = ParticipantBatch.answers(in: answer.body, count: items.count) else {
                throw DutyFailure(message: "POST /dtx/batch with 4 items must be answered 200 with 4 answers; it was answered \(DutyContext.describe(answer))")
            }
            let expected: [(Int, String?)] = [(200, DutyContext.reply(proto, work)), (409, nil), (200, DutyContext.reply(proto, finish)), (400, nil)]
            for (index, (answer, (status, reply))) in zip(answers, expected).enumerated() {
                let got = answer["status"]?.doubleValue.map(Int.init)
                guard got == status, reply == nil || answer["body"]?["status"]?.stringValue == reply else {
                    throw DutyFailure(message: "item \(index + 1) of the batch must be answered \(status)\(reply.map { " `\($0)`" } ?? ""), as its own path would; it was answered \(answer)")
                }
            }
            c.coordinator.decide(g1, .commit)
            try await c.expect(decisionMessage(proto), proto, g1, .add(k), replies: [DutyContext.reply(proto, decisionMessage(proto))])
            try await c.expectValue(k, via: proto, 1, "after the batched work and its decision")
        }
    }

    /// Calls without the callback token, or with another, are refused 401 and change nothing.
    static func callbackToken(_ proto: TransactionProtocol) -> Duty {
        Duty(id: "auth.callback-token", proto: nil, title: "a call without the callback token, or with another, is refused 401 and changes nothing") { c in
            let k = c.key()
            let path = ParticipantRoute(proto, work(of: proto))!.path
            let body = c.request(proto, c.gid(), .add(k)).jsonBytes()
            for (what, authorization) in [("without a token", String?.none), ("with another token", "Bearer not-the-token")] {
                let answer = await c.probe.call(.POST, path, body: body, authorization: .some(authorization))
                guard answer.status == 401 else {
                    throw DutyFailure(message: "POST \(path) \(what) must be answered 401; it was answered \(DutyContext.describe(answer))")
                }
            }
            try await c.expectValue(k, via: proto, 0, "after calls refused 401")
        }
    }

    static func work(of proto: TransactionProtocol) -> ParticipantMessage {
        switch proto {
        case .twoPhaseCommit: .prepare
        case .tcc: .try
        case .saga: .action
        case .threePhaseCommit: .canCommit
        case .msg: .queryPrepared
        }
    }

    /// The message that makes a branch's work final.
    static func decisionMessage(_ proto: TransactionProtocol) -> ParticipantMessage {
        switch proto {
        case .twoPhaseCommit: .commit
        case .tcc: .confirm
        case .saga: .action
        case .threePhaseCommit: .doCommit
        case .msg: .queryPrepared
        }
    }
}

/// A duty that does not apply to this participant, and why.
struct Skip: Error {
    var reason: String
}

extension DutyContext {
    /// The `status` a 200 answer to `message` carries.
    static func reply(_ proto: TransactionProtocol, _ message: ParticipantMessage) -> String {
        ParticipantRoute(proto, message)!.doneStatus
    }
}
