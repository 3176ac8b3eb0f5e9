import DTXCore
import DTXParticipant
import DTXSQLite
import DTXTestSupport
import Foundation
import Testing

/// A participant process killed with SIGKILL while it prepares branches: every vote it
/// gave survives, in doubt, with its rows locked; resolving them leaves correct balances.
///
/// The child is this test binary itself, running only `preparesUntilKilled` with
/// `DTX_SQLITE_CRASH_CHILD` naming the database; in an ordinary run that test is skipped.
@Suite struct CrashTests {
    /// Accounts 2i+1 and 2i+2 belong to branch i, so that no two branches share a row.
    private static let branches = 100
    private static let environmentKey = "DTX_SQLITE_CRASH_CHILD"
    private static let childDatabase = ProcessInfo.processInfo.environment[environmentKey]

    @Test func votesGivenBeforeASIGKILLSurviveInDoubt() async throws {
        let directory = try TemporaryDirectory()
        let votes = directory.path + "/votes"
        var random = SeededGenerator(seed: 0x5EED)
        let killAfter = Int.random(in: 5...40, using: &random)

        let child = Process()
        child.executableURL = URL(fileURLWithPath: try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
        child.arguments = ["--testing-library", "swift-testing", "--filter", "CrashTests/preparesUntilKilled"]
        child.environment = ProcessInfo.processInfo.environment.merging([Self.environmentKey: directory.database]) { $1 }
        child.standardOutput = FileHandle.nullDevice
        child.standardError = FileHandle.nullDevice
        try child.run()
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) } }

        // Kill it as soon as it reported `killAfter` votes: it is preparing the next one.
        let deadline = ContinuousClock.now + .seconds(60)
        var voted: [String] = []
        while voted.count < killAfter {
            try #require(child.isRunning, "the child exited before voting \(killAfter) times")
            try #require(ContinuousClock.now < deadline, "the child did not vote \(killAfter) times within 60 s")
            try await Task.sleep(for: .milliseconds(2))
            voted = Self.completeLines(votes)
        }
        kill(child.processIdentifier, SIGKILL)
        while child.isRunning { try await Task.sleep(for: .milliseconds(5)) }
        #expect(child.terminationReason == .uncaughtSignal)
        voted = Self.completeLines(votes)

        let manager = try await Bank.open(directory.database, accounts: 2 * Self.branches)
        let inDoubt = try await manager.inDoubt()
        let reported = Set(voted.map { BranchRef(gid: $0, branch: 1) })
        #expect(reported.isSubset(of: Set(inDoubt)), "a vote the child reported is lost")
        // At most the one being prepared at the kill committed without being reported.
        #expect(inDoubt.count <= reported.count + 1)
        #expect(try await Bank.balances(manager).values.allSatisfy { $0 == 100 })

        // The coordinator's answers: even branches commit, odd ones roll back.
        var committed: Set<Int> = []
        for branch in inDoubt {
            let index = try #require(Int(branch.gid.dropFirst("crash-".count)))
            if index.isMultiple(of: 2) {
                try await manager.commit(branch)
                committed.insert(index)
            } else {
                try await manager.rollback(branch)
            }
        }
        let balances = try await Bank.balances(manager)
        for index in 0..<Self.branches {
            let moved: Int64 = committed.contains(index) ? 1 : 0
            #expect(balances[Int64(2 * index + 1)] == 100 - moved && balances[Int64(2 * index + 2)] == 100 + moved, "branch \(index)")
        }
        #expect(balances.values.reduce(0, +) == Int64(200 * Self.branches))
        #expect(try await manager.inDoubt().isEmpty)
        #expect(try await Bank.count("dtx_locks", manager) == 0)
    }

    /// The child's side: prepares branch after branch, reporting each vote on a line of
    /// the `votes` file once `prepare` returned, until it is killed.
    @Test(.enabled(if: childDatabase != nil, "the child process of votesGivenBeforeASIGKILLSurviveInDoubt"))
    func preparesUntilKilled() async throws {
        let database = try #require(Self.childDatabase)
        let votesPath = URL(fileURLWithPath: database).deletingLastPathComponent().path + "/votes"
        #expect(FileManager.default.createFile(atPath: votesPath, contents: nil))
        let votes = try #require(FileHandle(forWritingAtPath: votesPath))
        let manager = try await Bank.open(database, accounts: 2 * Self.branches)
        for index in 0..<Self.branches {
            let gid = "crash-\(index)"
            let outcome = try await manager.prepare(BranchRef(gid: gid, branch: 1), operation: "transfer", payload: Bank.transfer(2 * index + 1, 2 * index + 2, 1))
            #expect(outcome == .prepared(result: .object(["balance": .number(99)])))
            try votes.write(contentsOf: Data((gid + "\n").utf8))
        }
        // Wait for the kill.
        try await Task.sleep(for: .seconds(600))
    }

    /// The complete lines of the file at `path` (a line cut by the kill is left out).
    private static func completeLines(_ path: String) -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        var lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        lines.removeLast()
        return lines
    }
}
