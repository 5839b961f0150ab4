from __future__ import annotations

from pathlib import Path

import pytest

from asyncgate.config import load, parse_duration, parse_size
from asyncgate.errors import ConfigError


def test_defaults_need_only_an_upstream() -> None:
    config = load(None, environ={"ASYNCGATE_UPSTREAM": "http://model:8000/"})
    assert config.upstream == "http://model:8000"
    assert config.server.prefix == "/_asyncgate"
    assert config.runs.timeout == 12 * 3600
    assert config.limits.max_body_bytes == 16 * 1024 * 1024
    assert config.store.redis_url is None


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream: http://a:1\nlimits:\n  max_inflight: 5\n  max_body_bytes: 1MiB\nruns:\n  timeout: 2h\n")
    environ = {"ASYNCGATE_LIMITS_MAX_INFLIGHT": "7", "ASYNCGATE_RUNS_LEASE": "45s"}
    config = load(path, environ=environ, overrides={"runs.timeout": "90m", "server.port": None})
    assert config.upstream == "http://a:1"
    assert config.limits.max_inflight == 7
    assert config.limits.max_body_bytes == 1024 * 1024
    assert config.runs.lease == 45
    assert config.runs.timeout == 5400
    assert config.server.port == 8080


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("upstream: http://a:1\nlimits:\n  max_inflite: 5\n", "limits.max_inflite"),
        ("upstream: http://a:1\nbogus: 1\n", "bogus"),
        ("upstream: http://a:1\nlimits:\n  max_inflight: many\n", "limits.max_inflight"),
        ("upstream: http://a:1\nlimits:\n  max_inflight: true\n", "limits.max_inflight"),
        ("upstream: ftp://a\n", "upstream"),
        ("upstream: http://a:1\nstore:\n  redis_url: mysql://x\n", "store.redis_url"),
        ("upstream: http://a:1\nruns:\n  timeout: soon\n", "runs.timeout"),
        ("upstream: http://a:1\nserver:\n  prefix: nope\n", "server.prefix"),
        ("upstream: http://a:1\nserver:\n  log_format: xml\n", "server.log_format"),
        ("upstream: http://a:99999\n", "upstream"),
        ("upstream: http://a:1\nlimits: 3\n", "limits"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert info.value.key == key


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("not-a-whsec", "must start with whsec_"),
        ("whsec_!!!", "must be base64"),
        ("whsec_c2hvcnQ=", "at least 16 bytes"),
    ],
)
def test_a_malformed_signing_secret_is_a_config_error_naming_its_key(secret: str, why: str) -> None:
    environ = {"ASYNCGATE_UPSTREAM": "http://a:1", "ASYNCGATE_WEBHOOKS_SIGNING_SECRETS": secret}
    with pytest.raises(ConfigError) as info:
        load(None, environ=environ)
    assert info.value.key == "webhooks.signing_secrets"
    assert why in info.value.message
    assert secret not in str(info.value)


def test_unknown_environment_variable_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, environ={"ASYNCGATE_UPSTREAM": "http://a:1", "ASYNCGATE_LIMITS_MAX_INFLITE": "3"})
    assert info.value.key == "limits.max_inflite"
    with pytest.raises(ConfigError) as info:
        load(None, environ={"ASYNCGATE_UPSTREAM": "http://a:1", "ASYNCGATE_NOPE": "3"})
    assert info.value.key == "ASYNCGATE_NOPE"


def test_the_clients_variables_are_not_the_gateways_configuration() -> None:
    environ = {"ASYNCGATE_UPSTREAM": "http://a:1", "ASYNCGATE_URL": "http://gw:8080", "ASYNCGATE_TOKEN": "t"}
    assert load(None, environ=environ) == load(None, environ={"ASYNCGATE_UPSTREAM": "http://a:1"})


def test_kubernetes_service_link_variables_are_not_configuration() -> None:
    environ = {
        "ASYNCGATE_UPSTREAM": "http://a:1",
        "ASYNCGATE_PORT": "tcp://10.0.0.1:8080",
        "ASYNCGATE_SERVICE_HOST": "x",
    }
    assert load(None, environ=environ).server.port == 8080


def test_missing_upstream_is_an_error_unless_checking_a_file() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, environ={})
    assert info.value.key == "upstream"
    assert load(None, environ={}, require_upstream=False).upstream == ""


def test_the_example_file_is_valid_and_holds_the_defaults() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = load(example, environ={})
    assert config == load(None, environ={"ASYNCGATE_UPSTREAM": config.upstream})


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), ("500ms", 0.5), ("5m", 300.0), ("12h", 43200.0), ("1d", 86400)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration("k", value) == seconds


@pytest.mark.parametrize(("value", "size"), [(10, 10), ("16MiB", 16 * 1024 * 1024), ("1KB", 1000), ("2 GiB", 2 << 30)])
def test_sizes(value: object, size: int) -> None:
    assert parse_size("k", value) == size


@pytest.mark.parametrize("value", [0, -1, "0s", "x", True])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration("k", value)


@pytest.mark.parametrize(("value", "seconds"), [("0s", 0.0), (0, 0.0), ("0", 0.0), ("5s", 5.0), (2.5, 2.5)])
def test_the_pre_stop_delay_may_be_zero(value: object, seconds: float) -> None:
    config = load(None, environ={"ASYNCGATE_UPSTREAM": "http://a:1"}, overrides={"shutdown.pre_stop_delay": value})
    assert config.shutdown.pre_stop_delay == seconds


@pytest.mark.parametrize("value", [False, "-1s", "soon"])
def test_the_pre_stop_delay_refuses_what_is_not_a_duration(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, environ={"ASYNCGATE_UPSTREAM": "http://a:1"}, overrides={"shutdown.pre_stop_delay": value})
    assert info.value.key == "shutdown.pre_stop_delay"


def test_broken_yaml_says_where_without_quoting_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream: http://a:1\nstore:\n  encryption_key: s3cr3t: x\n")
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert str(caught.value) == f"{path}: not valid YAML at line 3, column 25: mapping values are not allowed here"
    assert "s3cr3t" not in str(caught.value)
