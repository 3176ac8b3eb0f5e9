import DTXSQLite
import Foundation
import Testing

@Suite struct SchemaFileTests {
    @Test func schemasHoldTheDDLTheResourceManagerRuns() throws {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let text = try String(contentsOf: url.appendingPathComponent("Schemas/sqlite-participant.sql"), encoding: .utf8)
        let sql = text.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("--") }.joined(separator: "\n")
        #expect(sql.trimmingCharacters(in: .whitespacesAndNewlines) == SQLiteParticipantSchema.ddl.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
