"""The roles and their contract: every method of every role is exercised by a contract test."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

import pytest

from asyncgate.store.base import RunStore
from asyncgate.store.embedded import EmbeddedRunStore
from asyncgate.store.redis import RedisRunStore
from tests.store import contract
from tests.store.contract.conftest import MARKER, ROLES, methods


def role_modules() -> list[ModuleType]:
    """The modules of the contract's tests."""
    names = [info.name for info in pkgutil.iter_modules(contract.__path__)]
    return [importlib.import_module(f"{contract.__name__}.{name}") for name in names if name.startswith("test_")]


def role_classes() -> dict[type, list[type]]:
    """The contract's test classes, by the role each tests."""
    found: dict[type, list[type]] = {}
    for module in role_modules():
        for cls in vars(module).values():
            if inspect.isclass(cls) and cls.__module__ == module.__name__ and "role" in vars(cls):
                found.setdefault(vars(cls)["role"], []).append(cls)
    return found


def exercised(cls: type) -> set[str]:
    """The methods the tests of ``cls`` say they exercise (each test checks that it does)."""
    named: set[str] = set()
    for name, test in vars(cls).items():
        if name.startswith("test_"):
            marks = [mark for mark in getattr(test, "pytestmark", []) if mark.name == MARKER]
            assert marks, f"{cls.__name__}.{name} must say which store methods it exercises"
            named.update(*(mark.args for mark in marks))
    return named


def test_the_store_is_its_roles_and_they_share_no_method() -> None:
    every = [name for role in ROLES for name in methods(role)]

    assert len(every) == len(set(every)), "a method belongs to one role"
    assert methods(RunStore) == set(), "a method of RunStore belongs in one of its roles"
    assert set(RunStore.__bases__) - {Protocol} == set(ROLES), "a new role goes in ROLES, to be checked here"
    assert all(role.__doc__ for role in ROLES)


def test_every_contract_test_is_in_the_class_of_its_role() -> None:
    loose = [
        f"{module.__name__}.{name}"
        for module in role_modules()
        if module.__name__ != __name__
        for name, value in vars(module).items()
        if name.startswith("test_") and inspect.isfunction(value)
    ]

    assert loose == [], "a contract test goes in the class of the role it tests"


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.__name__)
def test_every_method_of_the_role_is_exercised_by_its_contract_tests(role: type) -> None:
    classes = role_classes().get(role, [])
    assert len(classes) == 1, f"one class of contract tests for {role.__name__}, found {classes}"

    missing = methods(role) - exercised(classes[0])

    assert not missing, f"no contract test of {role.__name__} exercises {sorted(missing)}"


def parameters(method: Callable[..., object]) -> list[tuple[str, object, object]]:
    """What a caller relies on: the names, kinds and defaults of the parameters (mypy checks the types)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


@pytest.mark.parametrize("implementation", [RedisRunStore, EmbeddedRunStore], ids=lambda cls: cls.__name__)
def test_both_stores_implement_every_role(implementation: type) -> None:
    for role in ROLES:
        for name in methods(role):
            ours, theirs = getattr(implementation, name, None), getattr(role, name)
            assert ours is not None, f"{implementation.__name__} has no {name}"
            assert parameters(ours) == parameters(theirs), f"{implementation.__name__}.{name}"
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), name
