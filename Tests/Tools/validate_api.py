#!/usr/bin/env python3
"""Check recorded HTTP exchanges against an OpenAPI 3.1 document.

    python3 Tests/Tools/validate_api.py Schemas/coordinator-api.yaml EXCHANGES.jsonl

EXCHANGES.jsonl has one exchange per line, as the end-to-end tests record them:

    {"method": "GET", "path": "/v1/transactions/g1?x=1", "status": 200,
     "contentType": "application/json", "body": <parsed JSON, or null>}

For each exchange the concrete path (query string ignored) is matched against the
document's path templates, the operation is found by method, and the response by
status (exact, then a range such as "4XX", then "default"). A status the document does
not list for the operation is a failure. The body is validated against the response's
schema for the exchange's content type with Draft 2020-12; `#/components/...`
references resolve within the document. A body that is null for a non-JSON media type
(e.g. text/plain metrics the recorder did not parse) is not validated.

Before the exchanges, the document itself is checked: every schema in it is a valid
Draft 2020-12 schema, every $ref resolves, every example validates against its schema,
and every operation that requires credentials lists a 401 answer. The transaction-spec JSON Schema
(default: transaction-spec.schema.json beside the document; --spec to name another) is
checked to be a valid schema and, when the document defines
components/schemas/TransactionSubmission, to say the same as it (annotations such as
descriptions and examples aside).

Without EXCHANGES only the documents are checked.

Prints one line per failure (`FAIL METHOD PATH STATUS: reason`, or `FAIL SCHEMA FILE:
reason` for the documents) and the summary `validated N exchanges, F failures`.
Exit status: 0 all good; 1 any failure (including an exchange that matches no path);
2 the files could not be read.

Needs only PyYAML and jsonschema >= 4.18 (with `referencing`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from urllib.parse import unquote

try:
    import yaml
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012
except ImportError as error:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"validate_api.py needs PyYAML and jsonschema >= 4.18 (with referencing): {error}\n"
        "install them with: python3 -m pip install pyyaml 'jsonschema>=4.18'\n"
    )
    sys.exit(2)

DOCUMENT_URI = "urn:dtx-validate:openapi-document"
SPEC_FALLBACK_URI = "urn:dtx-validate:transaction-spec"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_REASONS = 5
MAX_REASON_LENGTH = 300


class Unreadable(Exception):
    """A file could not be read or parsed: the run cannot go on (exit 2)."""


# ---------------------------------------------------------------------------------------
# Loading


def load_structured(path: str):
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise Unreadable(f"cannot read {path}: {error.strerror}") from error
    try:
        if path.endswith(".json"):
            return json.loads(text)
        return as_json(yaml.safe_load(text))
    except (ValueError, yaml.YAMLError) as error:
        raise Unreadable(f"{path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {error}") from error


def as_json(value):
    """YAML as JSON sees it: mapping keys are strings (an unquoted `200:` is the
    status "200"), and dates are the strings they were written as."""
    if isinstance(value, dict):
        return {str(key): as_json(child) for key, child in value.items()}
    if isinstance(value, list):
        return [as_json(child) for child in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def escape_pointer_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def pointer_lookup(document, pointer: str):
    """The value at a JSON pointer ("" is the whole document)."""
    value = document
    if pointer == "":
        return value
    if not pointer.startswith("/"):
        raise KeyError(pointer)
    for raw in pointer[1:].split("/"):
        token = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(value, list):
            value = value[int(token)]
        else:
            value = value[token]
    return value


def one_line(text: str) -> str:
    text = " ".join(str(text).split())
    if len(text) > MAX_REASON_LENGTH:
        text = text[: MAX_REASON_LENGTH - 3] + "..."
    return text


# ---------------------------------------------------------------------------------------
# The OpenAPI document


class Document:
    def __init__(self, path: str, contents):
        if not isinstance(contents, dict):
            raise Unreadable(f"{path} is not an OpenAPI document (its top level is not a mapping)")
        self.path = path
        self.contents = contents
        self.registry = Registry().with_resource(DOCUMENT_URI, DRAFT202012.create_resource(contents))
        self.templates = self._compile_templates()
        self._validators: dict[str, Draft202012Validator] = {}

    # --- OpenAPI-level $ref (responses, parameters, request bodies) ---

    def deref(self, value, pointer: str):
        """Follows OpenAPI $refs (local only); returns (object, its JSON pointer)."""
        seen = set()
        while isinstance(value, dict) and "$ref" in value:
            ref = value["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise LookupError(f"$ref {ref!r} at {pointer or '/'} is not a local reference (#/...)")
            if ref in seen:
                raise LookupError(f"$ref {ref!r} is circular")
            seen.add(ref)
            try:
                value = pointer_lookup(self.contents, ref[1:])
            except (KeyError, IndexError, ValueError, TypeError):
                raise LookupError(f"$ref {ref!r} at {pointer or '/'} points at nothing") from None
            pointer = ref[1:]
        return value, pointer

    # --- paths ---

    def _compile_templates(self):
        templates = []
        for template in (self.contents.get("paths") or {}):
            parts = re.split(r"(\{[^}/]+\})", template)
            regex = "".join("[^/]+" if part.startswith("{") and part.endswith("}") else re.escape(part) for part in parts)
            parameters = sum(1 for part in parts if part.startswith("{") and part.endswith("}"))
            literal = sum(len(part) for part in parts if not (part.startswith("{") and part.endswith("}")))
            templates.append((template, re.compile(f"^{regex}$"), parameters, literal))
        # Concrete paths win over templated ones (OpenAPI 3.1, "Path Templating Matching").
        templates.sort(key=lambda entry: (entry[2], -entry[3]))
        return templates

    def match_path(self, path: str):
        for template, regex, _, _ in self.templates:
            if regex.match(path):
                return template
        return None

    # --- schemas ---

    def validator_at(self, pointer: str) -> Draft202012Validator:
        validator = self._validators.get(pointer)
        if validator is None:
            wrapper = {"$ref": f"{DOCUMENT_URI}#{pointer}"}
            validator = Draft202012Validator(wrapper, registry=self.registry)
            self._validators[pointer] = validator
        return validator


def walk_refs(value, pointer=""):
    """Every ($ref value, pointer of the object holding it) in a JSON value."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str):
            yield ref, pointer
        for key, child in value.items():
            yield from walk_refs(child, f"{pointer}/{escape_pointer_token(str(key))}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from walk_refs(child, f"{pointer}/{index}")


def schema_locations(document: Document):
    """Pointers of every Schema Object the document uses (components and inline)."""
    contents = document.contents
    for name in (contents.get("components") or {}).get("schemas") or {}:
        yield f"/components/schemas/{escape_pointer_token(name)}"

    def media_schemas(container, pointer):
        for media, media_object in ((container or {}).get("content") or {}).items():
            if isinstance(media_object, dict) and "schema" in media_object:
                yield f"{pointer}/content/{escape_pointer_token(media)}/schema"

    def parameter_schemas(parameters, pointer):
        for index, parameter in enumerate(parameters or []):
            if isinstance(parameter, dict) and "schema" in parameter:
                yield f"{pointer}/{index}/schema"

    components = contents.get("components") or {}
    for kind in ("responses", "requestBodies"):
        for name, item in (components.get(kind) or {}).items():
            yield from media_schemas(item, f"/components/{kind}/{escape_pointer_token(name)}")
    for name, parameter in (components.get("parameters") or {}).items():
        if isinstance(parameter, dict) and "schema" in parameter:
            yield f"/components/parameters/{escape_pointer_token(name)}/schema"
    for template, path_item in (contents.get("paths") or {}).items():
        base = f"/paths/{escape_pointer_token(template)}"
        if not isinstance(path_item, dict):
            continue
        yield from parameter_schemas(path_item.get("parameters"), f"{base}/parameters")
        for method in HTTP_METHODS:
            operation = path_item.get(method)
            if not isinstance(operation, dict):
                continue
            op = f"{base}/{method}"
            yield from parameter_schemas(operation.get("parameters"), f"{op}/parameters")
            yield from media_schemas(operation.get("requestBody"), f"{op}/requestBody")
            for status, response in (operation.get("responses") or {}).items():
                yield from media_schemas(response, f"{op}/responses/{escape_pointer_token(str(status))}")


def check_document(document: Document) -> list[str]:
    problems = []
    version = str(document.contents.get("openapi", ""))
    if not version.startswith("3.1"):
        problems.append(f"openapi is {version or 'missing'!r}; this tool reads OpenAPI 3.1 documents")
    if not document.contents.get("paths"):
        problems.append("the document has no paths")

    resolver = document.registry.resolver(base_uri=DOCUMENT_URI)
    for ref, pointer in walk_refs(document.contents):
        try:
            resolver.lookup(ref)
        except Unresolvable:
            problems.append(f"$ref {ref!r} at {pointer or '/'} does not resolve")

    for pointer in schema_locations(document):
        schema = pointer_lookup(document.contents, pointer)
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            problems.append(f"{pointer} is not a valid Draft 2020-12 schema: {error.message}")
            continue
        # Examples must say what the schema says: a media type's example(s), and a
        # schema's own `examples`.
        examples = []
        if isinstance(schema, dict):
            examples += [(f"{pointer}/examples/{i}", value) for i, value in enumerate(schema.get("examples") or [])]
        if pointer.endswith("/schema"):
            media_pointer = pointer[: -len("/schema")]
            media = pointer_lookup(document.contents, media_pointer)
            if "example" in media:
                examples.append((f"{media_pointer}/example", media["example"]))
            for name, item in (media.get("examples") or {}).items():
                if isinstance(item, dict) and "value" in item:
                    examples.append((f"{media_pointer}/examples/{name}", item["value"]))
        for where, value in examples:
            try:
                errors = list(document.validator_at(pointer).iter_errors(value))
            except Unresolvable:
                break  # reported above
            for error in errors[:MAX_REASONS]:
                at = "/" + "/".join(str(part) for part in error.absolute_path)
                problems.append(f"the example {where} does not validate at {at}: {one_line(error.message)}")

    operation_ids = {}
    for template, path_item in (document.contents.get("paths") or {}).items():
        for method in HTTP_METHODS:
            operation = (path_item or {}).get(method)
            if not isinstance(operation, dict):
                continue
            responses = operation.get("responses") or {}
            if not responses:
                problems.append(f"{method.upper()} {template} lists no responses")
            security = operation.get("security", document.contents.get("security")) or []
            requires_credentials = bool(security) and all(requirement for requirement in security)
            if requires_credentials and not any(key in responses for key in ("401", "4XX", "default")):
                problems.append(f"{method.upper()} {template} requires credentials but does not list a 401 answer")
            operation_id = operation.get("operationId")
            if operation_id in operation_ids:
                problems.append(f"operationId {operation_id!r} is used by {operation_ids[operation_id]} and {method.upper()} {template}")
            elif operation_id:
                operation_ids[operation_id] = f"{method.upper()} {template}"
    return problems


# ---------------------------------------------------------------------------------------
# The transaction-spec schema


SCHEMA_MAP_KEYWORDS = {"properties", "patternProperties", "dependentSchemas"}
SCHEMA_KEYWORDS = {
    "items", "additionalProperties", "not", "if", "then", "else", "contains",
    "propertyNames", "unevaluatedProperties", "unevaluatedItems", "contentSchema",
}
SCHEMA_LIST_KEYWORDS = {"allOf", "anyOf", "oneOf", "prefixItems"}
ANNOTATION_KEYWORDS = {
    "title", "description", "examples", "example", "default", "$comment", "deprecated",
    "readOnly", "writeOnly", "$schema", "$id", "$defs", "definitions", "$anchor",
}


def normalize(schema, resolver, depth=0):
    """A schema with every $ref inlined and annotations dropped, for comparison."""
    if depth > 64:
        raise RecursionError("the schema references itself too deeply to compare")
    if not isinstance(schema, dict):
        return schema
    target = None
    if "$ref" in schema:
        resolved = resolver.lookup(schema["$ref"])
        target = normalize(resolved.contents, resolved.resolver, depth + 1)
    rest = {}
    for key, value in schema.items():
        if key in ANNOTATION_KEYWORDS or key == "$ref":
            continue
        if key in SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            rest[key] = {name: normalize(sub, resolver, depth + 1) for name, sub in value.items()}
        elif key in SCHEMA_KEYWORDS:
            rest[key] = normalize(value, resolver, depth + 1)
        elif key in SCHEMA_LIST_KEYWORDS and isinstance(value, list):
            rest[key] = [normalize(sub, resolver, depth + 1) for sub in value]
        elif key in ("required", "enum") and isinstance(value, list):
            rest[key] = sorted(value, key=lambda item: json.dumps(item, sort_keys=True))
        else:
            rest[key] = value
    if target is None:
        return rest
    if not rest:
        return target
    return {"allOf": [target, rest]}


def first_difference(left, right, path="") -> str | None:
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            where = f"{path}/{key}"
            if key not in left:
                return f"{where}: only in the spec schema"
            if key not in right:
                return f"{where}: only in the OpenAPI document"
            found = first_difference(left[key], right[key], where)
            if found:
                return found
        return None
    if isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (a, b) in enumerate(zip(left, right)):
            found = first_difference(a, b, f"{path}/{index}")
            if found:
                return found
        return None
    if left != right or type(left) is not type(right):
        return f"{path or '/'}: the OpenAPI document says {json.dumps(left)}, the spec schema {json.dumps(right)}"
    return None


def check_spec(spec_path: str, document: Document) -> list[str]:
    spec = load_structured(spec_path)
    problems = []
    try:
        Draft202012Validator.check_schema(spec)
    except SchemaError as error:
        return [f"not a valid Draft 2020-12 schema: {error.message}"]
    if not isinstance(spec, dict):
        return ["the schema is not an object"]
    for key in ("$id", "title", "description", "examples"):
        if key not in spec:
            problems.append(f"has no {key}")
    spec_uri = spec.get("$id") or SPEC_FALLBACK_URI
    registry = document.registry.with_resource(spec_uri, DRAFT202012.create_resource(spec))
    try:
        validator = Draft202012Validator(spec, registry=registry)
        for index, example in enumerate(spec.get("examples") or []):
            for error in validator.iter_errors(example):
                problems.append(f"examples/{index} does not validate: {one_line(error.message)}")
    except Unresolvable as error:
        return problems + [f"a $ref does not resolve: {error}"]

    submission = ((document.contents.get("components") or {}).get("schemas") or {}).get("TransactionSubmission")
    if submission is not None:
        try:
            ours = normalize({"$ref": f"{DOCUMENT_URI}#/components/schemas/TransactionSubmission"}, registry.resolver(base_uri=DOCUMENT_URI))
            theirs = normalize(spec, registry.resolver(base_uri=spec_uri))
        except (Unresolvable, RecursionError) as error:
            return problems + [f"cannot compare with components/schemas/TransactionSubmission: {error}"]
        difference = first_difference(ours, theirs)
        if difference:
            problems.append(f"differs from components/schemas/TransactionSubmission of {document.path} at {difference}")
    return problems


# ---------------------------------------------------------------------------------------
# Exchanges


def media_type_of(content_type) -> str | None:
    if not isinstance(content_type, str) or not content_type.strip():
        return None
    return content_type.split(";", 1)[0].strip().lower()


def is_json_media(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def pick_media(content: dict, media: str):
    lowered = {key.lower(): key for key in content}
    for candidate in (media, media.split("/", 1)[0] + "/*", "*/*"):
        if candidate in lowered:
            return lowered[candidate]
    return None


def check_exchange(document: Document, exchange) -> list[str]:
    """Reasons the exchange breaks the document (empty: it conforms)."""
    method = str(exchange["method"]).lower()
    raw_path = str(exchange["path"])
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    template = document.match_path(path)
    if template is None:
        return [f"the path matches no path of {document.path}"]
    path_item, path_pointer = document.deref(document.contents["paths"][template], f"/paths/{escape_pointer_token(template)}")
    operation = path_item.get(method) if isinstance(path_item, dict) else None
    if not isinstance(operation, dict):
        documented = ", ".join(m.upper() for m in HTTP_METHODS if isinstance(path_item.get(m), dict))
        return [f"{template} has no {method.upper()} operation (documented: {documented or 'none'})"]

    status = str(exchange["status"])
    responses = operation.get("responses") or {}
    key = next((k for k in (status, status[:1] + "XX", "default") if k in responses or k.lower() in responses), None)
    if key is None:
        documented = ", ".join(str(k) for k in responses)
        return [f"status {status} is not documented for {method.upper()} {template} (documented: {documented})"]
    if key not in responses:
        key = key.lower()
    response_pointer = f"{path_pointer}/{method}/responses/{escape_pointer_token(key)}"
    response, response_pointer = document.deref(responses[key], response_pointer)

    content = response.get("content") or {}
    body = exchange.get("body")
    media = media_type_of(exchange.get("contentType"))
    if not content:
        if body is not None:
            return [f"the response is documented without a body, but has one ({one_line(json.dumps(body))})"]
        return []
    documented = ", ".join(content)
    if media is None:
        if body is None:
            return [f"the response has no body; documented: {documented}"]
        return [f"the response has a body but no content type; documented: {documented}"]
    media_key = pick_media(content, media)
    if media_key is None:
        return [f"content type {media} is not documented (documented: {documented})"]
    media_object = content[media_key] or {}
    if "schema" not in media_object:
        return []
    if body is None and not is_json_media(media):
        return []  # a text body the recorder did not capture
    if body is None:
        return [f"no JSON body, but {media} is documented with a schema"]

    schema_pointer = f"{response_pointer}/content/{escape_pointer_token(media_key)}/schema"
    validator = document.validator_at(schema_pointer)
    reasons = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path))):
        where = "/" + "/".join(str(part) for part in error.absolute_path)
        reasons.append(f"body at {where}: {one_line(error.message)}")
    return reasons


