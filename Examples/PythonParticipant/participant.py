#!/usr/bin/env python3
"""A dtx participant in plain Python (3.11+, standard library only).

It serves the participant protocol of Schemas/participant-api.yaml for 2PC, TCC and
sagas over one SQLite file, registers with dtxd, heartbeats, and resolves in-doubt
branches by asking the coordinator. Business logic lives in OPERATIONS (below): each
operation is a small class whose methods get the open SQLite connection, inside the
local transaction that also records the message, and the branch's payload.

    python3 participant.py --name py-accounts --db /tmp/py.db [--coordinator URL]

Prints `listening on http://HOST:PORT` once it serves. See README.md.
"""
import argparse
import contextlib
import hashlib
import hmac
import json
import logging
import re
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("participant")

HEARTBEAT_INTERVAL = 5.0   # the coordinator API states none; the Swift kit's default
RECOVERY_INTERVAL = 5.0    # how often prepared branches are looked at
MAX_BODY = 8 << 20


# ---------------------------------------------------------------------------
# Business operations: put your own here.
# ---------------------------------------------------------------------------

class Refused(Exception):
    """A definitive business refusal: answered 409 with an Error body, and the local
    transaction (business work and protocol record together) is rolled back."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class Operation:
    """One operation. `reserve` (2PC prepare, TCC try) holds the work without making it
    visible; `confirm` (2PC commit, TCC confirm) makes it visible; `cancel` (2PC rollback,
    TCC cancel) releases it; `action` (saga action, and 2PC commit_one_phase) does it at
    once; `compensate` (saga) undoes an action. reserve and action may raise Refused and
    return the branch's result (any JSON); the others must not fail for good."""
    read_only = False  # True: a 2PC prepare answers read_only and records nothing

    def reserve(self, db, payload): return None
    def confirm(self, db, payload): pass
    def cancel(self, db, payload): pass
    def compensate(self, db, payload): pass

    def action(self, db, payload):
        result = self.reserve(db, payload)
        self.confirm(db, payload)
        return result


KEY = re.compile(r"[A-Za-z0-9._:-]+")


def counter_args(payload, amount=True):
    """(key, amount) of a conformance payload {"key": K, "amount": N}."""
    key = payload.get("key") if isinstance(payload, dict) else None
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise Refused("invalid_payload", "the payload needs 'key', a string of [A-Za-z0-9._:-]")
    if not amount:
        return key, 0
    n = payload.get("amount")
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or abs(n) >= 2 ** 53:
        raise Refused("invalid_payload", "the payload needs 'amount', an integer")
    return key, n


def bump(db, key, value=0, reserved=0):
    db.execute("INSERT INTO counters (key, value, reserved) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE"
               " SET value = value + excluded.value, reserved = reserved + excluded.reserved", (key, value, reserved))


class CounterAdd(Operation):
    """dtx.conformance.add {"key": K, "amount": N}: adds N to counter K."""
    def reserve(self, db, p): key, n = counter_args(p); bump(db, key, reserved=n)
    def confirm(self, db, p): key, n = counter_args(p); bump(db, key, value=n, reserved=-n)
    def cancel(self, db, p): key, n = counter_args(p); bump(db, key, reserved=-n)
    def compensate(self, db, p): key, n = counter_args(p); bump(db, key, value=-n)


class CounterRead(Operation):
    """dtx.conformance.read {"key": K}: writes nothing; result {"value": V} (committed)."""
    read_only = True

    def reserve(self, db, p):
        key, _ = counter_args(p, amount=False)
        row = db.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
        return {"value": row[0] if row else 0}


class Refuse(Operation):
    """dtx.conformance.refuse: refused, nothing done."""
    def reserve(self, db, p):
        raise Refused("refused", "the conformance run asked for a refusal (dtx.conformance.refuse)")


OPERATIONS = {
    "dtx.conformance.add": CounterAdd(),
    "dtx.conformance.read": CounterRead(),
    "dtx.conformance.refuse": Refuse(),
}


