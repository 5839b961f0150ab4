"""FLEET: S4 at scale, tens of thousands of runs held at once by several gateways on one Redis (#18).

For each size of ``plan.fleet_runs``: a fresh redis-server with AOF, ``runs /
plan.fleet_per_gateway`` gateways, and one upstream (peers/hold_upstream.py) per gateway on a
loopback address of its own (127.0.0.2, 127.0.0.3, ...), so that no address pair runs out of
ephemeral ports (about 28,000 in Linux's default range) and no process needs more descriptors
than one gateway's share (a container may cap ulimit -n, hard, at 20,000). Then, measured by
the bench:

1. idle: the gateways started and holding nothing, ``plan.fleet_window_s`` of Redis's counters;
2. fill: harness/fleetload.py submits every run over the gateways' URLs; the time until the last
   202 (accept) and until the upstream holds them all (held);
3. held: the same window while every run is held: Redis commands/s and CPU, the gateways' CPU,
   and memory per held run (gateways' RSS and Redis's used_memory, against idle);
4. finish: the upstreams answer the runs in the order and at the pace they came (or all at once,
   ``plan.fleet_wave``); the time until the gateways have finished them all, the commands Redis
   executed per run over its life, and every run's status read back.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import resource
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import services
from .cpu import OtherLoad, process_seconds
from .memory import rss_mib
from .procs import BenchError, free_port, http_get, run_bounded, wait_http
from .report import Check, Section, at_least, at_most
from .services import Server

if TYPE_CHECKING:
    from .scenarios import Bench

HARNESS_DIR = Path(__file__).resolve().parent.parent
UPSTREAM = HARNESS_DIR / "peers" / "hold_upstream.py"
#: Past the first heartbeat and recovery pass of every gateway before a window starts.
SETTLE_S = 6.0
#: Descriptors a process needs beyond its held connections (Redis, listeners, logs).
SPARE_FDS = 1024
BODY_BYTES = 1024
#: Issue 18: holding costs Redis at most this many commands/s above idle gateways...
HELD_EXTRA_CMDS = 20.0
#: ...and a run at most this many executed commands from submit to its final state.
CMDS_PER_RUN = 15.0

COLUMNS = ["system", "runs", "gateways", "held_at_once", "succeeded", "accept_s", "accept_rps", "held_s",
           "finish_s", "gw_kib_per_run", "redis_kib_per_run", "cmds_s_idle", "cmds_s_held", "redis_cpu_held_pct",
           "gw_cpu_held_pct", "cmds_per_run", "redis_us_per_run", "gw_ms_per_run", "redis_kib_per_done",
           "gw_idle_mib", "other_cpu_pct", "note"]  # fmt: skip


def fleet(bench: Bench) -> None:
    plan = bench.plan
    bench.log(f"FLEET: {', '.join(f'{n:,}' for n in plan.fleet_runs)} runs held, "
              f"{plan.fleet_per_gateway:,} per gateway, one Redis with AOF")  # fmt: skip
    rows = []
    for runs in plan.fleet_runs:
        if bench.gateway_missing is not None:
            rows.append({"system": "asyncgate", "runs": runs, "note": f"not run: {bench.gateway_missing}"})
            continue
        rows.append(_size(bench, runs, math.ceil(runs / plan.fleet_per_gateway)))
    bench.sections.append(Section(f"FLEET - S4 at scale: {_sizes(plan.fleet_runs)} runs held across gateways on "
                                  "one Redis", COLUMNS, rows, _notes(bench)))  # fmt: skip
    for row in rows:
        bench.checks += _checks(row)


def _sizes(runs: tuple[int, ...]) -> str:
    return " and ".join(f"{n:,}" for n in runs)


def _notes(bench: Bench) -> list[str]:
    plan = bench.plan
    return [
        "Every process unpinned (both cores). Redis: a fresh redis-server with AOF (appendfsync everysec). "
        "Upstream: bench/peers/hold_upstream.py (raw asyncio + httptools), one process per gateway: gateway i is "
        "sent to 127.0.0.(2+i), so no address pair needs more ephemeral ports than one gateway holds, and no "
        "process more descriptors than one gateway's share (a hard ulimit -n may cap them); the gateways share "
        "one deployment (ASYNCGATE_STORE_ALLOW_UPSTREAM_CHANGE=true: their upstream URLs differ by address). "
        "The upstreams hold every request until the bench releases them, then answer them "
        + (
            "all at once (--fleet-wave)"
            if plan.fleet_wave
            else "in the order and at the pace they arrived, so that every run is held for the same time"
        )
        + "; held_at_once is the upstreams' own count of requests held at the release.",
        f"Each gateway: ASYNCGATE_LIMITS_MAX_INFLIGHT={plan.fleet_per_gateway:,} (runs / gateways), "
        "MAX_QUEUED 2 x runs, lease settings at their defaults. Submits: bench/harness/fleetload.py (raw asyncio, "
        f"64 at once, round robin over the gateways), {BODY_BYTES} B POST ?async=true each.",
        "accept_s: first submit to last 202 (accept_rps: runs / accept_s); held_s: first submit until the "
        "upstream holds every run; finish_s: the release until the gateways' asyncgate_runs_finished_total "
        "sum to the runs (answered at the pace they came, the last run's answer leaves about held_s after the "
        "release); succeeded: runs whose status, read back one by one afterwards, is succeeded.",
        f"gw_kib_per_run: the gateways' summed VmRSS while holding minus idle, per run; redis_kib_per_run: INFO "
        f"used_memory likewise (each run carries its {BODY_BYTES} B body while held). cmds_s_idle / cmds_s_held: "
        "INFO total_commands_processed (commands inside scripts included) per second over "
        f"{plan.fleet_window_s:g} s, idle and then holding; redis_cpu_held_pct / gw_cpu_held_pct: CPU Redis / "
        "all gateways used in the holding window, % of one core.",
        "cmds_per_run / redis_us_per_run / gw_ms_per_run: commands Redis executed, CPU it used and CPU the "
        "gateways used (intake, claim, the call, finish) from the first submit until every run finished, the "
        "idle rates taken off, per run (no webhooks). redis_kib_per_done: used_memory once every run finished, "
        "against idle, per run: what a finished run keeps until runs.retention. gw_idle_mib: one idle gateway's "
        "RSS.",
    ]


def _checks(row: dict[str, Any]) -> list[Check]:
    runs = row["runs"]
    label = f"{runs:,} runs"
    done = row.get("succeeded")
    held_extra = None
    if row.get("cmds_s_held") is not None and row.get("cmds_s_idle") is not None:
        held_extra = row["cmds_s_held"] - row["cmds_s_idle"]
    return [
        Check("FLEET", f"{label}: runs succeeded", done, f"= {runs:,}", None if done is None else done == runs),
        at_least("FLEET", f"{label}: held at once", row.get("held_at_once"), runs, ""),
        at_most("FLEET", f"{label}: Redis commands/s held above idle", held_extra, HELD_EXTRA_CMDS, ""),
        at_most("FLEET", f"{label}: Redis commands per run", row.get("cmds_per_run"), CMDS_PER_RUN, ""),
    ]


@dataclass
class Fleet:
    """What one size runs on: Redis, one upstream per gateway on an address of its own, the gateways."""

    redis: Server
    upstreams: list[Server] = field(default_factory=list)
    gateways: list[Server] = field(default_factory=list)

    @property
    def redis_port(self) -> int:
        return int(self.redis.url.rsplit(":", 1)[1].split("/")[0])

    def held(self) -> int:
        """Requests the upstreams hold now, by their own count."""
        return sum(json.loads(http_get(u.url + "/__stats", timeout=10)[1])["held"] for u in self.upstreams)

    def release(self) -> None:
        for upstream in self.upstreams:
            http_get(upstream.url + "/__release", timeout=60)

    def info(self) -> dict[str, str]:
        return redis_info(self.redis_port)

    def gateway_rss_mib(self) -> float:
        return sum(rss_mib(g.child.pid) for g in self.gateways)

    def gateway_cpu_s(self) -> float:
        return sum(process_seconds(g.child.pid) for g in self.gateways)

    def finished(self) -> int | None:
        """Runs the gateways finished, by their metrics; None when one is too busy to answer."""
        total = 0.0
        for gateway in self.gateways:
            try:
                _, body = http_get(gateway.url + "/_asyncgate/metrics", timeout=30)
            except OSError:
                return None
            found = re.findall(rb"^asyncgate_runs_finished_total\{[^}]*\} ([\d.e+]+)$", body, re.M)
            total += sum(float(v) for v in found)
        return int(total)

    def warnings(self, text: str) -> int:
        """Lines of the gateways' logs that contain ``text``."""
        return sum(g.child.log.read_text(errors="replace").count(text) for g in self.gateways)


