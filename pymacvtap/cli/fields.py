"""The ``-j link show`` fields as the help lists them, written out from the shipped JSON schema.

The schema (``pymacvtap/schemas/link-show.schema.json``) is the contract for ``-j`` output and
is checked against a real daemon; the help is generated from it so that a field added there is
listed here without anyone remembering to (a hand-kept list had already lost three).
"""

from __future__ import annotations

import functools
import json
import re
import textwrap
from importlib import resources
from typing import Any

SCHEMA = "link-show.schema.json"
WIDTH = 89  # the help's -j paragraph wrapped as the hand-written one was
OPTION_COLUMN = 21  # where an option's text starts in the help's OPTIONS


@functools.cache
def link_show_schema() -> dict[str, Any]:
    """The schema of ``-j link show``, read from the package."""
    text = (resources.files("pymacvtap") / "schemas" / SCHEMA).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def json_option_help() -> str:
    """The help's ``-j`` paragraph: every endpoint field, and when the optional ones appear."""
    text = "print a JSON list of objects with " + endpoint_fields(link_show_schema())
    text += f" (schema: pymacvtap/schemas/{SCHEMA})"
    return textwrap.fill(
        text,
        width=WIDTH,
        initial_indent="    -j".ljust(OPTION_COLUMN),
        subsequent_indent=" " * OPTION_COLUMN,
        break_on_hyphens=False,
        break_long_words=False,
    )


def endpoint_fields(schema: dict[str, Any]) -> str:
    """``ifname, link, ...; with -s also stats64: {rx: {...}, ...}`` from the endpoint object.

    The always-present fields come first, in the schema's order; the optional ones follow,
    grouped by the condition their description opens with (``With -s: ...``).
    """
    defs: dict[str, Any] = schema["$defs"]
    endpoint = defs["endpoint"]
    properties: dict[str, Any] = endpoint["properties"]
    required = [name for name in properties if name in endpoint["required"]]
    text = _join([_render(name, properties[name], defs) for name in required], ", ")
    conditions: dict[str, list[str]] = {}
    for name, prop in properties.items():
        if name not in required:
            conditions.setdefault(_condition(name, prop), []).append(_render(name, prop, defs))
    for condition, fields in conditions.items():
        text += f"; {condition} also {_join(fields, ' and ')}"
    return text


def _condition(name: str, prop: dict[str, Any]) -> str:
    """``with -s`` from ``With -s: the counters``, ``in mode source`` from ``Mode source: ...``."""
    m = re.match(r"([^:,]{1,24})[:,]", str(prop.get("description", "")))
    if m is None:
        raise ValueError(f"{SCHEMA}: optional field {name}: no `When: ...` description")
    head = m.group(1).lower()
    return head if head.startswith("with ") else f"in {head}"


def _render(name: str, prop: dict[str, Any], defs: dict[str, Any]) -> str:
    inner = _shape(prop, defs)
    return f"{name}: {inner}" if inner else name


def _shape(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    """``{a, b}`` for an object, ``[...]`` for a list of objects, ``{KEY: count}`` for a map."""
    prop = _resolve(prop, defs)
    if "oneOf" in prop:
        return " or ".join(_shape(choice, defs) for choice in prop["oneOf"])
    if prop.get("type") == "array" and _shape(prop["items"], defs):
        return f"[{_shape(prop['items'], defs)}]"
    if prop.get("type") != "object":
        return ""
    if "properties" in prop:
        fields = [_render(key, value, defs) for key, value in prop["properties"].items()]
        return "{" + ", ".join(fields) + "}"
    key = prop.get("propertyNames", {}).get("title", "KEY")
    return "{" + f"{key}: count" + "}"


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str):
        resolved: dict[str, Any] = defs[ref.removeprefix("#/$defs/")]
        return resolved
    return prop


def _join(words: list[str], last: str) -> str:
    """``a, b and c`` (or with ``last`` ", ": ``a, b, c``)."""
    if len(words) < 2:
        return "".join(words)
    return ", ".join(words[:-1]) + last + words[-1]
