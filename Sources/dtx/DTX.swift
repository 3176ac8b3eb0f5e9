import ArgumentParser

/// `dtx`: the operator's command line.
@main
struct DTX: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dtx",
        abstract: "Operate a dtx coordinator.",
        subcommands: [WAL.self]
    )
}
