import DTXTestSupport
import Foundation
@testable import DTXLog

/// A fresh temporary directory, removed when the test is done with it.
final class TemporaryDirectory {
    let path: String

    init(_ name: String = "dtxlog") {
        let template = FileManager.default.temporaryDirectory.path + "/\(name)-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let made = mkdtemp(&bytes) else { fatalError("mkdtemp failed") }
        path = String(cString: made)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    func file(_ name: String) -> String { path + "/" + name }

    /// A copy of this directory's log files at `to`.
    func copyFiles(to other: TemporaryDirectory) throws {
        for name in try FileManager.default.contentsOfDirectory(atPath: path) where name.hasSuffix(".wal") {
            try FileManager.default.copyItem(atPath: file(name), toPath: other.file(name))
        }
    }
}

func randomPayload<G: RandomNumberGenerator>(_ count: Int, using rng: inout G) -> [UInt8] {
    (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
}

let smallSegments = WriteAheadLog.Configuration(segmentSize: 4096)

enum FileManagerNames {
    static func wal(in path: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".wal") }.sorted()
    }
    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }
    static func copy(_ from: String, _ to: String) throws { try FileManager.default.copyItem(atPath: from, toPath: to) }
    static func read(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }
    static func write(_ path: String, _ bytes: [UInt8]) throws {
        try? FileManager.default.removeItem(atPath: path)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }
    static func removeAll(in path: String) throws {
        for name in try FileManager.default.contentsOfDirectory(atPath: path) {
            try FileManager.default.removeItem(atPath: path + "/" + name)
        }
    }
}