def redis_info(port: int) -> dict[str, str]:
    """INFO all, as a dict: a raw socket, so the bench needs no Redis client of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"INFO all\r\n")
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        size = int(data[1 : data.index(b"\r\n")])
        while len(data) < data.index(b"\r\n") + 2 + size:
            data += sock.recv(65536)
    text = data[data.index(b"\r\n") + 2 :].decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def _counters(info: dict[str, str]) -> tuple[int, float]:
    """Commands executed so far (a script's commands included), and Redis's CPU seconds."""
    return int(info["total_commands_processed"]), float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


@dataclass
class Window:
    commands_s: float
    redis_cpu_pct: float
    gateway_cpu_pct: float


def _window(fleet: Fleet, seconds: float) -> Window:
    total0, cpu0 = _counters(fleet.info())
    gw0, at = fleet.gateway_cpu_s(), time.monotonic()
    time.sleep(seconds)
    total1, cpu1 = _counters(fleet.info())
    gw1, elapsed = fleet.gateway_cpu_s(), time.monotonic() - at
    # The second INFO is the bench's own command.
    return Window((total1 - total0 - 1) / elapsed, 100 * (cpu1 - cpu0) / elapsed, 100 * (gw1 - gw0) / elapsed)


def ensure_descriptors(needed: int) -> int:
    """Raise this process's open-file limit (children inherit it) to ``needed`` where allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    with contextlib.suppress(ValueError, OSError):
        # Raising the hard limit needs CAP_SYS_RESOURCE (root); otherwise up to the hard limit.
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, max(hard, needed)))
        return needed
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _ephemeral_ports() -> int:
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return high - low + 1


