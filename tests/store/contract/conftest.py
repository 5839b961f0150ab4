"""The contract's bookkeeping: each test names the store methods it exercises, and must call them.

``@pytest.mark.exercises("create", "get")`` on a test of a role's class names methods of that
role; the test fails unless it called each of them on the store (directly, not through another
method of the store). ``test_roles.py`` checks that every method of every role is named by a test.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asyncgate.store.base import Deliveries, Execution, Lifecycle, Records, RunStore
from tests.store.conftest import Runner, open_store

ROLES: tuple[type, ...] = (Lifecycle, Records, Execution, Deliveries)
MARKER = "exercises"


def methods(role: type) -> set[str]:
    """The methods a role declares itself (its attributes, such as ``sealer``, are not methods)."""
    return {name for name, value in vars(role).items() if callable(value) and not name.startswith("_")}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*methods): the store methods a contract test exercises")


def noting(store: object, called: set[str]) -> None:
    """Note in ``called`` each method of ``store`` that a test calls (not the store itself)."""
    for name in set().union(*map(methods, ROLES)):
        setattr(store, name, _noted(getattr(store, name), name, called))


def _noted(method: Callable[..., Any], name: str, called: set[str]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        # A store calling its own methods (the embedded store purges from expired()) is not
        # the test exercising them.
        if not sys._getframe(1).f_globals["__name__"].startswith("asyncgate.store."):
            called.add(name)
        return method(*args, **kwargs)

    return call


@pytest.fixture
def called() -> set[str]:
    """The store methods the test called."""
    return set()


@pytest.fixture(params=["redis", "redis-slots", "embedded"])
def store(request: pytest.FixtureRequest, run: Runner, tmp_path: Path, called: set[str]) -> Iterator[RunStore]:
    """Each store of tests/store/conftest.py, and Redis with runs spread over several slots
    (store.slots), noting the methods the test calls on it."""
    store = open_store(request.param, request, tmp_path / "data")
    run(store.open())
    noting(store, called)
    yield store
    run(store.close())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    yield  # a failing test fails as it is; the bookkeeping is checked after a passing one
    role = getattr(getattr(item, "cls", None), "role", None)
    if role is None:
        return  # not a test of a role (test_roles.py checks that no role's test is outside its class)
    marker = item.get_closest_marker(MARKER)
    assert marker is not None, f"{item.name} must say which store methods it exercises (@pytest.mark.{MARKER})"
    named = set(marker.args)
    assert named <= methods(role), f"{item.name} names methods not of {role.__name__}: {named - methods(role)}"
    missed = named - getattr(item, "funcargs", {}).get("called", set())
    assert not missed, f"{item.name} says it exercises {sorted(missed)} but never calls them"
