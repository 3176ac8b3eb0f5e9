import DTXCore
import Foundation

/// Named points where the daemon kills itself with SIGKILL, so that tests can crash it
/// exactly there. Armed by `DTXD_FAILPOINTS=name[,name…]`; never armed in production.
public struct DaemonFailpoints: Sendable {
    public enum Point: String, Sendable, CaseIterable {
        /// Every vote is in, the commit decision is about to be logged.
        case beforeCommitDecision = "before-commit-decision"
        /// The commit decision is durable; no COMMIT has been sent.
        case afterCommitDecision = "after-commit-decision"
        /// PREPARE has been sent to every branch; no vote has been counted.
        case afterPrepareSent = "after-prepare-sent"
        /// A forced abort decision (`decision` or `resolution` to abort: TCC's cancel, a
        /// saga's compensate, an operator's forced abort) is durable; nothing of it has
        /// been sent. 2PC logs its ordinary abort lazily (presumed abort): not fired there.
        case afterAbortDecision = "after-abort-decision"
        /// 3PC: every branch voted yes (all are in w), the pre-commit is about to be logged.
        case beforePreCommitDecision = "before-pre-commit-decision"
        /// 3PC: the pre-commit is durable; no PRECOMMIT has been sent.
        case afterPreCommitDecision = "after-pre-commit-decision"
        /// 3PC: the first participant acknowledged PRECOMMIT (it is in p; the others may
        /// or may not have received theirs). 3PC's commit decision uses `after-commit-decision`.
        case afterPreCommitAcknowledged = "after-pre-commit-acknowledged"
        /// 2PC's last agent: every other branch voted yes; the delegation is about to be logged.
        case beforeDelegation = "before-delegation"
        /// 2PC's last agent: the delegation is durable; COMMIT_ONE_PHASE has not been sent.
        case afterDelegation = "after-delegation"
        /// A branch committed in one phase (2PC's last agent, or a transaction's only
        /// branch); nothing of the outcome has been logged or sent to other branches.
        case afterOnePhaseCommit = "after-one-phase-commit"
        /// A caller waiting for the outcome (`wait`) is about to be told it: whatever the
        /// answer reports must already be durable.
        case beforeOutcomeAnswer = "before-outcome-answer"
    }

    private let armed: Set<Point>

    public init(armed: Set<Point> = []) {
        self.armed = armed
    }

    /// Parses `DTXD_FAILPOINTS`; unknown names are an error so that a typo is not silent.
    public init(parsing text: String) throws {
        var points: Set<Point> = []
        for name in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !name.isEmpty {
            guard let point = Point(rawValue: name) else {
                throw DaemonFailpointError(message: "unknown failpoint '\(name)'; known: \(Point.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            points.insert(point)
        }
        armed = points
    }

    public var isEmpty: Bool { armed.isEmpty }

    /// The failpoint just before a milestone record is logged, if there is one.
    func hit(before milestone: LogEntry.Milestone) {
        Point(rawValue: "before-" + milestone.rawValue).map(hit)
    }

    /// The failpoint just after a milestone record is durable, if there is one.
    func hit(after milestone: LogEntry.Milestone) {
        Point(rawValue: "after-" + milestone.rawValue).map(hit)
    }

    /// The failpoint once `message` went out to a step's branches (`after-prepare-sent`), or
    /// once a participant did it (`done`: `after-pre-commit-acknowledged`, `after-one-phase-commit`).
    func hit(after message: ParticipantMessage, done: Bool) {
        let point: Point? = switch (message, done) {
        case (.prepare, false): .afterPrepareSent
        case (.preCommit, true): .afterPreCommitAcknowledged
        case (.commitOnePhase, true): .afterOnePhaseCommit
        default: nil
        }
        point.map(hit)
    }

    func hit(_ point: Point) {
        guard armed.contains(point) else { return }
        FileHandle.standardError.write(Data("dtxd: failpoint \(point.rawValue) hit, killing the process\n".utf8))
        kill(getpid(), SIGKILL)
    }
}

public struct DaemonFailpointError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