def _size(bench: Bench, runs: int, gateways: int) -> dict[str, Any]:
    system = f"asyncgate redis x{gateways}"
    row: dict[str, Any] = {"system": system, "runs": runs, "gateways": gateways}
    per_gateway = math.ceil(runs / gateways)
    # One process holds at most per_gateway connections (a gateway, or the upstream sent its calls).
    limit = ensure_descriptors(per_gateway + SPARE_FDS)
    try:
        if limit < per_gateway + SPARE_FDS:
            raise BenchError(f"ulimit -n is {limit}: {per_gateway:,} runs per gateway need {per_gateway + SPARE_FDS:,}")
        if per_gateway > _ephemeral_ports() - SPARE_FDS:
            raise BenchError(f"{per_gateway:,} connections per gateway exceed the ephemeral port range")
        with _fleet(bench, runs, gateways, per_gateway) as running, OtherLoad() as other:
            row.update(_measure(bench, running, runs))
            row["other_cpu_pct"] = other.mean_pct
    except BenchError as exc:
        bench.log(f"  {system} failed: {exc}")
        row["note"] = f"error: {str(exc).splitlines()[0][:300]}"
    bench.log(f"  {system}: {row}")
    return row


@contextlib.contextmanager
def _fleet(bench: Bench, runs: int, gateways: int, per_gateway: int) -> Iterator[Fleet]:
    data = bench.workdir / f"fleet-{runs}-redis"
    data.mkdir()
    running = Fleet(services.start_redis(bench.sup, data, durable=True, core=None))
    max_hold = _fill_deadline(runs) + 4 * bench.plan.fleet_window_s + 300
    env = {"ASYNCGATE_LIMITS_MAX_INFLIGHT": str(per_gateway), "ASYNCGATE_LIMITS_MAX_QUEUED": str(2 * runs),
           "ASYNCGATE_STORE_ALLOW_UPSTREAM_CHANGE": "true"}  # fmt: skip
    try:
        for i in range(gateways):
            upstream = _start_upstream(bench, f"127.0.0.{2 + i}", max_hold, bench.plan.fleet_wave)
            running.upstreams.append(upstream)
            running.gateways.append(bench.start_gateway(upstream, redis=running.redis, core=None, env=env,
                                                        name=f"gateway-{i}"))  # fmt: skip
        yield running
    finally:
        for server in (*running.gateways, *running.upstreams, running.redis):
            bench.sup.stop(server.child)
        shutil.rmtree(data, ignore_errors=True)  # the AOF: hundreds of MiB at 50,000 runs


def _start_upstream(bench: Bench, host: str, max_hold: float, wave: bool) -> Server:
    port = free_port()
    argv = [sys.executable, str(UPSTREAM), str(port), host, str(max_hold), "wave" if wave else "replay"]
    child = bench.sup.spawn(f"hold-upstream-{host}", argv, core=None)
    url = f"http://{host}:{port}"
    wait_http(url + "/__stats", child, services.START_TIMEOUT_S)
    return Server(child.name, url, child)


def _fill_deadline(runs: int) -> float:
    return 60 + runs / 50


