import ArgumentParser
import DTXAPI
import DTXClient
import Foundation

struct Participants: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "participants",
        abstract: "List the registered participants, or show one.",
        discussion: """
        LAST SEEN is the last registration, heartbeat or successful call ("-" when the \
        participant has not been heard from since dtxd started); UNFINISHED counts its \
        branches in unfinished transactions.
        """
    )

    @OptionGroup(title: "Connection")
    var connection: ConnectionOptions

    @Argument(help: "Show only this participant.")
    var name: String?

    func run() async throws {
        if let name {
            let info = try await connection.withClient { try await $0.participant(name) }
            if connection.json {
                try JSONOutput.print(info)
            } else {
                print(Self.render(info))
            }
            return
        }
        let participants = try await connection.withClient { try await $0.participants() }
        if connection.json {
            try JSONOutput.print(ParticipantList(participants: participants))
        } else if participants.isEmpty {
            print("no participants registered")
        } else {
            print(Self.render(participants))
        }
    }

    static func render(_ participants: [ParticipantInfo], now: Date = Date()) -> String {
        var table = TextTable([
            .init("NAME"), .init("URL"), .init("PROTOCOLS"), .init("LAST SEEN", alignRight: true), .init("UNFINISHED", alignRight: true),
        ])
        for participant in participants {
            table.append([participant.name, participant.url, participant.protocols.map(\.rawValue).joined(separator: ","),
                          Format.ago(participant.lastSeen, now: now), "\(participant.unfinishedBranches)"])
        }
        return table.render()
    }

    static func render(_ participant: ParticipantInfo, now: Date = Date()) -> String {
        var fields = FieldList()
        fields.append("name", participant.name)
        fields.append("url", participant.url)
        fields.append("protocols", participant.protocols.map(\.rawValue).joined(separator: ", "))
        fields.append("token", participant.hasToken ? "set" : "none")
        fields.append("registered", "\(Format.timestamp(participant.registeredAt)) (\(Format.ago(participant.registeredAt, now: now)))")
        fields.append("last seen", participant.lastSeen.map { "\(Format.timestamp($0)) (\(Format.ago($0, now: now)))" } ?? "-")
        fields.append("unfinished", "\(participant.unfinishedBranches) branch(es)")
        return fields.render()
    }
}
