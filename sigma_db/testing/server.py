"""The test server: pytest-postgresql's executor, made root-safe by :mod:`sigma_db.server`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
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
    ServerError,
    find_binaries,
    first_closed_directory,
    free_port,
    initdb,
    owned_directory,
    pg_ctl,
    runnable_binaries,
    server_user,
    temp_directories,
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
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                detail = " / ".join(str(exc).strip().splitlines()[-2:])
                raise ServerError(
                    f"The test server started but accepted no login within 60 s: {detail}"
                ) from exc
            time.sleep(0.05)


def _start_failure(logfile: Path, exc: Exception) -> str:
    """One line on why ``pg_ctl start`` failed: the server log's errors, else its last lines."""
    try:
        text = logfile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    # "2026-11-27 21:04:37.993 GMT [23429] FATAL:  ..." -> "FATAL: ..."
    errors = [line[m.start() :] for line in lines if (m := _SEVERITY.search(line))]
    detail = errors[-3:] or lines[-3:] or str(exc).strip().splitlines()[-1:]
    return (
        f"The test server did not start: {' / '.join(detail)} (from PostgreSQL's log); fix "
        "what it names: a server option, the PostgreSQL installation, or the machine."
    )


_SEVERITY = re.compile(r"\b(?:FATAL|PANIC|ERROR):")


@contextmanager
def start_test_server(
    extra_options: str = "", *, parent: Path | None = None
) -> Iterator[TestServer]:
    """Start a throwaway server (as an unprivileged user when root); stop and delete it after.

    ``parent`` is where its data directory goes (default: the system temp directory, or
    ``/tmp`` when the server user cannot enter that one or its socket path would be too long);
    benchmarks pass a tmpfs such as ``/dev/shm`` to take disk noise out of their ratios.

    A watchdog process stops the server and deletes its directory if this process dies without
    doing so itself (killed, ``os._exit``), so no server outlives the run that started it.
    """
    os_user = server_user()
    binaries = runnable_binaries(find_binaries(), os_user)
    root = Path(tempfile.mkdtemp(prefix="sigma-db-test-", dir=_server_parent(parent, os_user)))
    watchdog: _Watchdog | None = None
    executor: Any = None
    try:
        owned_directory(root, os_user)
        owned_directory(root / "run", os_user)
        options = _SERVER_OPTIONS
        if (binaries.bindir.parent / "lib" / "pg_stat_statements.so").exists():
            options += " -c shared_preload_libraries=pg_stat_statements"
        control = pg_ctl(binaries, os_user, root / "bin")
        watchdog = _Watchdog(control, root)
        executor = _executor_class()(
            binaries=binaries,
            os_user=os_user,
            executable=str(control),
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
        try:
            executor.start()
        except BaseException as exc:
            # Stop what may have come up, but report why the start failed, not the stop.
            with contextlib.suppress(Exception):
                executor.stop()
            executor = None
            if isinstance(exc, Exception) and not isinstance(exc, SigmaDBError):
                # The executor's own error says "examine the log", which is deleted below.
                raise ServerError(_start_failure(root / "postgresql.log", exc)) from exc
            raise
        _wait_until_accepting("127.0.0.1", executor.port, SUPERUSER, SUPERUSER_PASSWORD)
        yield TestServer("127.0.0.1", executor.port, SUPERUSER, SUPERUSER_PASSWORD, binaries)
    finally:
        try:
            if executor is not None:
                executor.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
            if watchdog is not None:
                watchdog.dismiss()


_SOCKET_NAME = "/sigma-db-test-xxxxxxxx/run/.s.PGSQL.65535"
"""The longest path the server's Unix socket gets below its parent directory."""
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, NUL included


def _server_parent(parent: Path | None, os_user: str | None) -> Path:
    """Where the server's directory goes: one the server user can enter, with a short path."""
    for candidate in (parent,) if parent is not None else temp_directories():
        closed = first_closed_directory(candidate, os_user)
        fits = len(str(candidate)) + len(_SOCKET_NAME) <= _SOCKET_PATH_MAX
        if candidate.is_dir() and closed is None and fits and _may_execute(candidate, os_user):
            return candidate
    where = parent or Path(tempfile.gettempdir())
    closed = first_closed_directory(where, os_user)
    if closed is not None:
        why = (
            f"{closed} cannot be entered by the {os_user!r} user the server runs as (PostgreSQL "
            "refuses to run as root)"
        )
    elif where.is_dir() and not _may_execute(where, os_user):
        why = f"{where} is mounted noexec, and as root the server needs a pg_ctl wrapper there"
    else:
        why = f"{where} is not a directory, or too long a path for the server's Unix socket"
    fix = "pass another parent" if parent is not None else "set TMPDIR to"
    raise ServerError(
        f"No directory for the test server: {why}; {fix} a short directory every user can "
        "enter, e.g. /tmp."
    )


def _may_execute(directory: Path, os_user: str | None) -> bool:
    """Whether the ``pg_ctl`` wrapper written below ``directory`` (as root only) can run."""
    if os_user is None or not directory.is_dir():
        return True
    return not os.statvfs(directory).f_flag & os.ST_NOEXEC


_WATCHDOG = """
import os, shutil, subprocess, sys
pg_ctl, root = sys.argv[1:3]
os.read(0, 1)  # returns when the test run's end of the pipe closes, however the run ended
data = os.path.join(root, "data")
if os.path.isdir(data):
    stop = [pg_ctl, "stop", "-D", data, "-m", "immediate", "-w"]
    subprocess.run(stop, capture_output=True, cwd="/", check=False)
shutil.rmtree(root, ignore_errors=True)
"""


class _Watchdog:
    """A process that cleans up after the test run if the run dies without doing it itself.

    It waits on a pipe only this process writes to; the kernel closes the pipe when this
    process ends, whether by a normal exit, a signal or ``os._exit``. In its own session, so a
    Ctrl-C to the test run's process group does not reach it.
    """

    def __init__(self, pg_ctl: Path, root: Path) -> None:
        read, self._write = os.pipe()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(pg_ctl), str(root)],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        finally:
            os.close(read)

    def dismiss(self) -> None:
        """The run cleaned up itself: let the watchdog find nothing left to do, and reap it."""
        os.close(self._write)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
