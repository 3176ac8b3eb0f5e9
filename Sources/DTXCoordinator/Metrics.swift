import DTXCore
import Metrics

/// The engine's metrics, through swift-metrics (the daemon bootstraps Prometheus).
struct EngineMetrics: Sendable {
    func finished(_ proto: TransactionProtocol, _ status: TransactionStatus) {
        Counter(label: "dtx_transactions_total", dimensions: [("protocol", proto.rawValue), ("outcome", status.rawValue)]).increment()
    }

    /// `phase`: prepare (start to decision), commit or rollback (decision to end).
    func phase(_ proto: TransactionProtocol, _ phase: String, _ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        Metrics.Timer(label: "dtx_phase_duration_seconds", dimensions: [("protocol", proto.rawValue), ("phase", phase)])
            .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    func retry(_ proto: TransactionProtocol) {
        Counter(label: "dtx_retries_total", dimensions: [("protocol", proto.rawValue)]).increment()
    }
}
