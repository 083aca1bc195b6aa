"""mnemo's Conversations API answers validated against OpenAI's published OpenAPI document.

The schemas are the 200 answers of OpenAI's Conversations operations and every component they
reference, extracted from github.com/openai/openai-openapi (MIT licensed, Copyright (c) OpenAI;
see data/OPENAI-LICENSE) by scripts/extract-openai-schemas.py into
data/openai-conversations.json, so the suite needs no network access.

Every operation is driven through the official `openai` SDK (raw responses: the JSON as sent)
with a broad set of items, each given the way a client of the SDK gives it, and every JSON answer
is validated with a Draft 2020-12 validator whose `$ref`s resolve through a `referencing`
Registry over the extracted components. A failure names the operation, the item (as given and as
answered) and the schema location that failed; in a `oneOf` with a `discriminator` the error is
reported from the branch the item's `type` selects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import openai
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DATA_FILE = Path(__file__).resolve().parent / "data" / "openai-conversations.json"
DOC: dict[str, Any] = json.loads(DATA_FILE.read_text(encoding="utf-8"))
COMPONENTS: dict[str, Any] = DOC["components"]["schemas"]


def _drop_undefined_required(schemas: dict[str, Any]) -> list[str]:
    """Corrects a defect of the published document: a schema that requires a property it never
    defines (`LocalShellToolCallOutput` requires `call_id`, `MCPApprovalResponseResource`
    `request_id`; neither is a field of the item OpenAI's SDK sends or documents). No item can
    carry a value for a field that has no definition, so such a name is dropped from `required`.
    Returns what was dropped, as `Schema.property`."""
    dropped = []
    for name, schema in schemas.items():
        props = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(props, dict) or not isinstance(schema.get("required"), list):
            continue
        undefined = [r for r in schema["required"] if r not in props]
        schema["required"] = [r for r in schema["required"] if r in props]
        dropped += [f"{name}.{r}" for r in undefined]
    return sorted(dropped)


UNDEFINED_REQUIRED = _drop_undefined_required(COMPONENTS)
# The extracted document is registered under this URI; its `#/components/schemas/…` refs resolve
# against it.
BASE_URI = "urn:openai-openapi:conversations"
REGISTRY: Registry = Registry().with_resource(
    BASE_URI, Resource.from_contents(DOC, default_specification=DRAFT202012))

# Operation keys, as in DOC["responses"].
CREATE = "POST /conversations"
RETRIEVE = "GET /conversations/{conversation_id}"
UPDATE = "POST /conversations/{conversation_id}"
DELETE = "DELETE /conversations/{conversation_id}"
ITEMS_CREATE = "POST /conversations/{conversation_id}/items"
ITEMS_LIST = "GET /conversations/{conversation_id}/items"
ITEM_GET = "GET /conversations/{conversation_id}/items/{item_id}"
ITEM_DELETE = "DELETE /conversations/{conversation_id}/items/{item_id}"


def _root_ref(op: str) -> str:
    ref = DOC["responses"][op]["$ref"]
    assert ref.startswith("#/components/schemas/"), ref
    return ref


VALIDATORS: dict[str, Draft202012Validator] = {
    op: Draft202012Validator({"$ref": BASE_URI + _root_ref(op)}, registry=REGISTRY)
    for op in DOC["responses"]
}


# ============================================================================ error reporting

def _component(ref: str) -> Any:
    return COMPONENTS[ref.rsplit("/", 1)[-1]]


def _type_values(schema: Any, seen: frozenset[str] = frozenset()) -> set[str]:
    """The values of `type` a (referenced, allOf-combined) object schema admits."""
    if not isinstance(schema, dict):
        return set()
    out: set[str] = set()
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in seen:
        out |= _type_values(_component(ref), seen | {ref})
    prop = schema.get("properties", {}).get("type")
    if isinstance(prop, dict):
        out |= set(prop.get("enum", ()))
        if "const" in prop:
            out.add(prop["const"])
    for sub in schema.get("allOf", ()):
        out |= _type_values(sub, seen)
    return out


def _discriminated_branch(error: ValidationError) -> Optional[int]:
    """For a failed `oneOf` with a `type` discriminator, the branch the instance's type selects."""
    schema = error.schema
    if not isinstance(schema, dict) or "discriminator" not in schema:
        return None
    prop = schema["discriminator"].get("propertyName", "type")
    value = error.instance.get(prop) if isinstance(error.instance, dict) else None
    for index, branch in enumerate(schema.get(error.validator, ())):
        if value in _type_values(branch):
            return index
    return None


def _leaf_errors(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """The errors to report: a failed union is replaced by the errors of the branch that applies
    (by discriminator, else jsonschema's best match); a `oneOf` failing because several branches
    matched, or no branch for the discriminator value, is reported itself."""
    for error in errors:
        if error.validator not in ("oneOf", "anyOf") or not error.context:
            yield error
            continue
        branch = _discriminated_branch(error)
        if branch is not None:
            sub = [e for e in error.context if e.relative_schema_path[0] == branch]
            if sub:
                yield from _leaf_errors(sub)
            else:  # the branch matched: the oneOf failed because another one matched too
                yield error
        elif isinstance(error.schema, dict) and "discriminator" in error.schema:
            yield error  # no branch for this type value
        else:
            yield from _leaf_errors([best_match(error.context)])


def _message(error: ValidationError) -> str:
    """The error's message; for a discriminated union, which `type` failed to select one branch."""
    schema = error.schema
    if error.validator == "oneOf" and isinstance(schema, dict) and "discriminator" in schema:
        prop = schema["discriminator"].get("propertyName", "type")
        value = error.instance.get(prop) if isinstance(error.instance, dict) else None
        if _discriminated_branch(error) is None:
            known = sorted(v for b in schema["oneOf"] for v in _type_values(b))
            return f"{prop} {value!r} is none of the union's: {', '.join(known)}"
        return f"{prop} {value!r}: the object is valid under more than one branch of the union"
    return error.message[:400]


def schema_location(op: str, path: Sequence[Any]) -> list[str]:
    """`path`, an absolute schema path under the operation's root schema, as the components it
    passes through: `["ConversationItemList/properties/data/items", "ConversationItem/oneOf/0",
    "Message/properties/content/items/oneOf/1", "OutputTextContent/required"]`.

    jsonschema leaves `$ref` out of schema paths; a segment that is not a keyword of a schema
    holding a `$ref` is looked up in the referenced component.
    """
    node: Any = {"$ref": _root_ref(op)}
    parts: list[str] = []
    for seg in path:
        while isinstance(node, dict) and "$ref" in node and seg not in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            node = COMPONENTS[name]
            parts.append(name)
        try:
            node = node[seg]
        except (KeyError, IndexError, TypeError):
            node = None
        if parts:
            parts[-1] += f"/{seg}"
        else:
            parts.append(str(seg))
    return parts


def _short(value: Any, limit: int = 600) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass
class Given:
    """An item as the client gave it, under the name of its case."""

    case: str
    item: dict[str, Any]


@dataclass
class _Failure:
    """One schema error, with every answer it was found in."""

    headline: str
    details: list[str]
    seen_in: list[str] = field(default_factory=list)


@dataclass
class Conformance:
    """Collects the non-conformances of every answer seen in one test.

    An error of a stored item (the same item, instance location and schema location) found in
    several answers is reported once, with the list of the answers it was found in.
    """

    given: dict[str, Given] = field(default_factory=dict)  # by stored item id
    failures: dict[tuple[Any, ...], _Failure] = field(default_factory=dict)

    def remember(self, answered: Sequence[Mapping[str, Any]], given: Sequence[Given]) -> None:
        """Maps the ids of items answered by a create/append to the items given, in order."""
        assert len(answered) == len(given), (len(answered), len(given))
        for ans, giv in zip(answered, given):
            self.given[str(ans.get("id"))] = giv

    def check(self, op: str, label: str, body: Any) -> None:
        """Validates `body`, the answer to `label` (one call of operation `op`)."""
        for error in _leaf_errors(VALIDATORS[op].iter_errors(body)):
            self._add(op, label, body, error)

    def _add(self, op: str, label: str, body: Any, error: ValidationError) -> None:
        path = list(error.absolute_path)
        location = schema_location(op, error.absolute_schema_path)
        item: Any = None
        if op in (ITEMS_CREATE, ITEMS_LIST) and len(path) >= 2 and path[0] == "data":
            item, path = body["data"][path[1]], path[2:]
        elif op == ITEM_GET:
            item = body
        if isinstance(item, dict):
            # From the item's own schema on, the location is the same in every answer.
            start = max((i for i, p in enumerate(location) if p.startswith("ConversationItem/")),
                        default=0)
            location = location[start:]
            item_id = str(item.get("id"))
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
            key: tuple[Any, ...] = (item_id, where, _message(error), tuple(location))
            giv = self.given.get(item_id)
            headline = f"item {giv.case if giv else item_id!r}, at <item>{where}: {_message(error)}"
            details = [f"schema:   {' -> '.join(location)}"]
            if giv is not None:
                details.append(f"given:    {_short(giv.item)}")
            details.append(f"answered: {_short(item)}")
        else:
            key = (op, error.json_path, _message(error), tuple(location))
            headline = f"{op}, at {error.json_path}: {_message(error)}"
            details = [f"schema:   {' -> '.join(location)}", f"answer:   {_short(body)}"]
        failure = self.failures.setdefault(key, _Failure(headline, details))
        failure.seen_in.append(f"{op} ({label})")

    def assert_ok(self) -> None:
        """Fails with every non-conformance collected."""
        if not self.failures:
            return
        report = [f"{len(self.failures)} non-conformance(s) with OpenAI's schema:"]
        for f in self.failures.values():
            report.append(f"- {f.headline}")
            report.extend(f"    {d}" for d in f.details)
            shown = ", ".join(f.seen_in[:4]) + (f" and {len(f.seen_in) - 4} more"
                                                if len(f.seen_in) > 4 else "")
            report.append(f"    in:       {shown}")
        pytest.fail("\n".join(report), pytrace=False)


def call(label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a `with_raw_response` SDK method; returns the JSON answer (must be a 200)."""
    try:
        raw = fn(*args, **kwargs)
    except openai.APIStatusError as e:
        pytest.fail(f"{label}: HTTP {e.status_code}: {e.response.text[:600]}", pytrace=False)
    resp = raw.http_response
    assert resp.status_code == 200, f"{label}: HTTP {resp.status_code}: {resp.text[:600]}"
    ctype = resp.headers.get("content-type", "")
    assert "application/json" in ctype, f"{label}: content-type {ctype!r}"
    return resp.json()


# ============================================================================ items

def _function_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": "Looks up the weather.", "strict": True,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"], "additionalProperties": False}}


# Items as a client gives them: the fields the SDK's `ResponseInputItemParam` type requires (less
# `id`/`status`, which mnemo fills in when absent), plus a few usual optional ones. One case per
# shape; every type of OpenAI's `ConversationItem` union that mnemo accepts is here.
ITEM_CASES: dict[str, dict[str, Any]] = {
    # ---- messages
    "user-string-no-type": {"role": "user", "content": "What is the weather in Paris?"},
    "user-string": {"type": "message", "role": "user", "content": "Hello"},
    "system-string": {"type": "message", "role": "system", "content": "Be brief."},
    "developer-string": {"type": "message", "role": "developer", "content": "Answer in French."},
    "user-input_text": {"type": "message", "role": "user",
                        "content": [{"type": "input_text", "text": "Hi there"}]},
    "system-input_text": {"type": "message", "role": "system",
                          "content": [{"type": "input_text", "text": "You are a travel agent."}]},
    "developer-input_text": {"type": "message", "role": "developer",
                             "content": [{"type": "input_text", "text": "Use metric units."}]},
    "user-input_text-and-image": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "What is in this picture?"},
                    {"type": "input_image", "detail": "auto",
                     "image_url": "https://example.com/cat.png"}]},
    "assistant-string": {"type": "message", "role": "assistant", "content": "It is sunny."},
    "assistant-output_text-bare": {"type": "message", "role": "assistant",
                                   "content": [{"type": "output_text", "text": "It is 21 °C."}]},
    "assistant-output_text-annotations-only": {
        "type": "message", "role": "assistant",
        "content": [{"type": "output_text", "text": "See the forecast.", "annotations": []}]},
    "assistant-output-message-full": {
        "type": "message", "role": "assistant", "id": "msg_given_full", "status": "completed",
        "content": [{"type": "output_text", "text": "Done.", "logprobs": [],
                     "annotations": [{"type": "url_citation", "url": "https://example.com/",
                                      "title": "Example", "start_index": 0, "end_index": 4}]}]},
    "assistant-refusal": {"type": "message", "role": "assistant",
                          "content": [{"type": "refusal", "refusal": "I cannot help with that."}]},
    # ---- function tools
    "function_call": {"type": "function_call", "call_id": "call_weather_1", "name": "get_weather",
                      "arguments": "{\"city\": \"Paris\"}"},
    "function_call_output-string": {"type": "function_call_output", "call_id": "call_weather_1",
                                    "output": "{\"temperature\": 21}"},
    "function_call_output-parts": {"type": "function_call_output", "call_id": "call_weather_1",
                                   "output": [{"type": "input_text", "text": "21 degrees"}]},
    # ---- reasoning
    "reasoning-summary": {"type": "reasoning",
                          "summary": [{"type": "summary_text", "text": "The user wants the weather."}]},
    "reasoning-full": {"type": "reasoning", "id": "rs_given_1", "encrypted_content": "gAAAAB…",
                       "summary": [{"type": "summary_text", "text": "Look up, then answer."}],
                       "content": [{"type": "reasoning_text", "text": "Call get_weather."}]},
    # ---- built-in tools
    "file_search_call": {"type": "file_search_call", "queries": ["weather Paris"]},
    "web_search_call": {"type": "web_search_call",
                        "action": {"type": "search", "query": "weather Paris"}},
    "image_generation_call": {"type": "image_generation_call", "result": "aGVsbG8="},
    "computer_call": {"type": "computer_call", "call_id": "cu_call_1", "pending_safety_checks": [],
                      "action": {"type": "click", "button": "left", "x": 10, "y": 20}},
    "computer_call_output": {"type": "computer_call_output", "call_id": "cu_call_1",
                             "output": {"type": "computer_screenshot",
                                        "image_url": "https://example.com/screen.png"}},
    "code_interpreter_call": {"type": "code_interpreter_call", "code": "print(1 + 1)",
                              "container_id": "cntr_1",
                              "outputs": [{"type": "logs", "logs": "2\n"}]},
    "local_shell_call": {"type": "local_shell_call", "call_id": "lsh_call_1",
                         "action": {"type": "exec", "command": ["ls", "-l"], "env": {}}},
    "local_shell_call_output": {"type": "local_shell_call_output", "output": "total 0\n"},
    "shell_call": {"type": "shell_call", "call_id": "sh_call_1", "action": {"commands": ["ls"]}},
    "shell_call_output": {"type": "shell_call_output", "call_id": "sh_call_1",
                          "output": [{"stdout": "a.txt\n", "stderr": "",
                                      "outcome": {"type": "exit", "exit_code": 0}}]},
    "apply_patch_call": {"type": "apply_patch_call", "call_id": "ap_call_1",
                         "operation": {"type": "delete_file", "path": "old.txt"}},
    "apply_patch_call_output": {"type": "apply_patch_call_output", "call_id": "ap_call_1"},
    "tool_search_call": {"type": "tool_search_call", "arguments": {"query": "weather"}},
    "tool_search_output": {"type": "tool_search_output", "tools": [_function_tool("get_weather")]},
    "additional_tools": {"type": "additional_tools", "role": "developer",
                         "tools": [_function_tool("get_forecast")]},
    "compaction": {"type": "compaction", "encrypted_content": "gAAAAB-compacted"},
    "program": {"type": "program", "call_id": "prg_call_1", "code": "print(1)", "fingerprint": "fp_1"},
    "program_output": {"type": "program_output", "call_id": "prg_call_1", "result": "1"},
    # ---- MCP
    "mcp_list_tools": {"type": "mcp_list_tools", "server_label": "weather",
                       "tools": [{"name": "forecast", "input_schema": {"type": "object"}}]},
    "mcp_approval_request": {"type": "mcp_approval_request", "server_label": "weather",
                             "name": "forecast", "arguments": "{}"},
    "mcp_approval_response": {"type": "mcp_approval_response", "approval_request_id": "mcpr_1",
                              "approve": True},
    "mcp_call": {"type": "mcp_call", "server_label": "weather", "name": "forecast",
                 "arguments": "{\"city\": \"Paris\"}", "output": "sunny"},
    # ---- custom tools
    "custom_tool_call": {"type": "custom_tool_call", "call_id": "ctc_call_1", "name": "sql",
                         "input": "SELECT 1"},
    "custom_tool_call_output": {"type": "custom_tool_call_output", "call_id": "ctc_call_1",
                                "output": "1"},
}


def test_item_cases_cover_the_union() -> None:
    """Every branch of OpenAI's ConversationItem union is exercised by at least one case."""
    given_types = {c.get("type", "message") for c in ITEM_CASES.values()}
    union = {v for b in COMPONENTS["ConversationItem"]["oneOf"] for v in _type_values(b)}
    assert union - given_types == set()


# ============================================================================ tests

def test_conversation_lifecycle(client: openai.OpenAI) -> None:
    """Create (with and without metadata/items), retrieve, update, delete."""
    conv = client.conversations.with_raw_response
    check = Conformance()

    bare = call("create, empty body", conv.create)
    check.check(CREATE, "create, empty body", bare)
    check.check(RETRIEVE, "retrieve of a conversation created without metadata",
                call("retrieve", conv.retrieve, bare["id"]))

    items = [Given(n, ITEM_CASES[n]) for n in ("user-string", "assistant-string", "function_call")]
    full = call("create with metadata and items", conv.create,
                metadata={"topic": "weather", "lang": "en"}, items=[g.item for g in items])
    check.check(CREATE, "create with metadata and items", full)
    cid = full["id"]
    check.check(RETRIEVE, "retrieve", call("retrieve", conv.retrieve, cid))
    check.check(UPDATE, "update metadata",
                call("update", conv.update, cid, metadata={"topic": "travel"}))
    check.check(UPDATE, "update to empty metadata", call("update", conv.update, cid, metadata={}))
    check.check(DELETE, "delete", call("delete", conv.delete, cid))
    check.check(DELETE, "delete of a conversation created without metadata",
                call("delete", conv.delete, bare["id"]))
    check.assert_ok()


@pytest.mark.parametrize("case", list(ITEM_CASES))
def test_item(client: openai.OpenAI, case: str) -> None:
    """One item through items create, get, list and delete."""
    given = Given(case, ITEM_CASES[case])
    items = client.conversations.items.with_raw_response
    check = Conformance()
    cid = call("create", client.conversations.with_raw_response.create)["id"]

    created = call(f"items create [{case}]", items.create, cid, items=[given.item])
    check.remember(created["data"], [given])
    check.check(ITEMS_CREATE, "items create", created)
    item_id = created["data"][0]["id"]
    check.check(ITEM_GET, "item get", call(f"item get [{case}]", items.retrieve, item_id,
                                           conversation_id=cid))
    check.check(ITEMS_LIST, "items list", call(f"items list [{case}]", items.list, cid))
    check.check(ITEM_DELETE, "item delete", call(f"item delete [{case}]", items.delete, item_id,
                                                 conversation_id=cid))
    check.assert_ok()


def test_create_with_items_then_list_every_way(client: openai.OpenAI) -> None:
    """Items given at conversation create (batches of 20) and appended, read back through every
    listing: asc, desc, pages of 3 both ways, with `include`, and one item at a time."""
    conv = client.conversations.with_raw_response
    items = client.conversations.items.with_raw_response
    check = Conformance()
    given = [Given(name, item) for name, item in ITEM_CASES.items()
             if "id" not in item]  # client ids are covered by test_item
    first, rest = given[:20], given[20:]

    cid = call("create with 20 items", conv.create, items=[g.item for g in first])["id"]
    listed = call("items list asc (ids of the created items)", items.list, cid, order="asc",
                  limit=100)
    check.remember(listed["data"], first)
    for start in range(0, len(rest), 20):
        batch = rest[start:start + 20]
        created = call("items create", items.create, cid, items=[g.item for g in batch])
        check.remember(created["data"], batch)
        check.check(ITEMS_CREATE, f"items create of {len(batch)} items", created)

    for order in ("asc", "desc"):
        page = call(f"items list {order}", items.list, cid, order=order, limit=100)
        assert len(page["data"]) == len(given), page
        check.check(ITEMS_LIST, f"items list order={order} limit=100", page)
        after: Optional[str] = None
        for n in range(len(given)):
            kwargs: dict[str, Any] = {"order": order, "limit": 3}
            if after is not None:
                kwargs["after"] = after
            page = call(f"items list {order} page {n}", items.list, cid, **kwargs)
            check.check(ITEMS_LIST, f"items list order={order} limit=3 page {n}", page)
            if not page["has_more"]:
                break
            after = page["last_id"]
        else:
            pytest.fail(f"paging {order} did not end")
    default = call("items list with defaults and include", items.list, cid,
                   include=["message.output_text.logprobs", "reasoning.encrypted_content"])
    check.check(ITEMS_LIST, "items list with default order/limit and include", default)
    for item_id in list(check.given):
        check.check(ITEM_GET, "item get",
                    call("item get", items.retrieve, item_id, conversation_id=cid,
                         include=["message.output_text.logprobs"]))
    check.assert_ok()


def test_the_document_corrections_are_exactly_the_known_defects() -> None:
    assert UNDEFINED_REQUIRED == [
        "LocalShellToolCallOutput.call_id",
        "MCPApprovalResponseResource.request_id",
    ]


def test_list_of_a_conversation_without_items(client: openai.OpenAI) -> None:
    """The list of a conversation with no items (never had any / all deleted): `first_id` and
    `last_id` are null, as in OpenAI's own empty lists (its document types them as strings,
    which no empty list can fill); everything else is checked against the schema."""
    items = client.conversations.items.with_raw_response
    check = Conformance()

    def rest(body: dict) -> dict:  # the nulls are checked above, the rest by the schema
        assert body["data"] == [] and body["first_id"] is None and body["last_id"] is None, body
        return {**body, "first_id": "", "last_id": ""}

    cid = call("create", client.conversations.with_raw_response.create)["id"]
    check.check(ITEMS_LIST, "items list of a conversation never given items",
                rest(call("items list", items.list, cid)))
    created = call("items create", items.create, cid, items=[ITEM_CASES["user-string"]])
    call("item delete", items.delete, created["data"][0]["id"], conversation_id=cid)
    check.check(ITEMS_LIST, "items list after its only item was deleted",
                rest(call("items list", items.list, cid)))
    check.assert_ok()
