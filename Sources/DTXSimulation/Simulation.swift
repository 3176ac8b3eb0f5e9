import DTXAPI
import DTXCluster
import DTXCoordinator
import DTXCore
import Foundation
import Logging

/// One seeded run of the real engine (Coordinator, drivers, the four protocols' machines,
/// registry, recovery, checkpoints) in one thread on simulated time: simulated
/// participants behind a simulated network, crashes of the coordinator (losing what was
/// not synced) and of participants, partitions, operator calls. Then everything heals,
/// the run goes on until nothing is left to do, and the checks run (see `check`).
public final class Simulation: @unchecked Sendable {
    /// The faults and the workload stop here; everything heals.
    public static let healAt: Duration = .seconds(20)
    /// After healing, every transaction must be final within this much simulated time.
    public static let quiescenceBound: Duration = .seconds(600)
    /// A branch in doubt asks the coordinator after this long, and again as often.
    static let askAfter: Duration = .seconds(3)
    /// A message with no answer fails after this long (the transport's request timeout).
    static let requestTimeout: Duration = .seconds(2)

    public let seed: UInt64
    let world: World
    private let bugs: Set<SimulatedBug>
    private let disk = SimDisk()
    private var configuration = CoordinatorConfiguration()
    private(set) var participants: [SimParticipant] = []
    /// nil while the coordinator is down.
    private(set) var coordinator: Coordinator?
    private var store: SimStore?
    private var transport: SimTransport?
    private var incarnation = 0
    private var planned: [Planned] = []
    private var clientsRunning = 0
    /// Outcomes waiting callers were told.
    private var told: [String: Decision] = [:]
    /// Msg: the service that prepared each message.
    private var messageServices: [String: String] = [:]
    /// Msg: branches (`gid/branch`) an operator resolved by hand after their refusal.
    private var resolvedByHand: Set<String> = []
    /// Branches (`gid/branch`) a participant was told `aborted` for, and acted on.
    var answeredAborted: Set<String> = []
    /// Gids an operator forced an outcome on (with a reason): only these may end heuristic.
    private var overridden: Set<String> = []
    /// 3PC gids some participant decided by termination among its peers. Termination is
    /// safe only when "out of reach" means "crashed"; here partitions and lost messages
    /// also put a live coordinator out of reach (it may commit after its PreCommit round
    /// timed out), so these gids may end heuristic-mixed, which the coordinator flags:
    /// 3PC's known limit, no violation. Unflagged atomicity is still checked.
    private var terminatedApart: Set<String> = []
    private var violations: [(gid: String?, text: String)] = []
    private var compensations = 0
    private var healed = false
    /// The checks ran: participants stop asking, and the run winds down.
    private(set) var over = false
    private var quiescent = false
    /// Why the run was not quiescent when last asked.
    private var unsettled = ""
    private var loss = 0.0
    private var duplication = 0.0
    private var delay: ClosedRange<Int> = 1...10
    private var partitionedUntil: [String: Duration] = [:]
    public private(set) var faults = Faults()
    /// Cluster mode: this many dtxd nodes on one shared store, instead of one coordinator.
    let clusterNodes: Int?
    private let clusterBugs: Set<ClusterBug>
    private var sharedStore: InMemoryClusterStore?
    private(set) var simNodes: [SimNode] = []
    /// What the nodes sent (cluster mode), for `checkCluster`.
    var sentMessages: [SentMessage] = []
    private var leaseTTL: Duration = .seconds(2)
    private var shardCount = 4

    public struct Faults: Sendable, Equatable {
        public var coordinatorCrashes = 0
        public var unsyncedRecordsLost = 0
        public var participantCrashes = 0
        public var partitions = 0
        public var messagesLost = 0
        public var messagesDuplicated = 0
        public var operatorCalls = 0
        /// Transactions an operator's override, or 3PC participants terminating while cut
        /// off from a live coordinator, left heuristic (outside the atomicity and liveness checks).
        public var heuristicOutcomes = 0
        /// 3PC branches that decided by termination among their peers.
        public var terminations = 0
        /// Cluster mode.
        public var nodeCrashes = 0
        public var nodePauses = 0
        public var nodeCutOffs = 0
    }

    struct Planned {
        var gid: String
        var proto: TransactionProtocol
        var branches: [BranchSpec]
        var timeout: Double
        var wait: Bool
        var start: Duration
        /// 2PC and TCC: opened, each branch done by its service (prepared, or its Try run) and enlisted, then committed.
        var interactive = false
    }

    /// `cluster`: run that many dtxd nodes on a shared store (with `clusterBugs`) instead
    /// of one coordinator.
    public init(seed: UInt64, bugs: Set<SimulatedBug> = [], tracing: Bool = false, cluster: Int? = nil, clusterBugs: Set<ClusterBug> = []) {
        self.seed = seed
        self.bugs = bugs
        clusterNodes = cluster
        self.clusterBugs = clusterBugs
        world = World(seed: seed, tracing: tracing)
    }

    // MARK: The run

