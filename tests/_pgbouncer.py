"""A real PgBouncer (Debian package ``pgbouncer``) in front of the test server, for tests only.

Transaction pooling, SCRAM to clients, and ``auth_query`` against ``pg_shadow`` through the
superuser, so every login role a test creates can connect at once without editing a user list.
With a SCRAM secret from ``auth_query`` PgBouncer re-uses the client's SCRAM proof to log in to
the server, so no plaintext password of those roles exists anywhere.

PgBouncer refuses to run as root, like PostgreSQL, so it runs as the same unprivileged server
user (:func:`sigma_db.server.server_user`).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sigma_db.server import as_user, free_port, owned_directory, server_user
from sigma_db.testing import TestServer


@dataclass(frozen=True)
class PgBouncer:
    host: str
    port: int
    logfile: Path


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@contextmanager
def start_pgbouncer(server: TestServer, *, pool_size: int = 10) -> Iterator[PgBouncer]:
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError(
            "pgbouncer is not installed; apt-get install pgbouncer (.ci/run does this in CI)"
        )
    user = server_user()
    root = owned_directory(Path(tempfile.mkdtemp(prefix="sigma-db-pgbouncer-")), user)
    port = free_port()
    userlist = root / "userlist.txt"
    userlist.write_text(f"{_quote(server.superuser)} {_quote(server.password)}\n")
    config = root / "pgbouncer.ini"
    logfile = root / "pgbouncer.log"
    config.write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={server.host} port={server.port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = scram-sha-256",
                f"auth_file = {userlist}",
                f"auth_user = {server.superuser}",
                "pool_mode = transaction",
                "max_client_conn = 500",
                f"default_pool_size = {pool_size}",
                f"logfile = {logfile}",
                f"pidfile = {root / 'pgbouncer.pid'}",
                "",
            ]
        )
    )
    for path in (userlist, config):
        path.chmod(0o600)
        if user is not None:
            entry = pwd.getpwnam(user)  # its group is not always named after it
            os.chown(path, entry.pw_uid, entry.pw_gid)
    process = subprocess.Popen(
        as_user([binary, str(config)], user),
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(port, process, logfile)
        yield PgBouncer("127.0.0.1", port, logfile)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], logfile: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            log = logfile.read_text() if logfile.exists() else ""
            raise RuntimeError(f"pgbouncer exited ({process.returncode}): {err} {log[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on port {port} within 30s")
