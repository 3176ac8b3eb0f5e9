import DTXCore

extension [TransactionAction] {
    /// The machine called the event impossible (a broken invariant of the engine) and did nothing else.
    var isImpossible: Bool {
        guard count == 1, case .impossible = self[0] else { return false }
        return true
    }
}
