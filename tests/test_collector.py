"""The collector's settings for a gateway process (#18)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from asyncgate import collector


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_raises_the_thresholds_and_freezes_what_exists(restored: None) -> None:
    survivor = [object()]
    frozen_before = gc.get_freeze_count()

    collector.tune()

    assert gc.get_threshold() == (collector.YOUNG, collector.MIDDLE, collector.OLD)
    assert gc.get_freeze_count() > frozen_before
    assert not any(thing is survivor for thing in gc.get_objects())  # frozen: no collection walks it
