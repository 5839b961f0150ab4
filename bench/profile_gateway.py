"""Profile the gateway with py-spy while wrk drives S1 (sync GET) or S3 (async intake, Redis).

    python bench/profile_gateway.py S1 [--seconds 15]
    python bench/profile_gateway.py S3        # an intake-only gateway (runs.execute false)
    python bench/profile_gateway.py S3-all    # the default role: it also executes every run
    python bench/profile_gateway.py S3-hold   # the default role while it holds 5,000 runs (S3's held variant)
    python bench/profile_gateway.py S3-hold --native   # C frames too (uvloop, httptools, libc): see below

Writes collapsed stacks (for speedscope or flamegraph.pl) to bench/out/profile-*/ and prints where the
gateway's time goes: the functions with the most samples of their own, and by module.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import services
from harness.loadgen import CLIENT_AUTH
from harness.procs import LOAD_CORE, BenchError, Supervisor, pin_self, raise_nofile_limit, run_bounded
from harness.scenarios import (
    ASYNC_PATH,
    CONNECTIONS,
    HELD_ENV,
    HELD_RUNS,
    HOLD_FILL_S,
    INTAKE_ENV,
    INTAKE_ONLY_ENV,
    in_flight,
)
from harness.wrk import Load, run_wrk

OUT_DIR = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent
RATE_HZ = 200
_LINE_NO = re.compile(r":\d+\)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=["S1", "S3", "S3-all", "S3-hold"])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="sample C frames too (uvloop, httptools, libc)")
    args = parser.parse_args()
    raise_nofile_limit()
    pin_self(LOAD_CORE)
    OUT_DIR.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"profile-{args.scenario}-", dir=OUT_DIR))
    workdir.chmod(0o755)
    sup = Supervisor(workdir / "logs")
    try:
        raw = _profile(sup, workdir, args.scenario, args.seconds, args.native)
    finally:
        sup.close()
    print(_summary(raw, args.top))
    print(f"collapsed stacks in {workdir}", file=sys.stderr)
    return 0


def _py_spy() -> str:
    """py-spy from this interpreter's environment (bench/requirements.txt), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def _profile(sup: Supervisor, workdir: Path, scenario: str, seconds: float, native: bool = False) -> Path:
    if scenario == "S3-hold":
        upstream = services.start_py_upstream(sup, delay=3600)  # every run claimed stays held
    else:
        upstream = services.start_nginx_upstream(sup, workdir)
    redis = services.start_redis(sup, workdir, durable=False) if scenario != "S1" else None
    command, origin = services.snapshot_gateway(REPO / "src", workdir)
    if command is None:
        raise BenchError(origin)
    env = {"S1": {}, "S3": INTAKE_ONLY_ENV, "S3-all": INTAKE_ENV, "S3-hold": HELD_ENV}[scenario]
    gateway = services.start_gateway(sup, command, upstream, redis=redis, env=env)
    if scenario == "S1":
        path, load = "/1k", Load(CONNECTIONS, seconds + 4)
    else:
        path, load = ASYNC_PATH, Load(CONNECTIONS, seconds + 4, method="POST", body_bytes=1024, auth=CLIENT_AUTH)
    run_wrk(gateway.url + path, dataclasses.replace(load, duration=3))  # warm-up
    deadline = time.monotonic() + HOLD_FILL_S
    while scenario == "S3-hold" and in_flight(upstream) < HELD_RUNS:
        if time.monotonic() > deadline:
            raise BenchError(f"held {in_flight(upstream)} runs after {HOLD_FILL_S:g} s, not {HELD_RUNS}")
        run_wrk(gateway.url + path, dataclasses.replace(load, duration=2))
    result: dict[str, object] = {}
    driver = threading.Thread(target=lambda: result.update(wrk=run_wrk(gateway.url + path, load)))
    driver.start()
    time.sleep(2)
    # Collapsed stacks: speedscope and flamegraph.pl read them as they are.
    raw = workdir / f"{scenario}.collapsed.txt"
    argv = [_py_spy(), "record", "--pid", str(gateway.child.pid), "--duration", str(int(seconds)),
            "--rate", str(RATE_HZ), "--format", "raw", "--output", str(raw)]  # fmt: skip
    # py-spy reads C frames only from a stopped process: --native pauses the gateway at every
    # sample, which slows it, and the pauses land mostly on system calls, whose share reads high
    # (getpid came to 4 % of S3-hold's samples, where it costs 0.16 us a call here).
    argv.append("--native" if native else "--nonblocking")
    done = run_bounded(argv, core=LOAD_CORE, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"py-spy failed: {done.stderr[-500:]}")
    driver.join(timeout=seconds + 60)
    wrk = result.get("wrk")
    if wrk is not None:
        print(f"{scenario} under py-spy: {wrk.ok_rps:,.0f} req/s, p99 {wrk.p99_ms:.1f} ms", file=sys.stderr)  # type: ignore[attr-defined]
    return raw


def _summary(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_LINE_NO.sub(")", f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        modules[_module(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "## own time (leaf frames)"]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "## own time by file"]
    lines += [f"{100 * n / total:5.1f}%  {mod}" for mod, n in modules.most_common(top)]
    lines += ["", "## inclusive time (asyncgate frames)"]
    ours = [(f, n) for f, n in inclusive.most_common() if "asyncgate" in f][:top]
    lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in ours]
    return "\n".join(lines)


def _module(frame: str) -> str:
    match = re.search(r"\(([^)]*)\)", frame)
    if not match:
        return frame
    path = match.group(1)
    for marker in ("site-packages/", "lib/python3.11/", "src/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


if __name__ == "__main__":
    sys.exit(main())
