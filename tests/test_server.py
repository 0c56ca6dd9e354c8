"""The harness itself: binaries found wherever they are, the server never runs as root."""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from sigma_db import server
from sigma_db.server import ServerError, find_binaries, server_user
from sigma_db.testing import TestServer, start_test_server
from sigma_db.testing.server import SUPERUSER, SUPERUSER_PASSWORD


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


def _data_directory(port: int) -> Path:
    with psycopg.connect(
        host="127.0.0.1", port=port, user=SUPERUSER, password=SUPERUSER_PASSWORD, dbname="postgres"
    ) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert row is not None
    return Path(str(row[0]))


def _gone_within(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_test_run_that_dies_leaves_no_server_behind(tmp_path: Path) -> None:
    # A run killed by `timeout`, SIGKILL or a test calling os._exit skips every `finally`.
    child = (
        "import os, sys\n"
        "from sigma_db.testing import start_test_server\n"
        "with start_test_server() as server:\n"
        "    print(server.port, flush=True)\n"
        "    sys.stdin.readline()\n"
        "    os._exit(3)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stdin is not None
        port = int(process.stdout.readline())
        datadir = _data_directory(port)
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=30) == 3
    assert _gone_within(datadir.parent, 30), "the server's directory outlived the run"
    assert not Path(f"/proc/{pid}").exists() or _gone_within(Path(f"/proc/{pid}"), 10)


def test_a_server_that_fails_to_start_says_why_and_leaves_no_directory() -> None:
    # Not under tmp_path: pytest's base directory is closed to the server user when root.
    parent = Path(tempfile.mkdtemp(prefix="sigma-db-failing-", dir="/tmp"))
    parent.chmod(0o755)
    try:
        with (
            pytest.raises(Exception) as failed,
            start_test_server("-c no_such_setting=1", parent=parent),
        ):
            pass
        assert "start" in str(failed.value), failed.value  # the start's error, not the stop's
        assert "stop" not in str(failed.value), failed.value
        assert list(parent.iterdir()) == []
    finally:
        shutil.rmtree(parent)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_temp_directory_the_server_user_cannot_enter_falls_back_to_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # pytest's own base directory for root is such a place (mode 0700), like /root.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with start_test_server() as started:
        datadir = _data_directory(started.port)
    assert not datadir.is_relative_to(private)
    with (
        pytest.raises(ServerError, match=f"{private} cannot be entered by the '{server_user()}'"),
        start_test_server(parent=private),
    ):
        pass


def test_a_temp_directory_too_long_for_the_socket_falls_back_to_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tmp_path.chmod(0o755)
    long = tmp_path / ("x" * 80)
    long.mkdir(mode=0o777)
    long.chmod(0o777)
    monkeypatch.setenv("TMPDIR", str(long))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with start_test_server() as started:
        datadir = _data_directory(started.port)
    assert not datadir.is_relative_to(long)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_server_user_whose_group_has_another_name(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    if grp.getgrgid(entry.pw_gid).gr_name == "nobody":
        pytest.skip("nobody's group is named nobody here")
    monkeypatch.setenv("SIGMA_DB_SERVER_USER", "nobody")
    with start_test_server() as started:
        datadir = _data_directory(started.port)
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
        assert os.stat(f"/proc/{pid}").st_uid == entry.pw_uid


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the pg_ctl wrapper")
def test_a_noexec_temp_directory_falls_back_to_tmp(tmp_path: Path) -> None:
    # A hardened machine mounts its temp directory noexec; as root the harness writes a
    # pg_ctl wrapper there. Mounted in a private mount namespace, seen by this child only.
    noexec = Path(tempfile.mkdtemp(prefix="sigma-db-noexec-", dir="/tmp"))
    child = (
        "from sigma_db.testing import start_test_server\n"
        "with start_test_server() as server:\n"
        "    print('started', server.port)\n"
    )
    script = (
        f"mount -t tmpfs -o noexec,mode=1777 tmpfs {noexec} && "
        f"TMPDIR={noexec} {shlex.quote(sys.executable)} -c {shlex.quote(child)}"
    )
    try:
        done = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if "mount:" in done.stderr or "unshare:" in done.stderr:
            pytest.skip(f"cannot mount a noexec tmpfs here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        assert "started" in done.stdout
    finally:
        noexec.rmdir()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_symlinked_temp_directory_is_judged_by_its_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The link sits in /tmp, open to all; its target is inside a directory only root enters.
    target = tmp_path / "private" / "tmp"
    target.mkdir(parents=True)
    target.chmod(0o777)
    link = Path(tempfile.mkdtemp(prefix="sigma-db-link-", dir="/tmp")) / "tmp"
    link.parent.chmod(0o755)
    link.symlink_to(target)
    monkeypatch.setenv("TMPDIR", str(link))
    monkeypatch.setattr(tempfile, "tempdir", None)
    try:
        assert server.first_closed_directory(link, server_user()) is not None
        with start_test_server() as started:
            datadir = _data_directory(started.port)
        assert not datadir.resolve().is_relative_to(target)
    finally:
        shutil.rmtree(link.parent)
