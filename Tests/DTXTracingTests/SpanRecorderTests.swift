import DTXAPI
@testable import DTXTracing
import Foundation
import Testing
import Tracing

@Suite struct SpanRecorderTests {
    /// A child joins its parent's trace and follows its sampling; a new trace is sampled
    /// by the ratio; only sampled spans are kept, once, when they end.
    @Test func spansJoinTheirParentsTraceAndOnlySampledOnesAreKept() {
        let recorder = SpanRecorder(ratio: 1)
        let root = recorder.startSpan("root", context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, function: #function, file: #fileID, line: #line)
        let child = recorder.startSpan("child", context: root.context, ofKind: .client, at: DefaultTracerClock.now, function: #function, file: #fileID, line: #line)
        child.attributes["dtx.gid"] = "g"
        child.end()
        child.end()
        root.end()
        let kept = recorder.take().spans
        #expect(kept.map(\.name) == ["child", "root"])
        #expect(kept[0].identity.traceID == kept[1].identity.traceID && kept[0].parentSpanID == kept[1].identity.spanID && kept[1].parentSpanID == 0)
        #expect(kept[0].attributes["dtx.gid"]?.toSpanAttribute() == .string("g"))

        let none = SpanRecorder(ratio: 0)
        let dropped = none.startSpan("root", context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, function: #function, file: #fileID, line: #line)
        #expect(!dropped.isRecording)
        dropped.end()
        #expect(none.take().spans.isEmpty)
        // A sampled remote parent is followed even by a recorder that samples nothing new.
        var context = ServiceContext.topLevel
        none.extract(["traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], into: &context, using: DictionaryExtractor())
        let continued = none.startSpan("server", context: context, ofKind: .server, at: DefaultTracerClock.now, function: #function, file: #fileID, line: #line)
        #expect(continued.isRecording)
        var carrier: [String: String] = [:]
        none.inject(continued.context, into: &carrier, using: DictionaryInjector())
        #expect(carrier["traceparent"]?.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-") == true && carrier["traceparent"]?.hasSuffix("-01") == true)
    }

    @Test func theExportIsOTLPJSON() throws {
        var attributes = SpanAttributes()
        attributes["dtx.branch"] = 1
        attributes["dtx.gid"] = "g\"1"
        let span = FinishedSpan(name: "dtx.message", kind: .client, identity: TraceParent(traceHigh: 1, traceLow: 2, spanID: 3, sampled: true),
                                parentSpanID: 4, start: 10, end: 20, attributes: attributes, status: SpanStatus(code: .error, message: "down"))
        let bytes = TraceExporter.document([span], serviceName: "dtxd")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        let resource = try #require((json["resourceSpans"] as? [[String: Any]])?.first)
        let exported = try #require(((resource["scopeSpans"] as? [[String: Any]])?.first?["spans"] as? [[String: Any]])?.first)
        #expect(exported["traceId"] as? String == "00000000000000010000000000000002")
        #expect(exported["spanId"] as? String == "0000000000000003" && exported["parentSpanId"] as? String == "0000000000000004")
        #expect(exported["kind"] as? Int == 3 && exported["startTimeUnixNano"] as? String == "10" && exported["endTimeUnixNano"] as? String == "20")
        let pairs = (exported["attributes"] as? [[String: Any]] ?? []).map { ($0["key"] as? String ?? "", ($0["value"] as? [String: Any]) ?? [:]) }
        #expect(pairs.contains { $0.0 == "dtx.gid" && $0.1["stringValue"] as? String == "g\"1" })
        #expect(pairs.contains { $0.0 == "dtx.branch" && $0.1["intValue"] as? String == "1" })
        #expect((exported["status"] as? [String: Any])?["code"] as? Int == 2)
    }
}

private struct DictionaryExtractor: Extractor {
    func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}

private struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}
