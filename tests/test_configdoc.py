"""One declaration per key: the generated reference is committed as generated, and every key behaves as declared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from asyncgate import configdoc
from asyncgate.config import ConfigError, Unit, declared_keys, load
from asyncgate.config.reference import duration_text, size_text, value_text
from asyncgate.config.values import SigningSecret
from asyncgate.netguard import Allowlist

REPO = Path(__file__).parent.parent
KEYS = declared_keys()
UPSTREAM = {"ASYNCGATE_UPSTREAM": "http://127.0.0.1:8000"}
#: Written out rather than derived, so that a choice key losing its Literal fails here.
CHOICE_KEYS = {
    "server.log_format": ("text", "json"),
    "server.log_level": ("critical", "error", "warning", "info", "debug"),
    "store.sqlite_synchronous": ("full", "normal"),
    "store.durability": ("default", "strict"),
    "webhooks.format": ("body", "envelope"),
    "access.mode": ("header", "open"),
}


@pytest.mark.parametrize("name", sorted(configdoc.RENDERERS))
def test_committed_reference_is_what_the_declarations_render(name: str) -> None:
    current, rendered = configdoc.rendered(REPO)[name]
    assert current == rendered, f"{name} is out of date: run python -m asyncgate.configdoc"


def test_configdoc_check_reports_a_stale_file_and_rewrites_it(tmp_path: Path) -> None:
    for name in configdoc.RENDERERS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((REPO / name).read_text())
    example = tmp_path / configdoc.EXAMPLE
    example.write_text(example.read_text().replace("max_inflight: 64", "max_inflight: 65"))
    command = [sys.executable, "-m", "asyncgate.configdoc", "--root", str(tmp_path)]
    stale = subprocess.run([*command, "--check"], capture_output=True, text=True, check=False)
    assert (stale.returncode, stale.stderr) == (1, "config.example.yaml: out of date\n")
    written = subprocess.run(command, capture_output=True, text=True, check=False)
    assert (written.returncode, written.stdout) == (0, "config.example.yaml: rewritten\n")
    assert example.read_text() == (REPO / configdoc.EXAMPLE).read_text()


def test_configdoc_outside_a_checkout_is_one_line_and_exit_2(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "asyncgate.configdoc", "--check"]
    outside = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert (outside.returncode, outside.stdout) == (2, "")
    assert outside.stderr == (
        f"python -m asyncgate.configdoc: {tmp_path} is not an asyncgate checkout (no config.example.yaml): "
        "run it at the top of one, or give --root\n"
    )


def test_example_file_holds_every_key_with_its_default() -> None:
    data = yaml.safe_load((REPO / "config.example.yaml").read_text())
    defaults = load(None, environ={}, require_upstream=False)
    for key in KEYS.values():
        section, _, name = key.name.rpartition(".")
        written = data[section][name] if section else data[name]
        from_file = load(None, environ={}, overrides={key.name: written}, require_upstream=False)
        if key.name != "upstream":  # the one key without a default: the example names one
            parsed = getattr(getattr(from_file, section), name) if section else getattr(from_file, name)
            expected = getattr(getattr(defaults, section), name) if section else getattr(defaults, name)
            assert parsed == expected, key.name


def test_docs_table_rows_name_each_key_its_variable_and_default() -> None:
    docs = (REPO / "docs/configuration.md").read_text()
    for key in KEYS.values():
        assert f"| `{key.name}` | `{value_text(key)}` | `{key.env}` |" in docs


def test_helm_schema_leaves_out_exactly_the_keys_the_chart_sets() -> None:
    schema = json.loads((REPO / "helm/asyncgate/values.schema.json").read_text())["properties"]["config"]
    in_schema = {
        f"{section}.{name}"
        for section, body in schema["properties"].items()
        if section != "routes"
        for name in body["properties"]
    }
    chart_set = {name for name, key in KEYS.items() if key.info.chart}
    assert in_schema == set(KEYS) - chart_set
    assert chart_set >= {"upstream", "server.port", "store.redis_url", "shutdown.drain_timeout"}


def test_choice_keys_are_exactly_the_literal_ones() -> None:
    assert {name: key.choices for name, key in KEYS.items() if key.choices} == CHOICE_KEYS


@pytest.mark.parametrize("name", sorted(CHOICE_KEYS))
def test_every_choice_key_refuses_other_values_naming_the_allowed_ones(name: str, tmp_path: Path) -> None:
    allowed = ", ".join(CHOICE_KEYS[name])
    for value in CHOICE_KEYS[name]:
        load(None, environ={**UPSTREAM, KEYS[name].env: value})
    with pytest.raises(ConfigError) as caught:
        load(None, environ={**UPSTREAM, KEYS[name].env: "Loud"})
    assert str(caught.value) == f"{name}: expected one of {allowed}, got 'Loud'"
    section, _, key = name.partition(".")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"upstream": "http://127.0.0.1:8000", section: {key: "loud"}}))
    result = subprocess.run(
        [sys.executable, "-m", "asyncgate", "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"asyncgate: configuration error: {name}: expected one of {allowed}, got 'loud'\n"


@pytest.mark.parametrize("name", sorted(KEYS))
def test_every_key_is_set_by_its_environment_variable(name: str) -> None:
    key = KEYS[name]
    text = {
        Unit.DURATION: "0s,7s" if key.info.is_list else "7s",
        Unit.SIZE: "7KiB",
        Unit.SECRET: "whsec_" + "QUJDREVGR0hJSktMTU5PUA==" if name == "webhooks.signing_secrets" else "s" * 16,
    }.get(key.info.unit)
    if name == "store.encryption_key":
        text = "A" * 43 + "="
    elif text is None:
        text = _plain_text(name)
    # A remote upstream: with Redis, a loopback one needs a deployment named too.
    remote = {"ASYNCGATE_UPSTREAM": "http://model.internal:8000"}
    config = load(None, environ={**remote, key.env: text}, require_upstream=False)
    section, _, field = name.rpartition(".")
    value = getattr(getattr(config, section), field) if section else getattr(config, field)
    default = getattr(getattr(load(None, environ=UPSTREAM), section), field) if section else None
    assert value != default or name == "upstream", f"{key.env}={text} left {name} at its default"


def _plain_text(name: str) -> str:
    key = KEYS[name]
    if key.choices:
        return key.choices[-1]
    special = {
        "upstream": "http://127.0.0.1:9000",
        "deployment": "models-a",
        "server.prefix": "/_gate",
        "store.redis_url": "redis://127.0.0.1:1/0",
        "webhooks.default_url": "https://hooks.example.com/x",
        "runs.progress_base_url": "http://asyncgate.models.svc:8080",
        "webhooks.allow": "10.0.0.0/8,hooks.internal",
    }
    if name in special:
        return special[name]
    if key.base is bool:
        return "false" if key.default else "true"
    if key.base is int:
        return "7"
    return "elsewhere"


def test_parsed_values_are_parsed_once_in_the_config() -> None:
    secret = "whsec_" + "QUJDREVGR0hJSktMTU5PUA=="
    environ = {**UPSTREAM, "ASYNCGATE_WEBHOOKS_ALLOW": "10.0.0.0/8, hooks.internal"}
    config = load(None, environ={**environ, "ASYNCGATE_WEBHOOKS_SIGNING_SECRETS": secret})
    assert config.webhooks.allow == Allowlist.parse(["10.0.0.0/8", "hooks.internal"])
    (signing,) = config.webhooks.signing_secrets
    assert isinstance(signing, SigningSecret)
    assert signing.key == b"ABCDEFGHIJKLMNOP"
    assert secret not in repr(config)


def test_a_malformed_allowlist_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, environ={**UPSTREAM, "ASYNCGATE_WEBHOOKS_ALLOW": "10.0.0.1/8"})
    assert caught.value.key == "webhooks.allow"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0, "0s"), (0.5, "500ms"), (5.0, "5s"), (90.0, "90s"), (300.0, "5m"), (86400.0, "24h")]
)
def test_durations_are_shown_in_their_largest_whole_unit(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(("size", "text"), [(1000, "1000"), (65536, "64KiB"), (16 << 20, "16MiB"), (1 << 30, "1GiB")])
def test_sizes_are_shown_in_their_largest_whole_unit(size: int, text: str) -> None:
    assert size_text(size) == text


def test_serve_flags_are_the_declared_ones() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asyncgate", "serve", "--help"], capture_output=True, text=True, check=True
    )
    flags = {key.info.flag for key in KEYS.values() if key.info.flag}
    assert flags == {"--upstream", "--deployment", "--host", "--port", "--redis-url", "--data-dir", "--workers",
                     "--allow-upstream-change", "--log-format", "--log-level"}  # fmt: skip
    for flag in flags:
        assert flag in result.stdout
