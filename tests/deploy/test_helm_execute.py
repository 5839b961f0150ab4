"""config.runs.execute through the chart: set like any other key, refused without Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import helm_python
import pytest

from asyncgate import config as asyncgate_config
from tests.deploy.test_helm import CHART, UPSTREAM, config_file, render, render_error
from tests.support.sealing import ENCRYPTION_KEY_ENV

INTAKE_ONLY = {"config": {"runs": {"execute": False}}}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def test_execute_false_reaches_the_config_file(chart: helm_python.Chart, tmp_path: Path) -> None:
    values = {**UPSTREAM, **INTAKE_ONLY, "redis": {"url": "redis://redis.ml.svc:6379/0"}}
    chart.validate_schema(values)
    manifests = render(chart, values)
    assert config_file(manifests)["runs"] == {"execute": False}
    path = tmp_path / "config.yaml"
    path.write_text(str(next(m for m in manifests if m["kind"] == "ConfigMap")["data"]["config.yaml"]))
    environ = {"ASYNCGATE_STORE_REDIS_URL": "redis://redis.ml.svc:6379/0", **ENCRYPTION_KEY_ENV}
    assert asyncgate_config.load(path, environ=environ).runs.execute is False


def test_execute_false_without_redis_fails_to_render(chart: helm_python.Chart) -> None:
    message = render_error(chart, {**UPSTREAM, **INTAKE_ONLY})
    assert "config.runs.execute is false but no Redis is configured" in message


def test_execute_must_be_a_boolean(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema({"config": {"runs": {"execute": "no"}}})
    assert "/config/runs/execute" in str(caught.value)
