import DTXCore

extension TransactionSubmission {
    /// Reads a submission from its parsed JSON: the one reader of this shape, for dtxd on
    /// every submission and for `dtx submit` on its spec file (JSONDecoder costs four
    /// times as much, `dtx-bench codec`). An absent or null optional is nil. Unknown keys
    /// are not looked at: `RequestShape.unknownProperty` refuses them first.
    private static let protocols = TransactionProtocol.allCases.map(\.rawValue).joined(separator: ", ")

    public init(json document: JSONValue) throws(UnreadableJSON) {
        let body = try Members(document, at: "")
        guard body.members["protocol"] != nil else { throw UnreadableJSON(message: "protocol is required: one of \(Self.protocols)") }
        guard let name = try body.string("protocol", required: true) else { throw body.wrong("protocol", "a string") }
        guard let proto = TransactionProtocol(rawValue: name) else {
            throw UnreadableJSON(message: "protocol must be one of \(Self.protocols), not '\(name)'")
        }
        let branches = try body.array("branches").map { items throws(UnreadableJSON) in
            var specs: [BranchSpec] = []
            specs.reserveCapacity(items.count)
            for (index, item) in items.enumerated() { specs.append(try BranchSpec(json: item, at: "branches[\(index)]")) }
            return specs
        }
        self.init(gid: try body.string("gid"), protocol: proto, branches: branches, timeout: try body.number("timeout"),
                  wait: try body.bool("wait"), interactive: try body.bool("interactive"), service: try body.string("service"))
    }
}

extension ResolveRequest {
    /// Reads a commit or abort request from its parsed JSON: the one reader of this shape
    /// (a message's submit comes with every message). An absent or null field is nil;
    /// unknown keys are refused first by `RequestShape.unknownProperty`.
    public init(json document: JSONValue) throws(UnreadableJSON) {
        let body = try Members(document, at: "")
        self.init(reason: try body.string("reason"), wait: try body.bool("wait"), operator: try body.string("operator"))
    }
}

extension BranchSpec {
    /// A branch (or saga step) of a submission at `path`, e.g. `branches[2]`.
    init(json: JSONValue, at path: String) throws(UnreadableJSON) {
        let fields = try Members(json, at: path)
        let retry = try fields.object("retry").map { retry throws(UnreadableJSON) in
            let policy = try Members(retry, at: fields.place("retry"))
            return StepRetry(maxAttempts: try policy.integer("maxAttempts"), initialDelay: try policy.number("initialDelay"), maxDelay: try policy.number("maxDelay"))
        }
        let dependsOn = try fields.array("dependsOn").map { ids throws(UnreadableJSON) in
            try ids.enumerated().map { (index, id) throws(UnreadableJSON) -> BranchID in
                guard let step = Members.integer(id) else { throw fields.wrong("dependsOn[\(index)]", "an integer") }
                return step
            }
        }
        self.init(participant: try fields.string("participant", required: true)!, operation: try fields.string("operation", required: true)!,
                  payload: fields.members["payload"].flatMap { $0 == .null ? nil : $0 }, dependsOn: dependsOn,
                  compensatable: try fields.bool("compensatable"), retry: retry, timeout: try fields.number("timeout"))
    }
}

/// The members of a JSON object at `path`, read with the errors a submission's author
/// (or a reader of the log) needs: which place, what it must be.
struct Members {
    
    let members: [String: JSONValue]
    let path: String

    init(_ value: JSONValue, at path: String) throws(UnreadableJSON) {
        guard case .object(let members) = value else {
            throw UnreadableJSON(message: "\(path.isEmpty ? "the body" : path) has the wrong type (expected an object)")
        }
        self.members = members
        self.path = path
    }

    func place(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func wrong(_ key: String, _ expected: String) -> UnreadableJSON {
        UnreadableJSON(message: "\(place(key)) has the wrong type (expected \(expected))")
    }

    /// The member `key`; nil when absent or null, unless `required`.
    private func member(_ key: String, required: Bool, _ expected: String) throws(UnreadableJSON) -> JSONValue? {
        switch members[key] {
        case nil where required: throw UnreadableJSON(message: "\(place(key)) is required")
        case .null? where required: throw UnreadableJSON(message: "\(place(key)) must not be null (expected \(expected))")
        case nil, .null?: return nil
        case let value?: return value
        }
    }

    func string(_ key: String, required: Bool = false) throws(UnreadableJSON) -> String? {
        guard let value = try member(key, required: required, "a string") else { return nil }
        guard case .string(let text) = value else { throw wrong(key, "a string") }
        return text
    }

    func number(_ key: String) throws(UnreadableJSON) -> Double? {
        guard let value = try member(key, required: false, "a number") else { return nil }
        guard case .number(let number) = value else { throw wrong(key, "a number") }
        return number
    }

    func integer(_ key: String) throws(UnreadableJSON) -> Int? {
        guard let value = try member(key, required: false, "an integer") else { return nil }
        guard let integer = Self.integer(value) else { throw wrong(key, "an integer") }
        return integer
    }

    static func integer(_ value: JSONValue) -> Int? {
        guard case .number(let number) = value else { return nil }
        return Int(exactly: number)
    }

    func bool(_ key: String) throws(UnreadableJSON) -> Bool? {
        guard let value = try member(key, required: false, "true or false") else { return nil }
        guard case .bool(let flag) = value else { throw wrong(key, "true or false") }
        return flag
    }

    func array(_ key: String) throws(UnreadableJSON) -> [JSONValue]? {
        guard let value = try member(key, required: false, "an array") else { return nil }
        guard case .array(let items) = value else { throw wrong(key, "an array") }
        return items
    }

    func object(_ key: String) throws(UnreadableJSON) -> JSONValue? {
        guard let value = try member(key, required: false, "an object") else { return nil }
        guard case .object = value else { throw wrong(key, "an object") }
        return value
    }
}
