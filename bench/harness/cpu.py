"""CPU used by processes that are not the bench's: the machine is shared, and this says how much.

The bench's processes are the harness and every session it started (each child gets its own
session, see procs.py); everything else is "other". Counted from /proc/<pid>/stat deltas
between samples one second apart, so a process that lives less than a second is missed.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from .procs import OUR_SESSIONS, proc_stats

SAMPLE_S = 1.0
TICKS = os.sysconf("SC_CLK_TCK")
#: Other processes using less than this share of one core count as a quiet machine.
QUIET_PCT = 15.0


def _cpu_by_pid() -> dict[int, tuple[int, float]]:
    """pid -> (session id, CPU seconds so far)."""
    # fields[3] is the session id; [11], [12] are utime and stime in clock ticks.
    return {pid: (int(fields[3]), (int(fields[11]) + int(fields[12])) / TICKS) for pid, fields in proc_stats()}


def process_seconds(pid: int) -> float:
    """CPU seconds one process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _other_seconds(before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]]) -> float:
    me = os.getpid()
    used = 0.0
    for pid, (sid, cpu) in after.items():
        if pid == me or sid in OUR_SESSIONS or pid not in before:
            continue
        used += cpu - before[pid][1]
    return used


@dataclass
class OtherLoad:
    """While in a `with` block, samples the share of one core used by other processes."""

    shares: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> OtherLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        before, at = _cpu_by_pid(), time.monotonic()
        while not self._stop.wait(SAMPLE_S):
            after, now = _cpu_by_pid(), time.monotonic()
            self.shares.append(100 * _other_seconds(before, after) / (now - at))
            before, at = after, now

    @property
    def mean_pct(self) -> float | None:
        return sum(self.shares) / len(self.shares) if self.shares else None


def wait_quiet(timeout: float) -> float:
    """Wait until other processes use less than QUIET_PCT of a core; returns the last share seen."""
    deadline = time.monotonic() + timeout
    share = 0.0
    while True:
        before, at = _cpu_by_pid(), time.monotonic()
        time.sleep(SAMPLE_S)
        share = 100 * _other_seconds(before, _cpu_by_pid()) / (time.monotonic() - at)
        if share < QUIET_PCT or time.monotonic() >= deadline:
            return share
