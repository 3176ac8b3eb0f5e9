#!/usr/bin/env bash
# Self-test of validate_api.py: conforming exchanges pass, and each kind of breach
# (missing required field, extra property, wrong enum value, undocumented status, ...)
# is caught with a reason that names it. Also checks the Schemas/ documents themselves.
#
#     bash Tests/Tools/test_validate_api.sh
#
# Ends with "N passed, M failed"; exit status 1 if any case failed.
set -u
cd "$(dirname "$0")/../.."

tool=Tests/Tools/validate_api.py
api=Schemas/coordinator-api.yaml
participant_api=Schemas/participant-api.yaml
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# check NAME EXPECTED_EXIT EXPECTED_TEXT -- ARGS...: runs the tool and checks its exit
# status and that its output contains EXPECTED_TEXT (a fixed string).
check() {
    local name=$1 want_exit=$2 want_text=$3
    shift 4
    local output status
    output=$(python3 "$tool" "$@" 2>&1)
    status=$?
    if [[ $status -eq $want_exit && $output == *"$want_text"* ]]; then
        passed=$((passed + 1))
        echo "ok   $name"
    else
        failed=$((failed + 1))
        echo "FAIL $name: expected exit $want_exit and output containing: $want_text"
        echo "     got exit $status, output:"
        sed 's/^/       /' <<<"$output"
    fi
}

# bad NAME EXPECTED_REASON EXCHANGE_JSON: one exchange that must be reported.
bad() {
    local name=$1 reason=$2 file="$work/$RANDOM$RANDOM.jsonl"
    printf '%s\n' "$3" >"$file"
    check "$name" 1 "$reason" -- "$api" "$file"
    if ! grep -q . <(python3 "$tool" "$api" "$file" | grep -F 'validated 1 exchanges, 1 failures'); then
        failed=$((failed + 1))
        echo "FAIL $name: the summary does not count exactly one failure"
    fi
}

# --- The documents themselves -------------------------------------------------------
check "coordinator document and transaction spec are valid" 0 "validated 0 exchanges, 0 failures" -- "$api"
check "participant document is valid" 0 "validated 0 exchanges, 0 failures" -- "$participant_api"

