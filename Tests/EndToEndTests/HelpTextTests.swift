import Foundation
import Testing

/// Every executable's `--help` (and each `dtx` subcommand's) reads cleanly: it exits 0 and
/// prints no stray escapes — no backslash (a `\\` meant as a line continuation in a Swift
/// string prints one), no terminal escape sequence.
@Suite struct HelpTextTests {
    /// The executables of Package.swift, read from it so that a new one is checked too;
    /// `wal-crash-writer` is a test fixture without help.
    static let executables: [String] = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let manifest = (try? String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)) ?? ""
        let pattern = try! NSRegularExpression(pattern: #"executableTarget\(\s*name:\s*"([^"]+)""#)
        let range = NSRange(manifest.startIndex..., in: manifest)
        return pattern.matches(in: manifest, range: range).compactMap { match in
            Range(match.range(at: 1), in: manifest).map { String(manifest[$0]) }
        }.filter { $0 != "wal-crash-writer" }
    }()

    static let dtxSubcommands = ["participants", "list", "show", "submit", "commit", "abort", "recover", "cluster", "conformance", "retry", "resolve", "wal", "wal verify", "wal dump", "wal repair"]

    @Test func everyExecutableIsFound() {
        #expect(Self.executables.count >= 11, "\(Self.executables)")
        #expect(Self.executables.contains("accounts-service") && Self.executables.contains("dtxd"))
    }

    @Test(arguments: executables.map { [$0] } + dtxSubcommands.map { ["dtx"] + $0.split(separator: " ").map(String.init) })
    func helpReadsCleanly(_ command: [String]) async throws {
        let (status, out, err) = try await run(command[0], Array(command.dropFirst()) + ["--help"])
        #expect(status == 0, "\(command) --help exited \(status): \(err)")
        #expect(out.count > 100, "\(command) --help printed too little: \(out)")
        for (number, line) in out.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            #expect(!line.contains("\\"), "\(command.joined(separator: " ")) --help, line \(number + 1) has a backslash: \(line)")
            #expect(!line.contains("\u{1B}"), "\(command.joined(separator: " ")) --help, line \(number + 1) has a terminal escape: \(line)")
        }
    }
}
