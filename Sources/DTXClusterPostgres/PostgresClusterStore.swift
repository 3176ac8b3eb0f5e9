import DTXAPI
import DTXCluster
import DTXCore
import DTXLog
import DTXPostgresClient
import Foundation
import Logging

/// The cluster store on PostgreSQL (Schemas/coordinator-store-postgres.sql), through
/// four pools so that no kind of work waits behind another: renewals alone (a renewal
/// never waits behind anything else), acquisitions, releases and views, the record
/// writer's batches, and the rest (loads, compactions, the registry).
package final class PostgresClusterStore: ClusterStore {
    private let control: PostgresPool
    private let renewals: PostgresPool
    private let leases: PostgresPool
    private let writes: PostgresPool

    package init(url: String, logger: Logger) async throws {
        control = try await PostgresPool(url, size: 3, logger: logger)
        leases = try await PostgresPool(url, size: 1, logger: logger)
        renewals = try await PostgresPool(url, size: 1, logger: logger)
        writes = try await PostgresPool(url, size: 1, logger: logger)
    }

    package func prepare(shards requested: Int?) async throws -> Int {
        try await control.withConnection { try StoreSchema.prepare($0, shards: requested) }
    }

    package func register(node: String, url: String, incarnation: String, ttl: Duration) async throws -> Bool {
        try await renewals.withConnection { try Leases.register($0, node: node, url: url, incarnation: incarnation, ttl: ttl) }
    }

    package func renew(node: String, incarnation: String, ttl: Duration) async throws -> Bool {
        try await renewals.withConnection { try Leases.renew($0, node: node, incarnation: incarnation, ttl: ttl) }
    }

    package func view() async throws -> Leases.View {
        try await leases.withConnection { try Leases.view($0) }
    }

    package func acquire(shard: Int, node: String, incarnation: String) async throws -> Leases.Acquisition {
        try await leases.withConnection { try Leases.acquire($0, shard: shard, node: node, incarnation: incarnation) }
    }

    package func release(shard: Int, node: String, epoch: Int64) async throws {
        try await leases.withConnection { try Leases.release($0, shard: shard, node: node, epoch: epoch) }
    }

    package func leave(node: String, incarnation: String) async throws {
        try await leases.withConnection { try Leases.leave($0, node: node, incarnation: incarnation) }
    }

    /// One statement: it locks the rows of the batch's shards FOR SHARE, keeps the
    /// (shard, epoch) pairs `node` still owns, and inserts only their records.
    private static let insert = """
        WITH held AS (
            SELECT s.shard, s.epoch
            FROM dtx_shards s
            JOIN unnest($1::integer[], $2::bigint[]) AS h(shard, epoch) ON h.shard = s.shard AND h.epoch = s.epoch
            WHERE s.owner = $3
            FOR SHARE OF s
        ), written AS (
            INSERT INTO dtx_records (shard, gid, type, payload, writer, seq)
            SELECT r.shard, r.gid, r.type, r.payload, $4, r.seq
            FROM unnest($5::integer[], $6::bigint[], $7::text[], $8::integer[], $9::text[], $10::bigint[]) AS r(shard, epoch, gid, type, payload, seq)
            WHERE (r.shard, r.epoch) IN (SELECT shard, epoch FROM held)
            ORDER BY r.seq
            ON CONFLICT (writer, seq) DO NOTHING
            RETURNING 1
        )
        SELECT shard, epoch FROM held
        """

    package func write(_ batch: [StoreRecord], node: String, writer: String) async throws -> Set<ShardEpoch> {
        let pairs = Array(Set(batch.map { ShardEpoch(shard: $0.shard, epoch: $0.epoch) }))
        let parameters: [PostgresValue?] = [
            .text(PostgresArray.numbers(pairs.map(\.shard))), .text(PostgresArray.numbers(pairs.map(\.epoch))), .text(node), .text(writer),
            .text(PostgresArray.numbers(batch.map(\.shard))), .text(PostgresArray.numbers(batch.map(\.epoch))),
            .text(PostgresArray.texts(batch.map(\.gid))), .text(PostgresArray.numbers(batch.map { Int($0.type) })),
            .text(PostgresArray.texts(batch.map(\.payload))), .text(PostgresArray.numbers(batch.map(\.seq))),
        ]
        do {
            let result = try await writes.withConnection { try $0.execute(Self.insert, parameters) }
            var held: Set<ShardEpoch> = []
            for row in result.rows {
                if let shard = try row.int("shard"), let epoch = try row.int("epoch") { held.insert(ShardEpoch(shard: shard, epoch: Int64(epoch))) }
            }
            return held
        } catch let error as PostgresError where error.code == .connectionLost || error.code == .connectionFailed {
            throw ClusterStoreError.unreachable("\(error)")
        }
    }

    package func records(shard: Int) async throws -> [LogRecord] {
        try await control.withConnection { connection in
            try connection.execute("SELECT lsn, type, payload FROM dtx_records WHERE shard = $1 ORDER BY lsn", [.int(shard)]).rows.map { row in
                guard let lsn = try row.int("lsn"), let type = try row.int("type"), let payload = try row.string("payload") else {
                    throw ClusterError("a record of dtx_records has a NULL column")
                }
                return LogRecord(lsn: UInt64(lsn), type: UInt16(type), payload: Array(payload.utf8))
            }
        }
    }

    package func delete(lsns: [UInt64], shard: Int, node: String, epoch: Int64) async throws -> Int {
        try await control.withConnection { connection in
            try connection.execute("""
                WITH held AS (SELECT shard FROM dtx_shards WHERE shard = $1 AND owner = $2 AND epoch = $3 FOR SHARE)
                DELETE FROM dtx_records WHERE shard IN (SELECT shard FROM held) AND lsn = ANY($4::bigint[])
                """, [.int(shard), .text(node), .int(Int(epoch)), .text(PostgresArray.numbers(lsns))]).affectedRows
        }
    }

    package func holds(shard: Int, node: String, epoch: Int64) async throws -> Bool {
        try await control.withConnection { connection in
            try connection.execute("SELECT 1 FROM dtx_shards WHERE shard = $1 AND owner = $2 AND epoch = $3", [.int(shard), .text(node), .int(Int(epoch))]).rows.count == 1
        }
    }

    package func putRegistration(name: String, type: UInt16, record: String) async throws -> UInt64 {
        let version = try await control.withConnection { connection in
            try connection.execute("""
                INSERT INTO dtx_participants (name, version, type, record, last_seen) VALUES ($1, nextval('dtx_participant_versions'), $2, $3, now())
                ON CONFLICT (name) DO UPDATE SET version = excluded.version, type = excluded.type, record = excluded.record, last_seen = excluded.last_seen
                RETURNING version
                """, [.text(name), .int(Int(type)), .text(record)]).rows.first?.int("version")
        }
        return UInt64(version ?? 0)
    }

    package func registrations() async throws -> [RegistryRow] {
        try await control.withConnection { connection in
            try connection.execute("SELECT name, version, type, record, extract(epoch FROM last_seen)::float8 AS last_seen FROM dtx_participants", []).rows.compactMap { row in
                guard let name = try row.string("name"), let version = try row.int("version"), let type = try row.int("type"), let record = try row.string("record") else { return nil }
                return RegistryRow(name: name, version: UInt64(version), type: UInt16(type), record: record,
                                   lastSeen: try row.double("last_seen").map(Date.init(timeIntervalSince1970:)))
            }
        }
    }

    package func heard(from participants: [String], at time: Date) async throws {
        _ = try await control.withConnection { connection in
            try connection.execute("UPDATE dtx_participants SET last_seen = greatest(last_seen, to_timestamp($2)) WHERE name = ANY($1::text[])",
                                   [.text(PostgresArray.texts(participants)), .double(time.timeIntervalSince1970)])
        }
    }

    package func unfinishedTransactions(naming participant: String) async throws -> Int {
        // Unfinished: a begin or an enlistment naming the participant, and no end.
        let needle = #""participant":""# + participant + #"""#
        return try await control.withConnection { connection in
            try connection.execute("""
                SELECT count(DISTINCT r.gid) AS busy FROM dtx_records r
                WHERE r.type IN ($2, $3) AND strpos(r.payload, $1) > 0
                  AND NOT EXISTS (SELECT 1 FROM dtx_records e WHERE e.gid = r.gid AND e.type = $4)
                """, [.text(needle), .int(Int(LogEntry.RecordType.begin.rawValue)), .int(Int(LogEntry.RecordType.enlist.rawValue)),
                      .int(Int(LogEntry.RecordType.end.rawValue))]).rows.first?.int("busy") ?? 0
        }
    }

    package func close() async {
        await control.close()
        await leases.close()
        await renewals.close()
        await writes.close()
    }
}

/// PostgreSQL array literals, passed as text parameters and cast in the statement.
enum PostgresArray {
    static func numbers<T: BinaryInteger>(_ values: [T]) -> String {
        "{" + values.map { String($0) }.joined(separator: ",") + "}"
    }

    /// Every element quoted, with `"` and `\` escaped.
    static func texts(_ values: [String]) -> String {
        var out = "{"
        for (index, value) in values.enumerated() {
            if index > 0 { out += "," }
            out += "\""
            for character in value.unicodeScalars {
                if character == "\"" || character == "\\" { out += "\\" }
                out.unicodeScalars.append(character)
            }
            out += "\""
        }
        return out + "}"
    }
}

