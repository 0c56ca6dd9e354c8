"""Engines against a real server: search_path at startup, no extra round trips, clear errors."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from pydantic import SecretStr
from sqlalchemy import String, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sigma_db import (
    ConfigurationError,
    DatabaseSettings,
    DatabaseUnavailableError,
    ProductBase,
    create_engine,
    create_session_factory,
    session_scope,
)
from sigma_db.engine import engine_arguments
from sigma_db.testing import TestServer


def _admin(server: TestServer, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
    return server.connect(dbname)


def _statements_seen(
    server: TestServer, database: str, workload: Engine, checkouts: int
) -> dict[str, int]:
    """Run ``checkouts`` checkouts of one query each; count every statement the server ran."""
    with workload.connect() as conn:  # first connect: dialect initialisation, not counted
        conn.execute(text("SELECT 1"))
    with _admin(server) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        admin.execute("SELECT pg_stat_statements_reset()")
        for _ in range(checkouts):
            with workload.connect() as conn:
                conn.execute(text("SELECT 1"))
        rows = admin.execute(
            "SELECT query, calls FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            (database,),
        ).fetchall()
    return {str(query): int(str(calls)) for query, calls in rows}


@pytest.mark.parametrize("pre_ping", [False, True])
def test_search_path_costs_no_statement_per_connection_or_checkout(
    sigma_postgresql: TestServer, db_settings: DatabaseSettings, pre_ping: bool
) -> None:
    settings = db_settings.model_copy(update={"pool_pre_ping": pre_ping, "conn_max": 1})
    checkouts = 25
    ours = create_engine(settings)
    url, kwargs = engine_arguments(settings)
    kwargs["connect_args"] = {
        k: v for k, v in kwargs["connect_args"].items() if k not in {"options"}
    }
    bare = sqlalchemy.create_engine(url, **kwargs)
    try:
        seen_ours = _statements_seen(sigma_postgresql, settings.name, ours, checkouts)
        seen_bare = _statements_seen(sigma_postgresql, settings.name, bare, checkouts)
    finally:
        ours.dispose()
        bare.dispose()
    # SQLAlchemy's psycopg pre-ping is an empty query that pg_stat_statements does not record,
    # so with pre-ping on the proof is the equality with a bare engine of the same pool.
    assert seen_ours == seen_bare
    if not pre_ping:
        # BEGIN (psycopg's implicit transaction), the query, ROLLBACK (the pool's reset on
        # return): nothing else, in particular no SET search_path.
        assert seen_ours == {"BEGIN": checkouts, "SELECT $1": checkouts, "ROLLBACK": checkouts}
    assert not [query for query in seen_ours if "search_path" in query or "SET" in query.upper()]


def test_every_new_connection_gets_the_search_path(
    engine: Engine, db_settings: DatabaseSettings
) -> None:
    for _ in range(3):
        with engine.connect() as conn:
            schemas = conn.execute(text("SELECT current_schemas(false)")).scalar_one()
            conn.invalidate()  # force a brand-new connection next time
        assert schemas == ["app", "public"]


def test_pool_sized_from_settings_and_application_name(db_settings: DatabaseSettings) -> None:
    engine = create_engine(db_settings.model_copy(update={"conn_max": 3}))
    try:
        assert engine.pool.size() == 3  # type: ignore[attr-defined]
        with engine.connect() as conn:
            name = conn.execute(text("SHOW application_name")).scalar_one()
        assert name == "sigma_db:lab"
    finally:
        engine.dispose()


def test_consolidated_layout_maps_default_and_logical_schemas(
    sigma_postgresql: TestServer, consolidated: DatabaseSettings
) -> None:
    class Base(ProductBase, DeclarativeBase):
        pass

    class Pack(Base):
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    class AuditLog(Base):
        __table_args__ = {"schema": "audit"}
        id: Mapped[int] = mapped_column(primary_key=True)
        action: Mapped[str] = mapped_column(String(50))

    with _admin(sigma_postgresql, "edge_products") as admin:
        admin.execute("CREATE SCHEMA lab; CREATE SCHEMA lab_audit")
    engine = create_engine(consolidated)
    try:
        Base.metadata.create_all(engine)
        factory = create_session_factory(engine)
        with session_scope(factory) as session:
            session.add_all([Pack(id=1, name="alpha"), AuditLog(id=1, action="create")])
        with session_scope(factory) as session:
            assert session.get(Pack, 1) is not None
            assert session.get(AuditLog, 1) is not None
        with engine.connect() as conn:
            where = dict(
                conn.execute(
                    text(
                        "SELECT relname, relnamespace::regnamespace::text FROM pg_class "
                        "WHERE relname IN ('packs', 'audit_logs')"
                    )
                ).all()
            )
        assert where == {"packs": "lab", "audit_logs": "lab_audit"}
    finally:
        engine.dispose()


def test_unreachable_server_is_one_clear_error(db_settings: DatabaseSettings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    engine = create_engine(db_settings.model_copy(update={"port": closed_port}))
    with pytest.raises(DatabaseUnavailableError) as exc:
        engine.connect()
    message = str(exc.value)
    assert f"127.0.0.1:{closed_port}" in message
    assert "sigma-db dev up" in message
    assert message.count("Is the server running") <= 1  # libpq asks already; no echo
    assert db_settings.secret() not in message
    assert isinstance(exc.value.__cause__, psycopg.OperationalError)


def test_what_the_server_answered_gets_its_own_fix(
    db_settings: DatabaseSettings, sigma_postgresql: TestServer, tmp_path: Path
) -> None:
    # These ended in "Is the server running and reachable at DB_HOST:DB_PORT?", sending an
    # operator to check the network when the server had answered with its reason.
    login = f"nocon_{uuid.uuid4().hex[:8]}"
    with sigma_postgresql.connect("postgres") as admin:
        admin.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'pw' CONNECTION LIMIT 1")
        admin.execute(f'REVOKE CONNECT ON DATABASE "{db_settings.name}" FROM PUBLIC')
    try:
        settings = db_settings.model_copy(update={"user": login, "password": SecretStr("pw")})
        engine = create_engine(settings)
        with pytest.raises(DatabaseUnavailableError) as denied:
            engine.connect()
        assert str(denied.value).endswith(
            f"{login} lacks CONNECT on {db_settings.name}: attach it to the product's roles "
            "(sigma-db roles apply --login NAME:rw), or fix DB_USER or DB_NAME."
        )
        engine.dispose()
        with sigma_postgresql.connect("postgres") as admin:
            admin.execute(f'GRANT CONNECT ON DATABASE "{db_settings.name}" TO {login}')
        engine = create_engine(settings, pool_size=2)
        try:
            with engine.connect(), pytest.raises(DatabaseUnavailableError) as full:
                engine.connect()  # the role's CONNECTION LIMIT 1 is taken
        finally:
            engine.dispose()
        assert str(full.value).endswith(
            "lower DB_CONN_MAX or the number of processes, or raise the limit."
        )
    finally:
        with sigma_postgresql.connect("postgres") as admin:
            admin.execute(f'GRANT CONNECT ON DATABASE "{db_settings.name}" TO PUBLIC')
            admin.execute(f"DROP OWNED BY {login}; DROP ROLE {login}")
    # A socket directory whose name holds "ssl": not an SSL problem.
    engine = create_engine(db_settings.model_copy(update={"host": str(tmp_path / "pg_ssl_sock")}))
    with pytest.raises(DatabaseUnavailableError) as missing:
        engine.connect()
    engine.dispose()
    assert "DB_SSLMODE" not in str(missing.value)
    assert str(missing.value).endswith(
        "Check DB_HOST and DB_PORT. For a local one: sigma-db dev up."
    )


def test_silent_server_times_out_and_says_so(db_settings: DatabaseSettings) -> None:
    with socket.socket() as listener:  # accepts TCP, never speaks PostgreSQL
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        engine = create_engine(db_settings.model_copy(update={"port": port, "connect_timeout": 1}))
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="DB_CONNECT_TIMEOUT=1s"):
            engine.connect()
        assert time.monotonic() - started < 10  # generous; it is about not hanging for 30s


def test_wrong_password_names_the_fix_not_the_password(db_settings: DatabaseSettings) -> None:
    wrong = "wr0ng@:/%#pass"
    engine = create_engine(db_settings.model_copy(update={"password": SecretStr(wrong)}))
    with pytest.raises(DatabaseUnavailableError) as exc:
        engine.connect()
    message = str(exc.value)
    assert "password authentication failed" in message
    assert "DB_PASSWORD" in message
    assert wrong not in message and db_settings.secret() not in message


def test_a_short_password_is_masked_without_mangling_the_message() -> None:
    from sigma_db.engine import _masked

    reason = 'password authentication failed for user "app" (password: a; "pg")'
    assert _masked(reason, "a") == (
        'password authentication failed for user "app" (password: ********; "pg")'
    )
    assert _masked(reason, "pg") == (
        'password authentication failed for user "app" (password: a; "********")'
    )
    assert _masked("postgresql://u:p@ss@h", "p@ss") == "postgresql://u:********@h"
    assert _masked("x@ss!y", "@ss!") == "x********y"  # punctuation edges need no boundary


def test_a_password_with_runs_of_spaces_is_masked_in_connection_errors() -> None:
    from sigma_db.engine import _unavailable

    settings = DatabaseSettings(
        host="db", port=5432, name="edge_lab", user="app", password="two  spaces", _env_file=None
    )
    error = _unavailable(settings, RuntimeError('bad conninfo password="two  spaces"'))
    assert "two" not in str(error) and "********" in str(error)


def test_wrong_short_password_still_gets_the_password_fix(db_settings: DatabaseSettings) -> None:
    # Masking "failed" out of libpq's message must not change which fix the error names.
    engine = create_engine(db_settings.model_copy(update={"password": SecretStr("failed")}))
    with pytest.raises(DatabaseUnavailableError) as exc:
        engine.connect()
    assert "Check DB_USER and DB_PASSWORD" in str(exc.value)


def test_sslmode_is_passed_to_libpq(db_settings: DatabaseSettings) -> None:
    engine = create_engine(db_settings.model_copy(update={"sslmode": "require"}))
    with pytest.raises(DatabaseUnavailableError, match="DB_SSLMODE"):
        engine.connect()  # the test server has no TLS: require must refuse to fall back


def test_statement_errors_stay_sqlalchemy_errors(engine: Engine) -> None:
    with engine.connect() as conn, pytest.raises(sqlalchemy.exc.ProgrammingError):
        conn.execute(text("SELECT * FROM no_such_table"))


def test_pooler_mode_sends_no_startup_options(db_settings: DatabaseSettings) -> None:
    _, kwargs = engine_arguments(db_settings.model_copy(update={"pooler": "transaction"}))
    assert "options" not in kwargs["connect_args"]
    assert kwargs["connect_args"]["prepare_threshold"] is None
    engine = create_engine(db_settings.model_copy(update={"pooler": "transaction"}))
    try:
        with engine.connect() as conn:  # search_path then comes from the role (roles apply)
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_engine_is_thread_safe_under_pool_limit(db_settings: DatabaseSettings) -> None:
    engine = create_engine(db_settings.model_copy(update={"conn_max": 2}))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                with engine.connect() as conn:
                    conn.execute(text("SELECT pg_sleep(0)"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    engine.dispose()
    assert errors == []


def test_overrides_extend_connect_args_and_keep_the_search_path(
    db_settings: DatabaseSettings,
) -> None:
    engine = create_engine(db_settings, connect_args={"application_name": "override"})
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT current_schemas(false), current_setting('application_name')")
            ).one()
        assert list(row) == [["app", "public"], "override"]
    finally:
        engine.dispose()


def test_rotated_password_file_reaches_new_connections(
    sigma_postgresql: TestServer, db_settings: DatabaseSettings, tmp_path: Path
) -> None:
    with _admin(sigma_postgresql, db_settings.name) as admin:
        admin.execute("CREATE ROLE rotating LOGIN PASSWORD 'first-pw'")
    secret = tmp_path / "secret"
    secret.write_text("first-pw\n", encoding="utf-8")
    settings = db_settings.model_copy(
        update={"user": "rotating", "password": None, "password_file": secret, "conn_max": 1}
    )
    engine = create_engine(settings)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.invalidate()
        with _admin(sigma_postgresql, db_settings.name) as admin:
            admin.execute("ALTER ROLE rotating PASSWORD 'second-pw'")
        secret.write_text("second-pw\n", encoding="utf-8")
        with engine.connect() as conn:  # a new connection, after the rotation
            assert conn.execute(text("SELECT current_user")).scalar_one() == "rotating"
    finally:
        engine.dispose()
        with _admin(sigma_postgresql, db_settings.name) as admin:
            admin.execute("DROP ROLE rotating")


@pytest.mark.parametrize("poolclass", [sqlalchemy.pool.NullPool, sqlalchemy.pool.StaticPool])
def test_a_poolclass_without_a_queue_drops_the_pool_sizing(
    db_settings: DatabaseSettings, poolclass: type[sqlalchemy.pool.Pool]
) -> None:
    engine = create_engine(db_settings, poolclass=poolclass)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT current_schemas(false)")).scalar_one() == [
                "app",
                "public",
            ]
        assert isinstance(engine.pool, poolclass)
    finally:
        engine.dispose()


@pytest.mark.asyncio
async def test_the_async_engine_takes_null_pool_too(db_settings: DatabaseSettings) -> None:
    from sigma_db import create_async_engine

    engine = create_async_engine(db_settings, poolclass=sqlalchemy.pool.NullPool)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


def test_a_password_file_gone_at_connect_time_names_the_file(
    db_settings: DatabaseSettings, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(db_settings.secret(), encoding="utf-8")
    settings = db_settings.model_copy(update={"password": None, "password_file": secret})
    engine = create_engine(settings)
    try:
        secret.unlink()
        with pytest.raises(ConfigurationError, match=f"DB_PASSWORD_FILE {secret} cannot be read"):
            engine.connect()
    finally:
        engine.dispose()
