import DTXAPI
import DTXCore
import Foundation
import Testing

@Suite struct PathSegmentTests {
    /// Every character a gid may hold, and a participant name's.
    static let gidCharacters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:"

    @Test func everyGidCharacterRoundTrips() throws {
        let encoded = PathSegment.encode(Self.gidCharacters)
        #expect(encoded == "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.%3A")
        #expect(PathSegment.decode(encoded) == Self.gidCharacters)
        #expect(PathSegment.decode(Self.gidCharacters) == Self.gidCharacters, "a value sent as it is decodes to itself")
    }

    @Test(arguments: [
        ("order:77", "order%3A77"), ("a/b", "a%2Fb"), ("a b", "a%20b"), ("100%", "100%25"), ("é", "%C3%A9"), ("~x", "~x"), ("?&=#", "%3F%26%3D%23"),
    ])
    func encodesEverythingButUnreserved(_ text: String, _ expected: String) {
        #expect(PathSegment.encode(text) == expected)
        #expect(PathSegment.decode(expected) == text)
    }

    @Test func decodesOnceAndInEitherCase() {
        #expect(PathSegment.decode("order%253A77") == "order%3A77", "decoded once: the result is not a valid gid, so it is refused")
        #expect(PathSegment.decode("order%3a77") == "order:77")
        #expect(PathSegment.decode("accounts%2Deu") == "accounts-eu", "an unreserved character may be encoded too")
    }

    @Test(arguments: ["%", "%3", "a%zz", "%G1", "%C3", "%FF%FE"])
    func malformedEncodingsAreRefused(_ text: String) {
        #expect(PathSegment.decode(text) == nil)
    }

    @Test func participantNamesFollowTheDocumentsPattern() {
        #expect(ParticipantName.isValid("accounts-eu"))
        #expect(ParticipantName.isValid(String(Self.gidCharacters.dropFirst().dropLast())), "64 characters, every kind a name may hold")
        #expect(ParticipantName.isValid(String(repeating: "n", count: 64)))
        for bad in ["", "a:b", "a b", "é", "a%2D", String(repeating: "n", count: 65)] {
            #expect(!ParticipantName.isValid(bad), "\(bad)")
        }
    }
}

/// The registration's `url` rule is written twice, as Swift and as the document's
/// pattern: they must accept exactly the same strings.
@Suite struct ParticipantURLTests {
    static let documentPattern: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let text = (try? String(contentsOf: url.appendingPathComponent("Schemas/coordinator-api.yaml"), encoding: .utf8)) ?? ""
        guard let line = text.split(separator: "\n").first(where: { $0.contains("pattern: \"^https?://") }) else { return "" }
        let quoted = line.drop { $0 != "\"" }.dropFirst().dropLast()
        return String(quoted).replacingOccurrences(of: "\\\\", with: "\\")
    }()

    @Test func theSwiftRuleAndTheDocumentsPatternAgree() throws {
        let pattern = try Regex(Self.documentPattern)
        let schemes = ["http://", "https://", "ftp://", "http:/", ""]
        let hosts = ["a", "127.0.0.1", "my-host.example", "[::1]", "[::]", "[1:2:3:4:5:6:7:8]", "[fe80::1:2]", "[::ffff:1.2.3.4]",
                     "[C2F1A603Ff:Fe9f1fFB]", "[1::2::3]", "[12345::1]", "a_b", "é", "", "[", "[::1", "a b"]
        let ports = ["", ":", ":0", ":1", ":080", ":8081", ":65535", ":65536", ":99999", ":-1"]
        let paths = ["", "/", "/x/y/", "/%2F", "/%zz", "/%2", "/a b", "/?q", "?q", "/#f", "/~!$&'()*+,;=:@-._", "/é", "//"]
        var checked = 0
        var accepted = 0
        for scheme in schemes {
            for host in hosts {
                for port in ports {
                    for path in paths {
                        let url = scheme + host + port + path
                        let byDocument = (try? pattern.wholeMatch(in: url)) != nil
                        #expect(ParticipantRegistration.isValidURL(url) == byDocument, "\(url): the document says \(byDocument)")
                        checked += 1
                        if byDocument { accepted += 1 }
                    }
                }
            }
        }
        #expect(checked == 5 * 17 * 10 * 13)
        #expect(accepted > 300, "the cases must exercise acceptance too (\(accepted))")
        #expect(!ParticipantRegistration.isValidURL("http://a/" + String(repeating: "x", count: 2048)), "longer than 2048 bytes")
    }
}