# --- Conforming exchanges -------------------------------------------------------------
view='{"gid":"transfer-42","protocol":"2pc","status":"committed","decision":"commit","interactive":false,"heuristic":false,"stuck":false,"createdAt":"2026-11-23T10:01:02Z","updatedAt":"2026-11-23T10:01:03Z","timeout":30,"branches":[{"id":0,"participant":"accounts-eu","operation":"debit","state":"committed","attempts":1,"result":{"balance":900}},{"id":1,"participant":"accounts-us","operation":"credit","state":"read_only","attempts":1}],"timeline":[{"at":"2026-11-23T10:01:02Z","event":"begin"},{"at":"2026-11-23T10:01:03Z","event":"prepared","branch":0},{"at":"2026-11-23T10:01:03Z","event":"decision","detail":"commit"}]}'
info='{"name":"accounts-eu","url":"http://127.0.0.1:8081","protocols":["2pc"],"hasToken":false,"registeredAt":"2026-11-23T10:00:00Z","lastSeen":"2026-11-23T10:00:05Z","unfinishedBranches":0}'
cat >"$work/good.jsonl" <<EOF
{"method":"GET","path":"/healthz","status":200,"contentType":"application/json; charset=utf-8","body":{"status":"ok","unfinishedTransactions":0,"participants":2}}
{"method":"GET","path":"/metrics","status":200,"contentType":"text/plain; version=0.0.4; charset=utf-8","body":null}
{"method":"GET","path":"/metrics","status":200,"contentType":"text/plain; version=0.0.4","body":"# TYPE dtx_transactions_unfinished gauge\ndtx_transactions_unfinished 0\n"}
{"method":"GET","path":"/metrics","status":401,"contentType":"application/json","body":{"error":{"code":"unauthorized","message":"send a bearer token"}}}
{"method":"POST","path":"/v1/participants","status":201,"contentType":"application/json","body":$info}
{"method":"POST","path":"/v1/participants","status":200,"contentType":"application/json","body":{"name":"accounts-us","url":"http://127.0.0.1:8082","protocols":["2pc","tcc"],"hasToken":true,"registeredAt":"2026-11-23T10:00:00Z","unfinishedBranches":3}}
{"method":"POST","path":"/v1/participants","status":400,"contentType":"application/json","body":{"error":{"code":"invalid_json","message":"the body is not valid JSON"}}}
{"method":"POST","path":"/v1/participants","status":413,"contentType":"application/json","body":{"error":{"code":"body_too_large","message":"the body is larger than 1 MiB"}}}
{"method":"GET","path":"/v1/participants","status":200,"contentType":"application/json","body":{"participants":[$info]}}
{"method":"GET","path":"/v1/participants/accounts-eu","status":200,"contentType":"application/json","body":$info}
{"method":"GET","path":"/v1/participants/nobody","status":404,"contentType":"application/json","body":{"error":{"code":"unknown_participant","message":"no participant named 'nobody' is registered"}}}
{"method":"POST","path":"/v1/participants/accounts-eu/heartbeat","status":200,"contentType":"application/json","body":$info}
{"method":"DELETE","path":"/v1/participants/accounts-eu","status":204,"contentType":null,"body":null}
{"method":"DELETE","path":"/v1/participants/accounts-us","status":409,"contentType":"application/json","body":{"error":{"code":"participant_busy","message":"3 unfinished branches"}}}
{"method":"POST","path":"/v1/transactions","status":201,"contentType":"application/json","body":$view}
{"method":"POST","path":"/v1/transactions","status":200,"contentType":"application/json","body":$view}
{"method":"POST","path":"/v1/transactions","status":201,"contentType":"application/json","body":{"gid":"xa-1","protocol":"2pc","status":"active","interactive":true,"heuristic":false,"stuck":false,"createdAt":"2026-11-23T10:01:02Z","updatedAt":"2026-11-23T10:01:02Z","timeout":60,"branches":[],"timeline":[{"at":"2026-11-23T10:01:02Z","event":"begin"}]}}
{"method":"POST","path":"/v1/transactions","status":409,"contentType":"application/json","body":{"error":{"code":"gid_conflict","message":"exists with a different spec"}}}
{"method":"POST","path":"/v1/transactions","status":422,"contentType":"application/json","body":{"error":{"code":"unknown_participant","message":"not registered"}}}
{"method":"GET","path":"/v1/transactions?status=committing&protocol=2pc&participant=accounts-eu&olderThan=60.0&limit=10","status":200,"contentType":"application/json","body":{"transactions":[{"gid":"transfer-42","protocol":"2pc","status":"committing","stuck":true,"heuristic":false,"createdAt":"2026-11-23T10:01:02Z","participants":["accounts-eu","accounts-us"]}],"nextCursor":"b2Zmc2V0PTEw"}}
{"method":"GET","path":"/v1/transactions?limit=5000","status":400,"contentType":"application/json","body":{"error":{"code":"invalid_query","message":"limit must be 1-1000"}}}
{"method":"GET","path":"/v1/transactions/transfer-42","status":200,"contentType":"application/json","body":$view}
{"method":"GET","path":"/v1/transactions/order%3A7","status":404,"contentType":"application/json","body":{"error":{"code":"unknown_transaction","message":"no transaction 'order:7' is known"}}}
{"method":"GET","path":"/v1/transactions/transfer-42/outcome?branch=1","status":200,"contentType":"application/json","body":{"gid":"transfer-42","outcome":"committed"}}
{"method":"GET","path":"/v1/transactions/never-seen/outcome","status":200,"contentType":"application/json","body":{"gid":"never-seen","outcome":"aborted"}}
{"method":"POST","path":"/v1/transactions/xa-1/branches","status":201,"contentType":"application/json","body":{"gid":"xa-1","branch":0}}
{"method":"POST","path":"/v1/transactions/transfer-42/branches","status":409,"contentType":"application/json","body":{"error":{"code":"not_open","message":"cannot enlist in transfer-42: the transaction is committed"}}}
{"method":"POST","path":"/v1/transactions/transfer-42/commit","status":200,"contentType":"application/json","body":$view}
{"method":"POST","path":"/v1/transactions/transfer-42/abort","status":409,"contentType":"application/json","body":{"error":{"code":"already_finished","message":"transaction transfer-42 is already committed; it cannot be aborted now"}}}
{"method":"POST","path":"/v1/transactions/xa-1/commit","status":503,"contentType":"application/json","body":{"error":{"code":"log_unavailable","message":"the coordinator's log cannot be written: No space left on device"}}}
{"method":"POST","path":"/v1/admin/recover","status":200,"contentType":"application/json","body":{"transactions":2,"deliveries":5}}
EOF
check "conforming exchanges pass" 0 "validated 31 exchanges, 0 failures" -- "$api" "$work/good.jsonl"