    public struct Result: Sendable {
        public var seed: UInt64
        public var transactions: Int
        public var committed: Int
        public var violations: [String]
        public var faults: Faults
        /// The last lines of the trace (only when traced).
        public var trace: [String]
        public var traceDigest: UInt64
        public var simulatedSeconds: Double
    }

    public func run() -> Result {
        configure()
        if clusterNodes != nil { startCluster() } else { restartCoordinator() }
        let registration = participants.map { ParticipantRegistration(name: $0.name, url: "http://\($0.name).sim", protocols: [.twoPhaseCommit, .threePhaseCommit, .tcc, .saga, .msg]) }
        world.spawn { [self] in
            while clusterNodes != nil, !simNodes.contains(where: \.up) { await world.sleep(.milliseconds(50)) }
            let participants = coordinator?.participants ?? simNodes.first(where: \.up)?.node?.participants
            for entry in registration { _ = try? await participants?.register(entry) }
        }
        world.run(until: .seconds(1))
        planWorkload()
        planFaults()
        _ = world.schedule(after: Self.healAt - world.time) { [self] in heal() }
        watchForQuiescence()
        resolveRefusedMessages()
        let finished = world.run(until: Self.healAt + Self.quiescenceBound) { quiescent }
        if !finished { violation(nil, "liveness: not quiescent \(Self.quiescenceBound) after healing: \(unsettled)") }
        let committed = check()
        if let sharedStore { checkCluster(grants: sharedStore.grants) }
        let heuristic = Set(planned.compactMap { t in view(t.gid)?.heuristic == true ? t.gid : nil }).intersection(overridden.union(terminatedApart))
        let kept = violations.filter { $0.gid.map { !heuristic.contains($0) } ?? true }.map { v in v.gid.map { "\($0): \(v.text)" } ?? v.text }
        let simulated = world.time.apiSeconds
        windDown()
        return Result(seed: seed, transactions: planned.count, committed: committed, violations: kept, faults: faults,
                      trace: (world.tracing ? world.trace : []), traceDigest: world.traceDigest, simulatedSeconds: simulated)
    }

    /// Lets every task of the run end (the coordinator stops its drivers, which wakes
    /// their waiters; every send and sync has a timer), then drops what is left.
    private func windDown() {
        over = true
        if let coordinator { world.spawn { await coordinator.shutdown() } }
        coordinator = nil
        for simNode in simNodes {
            simNode.goOn()
            simNode.running?.cancel()
            if let node = simNode.node { world.spawn { await node.shutdown() } }
            simNode.node = nil
        }
        world.run(until: world.time + .seconds(3600))
        world.discard()
    }

    private func configure() {
        var random = world.rng
        defer { world.rng = random }
        configuration.defaultTimeout = .seconds(5)
        configuration.lastAgent = random.chance(0.3)
        configuration.simulatedBugs = bugs
        configuration.invariantBroken = { [unowned self] in violation(nil, "invariant: \($0)") }
        participants = (0..<random.int(2...5)).map { SimParticipant(name: "p\($0)", sim: self) }
        loss = random.pick([0, 0.01, 0.05, 0.1])
        duplication = random.pick([0, 0.02, 0.1])
        delay = random.pick([1...2, 1...10, 1...50])
        world.note("seed \(seed): \(participants.count) participants, loss \(loss), duplication \(duplication), delay \(delay) ms, last agent \(configuration.lastAgent)")
        if let clusterNodes {
            leaseTTL = random.pick([.seconds(1), .seconds(2), .seconds(3)])
            shardCount = random.int(2...8)
            configuration.checkpointInterval = random.milliseconds(2000...8000)
            simNodes = (0..<clusterNodes).map { SimNode(id: "n\($0)") }
            world.note("cluster: \(clusterNodes) nodes, \(shardCount) shards, lease \(leaseTTL), bugs \(clusterBugs.map(\.rawValue).sorted())")
        }
    }

    // MARK: The coordinator's life

    private static let silent = Logger(label: "dtx-sim") { _ in SwiftLogNoOpLogHandler() }

    private func restartCoordinator() {
        guard coordinator == nil else { return }
        incarnation += 1
        let store = SimStore(disk: disk, world: world, syncMicroseconds: 100...3000)
        let transport = SimTransport(sim: self)
        do {
            coordinator = try Coordinator(store: store, transport: transport, configuration: configuration, environment: world, logger: Self.silent)
            self.store = store
            self.transport = transport
            world.note("coordinator \(incarnation) started")
        } catch {
            violation(nil, "the coordinator cannot start from its log: \(error)")
        }
    }

    private func crashCoordinator() {
        guard let crashed = coordinator else { return }
        coordinator = nil
        store?.alive = false
        transport?.alive = false
        let lost = disk.crash(&world.rng)
        faults.coordinatorCrashes += 1
        faults.unsyncedRecordsLost += lost
        world.note("coordinator \(incarnation) crashed, \(lost) unsynced record(s) lost")
        world.spawn { await crashed.shutdown() }
    }

