"""Import cost: ``import sigma_db`` vs ``import sqlalchemy``, each in a fresh interpreter.

Target (issue #3): ratio <= 1.3. Also reports the cost a service really pays on first use
(settings + engine factory loaded), since the package face is lazy.

    python bench/bench_import.py [--runs 25]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "python (startup only)": "pass",
    "import sqlalchemy": "import sqlalchemy",
    "import sigma_db": "import sigma_db",
    "sqlalchemy: build an engine": (
        "import sqlalchemy; sqlalchemy.create_engine('postgresql+psycopg://u:p@h:5432/edge_lab')"
    ),
    "sigma_db: settings + build an engine": (
        "from sigma_db import DatabaseSettings, create_engine; create_engine(DatabaseSettings("
        "_env_file=None, host='h', port=5432, name='edge_lab', user='u', password='p'))"
    ),
}


def timed(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()
    for code in CASES.values():
        timed(code)  # warm the OS file cache and .pyc files
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.runs):  # interleaved so noise hits every case alike
        for name, code in CASES.items():
            samples[name].append(timed(code))
    startup = statistics.median(samples["python (startup only)"])
    cost = {name: statistics.median(times) - startup for name, times in samples.items()}
    print(f"{'case':<38}{'median, minus startup':>22}")
    for name in CASES:
        print(f"{name:<38}{cost[name] * 1000:>19.1f} ms")
    ratio = cost["import sigma_db"] / cost["import sqlalchemy"]
    first_use = cost["sigma_db: settings + build an engine"] / cost["sqlalchemy: build an engine"]
    print(f"ratio import sigma_db / import sqlalchemy = {ratio:.2f} (target <= 1.3)")
    print(f"ratio first use, settings + engine / bare engine = {first_use:.2f} (informational)")


if __name__ == "__main__":
    main()