def _measure(bench: Bench, fleet: Fleet, runs: int) -> dict[str, Any]:
    window_s = bench.plan.fleet_window_s
    bench.wait_quiet()
    time.sleep(SETTLE_S)
    idle = _window(fleet, window_s)
    used0, rss0 = int(fleet.info()["used_memory"]), fleet.gateway_rss_mib()
    total0, cpu0 = _counters(fleet.info())
    gw0 = fleet.gateway_cpu_s()
    bench.log(f"  idle: {idle}; submitting {runs:,} runs")
    ids = bench.workdir / f"fleet-{runs}-ids.txt"
    urls = ",".join(g.url for g in fleet.gateways)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        submitted = pool.submit(_fleetload, "submit", urls, ids, runs, _fill_deadline(runs))
        held_s = _wait_held(fleet, runs, submitted, started, started + _fill_deadline(runs))
        accepted = submitted.result()
    figures: dict[str, Any] = {
        "accept_s": accepted["seconds"],
        "accept_rps": round(accepted["accepted"] / accepted["seconds"]) if accepted["seconds"] else None,
        "held_s": round(held_s, 1) if held_s is not None else None,
    }
    problems = []
    if accepted["accepted"] != runs:
        problems.append(f"{runs - accepted['accepted']} submits refused {accepted['refused']}")
    if held_s is None:
        problems.append(f"held {fleet.held():,} within {_fill_deadline(runs):g} s")
    bench.log(f"  submitted: {accepted}; all held after {held_s} s")
    time.sleep(SETTLE_S)
    held = _window(fleet, window_s)
    used1, rss1 = int(fleet.info()["used_memory"]), fleet.gateway_rss_mib()
    figures.update(
        held_at_once=fleet.held(),
        gw_kib_per_run=round((rss1 - rss0) * 1024 / runs, 1),
        redis_kib_per_run=round((used1 - used0) / 1024 / runs, 2),
        cmds_s_idle=round(idle.commands_s, 1),
        cmds_s_held=round(held.commands_s, 1),
        redis_cpu_held_pct=round(held.redis_cpu_pct, 2),
        gw_cpu_held_pct=round(held.gateway_cpu_pct, 1),
    )
    bench.log(f"  held: {held}")
    released = time.monotonic()
    fleet.release()
    finish_s = _wait_finished(fleet, accepted["accepted"], released + _fill_deadline(runs))
    total1, cpu1 = _counters(fleet.info())
    gw1, life = fleet.gateway_cpu_s(), time.monotonic() - started
    figures["gw_idle_mib"] = round(rss0 / len(fleet.gateways))
    if accepted["accepted"]:
        count = accepted["accepted"]
        figures["cmds_per_run"] = round((total1 - total0 - idle.commands_s * life) / count, 1)
        figures["redis_us_per_run"] = round((cpu1 - cpu0 - idle.redis_cpu_pct / 100 * life) / count * 1e6)
        figures["gw_ms_per_run"] = round((gw1 - gw0 - idle.gateway_cpu_pct / 100 * life) / count * 1e3, 2)
        # What a finished run leaves in Redis until runs.retention: its record, result and event log.
        figures["redis_kib_per_done"] = round((int(fleet.info()["used_memory"]) - used0) / 1024 / count, 2)
    figures["finish_s"] = round(finish_s, 1) if finish_s is not None else None
    if finish_s is None:
        problems.append(f"{fleet.finished()} finished within {_fill_deadline(runs):g} s of the release")
    states = _fleetload("verify", urls, ids, runs, _fill_deadline(runs))["states"]
    figures["succeeded"] = states.get("succeeded", 0)
    others = {state: n for state, n in states.items() if state != "succeeded"}
    if others:
        problems.append(f"not succeeded: {others}")
    # A gateway whose heartbeat cannot reach Redis for runs.lease loses its runs to recovery.
    late = fleet.warnings("cannot renew leases")
    if late:
        problems.append(f"{late} heartbeats failed (gateway logs: cannot renew leases)")
    figures["note"] = "; ".join(problems)
    return figures


def _fleetload(command: str, urls: str, ids: Path, runs: int, timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "harness.fleetload", command, "--urls", urls, "--ids", str(ids), "--n", str(runs),
            "--body", str(BODY_BYTES)]  # fmt: skip
    done = run_bounded(argv, core=None, timeout=timeout, env={"PYTHONPATH": str(HARNESS_DIR)})
    if done.returncode != 0:
        raise BenchError(f"fleetload {command} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _wait_held(
    fleet: Fleet, runs: int, submitted: Future[dict[str, Any]], started: float, deadline: float
) -> float | None:
    """Seconds from ``started`` until the upstreams hold every run accepted; None past the deadline."""
    while time.monotonic() < deadline:
        held = fleet.held()
        if held >= runs:
            return time.monotonic() - started
        if submitted.done() and submitted.exception():
            return None
        if submitted.done() and held >= submitted.result()["accepted"]:
            return time.monotonic() - started  # some submits were refused (the row's note says so)
        time.sleep(0.25)
    return None


def _wait_finished(fleet: Fleet, runs: int, deadline: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() < deadline:
        if (fleet.finished() or 0) >= runs:
            return time.monotonic() - started
        time.sleep(0.5)
    return None
