"""Closed-loop HTTP load with wrk, pinned to the load core, summarised by harness/lua/bench.lua."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .procs import LOAD_CORE, BenchError, run_bounded

SCRIPT = Path(__file__).parent / "lua" / "bench.lua"
#: wrk's own per-request timeout; a request slower than this counts as an error.
REQUEST_TIMEOUT_S = 10
#: Slack on top of the run's duration before the wrk process is killed.
OVERRUN_S = 30


@dataclass(frozen=True)
class Load:
    connections: int
    duration: float
    method: str = "GET"
    body_bytes: int = 0
    threads: int = 1
    #: Authorization header value; the gateway's run endpoints want a caller.
    auth: str = ""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    #: Share of one core that processes outside the bench used meanwhile (see cpu.py).
    other_cpu_pct: float | None = None

    @property
    def ok_rps(self) -> float:
        """Requests per second that succeeded (2xx/3xx, no socket error)."""
        ok = max(self.requests - self.non_2xx - self.errors, 0)
        return ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float | None]:
        return {
            "rps": round(self.ok_rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
            "requests": self.requests,
            "errors": self.errors,
            "non_2xx": self.non_2xx,
            "other_cpu_pct": None if self.other_cpu_pct is None else round(self.other_cpu_pct, 1),
        }


def run_wrk(url: str, load: Load, *, core: int | None = LOAD_CORE) -> WrkResult:
    argv = [
        "wrk",
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{max(1, round(load.duration))}s",
        f"--timeout={REQUEST_TIMEOUT_S}s",
        "-s",
        str(SCRIPT),
        url,
    ]
    env = {"BENCH_METHOD": load.method, "BENCH_BODY_BYTES": str(load.body_bytes), "BENCH_AUTH": load.auth}
    done = run_bounded(argv, core=core, timeout=load.duration + OVERRUN_S, env=env)
    return parse(done.stdout, done.stderr)


def parse(stdout: str, stderr: str = "") -> WrkResult:
    for line in stdout.splitlines():
        if line.startswith("BENCHJSON "):
            raw = json.loads(line[len("BENCHJSON ") :])
            break
    else:
        raise BenchError(f"wrk printed no summary:\n{stdout}\n{stderr}")
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        non_2xx=raw["status"],
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
    )
