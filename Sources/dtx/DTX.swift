import ArgumentParser

/// `dtx`: the operator's command line.
@main
struct DTX: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dtx",
        abstract: "Operate a dtx coordinator.",
        discussion: """
        participants, list, show, submit, commit, abort, retry, resolve and recover talk to a running \
        dtxd over its HTTP API. Each takes --url (or the environment variable DTX_URL; \
        default http://127.0.0.1:7070), --token (or DTX_TOKEN, when dtxd requires a \
        bearer token) and --json (print the daemon's answer as JSON instead of text); \
        a flag wins over the variable.

        wal works offline on a write-ahead log directory; conformance checks a \
        participant against the participant contract, playing the coordinator.

        Exit status of the online commands: 0 on success; 1 when dtxd refused the \
        request (its message is printed); 2 on bad input, before anything is sent \
        (a malformed spec file, an invalid URL); 3 when dtxd cannot be reached; 64 on \
        a usage error.
        """,
        subcommands: [
            Participants.self, ListTransactions.self, ShowTransaction.self, SubmitTransaction.self,
            CommitTransaction.self, AbortTransaction.self, RetryTransaction.self, ResolveBranch.self, Recover.self, ClusterCommand.self, ConformanceCommand.self, WAL.self,
        ]
    )
}