    /// The coordinator a participant's question about `gid` reaches, if any: in a
    /// cluster, a node that holds the gid's shard under a valid lease.
    func reachableCoordinator(from participant: String, gid: GlobalTransactionID) -> Coordinator? {
        guard !isPartitioned(participant) else { return nil }
        if world.rng.chance(loss) { return nil }
        return clusterNodes == nil ? coordinator : serving(gid)
    }

    // MARK: The cluster's life

    private func startCluster() {
        sharedStore = InMemoryClusterStore(now: { [unowned world] in world.time })
        for simNode in simNodes { startNode(simNode) }
    }

    private func startNode(_ simNode: SimNode) {
        guard simNode.node == nil, !simNode.starting, let sharedStore else { return }
        simNode.starting = true
        simNode.incarnation += 1
        let transport = SimTransport(sim: self, node: simNode)
        let store = SimStoreFace(shared: sharedStore, sim: self, node: simNode)
        var cluster = ClusterConfiguration(storeURL: "sim", nodeID: simNode.id, advertiseURL: "http://\(simNode.id).sim")
        cluster.leaseTTL = leaseTTL
        cluster.shards = shardCount
        if clusterBugs.contains(.leaseBeyondTTL) { cluster.leaseMargin = 1.6 }
        let (engine, settings) = (configuration, cluster)
        world.spawn { [self] in
            do {
                let node = try await ClusterNode(configuration: settings, store: store, transport: transport, engine: engine, environment: world, logger: Self.silent)
                simNode.node = node
                simNode.transport = transport
                simNode.running = world.task { await node.run() }
                world.note("node \(simNode.id) #\(simNode.incarnation) joined")
            } catch {
                world.note("node \(simNode.id) could not start: \(error)")
                _ = world.schedule(after: .seconds(1)) { [self] in startNode(simNode) }
            }
            simNode.starting = false
        }
    }

    private func crashNode(_ simNode: SimNode) {
        guard let node = simNode.node else { return }
        simNode.node = nil
        simNode.running?.cancel()
        simNode.running = nil
        simNode.transport?.alive = false
        simNode.goOn()
        node.crash()
        faults.nodeCrashes += 1
        world.note("node \(simNode.id) #\(simNode.incarnation) crashed")
    }

    /// A node holding `gid`'s shard under a valid lease, by node id.
    func serving(_ gid: GlobalTransactionID) -> Coordinator? {
        for simNode in simNodes where simNode.up {
            if let coordinator = simNode.node?.serving(gid) { return coordinator }
        }
        return nil
    }

    /// The coordinator a client's request about `gid` is served by: the one coordinator,
    /// or, in a cluster, a random running node's answer to where the gid is (which may
    /// take a dead owner's shard over), followed once to the owner.
    func coordinatorFor(_ text: String) async -> Coordinator? {
        guard clusterNodes != nil else { return coordinator }
        let gid = gid(text)
        let running = simNodes.filter(\.up)
        guard !running.isEmpty, let first = world.rng.pick(running).node else { return nil }
        switch try? await first.placement(of: gid) {
        case .here(let coordinator)?:
            return coordinator
        case .elsewhere(let owner, _)?:
            guard let node = simNodes.first(where: { $0.id == owner && $0.up })?.node, case .here(let coordinator)? = try? await node.placement(of: gid) else { return nil }
            return coordinator
        case nil:
            return nil
        }
    }

    /// The view of `gid` now: from the coordinator, or a node serving its shard.
    func view(_ text: String) -> TransactionView? {
        let gid = gid(text)
        return try? (clusterNodes == nil ? coordinator : serving(gid))?.transaction(gid)
    }

    /// A 3PC branch of `gid` decided by termination among its peers.
    func terminated(_ gid: String) {
        faults.terminations += 1
        terminatedApart.insert(gid)
    }

    func isPartitioned(_ participant: String) -> Bool {
        guard let until = partitionedUntil[participant] else { return false }
        return world.time < until
    }

    // MARK: Workload

    private func gid(_ text: String) -> GlobalTransactionID { try! GlobalTransactionID(validating: text) }

    private func planWorkload() {
        let count = world.rng.int(10...40)
        for n in 0..<count {
            let proto = world.rng.pick([TransactionProtocol.twoPhaseCommit, .threePhaseCommit, .tcc, .saga, .msg])
            var plan = Planned(gid: "s\(seed)-\(n)", proto: proto, branches: branches(for: proto), timeout: Double(world.rng.int(1...5)),
                               wait: world.rng.chance(0.6), start: .seconds(1) + world.rng.milliseconds(0...12_000))
            plan.interactive = (proto == .twoPhaseCommit || proto == .tcc) && world.rng.chance(0.3)
            let t = plan
            planned.append(t)
            clientsRunning += 1
            world.spawn { [self] in
                await world.sleep(t.start - world.time)
                if t.interactive { await runInteractive(t) } else if t.proto == .msg { await runMessage(t) } else { await submit(t) }
                clientsRunning -= 1
            }
        }
    }