# --- Breaches, one per run -------------------------------------------------------------
bad "missing required field" "'unfinishedTransactions' is a required property" \
    '{"method":"GET","path":"/healthz","status":200,"contentType":"application/json","body":{"status":"ok","participants":0}}'
bad "extra property" "Additional properties are not allowed ('log' was unexpected)" \
    '{"method":"GET","path":"/healthz","status":200,"contentType":"application/json","body":{"status":"ok","unfinishedTransactions":0,"participants":0,"log":{}}}'
bad "wrong enum value" "body at /outcome: 'maybe' is not one of ['committed', 'aborted', 'pending']" \
    '{"method":"GET","path":"/v1/transactions/g1/outcome","status":200,"contentType":"application/json","body":{"gid":"g1","outcome":"maybe"}}'
bad "undocumented status" "status 404 is not documented for GET /v1/transactions/{gid}/outcome (documented: 200, 400, 401)" \
    '{"method":"GET","path":"/v1/transactions/g1/outcome","status":404,"contentType":"application/json","body":{"error":{"code":"transaction_not_found","message":"no"}}}'
bad "a 5xx is never documented" "status 500 is not documented" \
    '{"method":"POST","path":"/v1/transactions","status":500,"contentType":"application/json","body":{"error":{"code":"internal","message":"boom"}}}'
bad "a 503 that is not log_unavailable" "body at /error/code: 'log_unavailable' was expected" \
    '{"method":"POST","path":"/v1/transactions","status":503,"contentType":"application/json","body":{"error":{"code":"overloaded","message":"busy"}}}'
bad "a 503 where the log is not written" "status 503 is not documented for GET /v1/transactions/{gid}" \
    '{"method":"GET","path":"/v1/transactions/g1","status":503,"contentType":"application/json","body":{"error":{"code":"log_unavailable","message":"disk"}}}'
bad "path matches no template" "FAIL GET /v1/nothing 404: the path matches no path of" \
    '{"method":"GET","path":"/v1/nothing","status":404,"contentType":"application/json","body":{"error":{"code":"not_found","message":"no"}}}'
bad "method not on the path" "/v1/admin/recover has no GET operation (documented: POST)" \
    '{"method":"GET","path":"/v1/admin/recover","status":200,"contentType":"application/json","body":{"transactions":0,"deliveries":0}}'
bad "null instead of an omitted optional" "body at /lastSeen: None is not of type 'string'" \
    '{"method":"GET","path":"/v1/participants/a","status":200,"contentType":"application/json","body":{"name":"a","url":"http://h:1","protocols":["2pc"],"hasToken":false,"registeredAt":"2026-11-23T10:00:00Z","lastSeen":null,"unfinishedBranches":0}}'
bad "timestamp with fractional seconds" "body at /registeredAt: '2026-11-23T10:00:00.123Z' does not match" \
    '{"method":"GET","path":"/v1/participants/a","status":200,"contentType":"application/json","body":{"name":"a","url":"http://h:1","protocols":["2pc"],"hasToken":false,"registeredAt":"2026-11-23T10:00:00.123Z","unfinishedBranches":0}}'
bad "error body not in the error shape" "body at /: 'error' is a required property" \
    '{"method":"DELETE","path":"/v1/participants/a","status":404,"contentType":"application/json","body":{"message":"no such participant"}}'
