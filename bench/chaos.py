"""Run the chaos test (tests/e2e/test_chaos.py) longer, or with another seed, than the suite does.

    python bench/chaos.py                          # 10 minutes, a random seed (printed)
    python bench/chaos.py --seconds 300 --seed 7   # reproduce a schedule

Three gateway processes on one Redis with AOF, steady mixed submissions, and a seeded schedule
of SIGKILL, SIGSTOP past the lease, SIGTERM and Redis restarts; the test's assertions say what
must hold at the end. Gateway logs stay in --basetemp (default bench/out/chaos-<seed>/).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))
    parser.add_argument("--basetemp", type=Path, default=None)
    args = parser.parse_args()
    basetemp = args.basetemp or ROOT / "bench" / "out" / f"chaos-{args.seed}"
    print(f"chaos: {args.seconds:.0f} s, seed {args.seed}, logs in {basetemp}", flush=True)
    env = {**os.environ, "ASYNCGATE_CHAOS_SECONDS": str(args.seconds), "ASYNCGATE_CHAOS_SEED": str(args.seed)}
    test = ["tests/e2e/test_chaos.py", "-q", "-s", "-p", "no:cacheprovider", f"--basetemp={basetemp}"]
    return subprocess.run([sys.executable, "-m", "pytest", *test], cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
