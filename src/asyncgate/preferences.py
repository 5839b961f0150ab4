"""The Prefer request header (RFC 7240), parsed and rewritten without losing what is not ours."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class Preference:
    #: The preference's name, lowercased (names are case-insensitive).
    name: str
    value: str | None
    params: tuple[tuple[str, str | None], ...]
    #: The element exactly as the client wrote it, to forward it unchanged.
    raw: str


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _name_value(text: str) -> tuple[str, str | None]:
    name, eq, value = text.partition("=")
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name.strip().lower(), value if eq else None


def parse(values: Iterable[str]) -> list[Preference]:
    """Every preference in one or more Prefer header values, in order."""
    preferences = []
    for header in values:
        for element in _split_outside_quotes(header, ","):
            if not element.strip():
                continue
            head, *rest = _split_outside_quotes(element, ";")
            name, value = _name_value(head)
            if not name:
                continue
            params = tuple(_name_value(param) for param in rest if param.strip())
            preferences.append(Preference(name, value, params, element.strip()))
    return preferences


def without(values: Iterable[str], names: frozenset[str]) -> list[str]:
    """The Prefer header values with the named preferences removed; empty headers dropped."""
    kept = []
    for header in values:
        elements = [p.raw for p in parse([header]) if p.name not in names]
        if elements:
            kept.append(", ".join(elements))
    return kept
