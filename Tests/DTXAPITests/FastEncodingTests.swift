import DTXAPI
import DTXCore
import Foundation
import Testing

@Suite struct FastEncodingTests {
    private func view(error: String?, decision: Decision?) -> TransactionView {
        let at = Date(timeIntervalSince1970: 1_795_000_000)
        return TransactionView(
            gid: "g-1", protocol: .twoPhaseCommit, status: "committing", decision: decision, interactive: false, heuristic: true, stuck: false,
            createdAt: at, updatedAt: at.addingTimeInterval(2), timeout: 2.5, error: error,
            branches: [
                BranchView(id: 0, participant: "a", operation: "debit", state: "committed", attempts: 1, lastError: nil, result: .object(["ok": .bool(true)])),
                BranchView(id: 1, participant: "b\"q", operation: "credit", state: "committing", attempts: 3, lastError: "down\n", result: nil),
            ],
            timeline: [TimelineEntry(at: at, event: "submitted"), TimelineEntry(at: at, event: "prepare: failed", branch: 1, detail: "é")]
        )
    }

    @Test(arguments: [(String?.none, Decision?.none), ("no funds", .abort), (nil, .commit)])
    func theHandWrittenViewIsWhatCodableWrites(_ error: String?, _ decision: Decision?) throws {
        let original = view(error: error, decision: decision)
        let written = original.jsonBytes()
        #expect(try JSONDecoder.dtx().decode(TransactionView.self, from: Data(written)) == original)
        // Sorted keys, nil fields left out, dates in ISO 8601 to the second.
        #expect(String(decoding: written, as: UTF8.self).hasPrefix(#"{"branches":[{"attempts":1,"id":0,"operation":"debit","participant":"a","result":{"ok":true},"state":"committed"}"#))
        #expect(String(decoding: written, as: UTF8.self).contains(#""createdAt":"2026-11-18T11:06:40Z","#))
        #expect(String(decoding: written, as: UTF8.self).contains(#""decision""#) == (decision != nil))
        #expect(String(decoding: written, as: UTF8.self).contains(#""error""#) == (error != nil))
    }

    private func read(_ text: String) throws -> TransactionSubmission {
        try TransactionSubmission(json: try JSONValue(parsingStrictly: Array(text.utf8)))
    }