    private func branches(for proto: TransactionProtocol) -> [BranchSpec] {
        let count = world.rng.int(1...4)
        var specs: [BranchSpec] = (0..<count).map { _ in
            let refuse = world.rng.chance(0.04)
            return BranchSpec(participant: world.rng.pick(participants).name, operation: "op", payload: refuse ? .object(["refuse": .bool(true)]) : nil)
        }
        if proto == .msg {
            // Delivered until done; a branch refused for good waits for the operator
            // (`resolveRefusedMessages`), who resolves it by hand.
            for id in specs.indices {
                specs[id].payload = world.rng.chance(0.15) ? .object(["flaky": .number(Double(world.rng.int(1...2)))]) : nil
                if world.rng.chance(0.05) { specs[id].payload = .object(["refuse": .bool(true)]) }
                if world.rng.chance(0.3) { specs[id].retry = StepRetry(initialDelay: 0.05, maxDelay: 1) }
                if world.rng.chance(0.2) { specs[id].timeout = 1 }
                if id >= 2, world.rng.chance(0.3) { specs[id].dependsOn = [id - 2] }
            }
            return specs
        }
        guard proto == .saga else { return specs }
        for id in specs.indices {
            if world.rng.chance(0.15) {
                var payload: [String: JSONValue] = ["flaky": .number(Double(world.rng.int(1...2)))]
                if specs[id].payload != nil { payload["refuse"] = .bool(true) }
                specs[id].payload = .object(payload)
            }
            if world.rng.chance(0.3) { specs[id].retry = StepRetry(maxAttempts: world.rng.int(1...4), initialDelay: 0.05, maxDelay: 1) }
            if world.rng.chance(0.2) { specs[id].timeout = 1 }
            // Some steps run beside the one before them (both after its predecessor).
            if id >= 2, world.rng.chance(0.3) { specs[id].dependsOn = [id - 2] }
        }
        // A pivot last, which must not be refused: nothing after it can undo the steps before.
        if count >= 2, world.rng.chance(0.25), specs[count - 1].payload?["refuse"] == nil {
            specs[count - 1].compensatable = false
        }
        return Saga.validate(specs) == nil ? specs : specs.map { BranchSpec(participant: $0.participant, operation: $0.operation, payload: $0.payload) }
    }

    private func submit(_ t: Planned) async {
        let submission = TransactionSubmission(gid: t.gid, protocol: t.proto, branches: t.branches, timeout: t.timeout, wait: t.wait)
        if let view = await submitRetrying(submission), t.wait, let decision = view.decision { told[t.gid] = decision }
    }

    /// Submits (or opens), again with the same gid while the coordinator is down, as a
    /// caller would. nil: no answer, or a refusal, which is a violation (the workload is valid).
    private func submitRetrying(_ submission: TransactionSubmission) async -> TransactionView? {
        let gid = submission.gid ?? "-"
        for _ in 0..<6 {
            if let coordinator = await coordinatorFor(gid) {
                do {
                    let (view, _) = try await coordinator.submit(submission)
                    world.note("client \(gid): \(view.status)")
                    return view
                } catch {
                    world.note("client \(gid): \(error.code)")
                    guard error.kind == .unavailable else {
                        violation(gid, "the submission was refused: \(error.code): \(error.message)")
                        return nil
                    }
                }
            }
            await world.sleep(.seconds(1))
        }
        return nil
    }

    /// A message as a service sends one (the kit's `transactionalMessage`): prepare it,
    /// run the local transaction, commit it, submit. The service may crash (or its client
    /// give up) before its local commit, after it and before the submit, or roll back and
    /// abort; its local transaction may outlast the message's timeout, so that dtxd checks
    /// back while it runs. Whatever happens, the branches are delivered exactly when the
    /// local transaction committed.
    private func runMessage(_ t: Planned) async {
        let gid = gid(t.gid)
        let service = world.rng.pick(participants)
        messageServices[t.gid] = service.name
        let prepare = TransactionSubmission(gid: t.gid, protocol: .msg, branches: t.branches, timeout: t.timeout, service: service.name)
        guard await submitRetrying(prepare) != nil else { return }
        let crashes = service.crashes
        let fate = world.rng.int(0...99)
        if fate < 8 {
            world.note("client \(t.gid): the service stops before its local transaction")
            return
        }
        guard service.beginLocally(t.gid) else {
            world.note("client \(t.gid): the local transaction cannot begin")
            return await abandon(gid)
        }
        await world.sleep(world.rng.milliseconds(0...(world.rng.chance(0.2) ? 8000 : 300)))
        guard service.up, service.crashes == crashes else {
            world.note("client \(t.gid): the service crashed during its local transaction")
            return
        }
        if fate < 18 {
            service.endLocally(t.gid, .rolledBack)
            if world.rng.chance(0.5) { await abandon(gid) }
            return
        }
        service.endLocally(t.gid, .committed)
        if fate < 30 {
            world.note("client \(t.gid): the service stops between its local commit and its submit")
            return
        }
        for _ in 0..<6 {
            do {
                guard let coordinator = await coordinatorFor(t.gid) else { throw SimulatedCrash() }
                let view = try await coordinator.commit(gid: gid, reason: nil, wait: t.wait)
                world.note("client \(t.gid): submit: \(view.status)")
                if t.wait, let decision = view.decision { told[t.gid] = decision }
                return
            } catch {
                world.note("client \(t.gid): submit: \(error)")
                if let refused = error as? CoordinatorError, refused.kind != .unavailable {
                    // Refused once the check-back settled it (committed: the submit arrived after the decision) — never aborted.
                    if refused.code == "already_finished", !overridden.contains(t.gid) { violation(t.gid, "a submit after the local commit was refused: \(refused.message)") }
                    return
                }
            }
            await world.sleep(.seconds(1))
        }
    }