# ---------------------------------------------------------------------------
# The protocol: one method per message.
# ---------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (       -- the business table of the conformance operations
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0,       -- committed, visible
    reserved INTEGER NOT NULL DEFAULT 0     -- held by prepared 2PC and tried TCC branches
);
CREATE TABLE IF NOT EXISTS dtx_branches (   -- 2PC: every branch heard of, and its state
    gid TEXT NOT NULL, branch INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('prepared', 'committed', 'rolled_back')),
    operation TEXT NOT NULL, payload TEXT, digest TEXT, result TEXT,
    one_phase INTEGER NOT NULL DEFAULT 0,
    prepared_at REAL, decided_at REAL,
    PRIMARY KEY (gid, branch)
);
CREATE TABLE IF NOT EXISTS dtx_barrier (    -- TCC and sagas: one row per (gid, branch, phase)
    gid TEXT NOT NULL, branch INTEGER NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('try', 'confirm', 'cancel', 'action', 'compensate')),
    operation TEXT NOT NULL, payload TEXT, digest TEXT NOT NULL,
    null_compensation INTEGER NOT NULL DEFAULT 0, result TEXT, created_at REAL NOT NULL,
    PRIMARY KEY (gid, branch, phase)
);
CREATE TABLE IF NOT EXISTS dtx_messages (   -- msg: one row per message this service sent
    gid TEXT PRIMARY KEY,
    outcome TEXT NOT NULL CHECK (outcome IN ('committed', 'rolled_back')),
    created_at REAL NOT NULL
);
"""

Request = namedtuple("Request", "gid branch operation payload")
GID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")

# path -> (method, status of its 200 answer)
MESSAGES = {
    "/dtx/2pc/prepare": ("prepare", "prepared"), "/dtx/2pc/commit": ("commit", "committed"),
    "/dtx/2pc/rollback": ("rollback", "rolled_back"), "/dtx/2pc/commit_one_phase": ("commit_one_phase", "committed"),
    "/dtx/tcc/try": ("try_", "tried"), "/dtx/tcc/confirm": ("confirm", "confirmed"), "/dtx/tcc/cancel": ("cancel", "cancelled"),
    "/dtx/saga/action": ("action", "done"), "/dtx/saga/compensate": ("compensate", "compensated"),
}
THREE_PHASE = {"/dtx/3pc/can_commit", "/dtx/3pc/pre_commit", "/dtx/3pc/do_commit", "/dtx/3pc/rollback", "/dtx/state"}
BATCH = "/dtx/batch"
QUERY_PREPARED = "/dtx/msg/query_prepared"
# barrier: the phase a phase follows, the Operation method it runs, its answer
FOLLOWS = {"confirm": "try", "cancel": "try", "compensate": "action"}
RUNS = {"try": "reserve", "confirm": "confirm", "cancel": "cancel", "action": "action", "compensate": "compensate"}
STATUS = {"try": "tried", "confirm": "confirmed", "cancel": "cancelled", "action": "done", "compensate": "compensated"}


class BadRequest(Exception):
    pass


def reply(status, result=None):
    return 200, ({"status": status} if result is None else {"status": status, "result": result})


def error(code, message):
    return {"error": {"code": code, "message": message}}


def dumps(value):
    return None if value is None else json.dumps(value)


def loads(text):
    return None if text is None else json.loads(text)


def digest(operation, payload):
    """Fingerprint of a branch's work: a repeat naming other work is refused."""
    return hashlib.sha256(json.dumps([operation, payload], sort_keys=True).encode()).hexdigest()[:16]


def ref(req):
    return f"{req.gid}#{req.branch}"