    @Test func theReaderReadsWhatTheClientWrites() throws {
        let submissions = [
            TransactionSubmission(protocol: .twoPhaseCommit, branches: [
                BranchSpec(participant: "a", operation: "debit", payload: .object(["account": .string("é\n"), "amount": .number(5), "n": .array([.number(1.5), .bool(true), .null])])),
                BranchSpec(participant: "b", operation: "credit"),
            ], timeout: 2.5, wait: true),
            TransactionSubmission(gid: "t-1", protocol: .tcc, branches: [BranchSpec(participant: "a", operation: "o")], timeout: 10, wait: false),
            TransactionSubmission(protocol: .twoPhaseCommit, interactive: true),
            TransactionSubmission(protocol: .saga, branches: [
                BranchSpec(participant: "a", operation: "book"),
                BranchSpec(participant: "b", operation: "pay", dependsOn: [0], compensatable: false,
                           retry: StepRetry(maxAttempts: 3, initialDelay: 0.5, maxDelay: 4), timeout: 1.5),
            ]),
        ]
        for submission in submissions {
            #expect(try TransactionSubmission(json: try JSONValue(parsing: Array(try JSONEncoder.dtx().encode(submission)))) == submission)
        }
        // An absent or null optional is nil.
        #expect(try read(#"{"protocol":"2pc","interactive":true,"gid":null,"branches":null,"timeout":null,"wait":null}"#)
                == TransactionSubmission(protocol: .twoPhaseCommit, interactive: true))
        // Any integer an Int holds, as JSONDecoder reads it.
        #expect(try read(#"{"protocol":"saga","branches":[{"participant":"a","operation":"o","retry":{"maxAttempts":1e16}}]}"#).branches?[0].retry?.maxAttempts == 10_000_000_000_000_000)
        #expect(try read(#"{"protocol":"tcc","branches":[{"participant":"a","operation":"o","payload":null,"retry":null}]}"#)
                == TransactionSubmission(protocol: .tcc, branches: [BranchSpec(participant: "a", operation: "o")]))
    }

    @Test(arguments: [
        (#"{"branches":[]}"#, "protocol is required: one of 2pc, 3pc, tcc, saga, msg"),
        (#"{"protocol":null}"#, "protocol must not be null (expected a string)"),
        (#"{"protocol":"4pc"}"#, "protocol must be one of 2pc, 3pc, tcc, saga, msg, not '4pc'"),
        (#"{"protocol":"2pc","timeout":"10"}"#, "timeout has the wrong type (expected a number)"),
        (#"{"protocol":"2pc","wait":1}"#, "wait has the wrong type (expected true or false)"),
        (#"{"protocol":"2pc","branches":{}}"#, "branches has the wrong type (expected an array)"),
        (#"{"protocol":"2pc","branches":[7]}"#, "branches[0] has the wrong type (expected an object)"),
        (#"{"protocol":"2pc","branches":[{"operation":"o"}]}"#, "branches[0].participant is required"),
        (#"{"protocol":"2pc","branches":[{"participant":"a","operation":"o"},{"participant":1,"operation":"o"}]}"#, "branches[1].participant has the wrong type (expected a string)"),
        (#"{"protocol":"saga","branches":[{"participant":"a","operation":"o","dependsOn":[0.5]}]}"#, "branches[0].dependsOn[0] has the wrong type (expected an integer)"),
        (#"{"protocol":"saga","branches":[{"participant":"a","operation":"o","retry":{"maxAttempts":"3"}}]}"#, "branches[0].retry.maxAttempts has the wrong type (expected an integer)"),
        (#"{"protocol":"saga","branches":[{"participant":"a","operation":"o","retry":{"maxAttempts":1e19}}]}"#, "branches[0].retry.maxAttempts has the wrong type (expected an integer)"),
        ("[]", "the body has the wrong type (expected an object)"),
    ])
    func anythingElseIsRefusedNamingThePlace(_ text: String, _ why: String) throws {
        do {
            _ = try read(text)
            Issue.record("\(text) was read")
        } catch let error as UnreadableJSON {
            #expect(error.message == why)
        }
    }

    @Test func numbersBeyondDoubleAreNotJSONValues() {
        #expect((try? JSONValue(parsing: Array("[1e400]".utf8))) == nil)
        #expect((try? JSONValue(parsing: Array("-1e309".utf8))) == nil)
        #expect((try? JSONValue(parsing: Array("1e-400".utf8))) == .number(0))
        #expect((try? JSONValue(parsingStrictly: Array("1e-400".utf8))) == nil)
        #expect((try? JSONValue(parsingStrictly: Array("0.0e-400".utf8))) == .number(0))
    }

    @Test func datesAreISO8601InUTCToTheSecond() {
        #expect(ISO8601.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00Z")
        #expect(ISO8601.format(Date(timeIntervalSince1970: 1_795_000_000.9)) == "2026-11-18T11:06:40Z")
    }
}

@Suite struct ParticipantMessageEncodingTests {
    @Test func theReaderReadsWhatTheWriterWritesAndIgnoresUnknownFields() throws {
        let requests = [
            ParticipantRequest(gid: "g-1", branch: 0, operation: "debit"),
            ParticipantRequest(gid: "g-1", branch: 7, operation: "debit", payload: .object(["amount": .number(5), "to": .array([.string("x")])]), participants: ["a", "b"]),
            ParticipantRequest(gid: "g-2", branch: 1, operation: "credit", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ]
        for request in requests {
            #expect(try ParticipantRequest(json: request.jsonBytes()) == request)
        }
        #expect(String(decoding: requests[1].jsonBytes(), as: UTF8.self)
                == #"{"branch":7,"gid":"g-1","operation":"debit","participants":["a","b"],"payload":{"amount":5,"to":["x"]}}"#)
        let loose = #"{"branch":2,"operation":"op","gid":"g","payload":null,"participants":null,"extra":true}"#
        #expect(try ParticipantRequest(json: Array(loose.utf8)) == ParticipantRequest(gid: "g", branch: 2, operation: "op"))
        // A traceparent that is no string is refused; a malformed string is kept (the
        // tracer starts a new trace from it, as W3C Trace Context says).
        #expect(throws: UnreadableJSON.self) { try ParticipantRequest(json: Array(#"{"branch":2,"operation":"op","gid":"g","traceparent":17}"#.utf8)) }
        #expect(try ParticipantRequest(json: Array(#"{"branch":2,"operation":"op","gid":"g","traceparent":"x"}"#.utf8)).traceparent == "x")
    }

    @Test func aTraceparentIsReadAndWrittenAsW3CTraceContextSays() throws {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let identity = try #require(TraceParent(parsing: text))
        #expect(identity == TraceParent(traceHigh: 0x4bf9_2f35_77b3_4da6, traceLow: 0xa3ce_929d_0e0e_4736, spanID: 0x00f0_67aa_0ba9_02b7, sampled: true))
        #expect(identity.text == text)
        #expect(TraceParent(parsing: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled == false)
        // A later version may add fields; version 00 may not.
        #expect(TraceParent(parsing: "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")?.sampled == true)
        for bad in ["", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"] {
            #expect(TraceParent(parsing: bad) == nil, "\(bad)")
        }
    }

    @Test func aTraceparentSaysWhetherItsTraceIsSampled() {
        #expect(TraceParent.isSampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        #expect(!TraceParent.isSampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"))
        #expect(TraceParent.isSampled("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"))
        #expect(TraceParent.isSampled("not a traceparent"), "malformed: left to the tracer, which starts a new trace")
    }

    @Test(arguments: [
        (#"{"gid":"g","branch":1.5,"operation":"x"}"#, "field 'branch' must be an integer"),
        (#"{"gid":"g","operation":"x"}"#, "missing field 'branch'"),
        (#"{"gid":null,"branch":0,"operation":"x"}"#, "field 'gid' is null"),
        (#"{"gid":1,"branch":0,"operation":"x"}"#, "field 'gid' must be a string"),
        (#"{"gid":"g","branch":0,"operation":"x","participants":[1]}"#, "field 'participants.0' must be a string"),
        (#"{"gid":"g","branch":0,"operation":"x","participants":"a"}"#, "field 'participants' must be an array"),
        ("[]", "the body is not a JSON object"),
        ("{", "the body is not valid JSON"),
        ("", "the request body is empty"),
    ])
    func anythingElseIsRefusedSayingWhatToSend(_ text: String, _ why: String) {
        #expect(throws: UnreadableJSON.self) { try ParticipantRequest(json: Array(text.utf8)) }
        do {
            _ = try ParticipantRequest(json: Array(text.utf8))
        } catch {
            #expect(error.message.hasPrefix(why), "\(error.message)")
            #expect(error.message.contains("send a JSON object with 'gid' (string)"))
        }
    }

    @Test func repliesAreWrittenWithSortedKeys() {
        #expect(String(decoding: ParticipantReply(status: "prepared").jsonBytes(), as: UTF8.self) == #"{"status":"prepared"}"#)
        let reply = ParticipantReply(status: "committed", result: .object(["s": .string("é\""), "id": .number(3)]))
        #expect(String(decoding: reply.jsonBytes(), as: UTF8.self) == #"{"result":{"id":3,"s":"é\""},"status":"committed"}"#)
    }
}
