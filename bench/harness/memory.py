"""Resident memory of a process group, read from /proc and sampled on a thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .procs import proc_stats

SAMPLE_S = 0.05
REFRESH_EVERY = 20


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def group_pids(pgid: int) -> list[int]:
    """Every live process in group `pgid` (field 5 of /proc/<pid>/stat)."""
    return [pid for pid, fields in proc_stats() if int(fields[2]) == pgid]


def rss_mib(pgid: int, pids: list[int] | None = None) -> float:
    return sum(_status_kib(pid, "VmRSS") for pid in (pids if pids is not None else group_pids(pgid))) / 1024


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


@dataclass
class RssSampler:
    """Samples the group's summed VmRSS every SAMPLE_S while in a `with` block."""

    pgid: int
    samples: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.samples.append(rss_mib(self.pgid))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.samples.append(rss_mib(self.pgid))

    def _run(self) -> None:
        # Listing /proc is the costly part: refresh the group's members once a second only.
        pids, tick = group_pids(self.pgid), 0
        while not self._stop.wait(SAMPLE_S):
            tick += 1
            if tick % REFRESH_EVERY == 0:
                pids = group_pids(self.pgid)
            self.samples.append(rss_mib(self.pgid, pids))

    @property
    def baseline(self) -> float:
        return self.samples[0]

    @property
    def peak(self) -> float:
        return max(self.samples)
