import DTXCore
import Foundation
import Testing

@Suite struct GlobalTransactionIDTests {
    @Test(arguments: ["a", "order-42", "tx_1.2:3", String(repeating: "z", count: 128)])
    func acceptsShortURLSafeIDs(_ text: String) throws {
        #expect(try GlobalTransactionID(validating: text).rawValue == text)
    }

    @Test func refusesEmptyLongAndUnsafeIDsSayingWhy() {
        #expect(throws: GlobalTransactionID.Problem.empty) { try GlobalTransactionID(validating: "") }
        #expect(throws: GlobalTransactionID.Problem.tooLong(129)) { try GlobalTransactionID(validating: String(repeating: "z", count: 129)) }
        #expect(throws: GlobalTransactionID.Problem.invalidCharacter("/")) { try GlobalTransactionID(validating: "a/b") }
        #expect(throws: GlobalTransactionID.Problem.invalidCharacter("é")) { try GlobalTransactionID(validating: "café") }
    }

    @Test func decodingValidates() throws {
        let decoded = try JSONDecoder().decode([GlobalTransactionID].self, from: Data(#"["ok-1"]"#.utf8))
        #expect(decoded.map(\.rawValue) == ["ok-1"])
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([GlobalTransactionID].self, from: Data(#"["no way"]"#.utf8)) }
    }
}
