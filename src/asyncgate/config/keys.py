"""How a configuration key is declared: a dataclass field carrying its unit, meaning and flag.

A section of the configuration is a frozen dataclass; each of its fields is one key, declared
with one of the helpers below (``setting``, ``duration``, ``size``, ``secret``, ``strings``,
``secrets``, ``durations``). The field's annotation is the parsed type (``Literal[...]`` for a
key with a fixed set of values); the helper records the rest. ``declared_keys()`` reads them
back, and everything else (parsing, the environment variable names, ``config.example.yaml``,
docs/configuration.md and the Helm values schema) is derived from that.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, Literal, TypedDict, Unpack

ENV_PREFIX = "ASYNCGATE_"


class Unit(StrEnum):
    """How a key's value is written, beyond its Python type."""

    #: Plain: a string, a number, a boolean or a list of strings.
    NONE = ""
    #: Seconds (``30``, ``2.5``) or with a unit: ``500ms``, ``5s``, ``10m``, ``12h``, ``1d``.
    DURATION = "duration"
    #: Bytes (``1024``) or with a unit: ``64KiB``, ``16MiB``, ``1GB``.
    SIZE = "size"
    #: A credential: held as ``starlette.datastructures.Secret``, never printed.
    SECRET = "secret"


class _Unset:
    """The default of ``KeyInfo.example``: show the declared default."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

#: Turns one already type-checked list item (or the whole list) into its parsed form; ValueError (or
#: InvalidSecret, from a SigningSecret) names the problem.
Convert = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What a key's declaration says besides its name, type and default."""

    #: One line: what the key does (Markdown; shown in the docs table, the example file and the schema).
    doc: str
    unit: Unit = Unit.NONE
    #: True: the key holds a list; from an environment variable it is comma-separated.
    is_list: bool = False
    #: Zero is allowed for a duration and means "none" (or "at once" for list items).
    zero: bool = False
    #: Applied after the type checks: builds the parsed value (an Allowlist, a checked secret).
    convert: Convert | None = None
    #: The default as the example file writes it, when the declared default says it poorly (upstream).
    example: Any = UNSET
    #: The ``asyncgate serve`` flag that sets it, if any.
    flag: str | None = None
    #: The Helm chart value that sets this key itself, so it is left out of the chart's ``config``.
    chart: str | None = None
    #: A regular expression the whole value must match (a path, a name), and that shape in words.
    pattern: str | None = None
    shape: str = "a value of the documented form"
    #: More lines for the example file (below the key), e.g. the URL forms a key takes.
    more: tuple[str, ...] = ()
    #: A docs page (and anchor) that says more, linked from the key's row in docs/configuration.md.
    see: str | None = None


class Extras(TypedDict, total=False):
    """What a declaration may add besides its default and meaning (see KeyInfo)."""

    example: Any
    flag: str
    chart: str
    pattern: str
    shape: str
    more: tuple[str, ...]
    see: str
    zero: bool


def setting(default: Any, doc: str, **info: Unpack[Extras]) -> Any:
    """A plain key: its annotation (str, int, float, bool, a ``Literal`` or ``X | None``) says how to parse it."""
    return _field(default, KeyInfo(doc, **info))


def _field(default: Any, info: KeyInfo) -> Any:
    return dataclasses.field(default=default, metadata={"key": info})


def duration(default: float, doc: str, **info: Unpack[Extras]) -> Any:
    """A duration in seconds, written ``30``, ``500ms``, ``10m``, ``12h``, ``1d``; ``zero=True`` allows 0 (none)."""
    return _field(default, KeyInfo(doc, unit=Unit.DURATION, **info))


def size(default: int, doc: str, **info: Unpack[Extras]) -> Any:
    """A size in bytes, written ``1024``, ``64KiB``, ``16MiB``, ``1GB``."""
    return _field(default, KeyInfo(doc, unit=Unit.SIZE, **info))


def secret(doc: str, **info: Unpack[Extras]) -> Any:
    """An optional credential of at least 16 characters (``Secret | None``)."""
    return _field(None, KeyInfo(doc, unit=Unit.SECRET, **info))


def strings(doc: str, convert: Convert | None = None, **info: Unpack[Extras]) -> Any:
    """A list of non-empty strings, empty by default; ``convert`` builds the parsed value from the tuple."""
    default = convert(()) if convert is not None else ()
    info.setdefault("example", [])
    return _field(default, KeyInfo(doc, is_list=True, convert=convert, **info))


def secrets(doc: str, convert: Convert, **info: Unpack[Extras]) -> Any:
    """A list of credentials, empty by default; ``convert`` checks and wraps one item."""
    info.setdefault("example", [])
    return _field((), KeyInfo(doc, unit=Unit.SECRET, is_list=True, convert=convert, **info))


def durations(default: tuple[float, ...], doc: str, **info: Unpack[Extras]) -> Any:
    """A non-empty list of durations; zero is allowed (at once)."""
    info["zero"] = True
    return _field(default, KeyInfo(doc, unit=Unit.DURATION, is_list=True, **info))


@dataclasses.dataclass(frozen=True)
class Key:
    """One declared key, as ``declared_keys()`` finds it."""

    #: Dotted name: ``limits.max_inflight``, or ``upstream`` outside any section.
    name: str
    #: The resolved annotation of the field.
    annotation: Any
    default: Any
    info: KeyInfo

    @property
    def env(self) -> str:
        """The environment variable that sets it: ``ASYNCGATE_LIMITS_MAX_INFLIGHT``."""
        return ENV_PREFIX + self.name.replace(".", "_").upper()

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.annotation)

    @property
    def base(self) -> Any:
        """The annotation without ``| None``."""
        args = [arg for arg in typing.get_args(self.annotation) if arg is not type(None)]
        return args[0] if self.optional and len(args) == 1 else self.annotation

    @property
    def choices(self) -> tuple[str, ...]:
        """The allowed values of a ``Literal`` key, in declared order; empty for any other."""
        base = self.base
        return typing.get_args(base) if typing.get_origin(base) is Literal else ()

    @property
    def example(self) -> Any:
        """The value as the example file and the docs show it."""
        return self.default if self.info.example is UNSET else self.info.example


def keys_of(section: type[Any], prefix: str = "") -> Iterator[Key]:
    """The keys a section dataclass declares, in order (fields without a declaration are skipped)."""
    hints = typing.get_type_hints(section)
    for field in dataclasses.fields(section):
        info = field.metadata.get("key")
        if isinstance(info, KeyInfo):
            default = field.default if field.default is not dataclasses.MISSING else None
            yield Key(prefix + field.name, hints[field.name], default, info)
