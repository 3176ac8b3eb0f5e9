import DTXCore

/// The properties each request body of Schemas/coordinator-api.yaml may have: every
/// request schema there says `additionalProperties: false`, so a property it does not
/// define (a misspelt `wiat`) is refused, never silently dropped by a typed decode.
/// dtxd and `dtx submit` check bodies with this one list.
public enum RequestShape: Sendable {
    case submission
    case registration
    case enlistment
    case resolution
    case retry
    case branchResolution

    public var properties: [String] {
        switch self {
        case .submission: return ["gid", "protocol", "branches", "timeout", "wait", "interactive", "service"]
        case .registration: return ["name", "url", "protocols", "token", "batch"]
        case .enlistment: return ["participant", "operation", "payload"]
        case .resolution: return ["reason", "wait", "operator"]
        case .retry: return ["reason", "operator"]
        case .branchResolution: return ["outcome", "reason", "operator"]
        }
    }

    /// A submission's branch (a saga's step) and its `retry`.
    public static let branchProperties = ["participant", "operation", "payload", "dependsOn", "compensatable", "retry", "timeout"]
    public static let retryProperties = ["maxAttempts", "initialDelay", "maxDelay"]

    /// The first property of `body` that this shape does not define, with where it is
    /// (`branches[1].retry.maxAtempts`) and the properties allowed there; nil when every
    /// property is defined. Values of the wrong type are left to the typed decode.
    public func unknownProperty(in body: JSONValue) -> (path: String, allowed: [String])? {
        guard case .object(let fields) = body else { return nil }
        if let unknown = Self.unknown(in: fields, allowed: properties, at: "") { return unknown }
        guard self == .submission, case .array(let branches)? = fields["branches"] else { return nil }
        for (index, branch) in branches.enumerated() {
            guard case .object(let step) = branch else { continue }
            if let unknown = Self.unknown(in: step, allowed: Self.branchProperties, at: "branches[\(index)].") { return unknown }
            if case .object(let retry)? = step["retry"],
               let unknown = Self.unknown(in: retry, allowed: Self.retryProperties, at: "branches[\(index)].retry.") { return unknown }
        }
        return nil
    }

    private static func unknown(in fields: [String: JSONValue], allowed: [String], at prefix: String) -> (path: String, allowed: [String])? {
        fields.keys.sorted().first { !allowed.contains($0) }.map { (prefix + $0, allowed) }
    }
}
