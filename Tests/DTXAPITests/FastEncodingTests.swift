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
        let fast = original.jsonBytes()
        let codable = Array(try JSONEncoder.dtx().encode(original))
        #expect(String(decoding: fast, as: UTF8.self) == String(decoding: codable, as: UTF8.self))
        #expect(try JSONDecoder.dtx().decode(TransactionView.self, from: Data(fast)) == original)
    }

    @Test(arguments: [
        #"{"protocol":"2pc","branches":[{"participant":"a","operation":"debit","payload":{"account":"é\n","amount":5,"n":[1.5,true,null]}},{"participant":"b","operation":"credit"}],"timeout":2.5,"wait":true}"#,
        #"{"gid":"t-1","protocol":"tcc","branches":[{"participant":"a","operation":"o","payload":null}],"timeout":10,"wait":false,"interactive":null}"#,
        #"{"protocol":"2pc","interactive":true,"gid":null,"branches":null,"timeout":null}"#,
        #" {"protocol":"saga","branches":[]} "#,
    ])
    func theCommonSubmissionIsReadAsCodableReadsIt(_ text: String) throws {
        let fast = try #require(TransactionSubmission(commonJSON: Array(text.utf8)))
        #expect(fast == (try JSONDecoder.dtx().decode(TransactionSubmission.self, from: Data(text.utf8))))
    }

    @Test(arguments: [
        #"{"branches":[]}"#,  // no protocol
        #"{"protocol":"4pc"}"#,
        #"{"protocol":"2pc","timeout":"10"}"#,
        #"{"protocol":"2pc","wait":1}"#,
        #"{"protocol":"2pc","extra":1}"#,
        #"{"protocol":"saga","branches":[{"participant":"a","operation":"o","dependsOn":[]}]}"#,
        #"{"protocol":"2pc","branches":[{"participant":"a","operation":"o","x":1}]}"#,
        #"{"protocol":"2pc","branches":[{"participant":1,"operation":"o"}]}"#,
        #"{"protocol":"2pc","branches":[{"operation":"o"}]}"#,
        #"{"protocol":"2pc","branches":{}}"#,
        #"{"protocol":"2pc""#,
        #"[]"#,
        // Where Foundation reads differently: the first of two keys, a number it cannot represent.
        #"{"protocol":"saga","protocol":"2pc"}"#,
        #"{"protocol":"2pc","branches":[{"participant":"a","operation":"o","participant":"b"}]}"#,
        #"{"protocol":"2pc","branches":[{"participant":"a","operation":"o","payload":{"n":1e400}}]}"#,
        #"{"protocol":"2pc","timeout":1e-400}"#,
    ])
    func anythingElseIsLeftToCodable(_ text: String) {
        #expect(TransactionSubmission(commonJSON: Array(text.utf8)) == nil)
    }

    @Test func invalidUTF8IsLeftToCodable() {
        let bytes = Array(#"{"protocol":"2pc","branches":[{"participant":"a","operation":"o","payload":{"note":""#.utf8) + [0xFF] + Array(#""}}]}"#.utf8)
        #expect(TransactionSubmission(commonJSON: bytes) == nil)
        #expect((try? JSONDecoder.dtx().decode(TransactionSubmission.self, from: Data(bytes))) == nil)
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
        ]
        for request in requests {
            #expect(try ParticipantRequest(json: request.jsonBytes()) == request)
        }
        #expect(String(decoding: requests[1].jsonBytes(), as: UTF8.self)
                == #"{"branch":7,"gid":"g-1","operation":"debit","participants":["a","b"],"payload":{"amount":5,"to":["x"]}}"#)
        let loose = #"{"branch":2,"operation":"op","gid":"g","payload":null,"participants":null,"extra":true}"#
        #expect(try ParticipantRequest(json: Array(loose.utf8)) == ParticipantRequest(gid: "g", branch: 2, operation: "op"))
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
        #expect(throws: ParticipantRequest.Unreadable.self) { try ParticipantRequest(json: Array(text.utf8)) }
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