class Participant:
    protocols = ["2pc", "tcc", "saga", "msg"]

    def __init__(self, db_path, operations=None, batch=False, callback_token=None, name="py-participant"):
        self.name = name
        self.operations = OPERATIONS if operations is None else operations
        self.batch_enabled, self.callback_token = batch, callback_token
        self.started_at = time.time()
        # One connection and one lock: SQLite has one writer anyway. BEGIN IMMEDIATE also
        # keeps out another process on the same file.
        self._lock = threading.RLock()
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")  # a COMMIT is on disk when it returns
        self.db.executescript(SCHEMA)
        self.opened()

    def opened(self):
        """Runs once the database is open."""

    @contextlib.contextmanager
    def transaction(self):
        """One local transaction; an exception (a Refused too) rolls it back whole."""
        with self._lock:
            if self.db.in_transaction:  # nested: part of the caller's transaction
                yield self.db
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def execute(self, sql, *args):
        with self.transaction() as db:
            return db.execute(sql, args).fetchall()

    def operation(self, name, forward=True):
        op = self.operations.get(name)
        if op is None and forward:
            raise Refused("unknown_operation", f"no operation named {name!r} here (known: {', '.join(sorted(self.operations))})")
        if op is None:  # recorded work whose operation was removed: retry until it is back
            raise RuntimeError(f"operation {name!r} ran here but is no longer in OPERATIONS; put it back and restart")
        return op

    # --- 2PC (duties 1-3a) -------------------------------------------------

    def branch_record(self, db, req):
        return db.execute("SELECT * FROM dtx_branches WHERE gid = ? AND branch = ?", (req.gid, req.branch)).fetchone()

    def branch(self, req):
        with self.transaction() as db:
            return self.branch_record(db, req)

    def same_work(self, row, req):
        if row["digest"] and row["digest"] != digest(req.operation, req.payload):
            raise Refused("branch_mismatch", f"branch {ref(req)} was recorded here for another operation or payload; submit under a new gid")

    def record(self, db, req, state, result=None, one_phase=False):
        now = time.time()
        db.execute("INSERT OR REPLACE INTO dtx_branches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (req.gid, req.branch, state, req.operation, dumps(req.payload), digest(req.operation, req.payload),
                    dumps(result), int(one_phase), now if state == "prepared" else None, None if state == "prepared" else now))

    def decide(self, db, req, state):
        db.execute("UPDATE dtx_branches SET state = ?, decided_at = ? WHERE gid = ? AND branch = ?", (state, time.time(), req.gid, req.branch))

    def prepare(self, req):
        with self.transaction() as db:
            row = self.branch_record(db, req)
            if row is not None:
                if row["state"] == "rolled_back":  # duty 3: the marker refuses a late prepare
                    raise Refused("already_rolled_back", f"branch {ref(req)} was rolled back already; it cannot prepare")
                self.same_work(row, req)
                return reply("prepared", loads(row["result"]))  # duty 2: a repeat
            op = self.operation(req.operation)
            result = op.reserve(db, req.payload)
            if op.read_only:
                return reply("read_only", result)
            self.record(db, req, "prepared", result)
        return reply("prepared", result)  # duty 1: committed (fsynced) before this answer

    def commit(self, req):
        with self.transaction() as db:
            row = self.branch_record(db, req)
            if row is None:
                raise Refused("unknown_branch", f"no record of branch {ref(req)}: it was never prepared here")
            if row["state"] == "rolled_back":
                raise Refused("already_rolled_back", f"branch {ref(req)} was rolled back; it cannot commit")
            if row["state"] == "prepared":
                self.operation(row["operation"], forward=False).confirm(db, loads(row["payload"]))
                self.decide(db, req, "committed")
        return reply("committed")

    def rollback(self, req):
        with self.transaction() as db:
            row = self.branch_record(db, req)
            if row is None:  # duty 3: presumed abort, remembered
                self.record(db, req._replace(operation="", payload=None), "rolled_back")
            elif row["state"] == "committed":  # duty 3a: how the coordinator learns a lost one-phase answer
                raise Refused("already_committed", f"branch {ref(req)} was committed already; it cannot roll back")
            elif row["state"] == "prepared":
                self.operation(row["operation"], forward=False).cancel(db, loads(row["payload"]))
                self.decide(db, req, "rolled_back")
        return reply("rolled_back")

    def commit_one_phase(self, req):
        with self.transaction() as db:
            row = self.branch_record(db, req)
            if row is not None:
                if row["state"] == "rolled_back":
                    raise Refused("already_rolled_back", f"branch {ref(req)} was rolled back already; it cannot commit")
                self.same_work(row, req)
                if row["state"] == "prepared":
                    self.operation(row["operation"], forward=False).confirm(db, loads(row["payload"]))
                    db.execute("UPDATE dtx_branches SET one_phase = 1 WHERE gid = ? AND branch = ?", (req.gid, req.branch))
                    self.decide(db, req, "committed")
                return reply("committed", loads(row["result"]))
            result = self.operation(req.operation).action(db, req.payload)  # work and commit in one step
            self.record(db, req, "committed", result, one_phase=True)  # duty 3a: kept for repeats and rollbacks
        return reply("committed", result)

    # --- TCC and sagas: the branch barrier ----------------------------------

    def try_(self, req): return self.barrier("try", req)
    def confirm(self, req): return self.barrier("confirm", req)
    def cancel(self, req): return self.barrier("cancel", req)
    def action(self, req): return self.barrier("action", req)
    def compensate(self, req): return self.barrier("compensate", req)

    def barrier_records(self, db, req):
        rows = db.execute("SELECT * FROM dtx_barrier WHERE gid = ? AND branch = ?", (req.gid, req.branch))
        return {row["phase"]: row for row in rows}

    def mark(self, db, phase, req, result=None, null=False):
        db.execute("INSERT INTO dtx_barrier VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (req.gid, req.branch, phase, req.operation, dumps(req.payload), digest(req.operation, req.payload),
                    int(null), dumps(result), time.time()))

    def barrier(self, phase, req):
        with self.transaction() as db:
            done = self.barrier_records(db, req)
            if phase in done:  # idempotency: the stored answer, nothing run
                self.same_work(done[phase], req)
                return reply(STATUS[phase], loads(done[phase]["result"]))
            if phase == "try" and "cancel" in done:  # no hanging
                raise Refused("already_cancelled", f"branch {ref(req)} was cancelled before its try arrived; the try does nothing")
            if phase == "action" and "compensate" in done:
                raise Refused("already_compensated", f"branch {ref(req)} was compensated before its action arrived; the action does nothing")
            if phase == "confirm" and "cancel" in done:
                raise Refused("already_cancelled", f"branch {ref(req)} was cancelled; it cannot confirm")
            if phase == "cancel" and "confirm" in done:
                raise Refused("already_confirmed", f"branch {ref(req)} was confirmed; it cannot cancel")
            first = done.get(FOLLOWS.get(phase))
            if phase == "confirm" and first is None:
                raise Refused("unknown_branch", f"no successful try of branch {ref(req)} is recorded here; nothing to confirm")
            if phase in ("cancel", "compensate") and first is None:  # null compensation, remembered
                self.mark(db, phase, req, null=True)
                return reply(STATUS[phase])
            if first is not None:
                self.same_work(first, req)
                op, payload = self.operation(first["operation"], forward=False), loads(first["payload"])
            else:
                op, payload = self.operation(req.operation), req.payload
            result = getattr(op, RUNS[phase])(db, payload)  # Refused: work and record roll back together
            self.mark(db, phase, req, result)
        return reply(STATUS[phase], result)

    # --- msg: messages this service sends, and dtxd's check-back ----------------

    def query_prepared(self, gid):
        """The check-back: the message's row, or a rollback marker written now. The local
        transaction of send_message holds the write lock (BEGIN IMMEDIATE) while it runs,
        so this waits for it: the answer is settled once and for all."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO dtx_messages (gid, outcome, created_at) VALUES (?, 'rolled_back', ?)", (gid, time.time()))
            return reply(db.execute("SELECT outcome FROM dtx_messages WHERE gid = ?", (gid,)).fetchone()["outcome"])

    def send_message(self, coordinator, gid, branches, work, timeout=30):
        """A transactional message: prepare it with dtxd (this service checks back), run
        work(db) in a local transaction with the message's row, commit, submit. Raises
        Refused when the check-back rolled the message back first (nothing written); a
        submit that gets no answer is left to the check-back."""
        status, body = coordinator.call("POST", "/v1/transactions", {
            "gid": gid, "protocol": "msg", "service": self.name, "timeout": timeout, "branches": branches})
        if status not in (200, 201):
            raise OSError(f"the prepare of {gid} was answered {status} {body}")
        try:
            with self.transaction() as db:
                if db.execute("INSERT OR IGNORE INTO dtx_messages (gid, outcome, created_at) VALUES (?, 'committed', ?)",
                              (gid, time.time())).rowcount == 0:
                    raise Refused("rolled_back", f"message {gid} was already settled here (rolled back by dtxd's check-back, or sent); use a new gid")
                result = work(db)
        except BaseException:
            coordinator.call("POST", f"/v1/transactions/{urllib.parse.quote(gid, safe='')}/abort")
            raise
        try:
            coordinator.call("POST", f"/v1/transactions/{urllib.parse.quote(gid, safe='')}/commit", {})
        except OSError as e:
            log.warning("the submit of %s got no answer (%s); dtxd delivers it after checking back", gid, e)
        return result

    # --- requests -------------------------------------------------------------

    def validate(self, body):
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object with gid, branch and operation")
        gid, branch, operation = body.get("gid"), body.get("branch"), body.get("operation")
        if not isinstance(gid, str) or not GID.fullmatch(gid):
            raise BadRequest("'gid' must be 1-128 characters of [A-Za-z0-9._:-]")
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch <= 2 ** 31 - 1:
            raise BadRequest("'branch' must be an integer from 0 to 2147483647")
        if not isinstance(operation, str):
            raise BadRequest("'operation' must be a string")
        names = body.get("participants")
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) and NAME.fullmatch(n) for n in names)):
            raise BadRequest("'participants' must be a list of participant names")
        return Request(gid, branch, operation, body.get("payload"))

    def handle(self, path, body):
        """One message (alone or in a batch), its body parsed: (status, JSON body)."""
        method = MESSAGES[path][0]
        try:
            return getattr(self, method)(self.validate(body))
        except BadRequest as e:
            return 400, error("invalid_request", str(e))
        except Refused as e:
            return 409, error(e.code, e.message)
        except Exception as e:  # not done: the coordinator retries
            log.exception("%s failed", method)
            return 503, error("unavailable", f"{method} failed: {e}; retry later")

    def batch(self, items):
        """The answers to a batch's items, in the items' order."""
        return [self.handle(item["path"], item["request"]) if item["path"] in MESSAGES
                else (404, error("not_found", f"a batched message's path must be one of {', '.join(MESSAGES)}")) for item in items]

    def http(self, method, path, authorization, body):
        """One HTTP request: (status, JSON body, extra headers)."""
        if self.callback_token is not None and not hmac.compare_digest(
                (authorization or "").encode(), f"Bearer {self.callback_token}".encode()):
            return 401, error("unauthorized", "this participant requires 'Authorization: Bearer <token>'"), {}
        if path in THREE_PHASE:
            return 404, error("protocol_not_served", f"this participant does not serve 3pc; it serves {', '.join(self.protocols)}"), {}
        if path not in MESSAGES and path != QUERY_PREPARED and not (path == BATCH and self.batch_enabled):
            return 404, error("not_found", f"no participant endpoint at {path}"), {}
        if method != "POST":
            return 405, error("method_not_allowed", f"{method} is not served on {path}; use POST"), {"Allow": "POST"}
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return 400, error("invalid_request", "the body is not JSON"), {}
        if path == QUERY_PREPARED:
            gid = parsed.get("gid") if isinstance(parsed, dict) else None
            if not isinstance(gid, str) or not GID.fullmatch(gid):
                return 400, error("invalid_request", "send {\"gid\": the message's gid}"), {}
            try:
                return (*self.query_prepared(gid), {})
            except Exception as e:  # asked again later
                log.exception("query_prepared failed")
                return 503, error("unavailable", f"query_prepared failed: {e}; retry later"), {}
        if path != BATCH:
            return (*self.handle(path, parsed), {})
        items = parsed.get("messages") if isinstance(parsed, dict) else None
        if not isinstance(items, list) or not 1 <= len(items) <= 256 or not all(
                isinstance(i, dict) and isinstance(i.get("path"), str) and "request" in i for i in items):
            return 400, error("invalid_request", "send {\"messages\": [{\"path\": ..., \"request\": {...}}, ...]} with 1 to 256 items"), {}
        return 200, {"answers": [{"status": s, "body": b} for s, b in self.batch(items)]}, {}

    # --- in-doubt branches (duty 4) --------------------------------------------

    def in_doubt(self, older_than):
        """Prepared branches prepared before this process started, or longer ago than older_than."""
        limit = max(self.started_at, time.time() - older_than)
        with self.transaction() as db:
            rows = db.execute("SELECT gid, branch, operation, payload FROM dtx_branches"
                              " WHERE state = 'prepared' AND prepared_at < ?", (limit,)).fetchall()
        return [Request(r["gid"], r["branch"], r["operation"], loads(r["payload"])) for r in rows]

    def resolve(self, req, outcome):
        if outcome in ("committed", "aborted"):
            status, body = self.handle("/dtx/2pc/commit" if outcome == "committed" else "/dtx/2pc/rollback", req._asdict())
            log.info("in-doubt branch %s: coordinator says %s; answered %s %s", ref(req), outcome, status, body)


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dtx-python-participant"

    def __getattr__(self, name):  # do_GET, do_POST, do_PUT...: every method goes to serve
        if name.startswith("do_"):
            return self.serve
        raise AttributeError(name)

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while (size := int(self.rfile.readline(1024).split(b";")[0], 16)) > 0:
                total += size
                if total > MAX_BODY:
                    raise OverflowError
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise OverflowError
        return self.rfile.read(length)

    def serve(self):
        headers = {}
        try:
            body = self.read_body()
        except OverflowError:
            self.close_connection = True
            status, answer = 413, error("payload_too_large", f"the body is larger than {MAX_BODY} bytes")
        except ValueError:
            self.close_connection = True
            status, answer = 400, error("invalid_request", "cannot read the request body")
        else:
            path = urllib.parse.urlsplit(self.path).path
            try:
                status, answer, headers = self.server.participant.http(self.command, path, self.headers.get("Authorization"), body)
            except Exception as e:
                log.exception("%s %s failed", self.command, path)
                status, answer = 503, error("unavailable", f"{e}; retry later")
        data = json.dumps(answer).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format, *args):
        if self.server.verbose:
            log.info("%s %s", self.address_string(), format % args)


def make_server(participant, host, port, backlog=128, verbose=False):
    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        request_queue_size = backlog  # the coordinator opens up to 256 connections

    server = Server((host, port), Handler)
    server.participant, server.verbose = participant, verbose
    return server


# ---------------------------------------------------------------------------
# The coordinator: registration, heartbeats, outcomes
# ---------------------------------------------------------------------------

class Coordinator:
    def __init__(self, url, token=None, timeout=10):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no *_proxy detours

    def call(self, method, path, body=None):
        """(status, JSON body); raises OSError when dtxd cannot be reached."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, None

    def outcome(self, gid, branch):
        path = f"/v1/transactions/{urllib.parse.quote(gid, safe='')}/outcome?branch={branch}"
        status, body = self.call("GET", path)
        if status != 200 or not isinstance(body, dict):
            raise OSError(f"GET {path} answered {status} {body}")
        return body.get("outcome")


