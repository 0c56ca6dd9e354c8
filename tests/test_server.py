"""The harness itself: binaries found wherever they are, the server never runs as root."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from sigma_db import server
from sigma_db.server import ServerError, find_binaries, server_user
from sigma_db.testing import TestServer


def test_server_process_is_not_root(sigma_postgresql: TestServer) -> None:
    with psycopg.connect(
        host=sigma_postgresql.host,
        port=sigma_postgresql.port,
        user=sigma_postgresql.superuser,
        password=sigma_postgresql.password,
        dbname="postgres",
    ) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert row is not None
    datadir = Path(str(row[0]))
    pid = int((datadir / "postmaster.pid").read_text().split()[0])
    owner_uid = os.stat(f"/proc/{pid}").st_uid
    assert owner_uid != 0
    if os.geteuid() == 0:
        assert server_user() is not None


def test_tcp_login_needs_the_password(sigma_postgresql: TestServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=sigma_postgresql.host,
            port=sigma_postgresql.port,
            user=sigma_postgresql.superuser,
            password="not-it",
            dbname="postgres",
        )


def test_server_reprs_never_show_the_password(sigma_postgresql: TestServer) -> None:
    assert sigma_postgresql.password not in repr(sigma_postgresql)
    local = server.LocalServer(Path("/nonexistent"), 5432, password="dev-superuser-pw")
    assert "dev-superuser-pw" not in repr(local)


def test_bindir_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_binaries()
    monkeypatch.setenv("SIGMA_DB_PG_BINDIR", str(real.bindir))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert find_binaries() == real


def test_found_through_pg_config_or_debian_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIGMA_DB_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # neither pg_ctl nor pg_config on PATH
    assert (find_binaries().bindir / "initdb").is_file()


def test_missing_binaries_say_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SIGMA_DB_PG_BINDIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server, "_SEARCH_GLOBS", ())
    monkeypatch.setattr(server, "_embedded_bindir", lambda: None)  # no pgserver wheel either
    with pytest.raises(ServerError, match="apt-get install postgresql") as exc:
        find_binaries()
    assert "SIGMA_DB_PG_BINDIR" in str(exc.value)