bad "gid conflict with another code" "body at /error/code: 'gid_conflict' was expected" \
    '{"method":"POST","path":"/v1/transactions","status":409,"contentType":"application/json","body":{"error":{"code":"conflict","message":"exists"}}}'
bad "committed 2PC transaction with a prepared branch" "body at /branches/0/state: 'prepared' is not one of ['committed', 'read_only']" \
    "$(sed 's/"state":"committed"/"state":"prepared"/' <<<'{"method":"GET","path":"/v1/transactions/transfer-42","status":200,"contentType":"application/json","body":'"$view"'}')"
bad "committed status with an abort decision" "body at /decision: 'commit' was expected" \
    "$(sed 's/"decision":"commit"/"decision":"abort"/' <<<'{"method":"GET","path":"/v1/transactions/transfer-42","status":200,"contentType":"application/json","body":'"$view"'}')"
bad "body on a 204" "the response is documented without a body, but has one" \
    '{"method":"DELETE","path":"/v1/participants/a","status":204,"contentType":"application/json","body":{}}'
bad "undocumented content type" "content type text/html is not documented (documented: application/json)" \
    '{"method":"GET","path":"/healthz","status":200,"contentType":"text/html","body":null}'
bad "JSON response without a body" "no JSON body, but application/json is documented with a schema" \
    '{"method":"POST","path":"/v1/admin/recover","status":200,"contentType":"application/json","body":null}'
bad "malformed exchange line" "not an exchange" \
    '{"method":"GET","path":"/healthz"'

printf '\n\n' >"$work/empty.jsonl"
check "an empty exchange file fails" 1 "the file has no exchanges" -- "$api" "$work/empty.jsonl"
check "an unreadable exchange file is exit 2" 2 "cannot read" -- "$api" "$work/missing.jsonl"

# --- The transaction-spec schema must stay the same as TransactionSubmission ----------
mkdir -p "$work/drift"
cp Schemas/coordinator-api.yaml Schemas/transaction-spec.schema.json "$work/drift/"
sed -i 's/"pattern": "\^\[A-Za-z0-9._-\]{1,64}\$"/"pattern": "^[a-z]{1,64}$"/' "$work/drift/transaction-spec.schema.json"
check "spec schema drift is caught" 1 "differs from components/schemas/TransactionSubmission" -- "$work/drift/coordinator-api.yaml"
printf '{"type": 12}' >"$work/broken-spec.json"
check "an invalid spec schema is caught" 1 "not a valid Draft 2020-12 schema" -- "$api" --spec "$work/broken-spec.json"

# --- Examples: the spec schema accepts its examples and rejects bad specs --------------
spec_check() { # name, expected (valid|invalid), JSON
    if python3 - "$2" "$3" <<'PY'
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open("Schemas/transaction-spec.schema.json"))
valid = Draft202012Validator(schema).is_valid(json.loads(sys.argv[2]))
sys.exit(0 if valid == (sys.argv[1] == "valid") else 1)
PY
    then passed=$((passed + 1)); echo "ok   spec: $1"
    else failed=$((failed + 1)); echo "FAIL spec: $1 should be $2"; fi
}
spec_check "whole 2PC transaction" valid '{"protocol":"2pc","branches":[{"participant":"a","operation":"debit","payload":{"n":1}}]}'
spec_check "interactive begin" valid '{"protocol":"2pc","interactive":true}'
spec_check "no branches" invalid '{"protocol":"2pc"}'
spec_check "empty branches" invalid '{"protocol":"2pc","branches":[]}'
spec_check "interactive with branches" invalid '{"protocol":"2pc","interactive":true,"branches":[{"participant":"a","operation":"x"}]}'
spec_check "missing protocol" invalid '{"branches":[{"participant":"a","operation":"x"}]}'
spec_check "bad gid" invalid '{"gid":"a b","protocol":"2pc","branches":[{"participant":"a","operation":"x"}]}'
spec_check "zero timeout" invalid '{"protocol":"2pc","timeout":0,"branches":[{"participant":"a","operation":"x"}]}'
spec_check "misspelt key" invalid '{"protocol":"2pc","timout":5,"branches":[{"participant":"a","operation":"x"}]}'

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
