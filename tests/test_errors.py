"""The error tree: one root, one module, drawn truly in its docstring, HTTP errors split 4xx/5xx."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import orjson
import pytest

import asyncgate
from asyncgate import errors
from asyncgate.client import errors as client_errors
from asyncgate.errors import (
    AsyncgateError,
    BadGateway,
    ClientError,
    GatewayTimeout,
    HTTPError,
    ServerError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthenticated,
)
from asyncgate.responses import error_response

#: The SDK keeps its own tree (asyncgate.client.errors); ``__main__`` would run the CLI.
_SDK = "asyncgate.client"


def _modules(prefix_filter: str | None) -> list[ModuleType]:
    modules = []
    for info in pkgutil.walk_packages(asyncgate.__path__, "asyncgate."):
        if info.name.endswith("__main__"):
            continue
        in_sdk = info.name == _SDK or info.name.startswith(_SDK + ".")
        if (prefix_filter == _SDK) != in_sdk:
            continue
        modules.append(importlib.import_module(info.name))
    return modules


def _exceptions_defined_in(module: ModuleType) -> list[type[BaseException]]:
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
    ]


def _tree() -> list[type[BaseException]]:
    return _exceptions_defined_in(errors)


def test_the_walk_sees_the_package() -> None:
    names = {module.__name__ for module in _modules(None)}
    # A walk that imports nothing would pass every test below.
    assert {"asyncgate.errors", "asyncgate.http1", "asyncgate.proxy", "asyncgate.store.base"} <= names
    assert len(_tree()) > 20


def _defined_outside(home: ModuleType, modules: list[ModuleType]) -> list[str]:
    return [
        f"{module.__name__}.{cls.__name__}"
        for module in modules
        if module is not home
        for cls in _exceptions_defined_in(module)
    ]


def test_every_exception_of_the_package_is_defined_in_errors() -> None:
    elsewhere = _defined_outside(errors, _modules(None))
    assert elsewhere == [], "exceptions belong in asyncgate/errors.py, under AsyncgateError"


def test_every_exception_in_errors_derives_from_the_root_and_no_builtin() -> None:
    for cls in _tree():
        assert issubclass(cls, AsyncgateError), cls
        foreign = [base for base in cls.__mro__ if base.__module__ != errors.__name__]
        assert foreign == [Exception, BaseException, object], (cls, foreign)


def test_every_error_says_when_it_is_raised() -> None:
    for cls in _tree():
        doc = cls.__dict__.get("__doc__")
        assert doc, f"{cls.__name__} has no docstring"
        assert doc.strip().endswith("."), cls


def _drawn_tree(doc: str) -> dict[str, str | None]:
    """Each class drawn in the docstring, with the class drawn as its parent."""
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        match = re.match(r"^(\s*(?:[│├└─]\s*)*)([A-Z]\w+)", line)
        if match is None or not line.startswith("    ") or not re.search(r"[│├└]|^    AsyncgateError", line):
            continue
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def test_the_docstring_draws_the_tree_as_it_is() -> None:
    assert errors.__doc__ is not None
    drawn = _drawn_tree(errors.__doc__)
    actual = {cls.__name__: (None if cls is AsyncgateError else cls.__bases__[0].__name__) for cls in _tree()}
    assert drawn == actual


def test_each_exception_has_one_parent() -> None:
    # The drawing shows one parent per class: a second base would hide from it.
    assert [cls for cls in _tree() if len(cls.__bases__) != 1] == []


def _http_errors() -> list[type[HTTPError]]:
    return [cls for cls in _tree() if issubclass(cls, HTTPError) and cls is not HTTPError]


@pytest.mark.parametrize("cls", _http_errors(), ids=lambda cls: cls.__name__)
def test_http_errors_sit_in_the_branch_their_status_says(cls: type[HTTPError]) -> None:
    assert issubclass(cls, ClientError) == (400 <= cls.status_code < 500)
    assert issubclass(cls, ServerError) == (500 <= cls.status_code < 600)


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (Unauthenticated, 401, "credentials_required"),
        (TooManyRequests, 429, "too_many_requests"),
        (BadGateway, 502, "upstream_unreachable"),
        (ServiceUnavailable, 503, "unavailable"),
        (GatewayTimeout, 504, "upstream_timeout"),
    ],
)
def test_http_errors_keep_their_wire_status_and_code(cls: type[HTTPError], status: int, code: str) -> None:
    error = cls("why")
    assert (error.status_code, error.code, error.message) == (status, code, "why")


def test_an_http_error_renders_as_the_one_error_shape() -> None:
    error = ServiceUnavailable("the run store is unavailable", code="store_unavailable", retry_after=1)
    response = error_response(error)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    assert orjson.loads(response.body) == {
        "error": {"code": "store_unavailable", "message": "the run store is unavailable"}
    }


def test_the_sdk_keeps_its_exceptions_in_its_own_tree() -> None:
    assert _defined_outside(client_errors, _modules(_SDK)) == []
    for cls in _exceptions_defined_in(client_errors):
        assert issubclass(cls, client_errors.AsyncgateClientError), cls
