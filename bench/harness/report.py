"""Sections of figures, the checks against the targets, and their rendering as text tables."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    scenario: str
    what: str
    measured: float | None
    target: str
    passed: bool | None  # None: could not be measured

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def at_least(scenario: str, what: str, measured: float | None, bound: float, unit: str = "x") -> Check:
    passed = None if measured is None else measured >= bound
    return Check(scenario, what, measured, f">= {bound:g}{unit}", passed)


def at_most(
    scenario: str, what: str, measured: float | None, bound: float, unit: str = "x", strict: bool = False
) -> Check:
    passed = None if measured is None else (measured < bound if strict else measured <= bound)
    return Check(scenario, what, measured, f"{'<' if strict else '<='} {bound:g}{unit}", passed)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """A Markdown table (it also reads well as plain text)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(items: list[str]) -> str:
        return "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths, strict=True)) + " |"

    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def render(sections: list[Section], checks: list[Check]) -> str:
    parts = []
    for section in sections:
        parts.append(f"### {section.title}\n\n{table(section.columns, section.rows)}")
        parts.extend(f"- {note}" for note in section.notes)
        parts.append("")
    rows = [
        {"scenario": c.scenario, "check": c.what, "measured": c.measured, "target": c.target, "result": c.verdict}
        for c in checks
    ]
    parts.append("### Targets\n\n" + table(["scenario", "check", "measured", "target", "result"], rows))
    return "\n".join(parts) + "\n"


def as_json(sections: list[Section], checks: list[Check], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "meta": meta,
        "sections": [asdict(s) for s in sections],
        "checks": [{**asdict(c), "result": c.verdict} for c in checks],
    }
