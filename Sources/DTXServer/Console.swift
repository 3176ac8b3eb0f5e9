import DTXCoordinator
import Foundation
import Hummingbird

/// The web console: three static files (`Sources/DTXServer/Console`), compiled into dtxd
/// and served at `/ui/` without a token. They hold no data: the page asks for the token
/// and reads everything from the JSON API, which requires it (docs/OPERATIONS.md).
struct ConsoleFiles: Sendable {
    struct File: Sendable {
        var bytes: [UInt8]
        var contentType: String
    }

    private static let types = ["index.html": "text/html; charset=utf-8", "console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"]

    private static let embedded: [String: [UInt8]] = [
        "index.html": PackageResources.index_html, "console.js": PackageResources.console_js, "console.css": PackageResources.console_css,
    ]

    /// nil: the embedded copies; else a directory the files are read from at each
    /// request (`dtxd --console-dir`, for working on the console without a rebuild).
    let directory: String?

    func file(_ name: String) throws -> File {
        guard let type = Self.types[name] else {
            throw CoordinatorError(.notFound, "not_found", "the console has no file '\(name)'; open /ui/")
        }
        guard let directory else { return File(bytes: Self.embedded[name]!, contentType: type) }
        guard let data = FileManager.default.contents(atPath: directory + "/" + name) else {
            throw CoordinatorError(.notFound, "not_found", "\(directory)/\(name) cannot be read (dtxd --console-dir names a directory holding index.html, console.js and console.css)")
        }
        return File(bytes: Array(data), contentType: type)
    }

    func routes<Context: RequestContext>(_: Context.Type) -> [Route<Context>] {
        [
            // The router reads /ui and /ui/ alike; the page's relative links need the slash.
            Route(method: .get, path: "/ui") { request, _ in
                guard request.uri.path.hasSuffix("/") else { return Response(status: .movedPermanently, headers: [.location: "/ui/"]) }
                return try response(file("index.html"))
            },
            Route(method: .get, path: "/ui/:file") { _, context in
                try response(file(context.parameters.get("file") ?? ""))
            },
        ]
    }

    private func response(_ file: File) -> Response {
        Response(status: .ok, headers: [
            .contentType: file.contentType,
            .cacheControl: "no-cache",
            // Nothing but dtxd's own files and API: the console works offline, and a
            // page of dtxd cannot be framed or load anything from elsewhere.
            .contentSecurityPolicy: "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            .xContentTypeOptions: "nosniff",
        ], body: ResponseBody(byteBuffer: ByteBuffer(bytes: file.bytes)))
    }
}