    /// An interactive 2PC or TCC transaction as a service runs one: open it, then for each
    /// branch do the work at its participant (the service's own resource manager: 2PC
    /// prepares it, TCC runs its Try) and enlist it, then commit. A TCC service may also
    /// enlist first and run its Try after, as the kit does (the barrier refuses a Try
    /// whose Cancel came first). Any refusal or failure on the way: ask for an abort. A
    /// prepared branch finds its outcome by asking, as the contract says; a Try that
    /// could not be enlisted is cancelled by its service.
    private func runInteractive(_ t: Planned) async {
        let gid = gid(t.gid)
        let open = TransactionSubmission(gid: t.gid, protocol: t.proto, timeout: t.timeout, interactive: true)
        guard await submitRetrying(open) != nil else { return }
        let enlistFirst = t.proto == .tcc && world.rng.chance(0.5)
        for (id, spec) in t.branches.enumerated() {
            await world.sleep(world.rng.milliseconds(0...200))
            let service = participant(spec.participant)
            let refuse = spec.payload?["refuse"] == .bool(true)
            let work = { service.workLocally(t.gid, id, t.proto, refuse: refuse) }
            guard enlistFirst || work() else {
                world.note("client \(t.gid): branch \(id) failed locally")
                return await abandon(gid)
            }
            do {
                guard let coordinator = await coordinatorFor(t.gid) else { throw SimulatedCrash() }
                let answer = try await coordinator.enlist(gid: gid, EnlistRequest(participant: spec.participant, operation: spec.operation, payload: spec.payload))
                if answer.branch != id { violation(t.gid, "enlisted as branch \(answer.branch), expected \(id)") }
            } catch {
                world.note("client \(t.gid): enlist \(id): \(error)")
                if t.proto == .tcc { service.cancelLocally(t.gid, id) }
                return await abandon(gid)
            }
            if enlistFirst, !work() {
                world.note("client \(t.gid): branch \(id) failed locally after its enlistment")
                return await abandon(gid)
            }
        }
        do {
            guard let coordinator = await coordinatorFor(t.gid) else { throw SimulatedCrash() }
            let view = try await coordinator.commit(gid: gid, reason: nil, wait: t.wait)
            world.note("client \(t.gid): commit: \(view.status)")
            if t.wait, let decision = view.decision { told[t.gid] = decision }
        } catch {
            world.note("client \(t.gid): commit: \(error)")
        }
    }

    private func abandon(_ gid: GlobalTransactionID) async {
        _ = try? await coordinatorFor(gid.rawValue)?.abort(gid: gid, reason: nil, wait: false)
    }

    // MARK: Faults

    /// Up to `times` faults at moments drawn from `window` (milliseconds): `choose` draws
    /// each one from the seed (nil: none) and returns what happens at its moment.
    private func atRandomMoments(_ times: ClosedRange<Int>, in window: ClosedRange<Int>, _ choose: () -> (@Sendable () -> Void)?) {
        for _ in 0..<world.rng.int(times) {
            guard let fault = choose() else { continue }
            _ = world.schedule(after: world.rng.milliseconds(window) - world.time, fault)
        }
    }

    private func planFaults() {
        let window = 1_000...Int(Self.healAt.components.seconds) * 1000 - 1000
        if clusterNodes != nil { planNodeFaults(window) }
        atRandomMoments(0...2, in: window) { [self] in
            guard clusterNodes == nil else { return nil }
            return { [self] in
                crashCoordinator()
                _ = world.schedule(after: world.rng.milliseconds(50...3000)) { [self] in restartCoordinator() }
            }
        }
        atRandomMoments(0...2, in: window) { [self] in
            let participant = world.rng.pick(participants)
            return { [self] in
                guard participant.up else { return }
                participant.crash()
                faults.participantCrashes += 1
                world.note("\(participant.name) crashed")
                _ = world.schedule(after: world.rng.milliseconds(500...5000)) { [self] in
                    world.note("\(participant.name) restarted")
                    participant.restart()
                }
            }
        }
        atRandomMoments(0...2, in: window) { [self] in
            let participant = world.rng.pick(participants)
            return { [self] in
                faults.partitions += 1
                let until = world.time + world.rng.milliseconds(500...5000)
                partitionedUntil[participant.name] = until
                world.note("\(participant.name) cut off until \(until)")
            }
        }
        atRandomMoments(0...3, in: window) { [self] in
            return { [self] in operatorCall() }
        }
        // (Cluster nodes checkpoint their shards themselves.)
        var at = Duration.seconds(3)
        while clusterNodes == nil, at < Self.healAt + Self.quiescenceBound {
            _ = world.schedule(after: at - world.time) { [self] in
                guard let coordinator else { return }
                world.spawn { _ = try? await coordinator.checkpoint() }
            }
            at += world.rng.milliseconds(2000...8000)
        }
    }

