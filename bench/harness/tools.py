"""The bench's own peers and tools: checked, installed when missing, and their versions noted."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .nginx import ECHO_MODULE
from .procs import BenchError

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
#: Command (or file) -> the Debian package that provides it.
APT = {
    "wrk": "wrk",
    "nginx": "nginx-light",
    str(ECHO_MODULE): "libnginx-mod-http-echo",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "taskset": "util-linux",
}
#: Python module -> distribution name, for the version report.
PYTHON = {
    "uvicorn": "uvicorn",
    "uvloop": "uvloop",
    "httptools": "httptools",
    "starlette": "starlette",
    "httpx": "httpx",
    "aiohttp": "aiohttp",
    "redis": "redis",
    "fastapi": "fastapi",
    "celery": "celery",
}
INSTALL_TIMEOUT_S = 900


def _present(tool: str) -> bool:
    return Path(tool).exists() if tool.startswith("/") else shutil.which(tool) is not None


def ensure(install: bool, log: Callable[[str], None]) -> None:
    missing_apt = sorted({pkg for tool, pkg in APT.items() if not _present(tool)})
    missing_py = [mod for mod in PYTHON if importlib.util.find_spec(mod) is None]
    if not missing_apt and not missing_py:
        return
    if not install:
        raise BenchError(f"missing: apt {missing_apt}, python {missing_py} (run without --no-install)")
    if missing_apt:
        if os.geteuid() != 0:
            raise BenchError(f"missing Debian packages {missing_apt}: apt-get install them as root")
        log(f"installing Debian packages: {' '.join(missing_apt)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=INSTALL_TIMEOUT_S, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing_apt], check=True, timeout=INSTALL_TIMEOUT_S, env=env
        )
    if missing_py:
        log(f"installing Python packages from {REQUIREMENTS.name}: missing {' '.join(missing_py)}")
        argv = [sys.executable, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)]
        subprocess.run(argv, check=True, timeout=INSTALL_TIMEOUT_S)
        importlib.invalidate_caches()


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def versions() -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "wrk": _first_line(["wrk", "-v"]),
        "nginx": _first_line(["nginx", "-v"]),
        "redis-server": _first_line(["redis-server", "--version"]),
    }
    for dist in PYTHON.values():
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "missing"
    try:
        found["asyncgate"] = importlib.metadata.version("asyncgate")
    except importlib.metadata.PackageNotFoundError:
        found["asyncgate"] = "not installed"
    return found


def machine() -> dict[str, str]:
    return {
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "memory": _first_line(["sh", "-c", "free -g | awk '/Mem:/ {print $2 \" GiB\"}'"]),
    }
