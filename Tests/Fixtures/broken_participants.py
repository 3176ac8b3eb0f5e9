#!/usr/bin/env python3
"""Deliberately broken participants, for the tests of `dtx conformance`.

    python3 Tests/Fixtures/broken_participants.py --break NAME [participant.py flags...]

Each variant is Examples/PythonParticipant/participant.py with one subclass method
overridden, so that it breaks exactly one duty of Schemas/participant-api.yaml and keeps
every other. `--break none` runs the reference participant. `--list` prints the names.
"""
import argparse
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("participant", ROOT / "Examples/PythonParticipant/participant.py")
participant = importlib.util.module_from_spec(_spec)
sys.modules["participant"] = participant
_spec.loader.exec_module(participant)

P, Refused, reply = participant.Participant, participant.Refused, participant.reply


class PrepareNotIdempotent(P):
    """A repeated PREPARE of a prepared branch is refused (duty 2)."""
    def prepare(self, req):
        row = self.branch(req)
        if row is not None and row["state"] == "prepared":
            raise Refused("already_prepared", "prepared already")
        return super().prepare(req)


class RollbackUnknownFails(P):
    """ROLLBACK of a branch never prepared answers 409, not 200 (duty 3, presumed abort)."""
    def rollback(self, req):
        if self.branch(req) is None:
            raise Refused("unknown_branch", "no such branch")
        return super().rollback(req)


class PrepareAfterRollback(P):
    """Forgets rollback markers: a PREPARE or COMMIT_ONE_PHASE after a ROLLBACK does its work."""
    def branch_record(self, db, req):
        row = super().branch_record(db, req)
        return None if row is not None and row["state"] == "rolled_back" else row


class RollbackKeepsWork(P):
    """ROLLBACK of a prepared branch answers rolled_back, but its work becomes visible."""
    def rollback(self, req):
        row = self.branch(req)
        if row is not None and row["state"] == "prepared":
            self.commit(req)
            self.execute("UPDATE dtx_branches SET state = 'rolled_back' WHERE gid = ? AND branch = ?", req.gid, req.branch)
        return super().rollback(req)


class OnePhaseForgets(P):
    """ROLLBACK after COMMIT_ONE_PHASE answers rolled_back, though it committed (duty 3a)."""
    def rollback(self, req):
        row = self.branch(req)
        if row is not None and row["one_phase"]:
            return reply("rolled_back")
        return super().rollback(req)


class CommitUnknownPretends(P):
    """COMMIT of a branch never prepared answers committed instead of 409 unknown_branch."""
    def commit(self, req):
        if self.branch(req) is None:
            return reply("committed")
        return super().commit(req)


class NoNullCompensation(P):
    """CANCEL (COMPENSATE) of a branch whose TRY (ACTION) never ran answers 409."""
    def barrier(self, phase, req):
        first = participant.FOLLOWS.get(phase)
        if phase in ("cancel", "compensate"):
            with self.transaction() as db:
                if first not in self.barrier_records(db, req):
                    raise Refused("nothing_to_cancel", f"no {first} of this branch ran here")
        return super().barrier(phase, req)


class Hanging(P):
    """A TRY (ACTION) arriving after its null CANCEL (COMPENSATE) runs and answers 200."""
    def barrier(self, phase, req):
        if phase in ("try", "action"):
            self.execute("DELETE FROM dtx_barrier WHERE gid = ? AND branch = ? AND null_compensation = 1", req.gid, req.branch)
        return super().barrier(phase, req)


class ConfirmTwice(P):
    """A repeated CONFIRM applies the work again (not idempotent)."""
    def barrier(self, phase, req):
        if phase == "confirm":
            self.execute("DELETE FROM dtx_barrier WHERE gid = ? AND branch = ? AND phase = 'confirm'", req.gid, req.branch)
        return super().barrier(phase, req)


class RefusedActionLeavesWork(P):
    """An ACTION its operation refuses (409) still adds its payload's {"key", "amount"}."""
    def barrier(self, phase, req):
        try:
            return super().barrier(phase, req)
        except Refused as e:
            barrier_refusal = e.code in ("already_compensated", "branch_mismatch")
            if phase == "action" and not barrier_refusal and isinstance(req.payload, dict) and {"key", "amount"} <= req.payload.keys():
                with self.transaction() as db:
                    participant.CounterAdd().action(db, req.payload)
            raise


class BadRequestAccepted(P):
    """A message without `gid` is answered 200 (its path's status) instead of 400."""
    def handle(self, path, body):
        if isinstance(body, dict) and "gid" not in body:
            return reply(participant.MESSAGES[path][1])
        return super().handle(path, body)


class BatchOutOfOrder(P):
    """With --batch, answers a batch's items in reverse order."""
    def batch(self, items):
        return list(reversed(super().batch(items)))


class NotDurable(P):
    """Keeps prepared 2PC branches as if only in memory: a restart forgets them (duty 1)."""
    def opened(self):
        self.execute("DELETE FROM dtx_branches WHERE state = 'prepared'")


class CheckBackGuesses(P):
    """Answers msg's check-back for a message it never prepared `committed`, a guess:
    dtxd would deliver a message whose local transaction never ran."""
    def query_prepared(self, gid):
        return participant.reply("committed")


VARIANTS = {
    "none": P,
    "prepare-not-idempotent": PrepareNotIdempotent,
    "rollback-unknown-fails": RollbackUnknownFails,
    "prepare-after-rollback": PrepareAfterRollback,
    "rollback-keeps-work": RollbackKeepsWork,
    "one-phase-forgets": OnePhaseForgets,
    "commit-unknown-pretends": CommitUnknownPretends,
    "no-null-compensation": NoNullCompensation,
    "hanging": Hanging,
    "confirm-twice": ConfirmTwice,
    "refused-action-leaves-work": RefusedActionLeavesWork,
    "refused-try-leaves-barrier": RefusedActionLeavesWork,  # the name first proposed for it
    "bad-request-accepted": BadRequestAccepted,
    "batch-out-of-order": BatchOutOfOrder,
    "not-durable": NotDurable,
    "check-back-guesses": CheckBackGuesses,
}


def main(argv=None):
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--break", dest="variant")
    options.add_argument("--list", action="store_true")
    args, rest = options.parse_known_args(argv)
    if args.list:
        for name, cls in VARIANTS.items():
            print(f"{name:28} {cls.__doc__.splitlines()[0] if cls is not P else 'the reference participant'}")
        return
    if args.variant not in VARIANTS:
        sys.exit(f"broken_participants.py: --break NAME is required; NAME is one of {', '.join(VARIANTS)}")
    participant.main(rest, participant_class=VARIANTS[args.variant])


if __name__ == "__main__":
    main()
