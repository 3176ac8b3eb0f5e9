import ArgumentParser
import DTXLog
import Foundation

/// Offline commands on a write-ahead log directory. They take the directory's lock
/// while they read, so they never race a running daemon, and say so when one holds it.
struct WAL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wal",
        abstract: "Inspect and repair a write-ahead log directory offline.",
        subcommands: [Verify.self, Dump.self, Repair.self]
    )

    /// Exit codes shared by the subcommands.
    static let corruptExit = ExitCode(1)
    static let unusableExit = ExitCode(2)

    static func inspect(_ directory: String) throws -> LogScan {
        do {
            return try LogScan.inspect(directory: directory)
        } catch let LogError.directoryInUse(dir, pid) {
            let holder = pid.map { "process \($0)" } ?? "another process"
            printError("dtx: \(dir) is locked by a running \(holder) (a daemon?); stop it first, or inspect a copy of the directory")
            throw unusableExit
        } catch {
            printError("dtx: cannot read \(directory): \(error)")
            throw unusableExit
        }
    }

    static func lsnRange(_ scan: LogScan) -> String {
        let records = scan.replayRecords
        guard let first = records.first, let last = records.last else { return "no records" }
        return "\(records.count) records, LSN \(first.lsn)…\(last.lsn)"
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every segment and record.",
            discussion: """
            Exit status: 0 when the log is intact, or when only a torn tail (an \
            unacknowledged partial write) would be truncated at the next open; \
            1 on corruption, naming the file and byte offset; 2 when the directory \
            cannot be read or a running process holds it.
            """
        )

        @Argument(help: "The log directory (the daemon's --data-dir).")
        var directory: String

        func run() throws {
            let scan = try WAL.inspect(directory)
            let summary = "\(scan.segments.count) segment(s), \(WAL.lsnRange(scan))"
            switch scan.status {
            case .intact:
                print("ok: \(directory) is intact: \(summary)")
            case let .tornTail(file, offset):
                print("ok: \(directory): \(summary); torn tail in \(file) at byte offset \(offset) will be truncated when the log is next opened (it holds no acknowledged record)")
            case let .corrupt(file, offset, reason):
                printError("corrupt: \(file) at byte offset \(offset): \(reason)")
                printError("\(WAL.lsnRange(scan)) before it are intact; `dtx wal repair \(directory)` truncates there and keeps the cut bytes beside the log")
                throw WAL.corruptExit
            }
            if !scan.temporaryFiles.isEmpty {
                print("note: \(scan.temporaryFiles.count) leftover segment file(s) from an interrupted creation will be removed at the next open")
            }
            for spare in scan.spares {
                print("note: \(spare) is a spare segment never switched to (it holds no acknowledged record); it will be removed at the next open")
            }
        }
    }

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print every record: LSN, segment, offset, type, size, payload summary.",
            discussion: "Exit status as for `verify`; the records before a corruption are printed."
        )

        @Argument(help: "The log directory (the daemon's --data-dir).")
        var directory: String

        @Flag(help: "One JSON object per line instead of text.")
        var json = false

        func run() throws {
            let scan = try WAL.inspect(directory)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            for located in scan.records {
                let segment = (located.segment as NSString).lastPathComponent
                let summary = PayloadSummary.describe(located.record.payload)
                if json {
                    let line = DumpLine(lsn: located.record.lsn, segment: segment, offset: located.offset, type: located.record.type,
                                        size: located.size, payloadBytes: located.record.payload.count, rewritten: located.rewritten, summary: summary)
                    print(String(decoding: try encoder.encode(line), as: UTF8.self))
                } else {
                    let copy = located.rewritten ? " (checkpoint copy)" : ""
                    print("lsn=\(located.record.lsn) segment=\(segment) offset=\(located.offset) type=\(located.record.type) size=\(located.size)\(copy) payload=\(summary)")
                }
            }
            switch scan.status {
            case .intact:
                break
            case let .tornTail(file, offset):
                printError("torn tail in \(file) at byte offset \(offset) (will be truncated at the next open)")
            case let .corrupt(file, offset, reason):
                printError("corrupt: \(file) at byte offset \(offset): \(reason); records after it are not shown")
                throw WAL.corruptExit
            }
        }
    }

    struct Repair: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Truncate a corrupt log at its last good record, keeping the cut bytes.",
            discussion: """
            Everything cut (the tail of the damaged segment and every later segment) \
            is moved into a repair-<time> folder inside the directory. Records after \
            the corruption are lost from the log: read them from that folder before \
            deciding the fate of the transactions they belonged to.
            """
        )

        @Argument(help: "The log directory (the daemon's --data-dir).")
        var directory: String

        func run() throws {
            _ = try WAL.inspect(directory)
            let result: LogRepair?
            do {
                result = try LogRepair.run(directory: directory)
            } catch {
                printError("dtx: repair of \(directory) failed: \(error)")
                throw WAL.unusableExit
            }
            guard let result else {
                print("nothing to repair: \(directory) is not corrupt (a torn tail is truncated by a normal open)")
                return
            }
            if let file = result.truncatedFile, let offset = result.truncatedAt {
                print("truncated \(file) at byte offset \(offset)")
            }
            for moved in result.movedSegments { print("moved segment \(moved)") }
            print("cut bytes saved in \(result.savedTo); \(result.remainingRecords) records remain")
        }
    }
}

private struct DumpLine: Encodable {
    var lsn: UInt64
    var segment: String
    var offset: Int
    var type: UInt16
    var size: Int
    var payloadBytes: Int
    var rewritten: Bool
    var summary: String

    enum CodingKeys: String, CodingKey {
        case lsn, segment, offset, type, size, rewritten, summary
        case payloadBytes = "payload_bytes"
    }
}

/// A short, printable view of a payload: text when it is printable UTF-8, hex otherwise.
enum PayloadSummary {
    static let limit = 96

    static func describe(_ payload: [UInt8]) -> String {
        if payload.isEmpty { return "(empty)" }
        if let text = String(validating: payload, as: UTF8.self),
           text.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F || $0 == "\t" }) {
            return text.count > limit ? String(text.prefix(limit)) + "… (\(payload.count) bytes)" : text
        }
        let hex = payload.prefix(32).map { String(format: "%02x", $0) }.joined()
        return payload.count > 32 ? "0x\(hex)… (\(payload.count) bytes)" : "0x\(hex)"
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
