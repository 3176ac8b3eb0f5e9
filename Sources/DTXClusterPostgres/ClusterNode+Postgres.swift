import DTXAPI
import DTXCluster
import DTXCoordinator
import Logging

extension ClusterNode {
    /// Connects to the PostgreSQL store (creating its tables on first use), joins the
    /// cluster and reads the participant registry. `engine` is every shard's
    /// coordinator's configuration (its history limit is shared out among the shards).
    public convenience init(configuration: ClusterConfiguration, transport: any Transport, engine: CoordinatorConfiguration, logger: Logger) async throws {
        let store = try await PostgresClusterStore(url: configuration.storeURL, logger: logger)
        do {
            try await self.init(configuration: configuration, store: store, transport: transport, engine: engine, environment: SystemEnvironment(), logger: logger)
        } catch {
            await store.close()
            throw error
        }
    }
}