    /// Node crashes (and restarts), stops past the lease (zombies), and cuts from the store.
    private func planNodeFaults(_ window: ClosedRange<Int>) {
        atRandomMoments(0...2, in: window) { [self] in
            let simNode = world.rng.pick(simNodes)
            return { [self] in
                crashNode(simNode)
                _ = world.schedule(after: world.rng.milliseconds(50...3000)) { [self] in startNode(simNode) }
            }
        }
        let ttl = Int(leaseTTL.components.seconds) * 1000
        atRandomMoments(0...2, in: window) { [self] in
            let simNode = world.rng.pick(simNodes)
            return { [self] in
                guard simNode.up else { return }
                simNode.paused = true
                faults.nodePauses += 1
                let length = world.rng.milliseconds(ttl / 2...3 * ttl)
                world.note("node \(simNode.id) stopped for \(length)")
                _ = world.schedule(after: length) { [self] in
                    world.note("node \(simNode.id) goes on")
                    simNode.goOn()
                }
            }
        }
        atRandomMoments(0...2, in: window) { [self] in
            let simNode = world.rng.pick(simNodes)
            return { [self] in
                faults.nodeCutOffs += 1
                simNode.cutOffUntil = world.time + world.rng.milliseconds(ttl / 2...3 * ttl)
                world.note("node \(simNode.id) cut off from the store until \(simNode.cutOffUntil)")
            }
        }
    }

    private func operatorCall() {
        guard clusterNodes != nil || coordinator != nil, let t = planned.isEmpty ? nil : world.rng.pick(planned) else { return }
        faults.operatorCalls += 1
        let gid = gid(t.gid)
        switch world.rng.int(0...3) {
        case 0:
            world.note("operator: recover now")
            world.spawn { [self] in _ = try? await coordinatorFor(t.gid)?.recoverNow() }
        case 1 where t.proto == .msg:
            world.note("operator: recover now")  // a message's abort is its service's to ask
            world.spawn { [self] in _ = try? await coordinatorFor(t.gid)?.recoverNow() }
        case 1:
            world.note("operator: abort \(gid)")
            world.spawn { [self] in _ = try? await coordinatorFor(t.gid)?.abort(gid: gid, reason: nil, wait: false) }
        case 2:
            overridden.insert(t.gid)
            world.note("operator: force abort \(gid)")
            world.spawn { [self] in _ = try? await coordinatorFor(t.gid)?.abort(gid: gid, reason: "simulated operator", wait: false) }
        default:
            overridden.insert(t.gid)
            world.note("operator: force commit \(gid)")
            world.spawn { [self] in _ = try? await coordinatorFor(t.gid)?.commit(gid: gid, reason: "simulated operator", wait: false) }
        }
    }

    private func heal() {
        healed = true
        loss = 0
        duplication = 0
        partitionedUntil = [:]
        world.note("healed")
        for participant in participants where !participant.up { participant.restart() }
        if clusterNodes == nil { restartCoordinator() }
        for simNode in simNodes {
            simNode.cutOffUntil = .zero
            simNode.goOn()
            startNode(simNode)
        }
    }

    /// The operator of messages: every 2 s, each branch of a `failed` message is resolved
    /// by hand as committed (its effect applied outside dtx).
    private func resolveRefusedMessages() {
        _ = world.schedule(after: .seconds(2)) { [self] in
            guard !quiescent else { return }
            for t in planned where t.proto == .msg {
                guard let view = view(t.gid), view.status == "failed" else { continue }
                for branch in view.branches where branch.state == "failed" {
                    resolvedByHand.insert("\(t.gid)/\(branch.id)")
                    world.note("operator: resolve \(t.gid)/\(branch.id) by hand")
                    world.spawn { [self] in
                        _ = try? await coordinatorFor(t.gid)?.resolveBranch(gid: gid(t.gid), branch: branch.id, as: .commit, reason: "simulated operator", who: "sim")
                    }
                }
            }
            resolveRefusedMessages()
        }
    }

    private func watchForQuiescence() {
        _ = world.schedule(after: .seconds(1)) { [self] in
            if healed, isQuiescent() { quiescent = true } else { watchForQuiescence() }
        }
    }

