#!/usr/bin/env python3
"""Extract the response schemas of OpenAI's Conversations API from OpenAI's OpenAPI document.

Usage: scripts/extract-openai-schemas.py OPENAPI_JSON [OUTPUT]

OPENAPI_JSON is `openapi.json` of github.com/openai/openai-openapi (MIT licensed, Copyright (c)
OpenAI). OUTPUT defaults to tests/py/data/openai-conversations.json. The output holds the schema
of the 200 answer of every Conversations operation and, under `components.schemas`, every
component schema those reference transitively, so that the test suite can validate mnemo's
answers without network access:

    {"source": {"repository", "commit", "file", "license"},
     "responses": {"<METHOD> <path>": {"$ref": "#/components/schemas/..."}},
     "components": {"schemas": {...}}}

Pure annotation keywords (`description`, `title`, examples, `x-…` vendor extensions) are left
out: they do not take part in validation. A recursive component written in Draft 2019-09 style
(`$recursiveAnchor` at its root, `$recursiveRef: "#"` inside) gets a plain `$ref` to itself,
which is what it means and what Draft 2020-12 validators resolve. Everything else is copied as
is. The output is deterministic (sorted keys, indent 1), so re-running the script over the same
input changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPOSITORY = "https://github.com/openai/openai-openapi"
COMMIT = "f85dbe223d40e1a31cba812ab2d755c7e98a92a3"
LICENSE = "MIT (Copyright (c) OpenAI); see OPENAI-LICENSE beside this file"

PATHS = (
    "/conversations",
    "/conversations/{conversation_id}",
    "/conversations/{conversation_id}/items",
    "/conversations/{conversation_id}/items/{item_id}",
)
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
REF_PREFIX = "#/components/schemas/"

# Keywords that annotate a schema without constraining instances.
ANNOTATIONS = frozenset({"description", "title", "example", "examples", "$comment"})
# Keywords whose value is a map from names to subschemas.
SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# Keywords whose value is one subschema.
SCHEMA_ONE = frozenset({
    "items", "additionalItems", "additionalProperties", "unevaluatedItems", "unevaluatedProperties",
    "contains", "propertyNames", "not", "if", "then", "else",
})
# Keywords whose value is a list of subschemas.
SCHEMA_LIST = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})


def strip_annotations(schema: Any) -> Any:
    """A copy of `schema` without annotation keywords and vendor extensions.

    Only keywords in schema position are dropped: a property *named* `description` stays.
    """
    if not isinstance(schema, dict):
        return schema  # a boolean schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ANNOTATIONS or key.startswith("x-"):
            continue
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strip_annotations(sub) for name, sub in value.items()}
        elif key in SCHEMA_ONE:
            out[key] = strip_annotations(value)
        elif key in SCHEMA_LIST and isinstance(value, list):
            out[key] = [strip_annotations(sub) for sub in value]
        else:
            out[key] = value
    return out


def resolve_recursive_refs(schema: Any, name: str) -> Any:
    """A copy of component `name` with `$recursiveRef: "#"` turned into a `$ref` to `name`.

    Draft 2020-12 dropped `$recursiveRef`; a validator would ignore it and accept anything there.
    The component is not a schema resource of its own (no `$id`), so `#` can only mean the
    component itself.
    """
    if isinstance(schema, list):
        return [resolve_recursive_refs(v, name) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$recursiveAnchor":
            continue
        if key == "$recursiveRef":
            if value != "#":
                raise ValueError(f"{name}: unsupported $recursiveRef {value!r}")
            out["$ref"] = REF_PREFIX + name
        else:
            out[key] = resolve_recursive_refs(value, name)
    return out


def component_refs(value: Any) -> set[str]:
    """Names of the component schemas referenced anywhere in `value` (`$ref` and discriminator mappings)."""
    found: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for key, sub in v.items():
                if key == "$ref" and isinstance(sub, str):
                    found.add(ref_name(sub))
                elif key == "mapping" and isinstance(sub, dict):
                    found.update(ref_name(r) for r in sub.values() if isinstance(r, str))
                else:
                    stack.append(sub)
        elif isinstance(v, list):
            stack.extend(v)
    return found


def ref_name(ref: str) -> str:
    """The component name of a local `#/components/schemas/NAME` reference."""
    if not ref.startswith(REF_PREFIX):
        raise ValueError(f"unsupported $ref {ref!r}: only {REF_PREFIX}… is handled")
    return ref[len(REF_PREFIX):]


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    """The extracted document (see the module docstring) for an OpenAPI document `spec`."""
    all_schemas: dict[str, Any] = spec["components"]["schemas"]
    responses: dict[str, Any] = {}
    for path in PATHS:
        item = spec["paths"].get(path)
        if item is None:
            raise KeyError(f"path {path} not in the OpenAPI document")
        for method in HTTP_METHODS:
            op = item.get(method)
            if op is None:
                continue
            answer = op.get("responses", {}).get("200")
            if answer is None:
                raise KeyError(f"{method.upper()} {path} has no 200 response")
            schema = answer["content"]["application/json"]["schema"]
            responses[f"{method.upper()} {path}"] = strip_annotations(schema)
    if not responses:
        raise KeyError("no Conversations operation found")

    wanted = sorted(component_refs(responses))
    schemas: dict[str, Any] = {}
    while wanted:
        name = wanted.pop()
        if name in schemas:
            continue
        if name not in all_schemas:
            raise KeyError(f"component schema {name!r} is referenced but not defined")
        schemas[name] = resolve_recursive_refs(strip_annotations(all_schemas[name]), name)
        wanted.extend(sorted(component_refs(schemas[name]) - schemas.keys()))

    return {
        "source": {
            "repository": REPOSITORY,
            "commit": COMMIT,
            "file": "openapi.json",
            "license": LICENSE,
        },
        "responses": responses,
        "components": {"schemas": schemas},
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    default_out = Path(__file__).resolve().parents[1] / "tests" / "py" / "data" / "openai-conversations.json"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("openapi", type=Path, help="openapi.json of github.com/openai/openai-openapi")
    parser.add_argument("output", type=Path, nargs="?", default=default_out,
                        help=f"where to write the extract (default: {default_out})")
    args = parser.parse_args(argv)

    with args.openapi.open(encoding="utf-8") as f:
        spec = json.load(f)
    doc = extract(spec)
    text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"{args.output}: {len(doc['responses'])} responses, "
          f"{len(doc['components']['schemas'])} component schemas, {len(text.encode())} bytes",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
