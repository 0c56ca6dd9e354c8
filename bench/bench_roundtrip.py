"""Query round trip: a sigma_db session vs a bare SQLAlchemy session with the same pool.

Target (issue #3): ratio <= 1.03. Both engines talk to the same throwaway server, with the same
pool size, pre-ping and recycle; rounds alternate between them so machine noise hits both.

    python bench/bench_roundtrip.py [--rounds 15] [--queries 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.orm import Session

from sigma_db import create_engine, create_session_factory, session_scope
from sigma_db.engine import engine_arguments
from sigma_db.testing import start_test_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    with start_test_server() as server:
        with server.connect() as admin:
            admin.execute("CREATE DATABASE edge_lab")
            admin.execute("ALTER DATABASE edge_lab SET search_path = app, public")
        settings = server.settings("edge_lab", product=None, conn_max=5)
        ours = create_engine(settings)
        with ours.begin() as conn:
            conn.execute(text("CREATE SCHEMA app"))
        factory = create_session_factory(ours)
        url, kwargs = engine_arguments(settings)
        kwargs["connect_args"] = {k: v for k, v in kwargs["connect_args"].items() if k != "options"}
        bare = sqlalchemy.create_engine(url, **kwargs)
        query = text("SELECT 1")

        def sigma_round() -> float:
            started = time.perf_counter()
            for _ in range(args.queries):
                with session_scope(factory) as session:
                    session.execute(query)
            return time.perf_counter() - started

        def bare_round() -> float:
            started = time.perf_counter()
            for _ in range(args.queries):
                with Session(bare) as session, session.begin():
                    session.execute(query)
            return time.perf_counter() - started

        sigma_round(), bare_round()  # warm pools, caches, prepared statements
        sigma_times, bare_times = [], []
        for _ in range(args.rounds):
            sigma_times.append(sigma_round())
            bare_times.append(bare_round())
        ours.dispose()
        bare.dispose()
    sigma_med, bare_med = statistics.median(sigma_times), statistics.median(bare_times)
    per = 1e6 / args.queries
    print(f"{'variant':<34}{'median/round':>14}{'per query':>12}")
    print(f"{'bare SQLAlchemy session':<34}{bare_med:>13.3f}s{bare_med * per:>10.1f}us")
    print(f"{'sigma_db session_scope':<34}{sigma_med:>13.3f}s{sigma_med * per:>10.1f}us")
    ratio = sigma_med / bare_med
    verdict = "ok" if ratio <= 1.03 else "OVER TARGET"
    print(f"ratio sigma_db / bare = {ratio:.3f} (target <= 1.03): {verdict}")


if __name__ == "__main__":
    main()
