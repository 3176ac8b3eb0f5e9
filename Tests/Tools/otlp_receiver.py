#!/usr/bin/env python3
"""A small OTLP/HTTP receiver for tests: accepts POST /v1/traces in the JSON encoding
(Content-Type application/json) and appends each span, flattened, as one JSON line to
--out: {"service", "traceId", "spanId", "parentSpanId", "name", "kind", "attributes"}.
Ids are written as lowercase hex, whether the exporter sent hex or base64. With
--discard it takes any encoding and keeps nothing (for benchmarks). It prints
'otlp receiver listening on http://127.0.0.1:PORT' once bound, and answers 200 {}."""
import argparse, base64, json, re, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEX = re.compile(r"^[0-9a-fA-F]*$")


def hex_id(value):
    if not value:
        return ""
    if HEX.match(value) and len(value) in (16, 32):
        return value.lower()
    return base64.b64decode(value).hex()


def attribute_value(value):
    for kind in ("stringValue", "boolValue", "doubleValue"):
        if kind in value:
            return value[kind]
    if "intValue" in value:
        return int(value["intValue"])
    return value


def spans(document):
    for resource_spans in document.get("resourceSpans", []):
        resource = {a["key"]: attribute_value(a["value"]) for a in resource_spans.get("resource", {}).get("attributes", [])}
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                yield {
                    "service": resource.get("service.name"),
                    "traceId": hex_id(span.get("traceId")),
                    "spanId": hex_id(span.get("spanId")),
                    "parentSpanId": hex_id(span.get("parentSpanId")),
                    "name": span.get("name"),
                    "kind": span.get("kind"),
                    "attributes": {a["key"]: attribute_value(a["value"]) for a in span.get("attributes", [])},
                }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="file the spans are appended to, one JSON line each")
    parser.add_argument("--discard", action="store_true", help="take any encoding and keep nothing (for benchmarks)")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if not args.out and not args.discard:
        parser.error("give --out FILE, or --discard")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if args.discard:
                self.send_response(200)
                self.send_header("Content-Type", self.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path != "/v1/traces" or not self.headers.get("Content-Type", "").startswith("application/json"):
                self.send_response(415 if self.path == "/v1/traces" else 404)
                self.end_headers()
                return
            try:
                received = list(spans(json.loads(body)))
            except (ValueError, KeyError) as error:
                self.send_response(400)
                self.end_headers()
                self.wfile.write(str(error).encode())
                return
            with lock, open(args.out, "a") as out:
                for span in received:
                    out.write(json.dumps(span) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"otlp receiver listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
