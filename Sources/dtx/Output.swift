import DTXAPI
import DTXCore
import Foundation

/// Plain aligned columns under a header row, the one table layout every online command
/// uses. Widths come from the content; a column with a `maxWidth` truncates with "…".
struct TextTable {
    struct Column {
        var title: String
        var maxWidth: Int?
        var alignRight: Bool

        init(_ title: String, maxWidth: Int? = nil, alignRight: Bool = false) {
            self.title = title
            self.maxWidth = maxWidth
            self.alignRight = alignRight
        }
    }

    static let separator = "  "

    var columns: [Column]
    private(set) var rows: [[String]] = []

    init(_ columns: [Column]) {
        self.columns = columns
    }

    mutating func append(_ row: [String]) {
        precondition(row.count == columns.count, "a row has \(row.count) cells for \(columns.count) columns")
        rows.append(zip(row, columns).map { cell, column in
            let line = Text.oneLine(cell)
            return column.maxWidth.map { Text.truncate(line, to: $0) } ?? line
        })
    }

    func render() -> String {
        var widths = columns.map(\.title.count)
        for row in rows {
            for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
        }
        func line(_ cells: [String]) -> String {
            var text = ""
            for (index, cell) in cells.enumerated() {
                let padding = String(repeating: " ", count: widths[index] - cell.count)
                if index > 0 { text += Self.separator }
                text += columns[index].alignRight ? padding + cell : cell + padding
            }
            // No trailing blanks (the last column is left-aligned, or empty).
            while text.last == " " { text.removeLast() }
            return text
        }
        return ([line(columns.map(\.title))] + rows.map(line)).joined(separator: "\n")
    }
}

/// Aligned `label: value` lines, for the header of `show` and other single records.
struct FieldList {
    private var fields: [(String, String)] = []

    mutating func append(_ label: String, _ value: String) {
        fields.append((label, Text.oneLine(value)))
    }

    func render() -> String {
        let width = (fields.map(\.0.count).max() ?? 0) + 1
        return fields.map { label, value in
            (label + ":").padding(toLength: width, withPad: " ", startingAt: 0) + " " + value
        }.joined(separator: "\n")
    }
}

enum Text {
    /// Control characters (newlines in an error text, say) would break a table row.
    static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        return String(String.UnicodeScalarView(text.unicodeScalars.map {
            $0.properties.generalCategory == .control ? " " : $0
        }))
    }

    static func truncate(_ text: String, to limit: Int) -> String {
        text.count > limit ? String(text.prefix(max(limit - 1, 0))) + "…" : text
    }
}

enum Format {
    /// `2026-11-23 10:01:02` in the local time zone (with `.123` milliseconds if asked).
    static func timestamp(_ date: Date, milliseconds: Bool = false) -> String {
        // Whole milliseconds first: the components' nanoseconds of .300 can read .299999.
        let totalMilliseconds = (date.timeIntervalSince1970 * 1000).rounded(milliseconds ? .toNearestOrAwayFromZero : .down)
        let (wholeSeconds, millisecond) = Int64(totalMilliseconds).quotientAndRemainder(dividingBy: 1000)
        let (second, fraction) = millisecond < 0 ? (wholeSeconds - 1, millisecond + 1000) : (wholeSeconds, millisecond)
        let parts = Calendar.current.dateComponents([.year, .month, .day, .hour, .minute, .second],
                                                    from: Date(timeIntervalSince1970: TimeInterval(second)))
        var text = String(format: "%04d-%02d-%02d %02d:%02d:%02d",
                          parts.year ?? 0, parts.month ?? 0, parts.day ?? 0,
                          parts.hour ?? 0, parts.minute ?? 0, parts.second ?? 0)
        if milliseconds { text += String(format: ".%03d", Int(fraction)) }
        return text
    }

    /// Time since `date`, in at most two units: `42s`, `5m12s`, `2h05m`, `3d04h`.
    static func age(since date: Date, now: Date = Date()) -> String {
        let total = max(0, Int(now.timeIntervalSince(date)))
        switch total {
        case ..<60: return "\(total)s"
        case ..<3600: return "\(total / 60)m" + String(format: "%02ds", total % 60)
        case ..<86400: return "\(total / 3600)h" + String(format: "%02dm", total % 3600 / 60)
        default: return "\(total / 86400)d" + String(format: "%02dh", total % 86400 / 3600)
        }
    }

    /// `3s ago`, or `-` when there is no date.
    static func ago(_ date: Date?, now: Date = Date()) -> String {
        date.map { age(since: $0, now: now) + " ago" } ?? "-"
    }

    /// `30s`, `2.5s`.
    static func seconds(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? "\(Int64(value))s" : "\(value)s"
    }

