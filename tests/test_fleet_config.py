"""Issue 14: the deployment identity in the configuration, sealing by default, and clear answers
to bad configuration and input (NaN, check-config, non-UTF-8 files, Prefer: wait, auth schemes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from starlette.datastructures import Secret

from asyncgate.config import AccessConfig, derive_deployment, load
from asyncgate.errors import BadRequest, ConfigError
from asyncgate.intake import classify
from asyncgate.principal import Access, canonical_credentials
from tests.support.sealing import ENCRYPTION_KEY, ENCRYPTION_KEY_ENV

UPSTREAM = {"ASYNCGATE_UPSTREAM": "http://model-a.ml.svc:8000"}
REDIS = {"ASYNCGATE_STORE_REDIS_URL": "redis://127.0.0.1:6379/0"}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run([sys.executable, "-m", "asyncgate", *args], capture_output=True, text=True, env=environ)


# --- the deployment and its key prefix ------------------------------------------------------------


def test_the_deployment_is_derived_from_the_upstream_and_names_the_key_prefix() -> None:
    config = load(None, environ=UPSTREAM)
    assert config.deployment == derive_deployment("http://model-a.ml.svc:8000")
    assert config.deployment.startswith("model-a.ml.svc-8000-")
    assert config.store.key_prefix == f"asyncgate:{config.deployment}"


@pytest.mark.parametrize(
    "other",
    [
        "http://model-b.ml.svc:8000",  # another host
        "http://model-a.ml.svc:8001",  # another port
        "https://model-a.ml.svc:8000",  # another scheme
        "http://model-a.ml.svc:8000/v2",  # another base path
    ],
)
def test_different_upstreams_never_derive_the_same_deployment(other: str) -> None:
    assert derive_deployment(other) != derive_deployment("http://model-a.ml.svc:8000")


def test_spellings_of_one_upstream_derive_one_deployment() -> None:
    one = load(None, environ={"ASYNCGATE_UPSTREAM": "http://Model-A.ml.svc:8000/"})
    assert one.deployment == load(None, environ=UPSTREAM).deployment
    assert derive_deployment("http://model:80") == derive_deployment("http://model")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.2", "app.localhost"])
def test_a_loopback_upstream_sharing_redis_must_name_its_deployment(host: str) -> None:
    environ = {"ASYNCGATE_UPSTREAM": f"http://{host}:8000", **REDIS, **ENCRYPTION_KEY_ENV}
    with pytest.raises(ConfigError) as caught:
        load(None, environ=environ)
    assert caught.value.key == "deployment"
    assert load(None, environ={**environ, "ASYNCGATE_DEPLOYMENT": "llama"}).store.key_prefix == "asyncgate:llama"
    assert load(None, environ={**environ, "ASYNCGATE_STORE_KEY_PREFIX": "mine"}).store.key_prefix == "mine"
    # One embedded store per gateway: nothing is shared, so the derived name is safe.
    assert load(None, environ={"ASYNCGATE_UPSTREAM": f"http://{host}:8000"}).deployment


def test_serve_with_a_loopback_upstream_on_redis_and_no_deployment_is_one_line() -> None:
    env = {"ASYNCGATE_UPSTREAM": "http://127.0.0.1:8000", **REDIS, **ENCRYPTION_KEY_ENV}
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "asyncgate: configuration error: deployment: is required with store.redis_url when the upstream is a "
        "loopback address (http://127.0.0.1:8000 is another server in every pod, so it cannot tell deployments "
        "apart); set --deployment NAME"
    ]


def test_an_explicit_deployment_and_key_prefix_are_kept_as_given() -> None:
    config = load(None, environ={**UPSTREAM, "ASYNCGATE_DEPLOYMENT": "ml.llama-70b"})
    assert (config.deployment, config.store.key_prefix) == ("ml.llama-70b", "asyncgate:ml.llama-70b")
    # An explicit key prefix (today's "asyncgate" included) is used exactly as before.
    config = load(None, environ=UPSTREAM, overrides={"store.key_prefix": "asyncgate"})
    assert config.store.key_prefix == "asyncgate"
    assert config.deployment == derive_deployment("http://model-a.ml.svc:8000")


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a{b}", "x" * 101, "ns/name"])
def test_a_malformed_deployment_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(
            None, environ={**UPSTREAM, "ASYNCGATE_DEPLOYMENT": bad} if bad else UPSTREAM, overrides={"deployment": bad}
        )
    assert caught.value.key == "deployment"


def test_the_deployment_flag_and_allow_upstream_change_reach_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstream: http://a:1\ndeployment: from-file\nstore:\n  allow_upstream_change: true\n")
    config = load(path, environ={})
    assert config.deployment == "from-file"
    assert config.store.allow_upstream_change is True


# --- sealing by default -----------------------------------------------------------------------------


def test_redis_without_a_key_is_refused_unless_plaintext_is_chosen() -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, environ={**UPSTREAM, **REDIS})
    assert caught.value.key == "store.encryption_key"
    assert "store.plaintext: true" in caught.value.message
    assert load(None, environ={**UPSTREAM, **REDIS, "ASYNCGATE_STORE_PLAINTEXT": "true"}).store.plaintext is True
    assert str(load(None, environ={**UPSTREAM, **REDIS, **ENCRYPTION_KEY_ENV}).store.encryption_key[0]) == (
        ENCRYPTION_KEY
    )


def test_serve_on_redis_without_a_key_is_one_line_and_exit_2() -> None:
    result = run_cli("serve", env={**UPSTREAM, **REDIS})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "asyncgate: configuration error: store.encryption_key: is required with store.redis_url, so that "
        "credentials and webhook URLs are sealed at rest (every replica needs the same key); or set "
        "store.plaintext: true to store them in the clear"
    ]


# --- NaN and infinity -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'9e999'", "9" * 400])
@pytest.mark.parametrize("key", ["runs:\n  retention", "limits:\n  max_wait", "runs:\n  lease"])
def test_nan_and_infinite_durations_are_one_line_errors(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"upstream: http://a:1\n{key}: {value}\n")
    result = run_cli("check-config", str(path), env={})
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncgate: configuration error: "), lines
    assert key.replace(":\n  ", ".") in lines[0]


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_nan_and_infinite_sizes_are_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"upstream: http://a:1\nlimits:\n  max_body_bytes: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load(path, environ={})
    assert caught.value.key == "limits.max_body_bytes"


def test_nan_from_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, environ={**UPSTREAM, "ASYNCGATE_RUNS_RETENTION": "nan"})
    assert caught.value.key == "runs.retention"


# --- check-config checks what serve checks ---------------------------------------------------------


def test_check_config_reads_the_environment_as_serve_does(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("limits:\n  max_inflight: 4\n")
    missing = run_cli("check-config", str(path), env={})
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "asyncgate: configuration error: upstream: is required (the URL of the server asyncgate fronts)"
    )
    ok = run_cli("check-config", str(path), env=UPSTREAM)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{path}: ok")
    unknown = run_cli("check-config", str(path), env={**UPSTREAM, "ASYNCGATE_LIMITS_MAX_INFLITE": "3"})
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "asyncgate: configuration error: limits.max_inflite: unknown key"
        " (from the variable ASYNCGATE_LIMITS_MAX_INFLITE)"
    )
    stray = run_cli("check-config", str(path), env={**UPSTREAM, "ASYNCGATE_NOPE": "3"})
    assert stray.stderr.strip() == "asyncgate: configuration error: ASYNCGATE_NOPE: unknown environment variable"
    no_key = run_cli("check-config", str(path), env={**UPSTREAM, **REDIS})
    assert no_key.returncode == 2
    assert "store.encryption_key: is required" in no_key.stderr


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("upstream: http://a:1\n# caf\xe9\n".encode("latin-1"))
    for command in (["check-config", str(path)], ["serve", "--config", str(path)]):
        result = run_cli(*command, env={})
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"asyncgate: configuration error: {path}: not UTF-8 text (byte 26 cannot be decoded)"
        ]


# --- Prefer: wait ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wait", [b"-5", b"nan", b"NaN", b"-inf", b"soon", b""])
def test_prefer_wait_that_is_not_a_duration_is_refused(wait: bytes) -> None:
    scope = {"query_string": b"", "headers": [(b"prefer", b"respond-async, wait=" + wait)]}
    with pytest.raises(BadRequest) as caught:
        classify(scope)
    assert caught.value.code == "invalid_parameter"
    assert caught.value.message == "Prefer: wait must be a number of seconds (at most 60 is honoured)"


@pytest.mark.parametrize(("wait", "seconds"), [(b"0", 0.0), (b"2.5", 2.5), (b"600", 60.0), (b"inf", 60.0)])
def test_prefer_wait_is_cut_to_the_maximum(wait: bytes, seconds: float) -> None:
    intent = classify({"query_string": b"", "headers": [(b"prefer", b"respond-async, wait=" + wait)]})
    assert intent is not None
    assert intent.wait == seconds


# --- the authentication scheme is case-insensitive -------------------------------------------------


def principal(access: Access, value: bytes) -> str:
    return access.principal({"headers": [(b"authorization", value)]}).caller


@pytest.mark.parametrize("spelling", [b"bearer tok-1", b"BEARER tok-1", b"Bearer  tok-1", b"bEaReR tok-1"])
def test_scheme_spellings_are_one_caller(spelling: bytes) -> None:
    access = Access(AccessConfig())
    assert principal(access, spelling) == principal(access, b"Bearer tok-1")


def test_the_credentials_themselves_stay_case_sensitive() -> None:
    access = Access(AccessConfig())
    assert principal(access, b"Bearer TOK-1") != principal(access, b"Bearer tok-1")
    # A bare token (no scheme) is not a scheme: its case matters.
    assert principal(access, b"TOKEN") != principal(access, b"token")
    assert canonical_credentials(b"basic dXNlcjpwdw==") == b"Basic dXNlcjpwdw=="


def test_the_admin_token_is_recognised_whatever_the_schemes_case() -> None:
    access = Access(AccessConfig(admin_token=Secret("admin-token-0123456789")))
    assert access.principal({"headers": [(b"authorization", b"bearer admin-token-0123456789")]}).sees_all
    assert not access.principal({"headers": [(b"authorization", b"bearer ADMIN-token-0123456789")]}).sees_all


def test_another_header_is_not_read_as_a_scheme() -> None:
    access = Access(AccessConfig(header="X-Api-Key"))
    first = access.principal({"headers": [(b"x-api-key", b"key one")]}).caller
    assert first != access.principal({"headers": [(b"x-api-key", b"KEY one")]}).caller
