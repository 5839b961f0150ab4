"""Route policies: path patterns, the ``routes:`` key's validation, check-config's answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from asyncgate.config import load
from asyncgate.errors import ConfigError
from asyncgate.policies import AsyncMode, RoutePolicies, compile_pattern
from asyncgate.runs import Run, RunRequest, RunState, dump_request, load_request, recovery_outcome

#: A dozen routes, one of each kind of setting: what a platform team's file looks like.
DOZEN: list[dict[str, Any]] = [
    {"name": "health", "methods": ["GET"], "path": "/healthz/**", "async": "never"},
    {
        "name": "batch",
        "methods": ["POST"],
        "path": "/v1/batch/*",
        "async": "always",
        "timeout": "2h",
        "queue_deadline": "10m",
        "share": 100,
    },
    {"name": "embed", "methods": "POST", "path": "/v1/embeddings", "idempotent": True, "max_attempts": 5},
    {"path": "/v1/charge/**", "idempotent": False},
    {"name": "small", "path": "/v1/small/**", "max_body_bytes": "64KiB"},
    {"name": "hooked", "path": "/v1/hooked/**", "webhook": "https://hooks.example.com/done?token=s3cret"},
    {
        "name": "hooked-events",
        "path": "/v1/events/**",
        "webhook": {"url": "https://hooks.example.com/events", "events": ["completed"]},
    },
    {"name": "put", "methods": ["put", "PATCH"], "path": "/v1/items/*", "async": "always"},
    {"name": "deep", "path": "/v1/*/deep/**", "priority": 5, "priority_max": 9},
    {"name": "short", "path": "/v1/short", "timeout": "500ms", "max_attempts": 1},
    {"name": "mixed", "methods": ["GET", "DELETE"], "path": "/v2/**"},
    {"name": "rest", "path": "/**"},
]


def config_with(routes: Any, **sections: Any) -> Any:
    return load(None, environ={}, overrides={"upstream": "http://a:1", "routes": routes, **sections})


def test_patterns_star_stays_in_a_segment_and_double_star_crosses_them() -> None:
    assert compile_pattern("/v1/*/deep").fullmatch("/v1/x/deep")
    assert not compile_pattern("/v1/*/deep").fullmatch("/v1/x/y/deep")
    assert compile_pattern("/v1/**").fullmatch("/v1/a/b/c")
    assert compile_pattern("/v1/**").fullmatch("/v1/")
    assert not compile_pattern("/v1/**").fullmatch("/v1")
    assert compile_pattern("/a.b+(c)").fullmatch("/a.b+(c)")
    assert not compile_pattern("/a.b").fullmatch("/axb")


def matched(policies: RoutePolicies, method: str, path: str) -> str:
    route = policies.match(method, path)
    assert route is not None, (method, path)
    return route.name


def test_a_dozen_routes_load_and_the_first_match_wins() -> None:
    config = config_with(DOZEN)
    policies = RoutePolicies(config.routes)
    names = [route.name for route in config.routes]
    assert names == [str(r.get("name", index)) for index, r in enumerate(DOZEN)]
    assert matched(policies, "GET", "/healthz/live") == "health"
    assert matched(policies, "POST", "/healthz/live") == "rest"
    assert matched(policies, "POST", "/v1/batch/jobs") == "batch"
    assert matched(policies, "POST", "/v1/batch/jobs/1") == "rest"
    assert matched(policies, "PUT", "/v1/items/7") == "put"
    assert matched(policies, "POST", "/v1/charge/x") == "3"
    batch = config.routes[1]
    assert (batch.mode, batch.timeout, batch.methods) == (AsyncMode.ALWAYS, 7200.0, frozenset({"POST"}))
    assert config.routes[4].max_body_bytes == 64 * 1024
    assert config.routes[5].webhook_url == "https://hooks.example.com/done?token=s3cret"
    assert config.routes[6].webhook_events == ("completed",)
    assert config.routes[9].timeout == 0.5
    assert (batch.priority, batch.highest_priority, batch.queue_deadline, batch.share) == (0, 0, 600.0, 100)
    deep = config.routes[8]
    assert (deep.priority, deep.highest_priority, deep.queue_deadline, deep.share) == (5, 9, None, None)
    assert RoutePolicies(config_with(None).routes).match("GET", "/") is None


@pytest.mark.parametrize(
    ("routes", "key", "message"),
    [
        ("/v1", "routes", "expected a list of routes"),
        ([{"path": "/a", "prio": 5}], "routes[0].prio", "unknown key (a route takes name, methods, path,"),
        ([{"path": "/a", "priority": 10}], "routes[0].priority", "expected a priority from 0 (lowest) to 9"),
        ([{"path": "/a", "priority": "high"}], "routes[0].priority", "expected a priority from 0"),
        ([{"path": "/a", "priority": 5, "priority_max": 3}], "routes[0].priority_max", "must not be lower"),
        ([{"path": "/a", "queue_deadline": "soon"}], "routes[0].queue_deadline", "expected a duration"),
        ([{"path": "/a", "queue_deadline": 0}], "routes[0].queue_deadline", "must be greater than zero"),
        ([{"path": "/a", "share": 0}], "routes[0].share", "must be greater than zero"),
        ([{"path": "/a", "async": "never", "share": 2}], "routes[0].share", "has no effect on a route"),
        ([{"path": "/a"}, {"path": "/b", "deadline": "5s"}], "routes[1].deadline", "unknown key"),
        ([{"path": "/a", "max_share": 3}], "routes[0].max_share", "unknown key"),
        ([{"methods": ["GET"]}], "routes[0].path", "expected a path pattern starting with /"),
        (["/a"], "routes[0]", "expected a mapping with at least a path"),
        ([{"path": "/a", "async": True}], "routes[0].async", "expected one of client, always, never"),
        ([{"path": "/a", "async": "never", "timeout": "5s"}], "routes[0].timeout", "has no effect on a route"),
        ([{"path": "/a", "async": "never", "webhook": "https://h.example/x"}], "routes[0].webhook", "has no effect"),
        ([{"path": "/a", "idempotent": "yes"}], "routes[0].idempotent", "expected true or false"),
        ([{"path": "/a", "timeout": "soon"}], "routes[0].timeout", "expected a duration"),
        ([{"path": "/a", "timeout": 0}], "routes[0].timeout", "must be greater than zero"),
        ([{"path": "/a", "max_attempts": 0}], "routes[0].max_attempts", "must be greater than zero"),
        ([{"path": "/a", "max_attempts": "two"}], "routes[0].max_attempts", "expected an integer"),
        ([{"path": "/a", "max_body_bytes": "lots"}], "routes[0].max_body_bytes", "expected a size"),
        ([{"path": "/a", "methods": []}], "routes[0].methods", "expected a method"),
        ([{"path": "/a", "methods": ["GE T"]}], "routes[0].methods", "expected a method"),
        ([{"path": "/a", "name": "a b"}], "routes[0].name", "expected 1 to 64 letters"),
        ([{"path": "/a", "name": "x"}, {"path": "/b", "name": "x"}], "routes[1].name", "'x' names an earlier route"),
        ([{"path": "/a"}, {"path": "/b", "name": "0"}], "routes[1].name", "'0' names an earlier route"),
        ([{"path": "/a", "webhook": "ftp://h.example/x"}], "routes[0].webhook", "expected an http:// or https://"),
        ([{"path": "/a", "webhook": "http://127.0.0.1/x"}], "routes[0].webhook", "refused destination"),
        ([{"path": "/a", "webhook": {"url": "http://10.0.0.1/x"}}], "routes[0].webhook.url", "refused destination"),
        (
            [{"path": "/a", "webhook": {"url": "https://h.example/x", "events": ["started"]}}],
            "routes[0].webhook.events",
            "expected a list of completed",
        ),  # fmt: skip
        (
            [{"path": "/a", "webhook": {"url": "https://h.example/x", "retry": 1}}],
            "routes[0].webhook",
            "expected a URL",
        ),
    ],
)
def test_bad_routes_name_the_route_and_key(routes: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_with(routes)
    assert info.value.key == key
    assert info.value.message.startswith(message) or message in info.value.message


def test_a_route_webhook_to_an_allowed_network_is_accepted() -> None:
    config = config_with([{"path": "/a", "webhook": "http://127.0.0.1:9/x"}], **{"webhooks.allow": ["127.0.0.0/8"]})
    assert config.routes[0].webhook_url == "http://127.0.0.1:9/x"


def test_routes_cannot_come_from_the_environment() -> None:
    with pytest.raises(ConfigError) as info:
        load(None, environ={"ASYNCGATE_UPSTREAM": "http://a:1", "ASYNCGATE_ROUTES": "[]"})
    assert info.value.key == "ASYNCGATE_ROUTES"


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "asyncgate", "check-config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_check_config_passes_a_dozen_routes_and_names_the_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"upstream": "http://model:8000", "routes": DOZEN}))
    result = run_check(good)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{good}: ok\n", "")
    bad = tmp_path / "bad.yaml"
    routes = [*DOZEN[:7], {**DOZEN[7], "priority": 10}, *DOZEN[8:]]
    bad.write_text(yaml.safe_dump({"upstream": "http://model:8000", "routes": routes}))
    result = run_check(bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "asyncgate: configuration error: routes[7].priority: expected a priority from 0 (lowest) to 9, got 10"
    ]


def _run(method: str, attempt: int = 1, **policy: Any) -> Run:
    request = RunRequest(method, "/p", "", (), None, 30.0, **policy)
    return Run("r", RunState.RUNNING, request, created_at=1.0, attempt=attempt)


def test_a_route_decides_resending_and_attempts_over_the_method_and_the_gateway() -> None:
    assert recovery_outcome(_run("POST", route="r", idempotent=True), 3) is None
    lost = recovery_outcome(_run("GET", route="r", idempotent=False), 3)
    assert lost is not None and lost.error is not None and lost.error.code == "lost"
    exhausted = recovery_outcome(_run("GET", route="r", max_attempts=1), 3)
    assert exhausted is not None and exhausted.error is not None and exhausted.error.code == "max_attempts"
    assert recovery_outcome(_run("GET", attempt=2, route="r", max_attempts=5), 3) is None


def test_policy_fields_round_trip_and_a_request_without_a_route_keeps_its_old_form() -> None:
    plain = RunRequest("GET", "/p", "", (), None, 30.0)
    assert b"route" not in dump_request(plain)
    assert load_request(dump_request(plain)) == plain
    routed = RunRequest("POST", "/p", "", (("A", "b"),), None, 30.0, route="batch", idempotent=True, max_attempts=2)
    assert load_request(dump_request(routed)) == routed
