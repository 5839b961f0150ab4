"""runs.execute: an intake-only replica is a Redis deployment option, refused on the embedded store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asyncgate.config import load
from asyncgate.errors import ConfigError
from tests.support.sealing import ENCRYPTION_KEY_ENV

UPSTREAM = {"ASYNCGATE_UPSTREAM": "http://127.0.0.1:8000"}
REDIS = {"ASYNCGATE_STORE_REDIS_URL": "redis://127.0.0.1:6379/0", "ASYNCGATE_DEPLOYMENT": "model", **ENCRYPTION_KEY_ENV}


def test_execute_is_on_by_default() -> None:
    assert load(None, environ=UPSTREAM).runs.execute is True


@pytest.mark.parametrize(("text", "value"), [("false", False), ("0", False), ("no", False), ("true", True)])
def test_execute_from_the_environment(text: str, value: bool) -> None:
    config = load(None, environ={**UPSTREAM, **REDIS, "ASYNCGATE_RUNS_EXECUTE": text})
    assert config.runs.execute is value


def test_execute_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "intake.yaml"
    path.write_text(
        "upstream: http://127.0.0.1:8000\ndeployment: model\nstore:\n  redis_url: redis://r:6379/0\n"
        "runs:\n  execute: false\n"
    )
    assert load(path, environ=ENCRYPTION_KEY_ENV).runs.execute is False


def test_execute_must_be_a_boolean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, environ={**UPSTREAM, **REDIS, "ASYNCGATE_RUNS_EXECUTE": "sometimes"})
    assert caught.value.key == "runs.execute"
    path = tmp_path / "bad.yaml"
    path.write_text("upstream: http://127.0.0.1:8000\nruns:\n  execute: 'off please'\n")
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert str(caught.value) == "runs.execute: expected true or false, got 'off please'"


def test_execute_false_with_the_embedded_store_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, environ={**UPSTREAM, "ASYNCGATE_RUNS_EXECUTE": "false"})
    assert caught.value.key == "runs.execute"
    assert "store.redis_url" in caught.value.message


def test_a_file_checked_alone_may_leave_the_redis_url_to_the_environment(tmp_path: Path) -> None:
    # As with the upstream: a Helm ConfigMap gets its Redis URL from a Secret's variable.
    path = tmp_path / "intake.yaml"
    path.write_text("runs:\n  execute: false\n")
    assert load(path, environ={}, require_upstream=False).runs.execute is False


def test_serve_refuses_it_in_one_line_naming_the_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asyncgate", "serve", "--upstream", "http://127.0.0.1:8000"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "ASYNCGATE_RUNS_EXECUTE": "false"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "asyncgate: configuration error: runs.execute: false needs store.redis_url: "
        "the embedded store serves one process, so no run would execute"
    ]
