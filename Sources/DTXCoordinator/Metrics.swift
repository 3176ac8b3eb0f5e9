import DTXCore
import Metrics
import NIOCore

/// The engine's metrics, through swift-metrics (the daemon bootstraps Prometheus). Every
/// series is made once, at start: the hot path only increments.
struct EngineMetrics: Sendable {
    private struct Series: Sendable {
        var finished: [TransactionStatus: Counter] = [:]
        var phases: [String: Metrics.Timer] = [:]
        var retries: Counter
    }

    private static let phases = ["prepare", "commit", "rollback"]
    private static let outcomes: [TransactionStatus] = [.committed, .aborted]
    private let series: [TransactionProtocol: Series]

    init() {
        var series: [TransactionProtocol: Series] = [:]
        for proto in TransactionProtocol.allCases {
            var entry = Series(retries: Counter(label: "dtx_retries_total", dimensions: [("protocol", proto.rawValue)]))
            for outcome in Self.outcomes {
                entry.finished[outcome] = Counter(label: "dtx_transactions_total", dimensions: [("protocol", proto.rawValue), ("outcome", outcome.rawValue)])
            }
            for phase in Self.phases {
                entry.phases[phase] = Metrics.Timer(label: "dtx_phase_duration_seconds", dimensions: [("protocol", proto.rawValue), ("phase", phase)])
            }
            series[proto] = entry
        }
        self.series = series
    }

    func finished(_ proto: TransactionProtocol, _ status: TransactionStatus) {
        series[proto]?.finished[status]?.increment()
    }

    /// `phase`: prepare (start to decision), commit or rollback (decision to end).
    func phase(_ proto: TransactionProtocol, _ phase: String, _ duration: Duration) {
        series[proto]?.phases[phase]?.recordNanoseconds(TimeAmount(duration).nanoseconds)
    }

    func retry(_ proto: TransactionProtocol) {
        series[proto]?.retries.increment()
    }
}
