import DTXAPI
import DTXParticipant
import Foundation
import Hummingbird

/// Routes for tests: what the resource manager holds (`GET /test/state`:
/// `{"branches": [{"gid", "branch", "operation", "payload"?, "state", "result"?}],
/// "barriers": [{"gid", "branch", "phase", "operation", "payload"?, "digest", "result"?,
/// "nullCompensation"}]}`, state being `prepared`, `committed` or `rolled_back`, phase
/// `try`, `confirm`, `cancel`, `action` or `compensate`), and the kit's failpoint routes.
func addTestRoutes(to router: Router<some RequestContext>, store: InMemoryResourceManager, failpoints: Failpoints) {
    router.get("/test/state") { _, _ -> Response in
        jsonResponse(.ok, StateAnswer(branches: store.branches(), barriers: store.barrierRecords()))
    }
    failpoints.addRoutes(to: router)
}

private struct StateAnswer: Encodable {
    var branches: [InMemoryResourceManager.BranchRecord]
    var barriers: [InMemoryResourceManager.BarrierRecord]
}

func jsonResponse(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
    // Only plain structs of strings and JSON values come here: encoding cannot fail.
    let data = (try? JSONEncoder.dtx().encode(value)) ?? Data()
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
