// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "dtx",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "dtxd", targets: ["dtxd"]),
        .executable(name: "dtx", targets: ["dtx"]),
        .executable(name: "dtx-bench", targets: ["dtx-bench"]),
        .library(name: "DTXCore", targets: ["DTXCore"]),
        .library(name: "DTXLog", targets: ["DTXLog"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
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
        // HTTP API of the daemon.
        .target(
            name: "DTXServer",
            dependencies: [
                "DTXLog",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .executableTarget(
            name: "dtxd",
            dependencies: [
                "DTXServer", "DTXLog",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "dtx",
            dependencies: [
                "DTXLog",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "dtx-bench",
            dependencies: [
                "DTXLog",
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

        .target(name: "DTXTestSupport", path: "Tests/DTXTestSupport"),
        .testTarget(name: "DTXCoreTests", dependencies: ["DTXCore"]),
        .testTarget(name: "DTXLogTests", dependencies: ["DTXLog", "DTXTestSupport"]),
        .testTarget(name: "SystemLibraryTests", dependencies: ["CSQLite", "CLibPQ"]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["DTXLog", "DTXTestSupport", "dtxd", "dtx", "wal-crash-writer"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
