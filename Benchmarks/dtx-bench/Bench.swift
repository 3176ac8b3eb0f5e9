import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// `dtx-bench`: performance figures for dtx. Each subcommand prints a table and writes
/// JSON, and measures its baseline in the same run so that ratios are meaningful on a
/// noisy machine.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dtx-bench",
        abstract: "Benchmarks for dtx (build with -c release).",
        subcommands: [WALBench.self, CodecBench.self, ProtocolBenchCommand<TwoPhaseBench>.self, ProtocolBenchCommand<ThreePhaseBench>.self, ProtocolBenchCommand<SagaBench>.self, ProtocolBenchCommand<TCCBench>.self, ProtocolBenchCommand<MessageBench>.self, ConsoleBench.self]
    )

    /// The load generator's event-loop threads (env DTX_BENCH_THREADS, default one per
    /// core); Swift concurrency runs on them.
    static func main() async {
        if let text = ProcessInfo.processInfo.environment["DTX_BENCH_THREADS"], let threads = Int(text), threads > 0 {
            NIOSingletons.groupLoopCountSuggestion = threads
        }
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await main(nil)
    }
}

/// What the figures were measured on.
struct Machine: Codable {
    var hostname: String
    var cpus: Int
    var memoryGiB: Double
    var kernel: String
    var build: String

    enum CodingKeys: String, CodingKey {
        case hostname, cpus, kernel, build
        case memoryGiB = "memory_gib"
    }

    static func current() -> Machine {
        var name = utsname()
        uname(&name)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        #if DEBUG
        let build = "debug"
        #else
        let build = "release"
        #endif
        return Machine(
            hostname: ProcessInfo.processInfo.hostName,
            cpus: ProcessInfo.processInfo.activeProcessorCount,
            memoryGiB: (Double(ProcessInfo.processInfo.physicalMemory) / Double(1 << 30) * 10).rounded() / 10,
            kernel: "\(field(name.sysname)) \(field(name.release)) \(field(name.machine))",
            build: build
        )
    }
}

/// Percentile of sorted samples (nearest rank).
func percentile(_ sorted: [Double], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1
    return sorted[min(max(rank, 0), sorted.count - 1)]
}

func writeJSON<T: Encodable>(_ value: T, to path: String) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try encoder.encode(value).write(to: URL(fileURLWithPath: path))
}

extension Duration {
    var seconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}