    private func isQuiescent() -> Bool {
        guard clientsRunning == 0 else { unsettled = "\(clientsRunning) clients running"; return false }
        guard clusterNodes != nil || coordinator != nil else { unsettled = "the coordinator is down"; return false }
        if let down = simNodes.first(where: { !$0.up }) { unsettled = "node \(down.id) is down"; return false }
        for t in planned {
            // In a cluster, some node serves every gid's shard at the end.
            if clusterNodes != nil, serving(gid(t.gid)) == nil {
                let shard = ShardMap(count: shardCount).shard(of: gid(t.gid))
                let grant = sharedStore?.grants.last { $0.shard == shard }
                let held = simNodes.map { "\($0.id) holds \($0.node?.heldShards.sorted() ?? [])" }.joined(separator: ", ")
                unsettled = "no node serves \(t.gid)'s shard \(shard) (last granted: \(grant.map { "epoch \($0.epoch) to \($0.node) at \($0.at)" } ?? "never"); \(held))"
                return false
            }
            let view = view(t.gid)
            // An operator's override may leave a transaction stuck for an operator, by design.
            if view?.heuristic == true, overridden.contains(t.gid) || terminatedApart.contains(t.gid) { continue }
            if let view, view.status != "committed", view.status != "aborted" { unsettled = "\(t.gid) is \(view.status)"; return false }
            for (id, spec) in t.branches.enumerated() where participant(spec.participant).state(t.gid, id)?.inDoubt == true {
                unsettled = "\(t.gid)/\(id) is in doubt at \(spec.participant)"
                return false
            }
        }
        return true
    }

    func participant(_ name: String) -> SimParticipant { participants.first { $0.name == name }! }

    // MARK: Network

    /// Delivers one message: lost, duplicated, delayed and reordered as the seed says, and
    /// never to a participant that is down or cut off. The answer comes back once; with
    /// none, the send fails after the request timeout.
    func deliver(_ message: ParticipantMessage, _ proto: TransactionProtocol, _ request: ParticipantRequest, to name: String,
                 from sender: SimTransport, reply: @escaping @Sendable (ParticipantResponse) -> Void) {
        let answer = OneAnswer(reply)
        let timeout = world.schedule(after: Self.requestTimeout) { answer.give(.failed("simulated request timeout")) }
        answer.onGiven = { timeout.cancel() }
        let target = participant(name)
        let what = "\(message.rawValue) \(request.gid)/\(request.branch)"
        guard target.up, !isPartitioned(name) else {
            world.note("→ \(name) \(what): unreachable")
            _ = world.schedule(after: .milliseconds(1)) { answer.give(.undelivered("simulated connection refused")) }
            return
        }
        if world.rng.chance(loss) {
            faults.messagesLost += 1
            world.note("→ \(name) \(what): lost")
            return
        }
        let copies = world.rng.chance(duplication) ? 2 : 1
        if copies == 2 { faults.messagesDuplicated += 1 }
        for copy in 0..<copies {
            _ = world.schedule(after: world.rng.milliseconds(delay)) { [self] in
                guard target.up, !isPartitioned(name) else { return }
                let response = target.handle(message, proto, request)
                guard copy == 0, sender.alive else { return }
                if world.rng.chance(loss) {
                    faults.messagesLost += 1
                    world.note("← \(name) \(what): answer lost")
                    return
                }
                _ = world.schedule(after: world.rng.milliseconds(delay)) { [self] in
                    world.note("← \(name) \(what): \(response)")
                    answer.give(response)
                }
            }
        }
    }

    func nextCompensation() -> Int {
        compensations += 1
        return compensations
    }

    func violation(_ gid: String?, _ text: String) {
        world.note("VIOLATION \(gid ?? "-"): \(text)")
        violations.append((gid, text))
    }

    // MARK: Checks

