"""The configuration reference, rendered from the declarations: the example file, the docs tables, the Helm schema.

``python -m asyncgate.configdoc`` writes them into the checkout; tests/test_configdoc.py fails
when a committed file differs from what these functions render.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from typing import Any

from asyncgate.config.keys import Key, Unit
from asyncgate.config.loading import declared_keys
from asyncgate.config.routes import ROUTE_DECLARATIONS
from asyncgate.config.sections import SECTIONS
from asyncgate.config.values import DURATION_TEXT, SIZE_TEXT

#: Where a comment starts in the example file, so the values line up.
_COMMENT_COLUMN = 27
_WIDTH = 120
_EXAMPLE_HEAD = """\
# asyncgate configuration: every key, with its default and meaning.
# Generated from src/asyncgate/config/sections.py by `python -m asyncgate.configdoc`: edit there, not here.
# Precedence: this file (--config), then ASYNCGATE_<SECTION>_<KEY> environment variables
# (e.g. ASYNCGATE_LIMITS_MAX_INFLIGHT=128, ASYNCGATE_UPSTREAM=http://...), then command-line flags.
# Durations: seconds (30) or with a unit (500ms, 5s, 10m, 12h, 1d). Sizes: bytes or 16MiB, 64KiB, 1GB.
# Validate a file with: asyncgate check-config FILE
"""
_SECRET_NOTE = "A credential: better given from a Kubernetes Secret (extraEnv) than in the ConfigMap."
_UNIT_NOTE = {
    Unit.DURATION: "Seconds, or a duration with a unit: 500ms, 5s, 10m, 12h, 1d.",
    Unit.SIZE: "Bytes, or a size with a unit: 64KiB, 16MiB, 1GB.",
}


def duration_text(seconds: float) -> str:
    """``43200.0`` as ``12h``: the largest unit that writes it whole."""
    if seconds == 0:
        return "0s"
    for unit, length in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= length and seconds % length == 0:
            return f"{int(seconds // length)}{unit}"
    milliseconds = seconds * 1000
    return f"{int(milliseconds)}ms" if milliseconds == int(milliseconds) else f"{seconds}s"


def size_text(size: int) -> str:
    """``16777216`` as ``16MiB``."""
    for unit, length in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size % length == 0:
            return f"{size // length}{unit}"
    return str(size)


def value_text(key: Key) -> str:
    """A key's default (or example) as YAML writes it."""
    value = key.example
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        if key.info.unit is Unit.DURATION:
            return "[" + ", ".join("0" if item == 0 else duration_text(item) for item in value) + "]"
        return "[" + ", ".join(str(item) for item in value) + "]"
    if key.info.unit is Unit.DURATION:
        return duration_text(value)
    if key.info.unit is Unit.SIZE:
        return size_text(value)
    return str(value)


def meaning(key: Key, *, links: bool = False) -> str:
    """The key's documentation line, with its choices, its flag and (``links``) its docs page (Markdown)."""
    text = key.info.doc
    if key.choices and not all(re.search(rf"\b{choice}\b", text) for choice in key.choices):
        text += f" ({' | '.join(key.choices)})"
    extras = [f"`{key.info.flag}`"] if key.info.flag else []
    if links and key.info.see:
        extras.append(f"[{key.info.see.partition('#')[0]}]({key.info.see})")
    return text + (f" ({'; '.join(extras)})" if extras else "")


def _plain(markdown: str) -> str:
    return markdown.replace("`", "")


def _example_entry(indent: str, key: Key) -> list[str]:
    line = f"{indent}{key.name.rpartition('.')[2]}: {value_text(key)}"
    column = max(len(line) + 2, _COMMENT_COLUMN)
    comments = textwrap.wrap(_plain(meaning(key)), _WIDTH - column - 2) + list(key.info.more)
    lines = [f"{line.ljust(column)}# {comments[0]}"]
    lines += [f"{' ' * column}# {comment}" for comment in comments[1:]]
    return lines


