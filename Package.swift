// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "dtx",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "dtxd", targets: ["dtxd"]),
        .executable(name: "dtx", targets: ["dtx"]),
        .executable(name: "dtx-bench", targets: ["dtx-bench"]),
        .executable(name: "dtx-sim", targets: ["dtx-sim"]),
        .library(name: "DTXCore", targets: ["DTXCore"]),
        .library(name: "DTXLog", targets: ["DTXLog"]),
        .library(name: "DTXClient", targets: ["DTXClient"]),
        .library(name: "DTXParticipant", targets: ["DTXParticipant"]),
        .library(name: "DTXSQLite", targets: ["DTXSQLite"]),
        .library(name: "DTXPostgres", targets: ["DTXPostgres"]),
        .library(name: "DTXPostgresClient", targets: ["DTXPostgresClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // Already there through hummingbird and async-http-client; named to run Swift
        // concurrency on NIO's event loops (no thread hops between two pools).
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        // Traces: the API the engine and the kit make spans with (DTXTracing records and
        // exports them).
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.3"),
    ],
    targets: [
        // C libraries, called directly (no Swift database drivers).
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),

        // Pure model and protocol state machines: no IO, no clocks, no threads.
        .target(name: "DTXCore"),
        // The durable write-ahead log: depends on the system only.
        .target(name: "DTXLog"),
        // JSON bodies of the coordinator API and the participant protocol; the system's
        // `EngineEnvironment` (event-loop timers) for the engine and the kit.
        .target(
            name: "DTXAPI",
            dependencies: ["DTXCore", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                           .product(name: "Tracing", package: "swift-distributed-tracing")]
        ),
        // Records spans and exports them over OTLP/HTTP, for the executables that take --otlp-endpoint.
        .target(
            name: "DTXTracing",
            dependencies: [
                "DTXAPI", "DTXCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The engine: runs the state machines, logs, talks to participants, recovers.
        .target(
            name: "DTXCoordinator",
            dependencies: [
                "DTXCore", "DTXAPI", "DTXLog",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Cluster mode: dtxd nodes sharing a PostgreSQL store, shards under leases.
        .target(
            name: "DTXCluster",
            dependencies: ["DTXCoordinator", "DTXCore", "DTXAPI", "DTXLog", .product(name: "Logging", package: "swift-log"),
                           .product(name: "Metrics", package: "swift-metrics")]
        ),
        .target(
            name: "DTXClusterPostgres",
            dependencies: ["DTXCluster", "DTXCoordinator", "DTXCore", "DTXAPI", "DTXLog", "DTXPostgresClient", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "DTXSimulation",
            dependencies: ["DTXCoordinator", "DTXCluster", "DTXCore", "DTXAPI", "DTXLog", .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "dtx-sim",
            dependencies: ["DTXSimulation", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .target(
            name: "DTXServer",
            dependencies: [
                "DTXCoordinator", "DTXAPI", "DTXLog",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            // The web console, compiled into dtxd (served at /ui/, no files to install).
            resources: [.embedInCode("Console/index.html"), .embedInCode("Console/console.js"), .embedInCode("Console/console.css")]
        ),
        // Swift client of the coordinator API.
        .target(
            name: "DTXClient",
            dependencies: [
                "DTXAPI",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
            ]
        ),
        // Participant kit: serves the participant protocol, registers, recovers in-doubt branches.
        .target(
            name: "DTXParticipant",
            dependencies: [
                "DTXAPI", "DTXClient",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),

        .executableTarget(
            name: "dtxd",
            dependencies: [
                "DTXServer", "DTXCoordinator", "DTXCluster", "DTXClusterPostgres", "DTXLog", "DTXTracing",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "dtx",
            dependencies: [
                "DTXLog", "DTXClient", "DTXAPI", "DTXCore", "DTXConformance",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // `dtx conformance`: plays the coordinator against a participant and checks its duties.
        .target(
            name: "DTXConformance",
            dependencies: [
                "DTXAPI", "DTXCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "dtx-bench",
            dependencies: [
                "DTXLog", "DTXClient", "DTXAPI", "DTXCore", "DTXSQLite", "DTXPostgres", "DTXPostgresClient", "DTXTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/dtx-bench"
        ),

        // Test fixture: appends forced records and prints each LSN once durable,
        // so a test can SIGKILL it at a random moment and check the promise.
        .executableTarget(
            name: "wal-crash-writer",
            dependencies: ["DTXLog"],
            path: "Tests/Fixtures/WALCrashWriter"
        ),

        // Resource managers: real databases as participants (C libraries called directly).
        .target(
            name: "DTXSQLite",
            dependencies: ["CSQLite", "DTXParticipant", "DTXAPI", "DTXCore", .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "DTXPostgres",
            dependencies: ["DTXPostgresClient", "DTXParticipant", "DTXAPI", "DTXCore", .product(name: "Logging", package: "swift-log")]
        ),
        // libpq connections and a pool of them on threads of their own: what the
        // resource manager and the coordinator's cluster store share.
        .target(
            name: "DTXPostgresClient",
            dependencies: ["CLibPQ", .product(name: "Logging", package: "swift-log")]
        ),

        // A participant service on the kit with an in-memory (file-journalled) resource
        // manager; tests and benchmarks tell it to vote no, stall or crash at a point.
        .executableTarget(
            name: "memory-participant",
            dependencies: [
                "DTXParticipant", "DTXAPI", "DTXCore", "DTXTracing",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Examples/MemoryParticipant"
        ),

        // The bank-transfer example: an accounts service (SQLite or PostgreSQL) and a
        // client that moves money between two of them atomically.
        .executableTarget(
            name: "accounts-service",
            dependencies: [
                "DTXParticipant", "DTXSQLite", "DTXPostgres", "DTXPostgresClient", "DTXAPI", "DTXCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/BankTransfer/AccountsService"
        ),
        .executableTarget(
            name: "transfer",
            dependencies: [
                "DTXClient", "DTXAPI", "DTXCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/BankTransfer/Transfer"
        ),

        // What the TravelSaga and OrderTCC services share: a small SQLite-or-PostgreSQL
        // adapter, and their options and start-up.
        .target(
            name: "ExampleSupport",
            dependencies: [
                "DTXParticipant", "DTXSQLite", "DTXPostgres", "DTXPostgresClient", "DTXCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/Shared/ExampleSupport"
        ),

        // The travel-saga example: one travel service (flight, hotel or car, on SQLite or
        // PostgreSQL) and a client that books a trip across the three as a saga.
        .executableTarget(
            name: "travel-service",
            dependencies: [
                "ExampleSupport", "DTXParticipant", "DTXSQLite", "DTXPostgres", "DTXAPI", "DTXCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/TravelSaga/TravelService"
        ),
        .executableTarget(
            name: "book-trip",
            dependencies: [
                "DTXClient", "DTXAPI", "DTXCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/TravelSaga/BookTrip"
        ),

        // The order TCC example: an inventory or payment service (SQLite or PostgreSQL)
        // and a client that places an order across both with TCC.
        .executableTarget(
            name: "order-service",
            dependencies: [
                "ExampleSupport", "DTXParticipant", "DTXSQLite", "DTXPostgres", "DTXAPI", "DTXCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Examples/OrderTCC/OrderService"
        ),
        .executableTarget(
            name: "place-order",
            dependencies: [
                "DTXClient", "DTXAPI", "DTXCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/OrderTCC/PlaceOrder"
        ),

        // The order outbox example: an order service whose orders send a transactional
        // message (msg) to a stock and a notification service (SQLite or PostgreSQL).
        .executableTarget(
            name: "outbox-orders",
            dependencies: [
                "ExampleSupport", "DTXParticipant", "DTXClient", "DTXAPI", "DTXCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/OrderOutbox/Orders"
        ),
        .executableTarget(
            name: "outbox-receiver",
            dependencies: [
                "ExampleSupport", "DTXParticipant", "DTXAPI", "DTXCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Examples/OrderOutbox/Receiver"
        ),

        .target(name: "DTXTestSupport", path: "Tests/DTXTestSupport"),
        .testTarget(name: "DTXCoreTests", dependencies: ["DTXCore", "DTXAPI"]),
        .testTarget(name: "DTXAPITests", dependencies: ["DTXAPI", "DTXCore"]),
        .testTarget(name: "DTXTracingTests", dependencies: ["DTXTracing", "DTXAPI", .product(name: "Tracing", package: "swift-distributed-tracing")]),
        .testTarget(name: "DTXSQLiteTests", dependencies: ["DTXSQLite", "DTXParticipant", "DTXCore", "DTXTestSupport"]),
        .testTarget(name: "DTXPostgresTests", dependencies: ["DTXPostgres", "DTXPostgresClient", "DTXParticipant", "DTXCore", "DTXTestSupport"]),
        .testTarget(
            name: "DTXCoordinatorTests",
            dependencies: [
                "DTXCoordinator", "DTXAPI", "DTXCore", "DTXLog",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "DTXLogTests", dependencies: ["DTXLog", "DTXTestSupport"]),
        .testTarget(
            name: "DTXClusterTests",
            dependencies: ["DTXCluster", "DTXClusterPostgres", "DTXCoordinator", "DTXAPI", "DTXCore", "DTXPostgresClient", "DTXTestSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "DTXSimulationTests", dependencies: ["DTXSimulation", "DTXCoordinator"]),
        .testTarget(name: "SystemLibraryTests", dependencies: ["CSQLite", "CLibPQ"]),
        .testTarget(
            name: "DTXParticipantTests",
            dependencies: [
                "DTXParticipant", "DTXCore", "DTXAPI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["DTXLog", "DTXAPI", "DTXClient", "DTXTestSupport", "dtxd", "dtx", "wal-crash-writer", "memory-participant", "accounts-service", "transfer", "travel-service", "book-trip", "order-service", "place-order", "outbox-orders", "outbox-receiver", "DTXSQLite", "DTXParticipant",
                           .product(name: "AsyncHTTPClient", package: "async-http-client")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
