"""Run asyncgate's benchmark: every scenario, every peer, one table of figures and ratios.

    python bench/run.py                 # the full run (about 20 minutes)
    python bench/run.py --quick         # a smoke check (about 4 minutes)
    python bench/run.py --only S1,S3 --json out.json

bench/README.md explains the scenarios, the peers and the pinning.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import report, services, tools
from harness.procs import LOAD_CORE, Supervisor, pin_self, raise_nofile_limit
from harness.scenarios import SCENARIOS, Bench, Plan

OUT_DIR = Path(__file__).resolve().parent / "out"
REPO = Path(__file__).resolve().parent.parent


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short durations and sizes: a smoke check")
    parser.add_argument("--only", help=f"comma-separated scenarios among {','.join(SCENARIOS)}")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
    parser.add_argument("--no-install", action="store_true", help="check the peers' packages, install nothing")
    parser.add_argument("--peers-only", action="store_true", help="leave the gateway out")
    parser.add_argument(
        "--gateway",
        choices=["snapshot", "installed"],
        default="snapshot",
        help="snapshot (default): a copy of src/ taken at start, so edits during the run do not reach it; "
        "installed: the `asyncgate` command on PATH",
    )
    parser.add_argument("--redis-durable", action="store_true", help="Redis with AOF, appendfsync everysec")
    parser.add_argument(
        "--fleet-runs", help="FLEET: runs held at once, comma-separated (default 10000,50000; --quick 2000)"
    )
    parser.add_argument("--fleet-per-gateway", type=int, help="FLEET: runs each gateway holds (default 10000)")
    parser.add_argument(
        "--fleet-wave",
        action="store_true",
        help="FLEET: answer every held run at once (default: at the pace they arrived)",
    )
    args = parser.parse_args(argv)
    names = [n.strip().upper() for n in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose among {', '.join(SCENARIOS)}")
    args.scenarios = names
    return args


def _plan(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan.full()
    if args.fleet_runs:
        plan = dataclasses.replace(plan, fleet_runs=tuple(int(n) for n in args.fleet_runs.split(",")))
    if args.fleet_per_gateway:
        plan = dataclasses.replace(plan, fleet_per_gateway=args.fleet_per_gateway)
    if args.fleet_wave:
        plan = dataclasses.replace(plan, fleet_wave=True)
    return plan


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into an exception so every `finally` stops its processes.
    raise KeyboardInterrupt(f"signal {signum}")


def _gateway(args: argparse.Namespace, workdir: Path) -> tuple[services.GatewayCommand | None, str]:
    if args.peers_only:
        return None, "left out (--peers-only)"
    if args.gateway == "installed":
        return services.installed_gateway()
    return services.snapshot_gateway(REPO / "src", workdir)


def _git_state() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    changed = len(git("status", "--porcelain", "--", "src").splitlines())
    return f"{git('rev-parse', '--short', 'HEAD')}" + (f" + {changed} uncommitted path(s) in src/" if changed else "")


def _header(meta: dict[str, Any]) -> str:
    machine = meta["machine"]
    return (
        f"## asyncgate bench, {meta['date']}\n\n"
        f"`{meta['command']}`: {machine['nproc']} cores ({machine['cpu']}), {machine['memory']}, "
        f"kernel {machine['kernel']}; {meta['seconds']} s; "
        f"load average before {meta['loadavg_before']}, after {meta['loadavg_after']}; "
        f"gateway: {meta['gateway']} at {meta['git']}\n\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    raise_nofile_limit()
    if (os.cpu_count() or 1) < 2:
        _log("fewer than 2 cores: the pinning below assumes cores 0 and 1")
    pin_self(LOAD_CORE)
    tools.ensure(install=not args.no_install, log=_log)
    OUT_DIR.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=OUT_DIR))
    workdir.chmod(0o755)  # nginx's workers drop root and must read the static file under it
    _log(f"logs and configs in {workdir}")
    gateway, origin = _gateway(args, workdir)
    missing = None if gateway else origin
    _log(f"gateway: {origin}" if gateway else f"gateway not measured: {origin}")
    plan = _plan(args)
    sup = Supervisor(workdir / "logs")
    bench = Bench(sup, workdir, plan, args.redis_durable, gateway, missing)
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        for name in args.scenarios:
            try:
                SCENARIOS[name](bench)
            except Exception:
                _log(f"{name} aborted:\n{traceback.format_exc()}")
            finally:
                sup.close()
    finally:
        sup.close()
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "quick": args.quick,
        "scenarios": args.scenarios,
        "seconds": round(time.monotonic() - started),
        "machine": tools.machine(),
        "versions": tools.versions(),
        "plan": vars(plan),
        "pinning": {"system_under_test": 0, "load_upstream_redis": LOAD_CORE},
        "gateway": origin,
        "git": _git_state(),
        # Other work on the machine skews the figures: a high load average here says so.
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    text = _header(meta) + report.render(bench.sections, bench.checks)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(bench.sections, bench.checks, meta), indent=2) + "\n")
    _log(f"done in {meta['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