def example_yaml() -> str:
    """``config.example.yaml``: every key with its default and meaning; itself a valid configuration."""
    keys = declared_keys().values()
    lines = [_EXAMPLE_HEAD]
    for key in keys:
        if "." not in key.name:
            lines += [f"# {line}" for line in textwrap.wrap(_plain(meaning(key)), _WIDTH - 2)]
            lines += [f"{key.name}: {value_text(key)}", ""]
    for section in SECTIONS:
        lines.append(f"{section}:")
        for key in keys:
            if key.name.startswith(section + "."):
                lines += _example_entry("  ", key)
        lines.append("")
    lines.append("# Per-route policies, matched in order (first match wins); see docs/configuration.md, routes.")
    lines.append("# routes:")
    for index, route in enumerate(ROUTE_DECLARATIONS):
        entry = f"#   {'- ' if index == 0 else '  '}{route.name}: {route.example}"
        lines.append(f"{entry.ljust(max(len(entry) + 2, _COMMENT_COLUMN))}# default: {_plain(route.default)}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _rows(keys: Iterable[Key]) -> list[str]:
    return [f"| `{key.name}` | `{value_text(key)}` | `{key.env}` | {_cell(meaning(key, links=True))} |" for key in keys]


def docs_tables() -> str:
    """The key tables of docs/configuration.md, one per section."""
    keys = list(declared_keys().values())
    parts = [
        "## upstream\n\n| key | example | environment | meaning |\n|---|---|---|---|\n"
        + "\n".join(_rows(key for key in keys if "." not in key.name))
    ]
    for section in SECTIONS:
        rows = _rows(key for key in keys if key.name.startswith(section + "."))
        parts.append(
            f"## {section}\n\n| key | default | environment | meaning |\n|---|---|---|---|\n" + "\n".join(rows)
        )
    return "\n\n".join(parts) + "\n"


def route_table() -> str:
    """The table of a route's keys in docs/configuration.md."""
    rows = [f"| `{route.name}` | {route.default} | {_cell(route.doc)} |" for route in ROUTE_DECLARATIONS]
    return "| route key | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n"


def _key_schema(key: Key) -> dict[str, Any]:
    unit = key.info.unit
    schema: dict[str, Any]
    item: dict[str, Any]
    if key.info.is_list and unit is Unit.DURATION:
        item = {"type": ["string", "number"], "pattern": f"^{DURATION_TEXT}$"}
        schema = {"type": "array", "items": item, "minItems": 1}
    elif key.info.is_list:
        item = {"type": "string", "minLength": 1}
        schema = (
            {"type": ["string", "array"], "items": item} if unit is Unit.SECRET else {"type": "array", "items": item}
        )
    elif unit is Unit.DURATION:
        schema = {"type": ["string", "number"], "pattern": f"^{DURATION_TEXT}$"}
    elif unit is Unit.SIZE:
        schema = {"type": ["string", "integer"], "pattern": f"^{SIZE_TEXT}$"}
    elif unit is Unit.SECRET:
        schema = {"type": ["string", "null"], "minLength": 16}
    elif key.choices:
        schema = {"type": "string", "enum": list(key.choices)}
    elif key.base is bool:
        schema = {"type": "boolean"}
    elif key.base is int:
        schema = {"type": "integer", "minimum": 1}
    elif key.base is float:
        schema = {"type": "number", "exclusiveMinimum": 0}
    else:
        schema = {"type": ["string", "null"] if key.optional else "string"}
        if key.info.pattern is not None:
            schema["pattern"] = f"^{key.info.pattern}$"
    notes = [_plain(key.info.doc) + ".", _UNIT_NOTE.get(unit, "")]
    notes.append(_SECRET_NOTE if unit is Unit.SECRET else "")
    return schema | {"description": " ".join(note for note in notes if note)}


def helm_config_schema() -> dict[str, Any]:
    """The ``config`` property of the chart's values.schema.json: every key the chart leaves to its users."""
    keys = declared_keys().values()
    by_chart = [f"{key.name} ({key.info.chart})" for key in keys if key.info.chart]
    sections: dict[str, Any] = {}
    for section in SECTIONS:
        own = {
            key.name.partition(".")[2]: _key_schema(key)
            for key in keys
            if key.name.startswith(section + ".") and not key.info.chart
        }
        if own:
            sections[section] = {"type": "object", "additionalProperties": False, "properties": own}
    routes = {
        "type": "array",
        "description": "Per-route policies, matched in order (docs/configuration.md, routes); "
        "asyncgate check-config validates them fully.",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["path"],
            "properties": {route.name: route.schema for route in ROUTE_DECLARATIONS},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "asyncgate's config.yaml (config.example.yaml, docs/configuration.md), generated by "
        "python -m asyncgate.configdoc. Set by the chart instead: " + ", ".join(by_chart) + ".",
        "properties": sections | {"routes": routes},
    }


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the marker lines ``begin`` and ``end`` replaced by ``body``."""
    pattern = re.compile(rf"(^{re.escape(begin)}\n).*?(^{re.escape(end)}$)", re.S | re.M)
    if pattern.search(text) is None:
        raise ValueError(f"markers {begin!r} ... {end!r} not found")
    return pattern.sub(lambda match: match.group(1) + "\n" + body + "\n" + match.group(2), text, count=1)