    static func yesNo(_ value: Bool) -> String { value ? "yes" : "no" }

    /// The status with the flags an operator must notice: `committing (stuck)`.
    static func status(_ status: String, stuck: Bool, heuristic: Bool) -> String {
        var text = status
        if stuck { text += " (stuck)" }
        if heuristic { text += " (heuristic)" }
        return text
    }
}

/// `--json`: the daemon's answer as it came, pretty-printed with sorted keys and ISO dates.
enum JSONOutput {
    /// A view is written by dtxd's one writer of that shape (`jsonBytes`), then pretty-printed.
    static func print(_ view: TransactionView) throws {
        try print(try JSONValue(parsing: view.jsonBytes()))
    }

    static func print<Value: Encodable>(_ value: Value) throws {
        let encoder = JSONEncoder.dtx()
        encoder.outputFormatting.insert(.prettyPrinted)
        Swift.print(String(decoding: try encoder.encode(value), as: UTF8.self))
    }
}

/// The full view of one transaction, as `show` and `submit` print it.
enum TransactionReport {
    static func render(_ view: TransactionView, now: Date = Date()) -> String {
        var header = FieldList()
        header.append("gid", view.gid)
        header.append("protocol", view.protocol.rawValue)
        if let service = view.service { header.append("service", "\(service) (checked back with)") }
        header.append("status", view.status)
        header.append("decision", view.decision?.rawValue ?? "-")
        header.append("interactive", Format.yesNo(view.interactive))
        header.append("heuristic", Format.yesNo(view.heuristic))
        header.append("stuck", view.stuckReason.map { "yes: \($0)" } ?? Format.yesNo(view.stuck))
        header.append("created", "\(Format.timestamp(view.createdAt)) (\(Format.ago(view.createdAt, now: now)))")
        header.append("timeout", Format.seconds(view.timeout))
        header.append("error", view.error ?? "-")
        if let compensations = view.compensations {
            // The order they completed in: what backward recovery undid, and when.
            header.append("compensated", compensations.isEmpty ? "none yet" : compensations.map(String.init).joined(separator: ", "))
        }

        var branches = TextTable([
            .init("ID", alignRight: true), .init("PARTICIPANT"), .init("OPERATION"), .init("STATE"),
            .init("ATTEMPTS", alignRight: true), .init("NEXT RETRY"), .init("LAST ERROR", maxWidth: 50), .init("RESULT", maxWidth: 50),
        ])
        for branch in view.branches {
            let retry = branch.nextRetryAt.map { "in \(Format.seconds(max(0, ($0.timeIntervalSince(now) * 10).rounded() / 10)))" } ?? "-"
            branches.append(["\(branch.id)", branch.participant, branch.operation, branch.state,
                             "\(branch.attempts)", retry, branch.lastError ?? "-", branch.result.map(compactJSON) ?? "-"])
        }

        var timeline = TextTable([
            .init("TIME"), .init("EVENT"), .init("BRANCH", alignRight: true), .init("DETAIL", maxWidth: 80),
        ])
        for entry in view.timeline {
            timeline.append([Format.timestamp(entry.at, milliseconds: true), entry.event,
                             entry.branch.map(String.init) ?? "-", entry.detail ?? ""])
        }

        var sections = [header.render()]
        sections.append(view.branches.isEmpty ? "branches: none" : "branches:\n" + branches.render())
        if let audit = view.audit {
            var records = TextTable([.init("TIME"), .init("WHO"), .init("ACTION"), .init("BRANCH", alignRight: true), .init("REASON", maxWidth: 80)])
            for record in audit {
                records.append([Format.timestamp(record.at, milliseconds: true), record.who, record.action, record.branch.map(String.init) ?? "-", record.reason])
            }
            sections.append("audit:\n" + records.render())
        }
        sections.append(view.timeline.isEmpty ? "timeline: empty" : "timeline:\n" + timeline.render())
        return sections.joined(separator: "\n\n")
    }

    /// A participant's answer on one line, as JSON.
    private static func compactJSON(_ value: JSONValue) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? "?"
    }

    /// What an operator action (`commit`, `abort`, `retry`, `resolve`) prints: the view
    /// as JSON, or its gid, status and decision.
    static func printBrief(_ view: TransactionView, json: Bool) throws {
        if json {
            try JSONOutput.print(view)
        } else {
            print(renderBrief(view))
        }
    }

    /// gid, status and decision: what `commit` and `abort` print.
    static func renderBrief(_ view: TransactionView) -> String {
        var fields = FieldList()
        fields.append("gid", view.gid)
        fields.append("status", Format.status(view.status, stuck: view.stuck, heuristic: view.heuristic))
        fields.append("decision", view.decision?.rawValue ?? "-")
        return fields.render()
    }
}