def keep_registered(coordinator, registration, stop):
    """Registers (retrying with capped backoff), then heartbeats; a failed heartbeat
    registers again."""
    name = urllib.parse.quote(registration["name"], safe="")
    registered, failures, delay, warned = False, 0, 0.0, None
    while not stop.wait(delay):
        try:
            if not registered:
                status, body = coordinator.call("POST", "/v1/participants", registration)
                if status not in (200, 201):
                    raise OSError(f"registration answered {status} {body}")
                registered = True
                log.info("registered with %s as %s at %s", coordinator.url, registration["name"], registration["url"])
            else:
                status, body = coordinator.call("POST", f"/v1/participants/{name}/heartbeat")
                if status != 200 or not isinstance(body, dict):
                    registered = False
                    raise OSError(f"heartbeat answered {status} {body}")
                listed = body.get("url", "").rstrip("/")
                if listed != registration["url"].rstrip("/"):
                    if warned != listed:  # another process took the name: say so, once, and leave it
                        log.warning("the coordinator lists %s at %s, not here", registration["name"], listed)
                    warned = listed
                elif set(body.get("protocols", [])) != set(registration["protocols"]) or body.get("batch") != registration["batch"]:
                    registered, delay = False, 0.0
                    continue
            failures, delay = 0, HEARTBEAT_INTERVAL
        except OSError as e:
            failures += 1
            delay = min(0.2 * 2 ** min(failures - 1, 5), 5.0)
            (log.warning if failures == 1 else log.debug)("cannot reach the coordinator at %s (%s); retrying", coordinator.url, e)