    /// After quiescence, for every planned transaction: liveness (final, no branch in
    /// doubt), durability (a waiting caller's outcome is the final one), presumed abort
    /// (a gid a participant was told `aborted` never commits) and atomicity per protocol.
    /// Returns how many committed.
    private func check() -> Int {
        guard clusterNodes != nil || coordinator != nil else {
            violation(nil, "the coordinator is down at the end")
            return 0
        }
        var committed = 0
        for t in planned {
            let view = view(t.gid)
            if view?.heuristic == true {
                guard overridden.contains(t.gid) || terminatedApart.contains(t.gid) else {
                    violation(t.gid, "a heuristic outcome no operator's override explains")
                    continue
                }
                faults.heuristicOutcomes += 1
                continue
            }
            let final: Decision
            switch view?.status {
            case nil:
                // Never durable. One branch may have committed in one phase (it decides
                // alone, and nothing else is logged first); otherwise nothing may have.
                final = .abort
                if t.proto == .twoPhaseCommit, t.branches.count == 1 {
                    if told[t.gid] == .commit { violation(t.gid, "durability: the caller was told commit, the coordinator forgot the transaction") }
                    continue
                }
            case "committed"?: final = .commit
            case "aborted"?: final = .abort
            case let other?:
                violation(t.gid, "liveness: still \(other) after healing")
                continue
            }
            if final == .commit { committed += 1 }
            let all = t.branches.enumerated().map { participant($0.element.participant).state(t.gid, $0.offset) }
            let shown = all.map { $0?.rawValue ?? "none" }.joined(separator: ",")
            if all.contains(where: { $0?.inDoubt == true }) { violation(t.gid, "liveness: a branch is still in doubt [\(shown)]") }
            if let said = told[t.gid], said != final { violation(t.gid, "durability: the caller was told \(said.rawValue), the outcome is \(final.rawValue)") }
            // An interactive transaction's branches are those it enlisted (in order); a
            // branch its service prepared but could not enlist is no part of it.
            let enlisted = t.interactive ? (view?.branches.count ?? 0) : t.branches.count
            let states = Array(all.prefix(enlisted))
            if all.dropFirst(enlisted).contains(where: { $0 == .committed || $0 == .confirmed }) {
                violation(t.gid, "atomicity: a branch that was never enlisted committed [\(shown)]")
            }
            for id in 0..<enlisted where final == .commit && answeredAborted.contains("\(t.gid)/\(id)") {
                violation(t.gid, "presumed abort: branch \(id)'s participant was told aborted, then the transaction committed")
            }
            let atomic: Bool
            switch (t.proto, final) {
            case (.twoPhaseCommit, .commit), (.threePhaseCommit, .commit): atomic = states.allSatisfy { $0 == .committed }
            case (.twoPhaseCommit, .abort), (.threePhaseCommit, .abort): atomic = !states.contains(.committed)
            case (.tcc, .commit): atomic = states.allSatisfy { $0 == .confirmed }
            case (.tcc, .abort): atomic = !states.contains(.confirmed)
            case (.saga, .commit): atomic = states.allSatisfy { $0 == .done }
            case (.saga, .abort):
                atomic = !states.contains(.done)
                checkCompensationOrder(t)
            case (.msg, _):
                // Delivered exactly when the service's local transaction committed.
                let local = messageServices[t.gid].map { participant($0).local[t.gid] } ?? nil
                if (local == .committed) != (final == .commit) {
                    violation(t.gid, "msg: the outcome is \(final.rawValue), the service's local transaction \(local?.rawValue ?? "never ran")")
                }
                // A branch refused for good is done only by hand.
                let done = states.enumerated().map { id, state in state == .done || state == .refused && resolvedByHand.contains("\(t.gid)/\(id)") }
                atomic = final == .commit ? done.allSatisfy { $0 } : !states.contains(.done)
            }
            if !atomic { violation(t.gid, "atomicity: \(t.proto.rawValue) \(final.rawValue) with branches [\(shown)]") }
        }
        return committed
    }

    /// A saga's compensations ran in reverse dependency order: a step's after every step that depends on it.
    private func checkCompensationOrder(_ t: Planned) {
        func order(_ id: BranchID) -> Int? { participant(t.branches[id].participant).compensationOrder[.init(gid: t.gid, branch: id)] }
        for (id, spec) in t.branches.enumerated() {
            for dependency in spec.dependsOn ?? (id > 0 ? [id - 1] : []) {
                if let later = order(id), let earlier = order(dependency), earlier < later {
                    violation(t.gid, "saga: step \(dependency) was compensated before step \(id), which depends on it")
                }
            }
        }
    }
}

/// An answer given once: the first of the reply and the timeout wins.
final class OneAnswer: @unchecked Sendable {
    private var reply: (@Sendable (ParticipantResponse) -> Void)?
    var onGiven: (() -> Void)?

    init(_ reply: @escaping @Sendable (ParticipantResponse) -> Void) {
        self.reply = reply
    }

    func give(_ response: ParticipantResponse) {
        guard let reply else { return }
        self.reply = nil
        onGiven?()
        onGiven = nil
        reply(response)
    }
}

/// The coordinator's transport in a run (a cluster node's: `node`): messages go through
/// `Simulation.deliver`. A node's messages wait while it is stopped, then go only while
/// its `sendOnlyWhile` condition holds, and are recorded with the node and epoch.
final class SimTransport: Transport, @unchecked Sendable {
    private unowned let sim: Simulation
    private let node: SimNode?
    private var gate: (@Sendable () -> Bool)?
    /// False once its coordinator crashed: answers are no longer delivered to it.
    var alive = true

    init(sim: Simulation, node: SimNode? = nil) {
        self.sim = sim
        self.node = node
    }

    func send(_ message: ParticipantMessage, protocol proto: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint) async -> ParticipantResponse {
        await send(message, protocol: proto, request: request, to: endpoint, scope: nil)
    }

    func send(_ message: ParticipantMessage, protocol proto: TransactionProtocol, request: ParticipantRequest, to endpoint: ParticipantEndpoint,
              scope: (shard: Int, epoch: Int64)?) async -> ParticipantResponse {
        if let node {
            await node.untilRunning()
            guard alive, gate?() ?? true else { return .failed("this node may no longer send") }
            if let scope {
                sim.sentMessages.append(SentMessage(gid: request.gid, branch: request.branch, message: message, node: node.id, incarnation: node.incarnation,
                                                    shard: scope.shard, epoch: scope.epoch, at: sim.world.time))
            }
        }
        return await withCheckedContinuation { answer in
            sim.deliver(message, proto, request, to: endpoint.name, from: self) { answer.resume(returning: $0) }
        }
    }

    func sendOnlyWhile(_ condition: @escaping @Sendable () -> Bool) { gate = condition }

    func scoped(shard: Int, epoch: Int64) -> any Transport { ScopedSimTransport(base: self, shard: shard, epoch: epoch) }

    func shutdown() async {}
}
