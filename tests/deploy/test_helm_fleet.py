"""The chart and issue 14: each release is its own deployment (its own Redis keys), and on Redis
its credentials and webhook URLs are sealed with a key the chart makes at install and keeps."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from cryptography.fernet import Fernet

from asyncgate import config as asyncgate_config
from asyncgate.errors import ConfigError
from tests.deploy.test_helm import CHART, NAMESPACE, UPSTREAM, Manifest, config_file, container, env_of, only

REDIS = {"redis": {"url": "redis://redis.shared.svc:6379/0"}}
KEY_ENV = "ASYNCGATE_STORE_ENCRYPTION_KEY"


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm_python.Chart, values: dict[str, Any], release: str = "llama") -> list[Manifest]:
    chart.validate_schema(values)
    rendered = chart.render(values=values, name=release, namespace=NAMESPACE)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def gateway_env(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return env_of(container(pod, "asyncgate"))


def secrets(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Secret"}


def test_each_release_is_its_own_deployment(chart: helm_python.Chart) -> None:
    llama = config_file(render(chart, {**UPSTREAM, **REDIS}, "llama"))
    mistral = config_file(render(chart, {**UPSTREAM, **REDIS}, "mistral"))
    assert llama["deployment"] == f"{NAMESPACE}.llama-asyncgate"
    assert mistral["deployment"] == f"{NAMESPACE}.mistral-asyncgate"
    named = config_file(render(chart, {**UPSTREAM, **REDIS, "deployment": "llama-70b"}))
    assert named["deployment"] == "llama-70b"


def test_the_schema_refuses_a_malformed_deployment(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({**UPSTREAM, "deployment": "not/valid"})


def test_on_redis_the_chart_makes_a_sealing_key_and_keeps_it(chart: helm_python.Chart) -> None:
    manifests = render(chart, {**UPSTREAM, **REDIS})
    secret = secrets(manifests)["llama-asyncgate-encryption"]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = base64.b64decode(secret["data"]["encryption-key"]).decode()
    Fernet(key.encode())  # a valid Fernet key
    assert gateway_env(manifests)[KEY_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": "llama-asyncgate-encryption",
        "key": "encryption-key",
    }
    # Rendered afresh (no cluster to look the Secret up in), the key is a new one: on a cluster
    # the template's lookup keeps the one made at install.
    again = secrets(render(chart, {**UPSTREAM, **REDIS}))["llama-asyncgate-encryption"]
    assert again["data"]["encryption-key"] != secret["data"]["encryption-key"]
    template = (CHART / "templates" / "encryption-secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in template


def test_an_existing_key_secret_is_used_and_none_is_made(chart: helm_python.Chart) -> None:
    values = {**UPSTREAM, **REDIS, "encryption": {"existingSecret": "fleet-key", "existingSecretKey": "key"}}
    manifests = render(chart, values)
    assert "llama-asyncgate-encryption" not in secrets(manifests)
    assert gateway_env(manifests)[KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "fleet-key", "key": "key"}


def test_plaintext_or_the_embedded_store_need_no_key_secret(chart: helm_python.Chart) -> None:
    plain = render(chart, {**UPSTREAM, **REDIS, "config": {"store": {"plaintext": True}}})
    assert "llama-asyncgate-encryption" not in secrets(plain)
    assert KEY_ENV not in gateway_env(plain)
    embedded = render(chart, UPSTREAM)  # the store makes its own key in its data directory
    assert secrets(embedded) == {}
    assert KEY_ENV not in gateway_env(embedded)


def test_the_rendered_release_starts_sealed_under_its_own_prefix(chart: helm_python.Chart, tmp_path: Path) -> None:
    manifests = render(chart, {**UPSTREAM, **REDIS})
    path = tmp_path / "config.yaml"
    path.write_text(only(manifests, "ConfigMap")["data"]["config.yaml"])
    key = base64.b64decode(secrets(manifests)["llama-asyncgate-encryption"]["data"]["encryption-key"]).decode()
    environ = {"ASYNCGATE_STORE_REDIS_URL": REDIS["redis"]["url"], KEY_ENV: key}
    loaded = asyncgate_config.load(path, environ=environ)
    assert loaded.deployment == f"{NAMESPACE}.llama-asyncgate"
    assert loaded.store.key_prefix == f"asyncgate:{NAMESPACE}.llama-asyncgate"
    assert [str(k) for k in loaded.store.encryption_key] == [key]
    # Without the Secret's variable the gateway would refuse to start: the chart always gives it.
    with pytest.raises(ConfigError):
        asyncgate_config.load(path, environ={"ASYNCGATE_STORE_REDIS_URL": REDIS["redis"]["url"]})


def test_a_sidecar_release_names_its_deployment_though_its_upstream_is_loopback(chart: helm_python.Chart) -> None:
    sidecar = yaml.safe_load((CHART / "examples" / "values-sidecar.yaml").read_text())
    values = {**sidecar, **REDIS}
    manifests = render(chart, values)
    config = config_file(manifests)
    assert config["upstream"].startswith("http://127.0.0.1:")
    assert config["deployment"] == f"{NAMESPACE}.llama-asyncgate"
