import Foundation
import Synchronization

/// The next port to try, shared by every test of the process so that two never get the same one.
private let nextPort = Mutex(Int.random(in: 0..<portCount))
private let firstPort = 20_000
private let portCount = 12_000

/// A TCP port nothing listens on now on 127.0.0.1, for a server under test to bind.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux by default), not by
/// binding port 0: a port the kernel hands out can be handed out again, to an outgoing
/// connection or to another server binding port 0, between this check and the server's
/// own bind. That happened once the suite made thousands of connections (schemathesis).
public func freeLoopbackPort() -> Int {
    for _ in 0..<portCount {
        let port = nextPort.withLock { next -> Int in
            defer { next = (next + 1) % portCount }
            return firstPort + next
        }
        if canBind(port) { return port }
    }
    preconditionFailure("no free loopback port from \(firstPort) to \(firstPort + portCount - 1)")
}

private func canBind(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = UInt16(port).bigEndian
    return withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}
