import DTXAPI
import DTXCore
import Foundation
import Testing

@Suite struct JSONWriterTests {
    private static let samples: [JSONValue] = [
        .null, .bool(true), .number(0), .number(-42), .number(3.25), .number(1e300), .string(""),
        .string("quote \" backslash \\ newline \n tab \t control \u{01} unicode é 😀 /"),
        .array([]), .object([:]),
        .object(["amount": .number(5), "to": .string("acc-2"), "tags": .array([.bool(false), .null, .object(["x": .number(-0.5)])])]),
    ]

    @Test(arguments: samples) func writtenJSONParsesBackAndAgreesWithFoundation(_ value: JSONValue) throws {
        var writer = JSONWriter()
        writer.value(value)
        #expect(try JSONValue(parsing: writer.bytes) == value)
        #expect(try JSONDecoder().decode(JSONValue.self, from: Data(writer.bytes)) == value)
        let foundation = try JSONEncoder().encode(value)
        #expect(try JSONValue(parsing: Array(foundation)) == value)
    }

    @Test func theParserRejectsWhatIsNotJSON() throws {
        for text in ["", "{", "[1,]", "{\"a\" 1}", "tru", "01", "1.", "\"unterminated", "\"bad \\x escape\"", "{} extra", "[\"\u{01}\"]", "nul"] {
            #expect(throws: JSONValue.ParseError.self, "\(text)") { try JSONValue(parsing: Array(text.utf8)) }
        }
        #expect(try JSONValue(parsing: Array(" {\"a\" : [1, 2.5e2, \"\\u00e9\\ud83d\\ude00\"]} ".utf8))
                == .object(["a": .array([.number(1), .number(250), .string("é😀")])]))
    }

    @Test func deepNestingIsRefusedNotCrashed() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONValue.ParseError.self) { try JSONValue(parsing: Array(deep.utf8)) }
    }
}
