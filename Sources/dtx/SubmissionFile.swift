import DTXAPI
import DTXCore
import Foundation

/// Reads the JSON transaction spec that `dtx submit` sends: the body of
/// `POST /v1/transactions`. Every mistake is found here, before anything is sent, and
/// described in one line naming the file, the place in it and what is wrong.
enum SubmissionFile {
    struct Problem: Error, CustomStringConvertible {
        var description: String
    }

    static let example = #"{"protocol": "2pc", "branches": [{"participant": "accounts", "operation": "debit", "payload": {...}}]}"#

    /// `path` is a file name, or `-` for standard input.
    static func load(_ path: String) throws(Problem) -> TransactionSubmission {
        let name = path == "-" ? "standard input" : path
        return try decode(try read(path), name: name)
    }

    private static func read(_ path: String) throws(Problem) -> Data {
        if path == "-" {
            return FileHandle.standardInput.readDataToEndOfFile()
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw Problem(description: "\(path): no such file; give the path of a JSON transaction spec, or - to read it from standard input")
        }
        guard !isDirectory.boolValue else {
            throw Problem(description: "\(path) is a directory; give the path of a JSON transaction spec file")
        }
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw Problem(description: "cannot read \(path): \(error.localizedDescription)")
        }
    }

    static func decode(_ data: Data, name: String) throws(Problem) -> TransactionSubmission {
        if data.allSatisfy({ [0x20, 0x09, 0x0A, 0x0D].contains($0) }) {
            throw Problem(description: "\(name) is empty; expected a JSON transaction spec such as \(example)")
        }
        let decoder = JSONDecoder.dtx()

        // First as plain JSON: syntax errors, the wrong top-level shape and misspelt keys
        // (which a typed decode would silently drop) are reported before the types.
        let document: JSONValue
        do {
            document = try decoder.decode(JSONValue.self, from: data)
        } catch {
            throw Problem(description: "\(name) is not valid JSON: \(syntaxError(error, in: data))")
        }
        guard case let .object(fields) = document else {
            throw Problem(description: "\(name): expected a JSON object at the top level, found \(kind(of: document)); for example \(example)")
        }
        if let (place, allowed) = RequestShape.submission.unknownProperty(in: .object(fields)) {
            throw Problem(description: "\(name): unknown key '\(place)'; the keys allowed there are \(allowed.joined(separator: ", "))")
        }
        // As strictly as dtxd reads it (duplicate keys, invalid UTF-8).
        do {
            _ = try JSONValue(parsingStrictly: Array(data))
        } catch {
            throw Problem(description: "\(name): \(error); dtxd would refuse it")
        }

        let submission: TransactionSubmission
        do {
            submission = try TransactionSubmission(json: document)
        } catch {
            throw Problem(description: "\(name): \(error.message)")
        }
        try checkRules(submission, in: name)
        return submission
    }

    /// The rules of Schemas/transaction-spec.schema.json that a typed decode does not
    /// enforce (the same check dtxd makes, `documentProblem`), so that a spec dtxd would
    /// refuse is caught before it is sent.
    private static func checkRules(_ submission: TransactionSubmission, in name: String) throws(Problem) {
        if let (_, message) = submission.documentProblem {
            throw Problem(description: "\(name): \(message)")
        }
    }

    private static func kind(of value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Where the syntax breaks. JSONDecoder on Linux says only "not valid JSON", so ask
    /// JSONSerialization, whose message names a byte offset, and turn it into a line,
    /// a column and the text found there.
    private static func syntaxError(_ error: Error, in data: Data) -> String {
        var detail: String?
        do {
            _ = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            detail = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String
        }
        if String(validating: data, as: UTF8.self) == nil {
            return "it is not UTF-8 text; a transaction spec is a UTF-8 JSON file"
        }
        if detail?.hasPrefix("Unexpected end of file") == true {
            return "the input ends before the JSON does (a missing ']', '}' or '\"'?)"
        }
        guard let detail else {
            if case let DecodingError.dataCorrupted(context) = error { return context.debugDescription }
            return "\(error)"
        }
        guard let range = detail.range(of: #"around character (\d+)"#, options: .regularExpression),
              let offset = Int(detail[range].split(separator: " ").last ?? ""), offset <= data.count else {
            return detail
        }
        let bytes = [UInt8](data)
        let before = bytes[..<offset]
        let line = before.count(where: { $0 == 0x0A }) + 1
        let lineStart = before.lastIndex(of: 0x0A).map { $0 + 1 } ?? 0
        let column = offset - lineStart + 1
        let rest = bytes[offset...].prefix(while: { $0 != 0x0A && $0 != 0x0D }).prefix(24)
        let found = rest.isEmpty ? "the end of the input" : "'\(String(decoding: rest, as: UTF8.self))'"
        let what = detail.hasPrefix("Invalid value") ? "unexpected" : detail.replacingOccurrences(of: #" around character \d+\.?"#, with: "", options: .regularExpression) + ";"
        return "\(what) \(found) at line \(line), column \(column)"
    }
}
