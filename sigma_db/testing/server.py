"""The test server: pytest-postgresql's executor, made root-safe by :mod:`sigma_db.server`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from sigma_db.errors import SigmaDBError
from sigma_db.server import (
    ServerBinaries,
    find_binaries,
    free_port,
    initdb,
    owned_directory,
    pg_ctl,
    server_user,
)
from sigma_db.settings import DatabaseSettings

__all__ = ["TestServer", "start_test_server"]

SUPERUSER = "postgres"
# Deliberately full of URL metacharacters: every test run proves they survive the DSN.
SUPERUSER_PASSWORD = "s3cret@:/%#?&=pw"  # noqa: S105 - throwaway test cluster on loopback

_SERVER_OPTIONS = (
    "-c fsync=off -c full_page_writes=off -c synchronous_commit=off "
    "-c max_connections=300 -c listen_addresses=127.0.0.1"
)


@dataclass(frozen=True)
class TestServer:
    """Where the session's server listens, and how to log in as its superuser."""

    __test__ = False  # not a test class, despite the name

    host: str
    port: int
    superuser: str
    password: str = field(repr=False)
    binaries: ServerBinaries

    def settings(self, database: str, **overrides: Any) -> DatabaseSettings:
        """Settings for ``database`` as the superuser, isolated from the caller's ``DB_*``."""
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "name": database,
            "user": self.superuser,
            "password": self.password,
            "password_file": None,
            "schema_name": "app",
            "product": "lab",
            "env": "dev",
            "sslmode": "disable",
            "pooler": "none",
            "conn_max": 5,
            "connect_timeout": 5,
            "pool_recycle": 1800,
            "pool_pre_ping": True,
            "application_name": None,
        }
        return DatabaseSettings(_env_file=None, **(values | overrides))

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit psycopg connection as the superuser (for setup and inspection)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.password,
            dbname=dbname,
            autocommit=True,
        )


def _executor_class() -> Any:
    try:
        from pytest_postgresql.executors import PostgreSQLExecutor
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise SigmaDBError(
            "The sigma_db test server needs pytest-postgresql: pip install 'sigma-db[test]'."
        ) from exc

    class RootSafeExecutor(PostgreSQLExecutor):
        """initdb through :func:`sigma_db.server.initdb` so the server user can read the pwfile."""

        def __init__(self, *, binaries: ServerBinaries, os_user: str | None, **kw: Any) -> None:
            self._binaries = binaries
            self._os_user = os_user
            super().__init__(**kw)

        def init_directory(self) -> None:
            if self._directory_initialised:
                return
            self.clean_directory()
            initdb(
                self._binaries,
                Path(self.datadir),
                superuser=self.user,
                password=self.password or "",
                os_user=self._os_user,
            )
            self._directory_initialised = True

    return RootSafeExecutor


def _wait_until_accepting(host: str, port: int, user: str, password: str) -> None:
    """Wait until the server accepts logins: ``pg_ctl status`` succeeds while it still recovers."""
    import time

    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg.connect(
                host=host, port=port, user=user, password=password, dbname="postgres"
            ).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def start_test_server(
    extra_options: str = "", *, parent: Path | None = None
) -> Iterator[TestServer]:
    """Start a throwaway server (as an unprivileged user when root); stop and delete it after.

    ``parent`` is where its data directory goes (default: the system temp directory);
    benchmarks pass a tmpfs such as ``/dev/shm`` to take disk noise out of their ratios.
    """
    binaries = find_binaries()
    os_user = server_user()
    root = owned_directory(Path(tempfile.mkdtemp(prefix="sigma-db-test-", dir=parent)), os_user)
    owned_directory(root / "run", os_user)
    options = _SERVER_OPTIONS
    if (binaries.bindir.parent / "lib" / "pg_stat_statements.so").exists():
        options += " -c shared_preload_libraries=pg_stat_statements"
    executor = _executor_class()(
        binaries=binaries,
        os_user=os_user,
        executable=str(pg_ctl(binaries, os_user, root / "bin")),
        host="127.0.0.1",
        port=free_port(),
        datadir=str(root / "data"),
        unixsocketdir=str(root / "run"),
        logfile=str(root / "postgresql.log"),
        startparams="-w",
        dbname="sigma_tests",
        user=SUPERUSER,
        password=SUPERUSER_PASSWORD,
        postgres_options=f"{options} {extra_options}".strip(),
    )
    executor.start()
    try:
        _wait_until_accepting("127.0.0.1", executor.port, SUPERUSER, SUPERUSER_PASSWORD)
        yield TestServer("127.0.0.1", executor.port, SUPERUSER, SUPERUSER_PASSWORD, binaries)
    finally:
        try:
            executor.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