def read_exchanges(path: str):
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise Unreadable(f"cannot read {path}: {error.strerror}") from error
    with handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check recorded HTTP exchanges against an OpenAPI 3.1 document.")
    parser.add_argument("openapi", help="the OpenAPI 3.1 document (YAML or JSON)")
    parser.add_argument("exchanges", nargs="?", help="JSON Lines file of exchanges; without it only the documents are checked")
    parser.add_argument("--spec", help="the transaction-spec JSON Schema (default: transaction-spec.schema.json beside the document)")
    arguments = parser.parse_args(argv)

    failures = 0
    exchanges = 0

    def fail(subject: str, reason: str):
        nonlocal failures
        failures += 1
        print(f"FAIL {subject}: {reason}", flush=True)

    try:
        document = Document(arguments.openapi, load_structured(arguments.openapi))
        for problem in check_document(document):
            fail(f"SCHEMA {arguments.openapi}", problem)

        spec_path = arguments.spec or os.path.join(os.path.dirname(os.path.abspath(arguments.openapi)), "transaction-spec.schema.json")
        if os.path.exists(spec_path):
            for problem in check_spec(spec_path, document):
                fail(f"SCHEMA {spec_path}", problem)
        else:
            fail(f"SCHEMA {spec_path}", "the transaction-spec schema does not exist (name it with --spec)")

        if arguments.exchanges is not None:
            for number, line in read_exchanges(arguments.exchanges):
                exchanges += 1
                try:
                    exchange = json.loads(line)
                    if not isinstance(exchange, dict) or not all(k in exchange for k in ("method", "path", "status")):
                        raise ValueError("an exchange needs method, path and status")
                except ValueError as error:
                    fail(f"LINE {arguments.exchanges}:{number}", f"not an exchange: {one_line(error)}")
                    continue
                subject = f"{str(exchange['method']).upper()} {exchange['path']} {exchange['status']}"
                try:
                    reasons = check_exchange(document, exchange)
                except (LookupError, Unresolvable) as error:
                    reasons = [f"the document cannot be followed here: {one_line(error)}"]
                if reasons:
                    extra = len(reasons) - MAX_REASONS
                    shown = "; ".join(reasons[:MAX_REASONS]) + (f"; (and {extra} more)" if extra > 0 else "")
                    fail(subject, shown)
            if exchanges == 0:
                fail(f"LINE {arguments.exchanges}", "the file has no exchanges; a test that records nothing checks nothing")
    except Unreadable as error:
        print(f"ERROR {error}", file=sys.stderr)
        return 2

    print(f"validated {exchanges} exchanges, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
