"""The PgBouncer path: a real PgBouncer in transaction pooling mode in front of the test server.

What must hold: a sigma_db engine with ``DB_POOLER=transaction`` gets its search_path from the
role's server-side setting, never hits prepared-statement errors, and shares no session state
with other clients. The controls show the traps are real on this very PgBouncer (so the tests
would fail without the design): startup options are refused, session ``SET`` leaks, and
prepared statements break.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from _pgbouncer import PgBouncer
from _provision import Provisioned
from sqlalchemy import event, text

from sigma_db import DatabaseUnavailableError, create_engine
from sigma_db.engine import engine_arguments
from sigma_db.roles import RoleKind

RW, RO, MIGRATOR = RoleKind.RW, RoleKind.RO, RoleKind.MIGRATOR


def _via(bouncer: PgBouncer, p: Provisioned, kind: RoleKind, **overrides: Any):
    return p.settings(kind, host=bouncer.host, port=bouncer.port, pooler="transaction", **overrides)


def test_pooler_engine_gets_search_path_from_the_role(
    pgbouncer: PgBouncer, products_db: dict[str, Provisioned]
) -> None:
    for key, p in products_db.items():
        for kind in RoleKind:
            settings = _via(pgbouncer, p, kind)
            assert "options" not in engine_arguments(settings)[1]["connect_args"]
            engine = create_engine(settings)
            sent: list[str] = []
            event.listen(engine, "before_cursor_execute", lambda *a, sent=sent: sent.append(a[2]))
            try:
                with engine.connect() as conn:
                    row = conn.execute(
                        text(
                            "SELECT current_schema(), current_user, source FROM pg_settings "
                            "WHERE name = 'search_path'"
                        )
                    ).one()
            finally:
                engine.dispose()
            # 'database user': from ALTER ROLE <login> IN DATABASE ... SET, not a session SET
            assert tuple(row) == (key, p.target.roles[kind], "database user")
            assert not [s for s in sent if s.lstrip().upper().startswith(("SET", "RESET"))]


def test_direct_mode_through_pgbouncer_is_refused_clearly(
    pgbouncer: PgBouncer, provisioned: Provisioned
) -> None:
    """Control: the startup-packet search_path is what PgBouncer rejects (pgbouncer #89)."""
    engine = create_engine(provisioned.settings(RW, host=pgbouncer.host, port=pgbouncer.port))
    try:
        with pytest.raises(DatabaseUnavailableError, match="unsupported startup parameter") as e:
            engine.connect()
        assert str(e.value).endswith(
            "DB_HOST:DB_PORT is a connection pooler (PgBouncer?): set DB_POOLER=transaction, "
            "or point DB_PORT at PostgreSQL itself."
        )
    finally:
        engine.dispose()


def test_session_set_leaks_but_set_local_does_not(
    pgbouncer: PgBouncer, provisioned: Provisioned
) -> None:
    """Control for pgbouncer #976: why sigma_db never issues a session-level SET."""
    with (
        provisioned.connect(RW, host=pgbouncer.host, port=pgbouncer.port) as a,
        provisioned.connect(RW, host=pgbouncer.host, port=pgbouncer.port) as b,
    ):
        with a.transaction():
            a.execute("SET LOCAL search_path TO public")
        assert b.execute("SELECT current_schema()").fetchone() == ("app",)
        a.execute("SET search_path TO public")  # session level: stays on the server connection
        assert b.execute("SELECT current_schema()").fetchone() == ("public",)  # leaked to b
        a.execute("RESET search_path")
        assert b.execute("SELECT current_schema()").fetchone() == ("app",)


def test_prepared_statements_break_unless_disabled(
    pgbouncer: PgBouncer, provisioned: Provisioned
) -> None:
    """Control: a statement prepared on one server connection is missing on the next."""
    where = {"host": pgbouncer.host, "port": pgbouncer.port}
    with (
        provisioned.connect(RW, prepare_threshold=0, **where) as a,
        provisioned.connect(RW, **where) as b,
    ):
        a.execute("SELECT %s::int", [1])  # prepared on server connection S1, then released
        with b.transaction():
            b.execute("SELECT 1")  # b now holds S1, so a's next statement runs elsewhere
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                a.execute("SELECT %s::int", [1])
    settings = _via(pgbouncer, provisioned, RW)
    assert engine_arguments(settings)[1]["connect_args"]["prepare_threshold"] is None


def test_concurrent_products_each_see_their_own_schema(
    pgbouncer: PgBouncer, products_db: dict[str, Provisioned]
) -> None:
    """8 threads x 500 transactions, Lab and Sim interleaved through one PgBouncer."""
    threads_per_product, transactions = 4, 500
    for key, p in products_db.items():
        with p.connect(MIGRATOR) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS pooling_probe (product text)")
            conn.execute(
                "INSERT INTO pooling_probe SELECT %s "
                "WHERE NOT EXISTS (SELECT 1 FROM pooling_probe)",
                [key],
            )
    engines = {
        key: create_engine(_via(pgbouncer, p, RW, conn_max=threads_per_product))
        for key, p in products_db.items()
    }
    wrong: list[tuple[str, Any]] = []
    errors: list[BaseException] = []
    backends: dict[str, Counter[int]] = {key: Counter() for key in engines}
    lock = threading.Lock()
    query = text(
        "SELECT current_schema(), current_user, pg_backend_pid(), "
        "(SELECT product FROM pooling_probe)"
    )

    def work(key: str) -> None:
        engine = engines[key]
        expected = (key, f"edge_{key}_rw", key)
        seen: Counter[int] = Counter()
        try:
            for i in range(transactions):
                with engine.begin() as conn:
                    if i % 10 == 0:  # transaction-local state is fine, and must not leak
                        conn.execute(text("SET LOCAL search_path TO public"))
                        assert conn.execute(text("SELECT current_schema()")).scalar() == "public"
                        continue
                    schema, user, pid, product = conn.execute(query).one()
                    seen[pid] += 1
                    if (schema, user, product) != expected:
                        with lock:
                            wrong.append((key, (schema, user, product)))
        except BaseException as exc:
            with lock:
                errors.append(exc)
        with lock:
            backends[key].update(seen)

    workers = [
        threading.Thread(target=work, args=(key,))
        for _ in range(threads_per_product)
        for key in engines
    ]
    started = time.perf_counter()
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        elapsed = time.perf_counter() - started
        for engine in engines.values():
            engine.dispose()
    assert errors == []
    assert wrong == []
    total = len(workers) * transactions
    print(  # measured, reported, never asserted
        f"\npgbouncer: {total} transactions in {elapsed:.2f}s ({total / elapsed:.0f}/s); "
        + ", ".join(f"{k}: {len(c)} server backends" for k, c in backends.items())
    )
    assert sum(sum(c.values()) for c in backends.values()) == total * 9 // 10