def resolve_in_doubt(participant, coordinator, stop, older_than):
    """Duty 4: asks the outcome of every branch prepared before this start, and of those
    prepared longer than older_than seconds; unreachable or pending: asks again later."""
    while True:
        try:
            for req in participant.in_doubt(older_than):
                participant.resolve(req, coordinator.outcome(req.gid, req.branch))
        except OSError as e:
            log.warning("cannot ask the coordinator about in-doubt branches (%s); asking again later", e)
        except Exception:
            log.exception("in-doubt resolution failed")
        if stop.wait(RECOVERY_INTERVAL):
            return


# ---------------------------------------------------------------------------

def parser():
    p = argparse.ArgumentParser(description="A dtx participant (2PC, TCC, saga, msg's check-back) on SQLite, standard library only.")
    p.add_argument("--db", required=True, help="SQLite file holding the business tables and every branch's state")
    p.add_argument("--name", default="py-participant", help="the name to register (default py-participant)")
    p.add_argument("--coordinator", default="http://127.0.0.1:7070", help="dtxd's base URL (default http://127.0.0.1:7070)")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to serve on; port 0 picks one (default 127.0.0.1:0)")
    p.add_argument("--advertise-url", help="base URL to register (default http://HOST:PORT of --listen)")
    p.add_argument("--token", help="the coordinator's API token, sent on registration, heartbeats and outcome questions")
    p.add_argument("--callback-token", help="token the coordinator must send (Authorization: Bearer); other calls get 401")
    p.add_argument("--backlog", type=int, default=128, help="listen backlog (default 128)")
    p.add_argument("--batch", action="store_true", help="serve POST /dtx/batch and register batch: true")
    p.add_argument("--no-register", action="store_true", help="serve without a coordinator (conformance runs)")
    p.add_argument("--in-doubt-after", type=float, default=30.0, help="seconds before a prepared branch is asked about (default 30)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv=None, participant_class=Participant):
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    host, _, port = args.listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        sys.exit(f"--listen: cannot read {args.listen!r}; write HOST:PORT, e.g. 127.0.0.1:0")
    participant = participant_class(args.db, batch=args.batch, callback_token=args.callback_token, name=args.name)
    server = make_server(participant, host, int(port), args.backlog, args.verbose)
    bound = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{bound}", flush=True)
    stop = threading.Event()
    if not args.no_register:
        wildcard = host in ("0.0.0.0", "::", "")
        url = args.advertise_url or f"http://{'127.0.0.1' if wildcard else shown}:{bound}"
        registration = {"name": args.name, "url": url, "protocols": participant.protocols, "batch": args.batch}
        if args.callback_token:
            registration["token"] = args.callback_token
        coordinator = Coordinator(args.coordinator, args.token)
        threading.Thread(target=keep_registered, args=(coordinator, registration, stop), daemon=True).start()
        threading.Thread(target=resolve_in_doubt, args=(participant, coordinator, stop, args.in_doubt_after), daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))  # every answer given is durable already
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()


if __name__ == "__main__":
    main()
