"""``sigma-db dev``: a real local server in a temporary state directory on a free port."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from _connect import connect
from psycopg import errors
from sqlalchemy import text

from sigma_db import ConfigurationError, DatabaseSettings, create_engine
from sigma_db.cli import main
from sigma_db.dev import DevDatabase
from sigma_db.server import (
    ServerBinaries,
    ServerError,
    free_port,
    runnable_binaries,
    server_user,
)
from sigma_db.topology import PRODUCTS


@pytest.fixture
def dev_home() -> Iterator[Path]:
    # Not tmp_path: pytest's base directory is private to root, and when the suite runs as
    # root the server runs as another user that must be able to enter the state directory.
    root = Path(tempfile.mkdtemp(prefix="sigma-db-dev-"))
    root.chmod(0o711)
    try:
        yield root / "dev"
    finally:
        DevDatabase(root / "dev", 1).down()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _exports(output: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0]
    return values


def test_dev_lifecycle(
    dev_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    where = ("dev", "--home", str(dev_home), "--port", str(port))
    code, out, err = _cli(capsys, *where, "env", "lab")
    assert code == 1
    assert "run sigma-db dev up first" in err

    code, out, err = _cli(capsys, *where, "up")
    assert code == 0, err
    assert "provisioned" in out
    code, out, _ = _cli(capsys, *where, "up")
    assert "already provisioned: no changes" in out
    _check_port_and_fsync(dev_home, port, capsys, monkeypatch)

    state = dev_home / "state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    code, out, _ = _cli(capsys, *where, "status")
    assert "dev database: running" in out
    assert str(port) in out

    for name in list(os.environ):
        if name.startswith("DB_"):
            monkeypatch.delenv(name)
    settings: dict[str, DatabaseSettings] = {}
    for key in PRODUCTS:
        code, out, _ = _cli(capsys, *where, "env", key)
        assert out.splitlines()[0] == "unset DB_PASSWORD_FILE DB_PRODUCT"
        env = _exports(out)
        assert env["DB_NAME"] == "edge_products"
        assert env["DB_SCHEMA"] == key
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            settings[key] = DatabaseSettings(_env_file=None)
        engine = create_engine(settings[key])
        try:
            with engine.connect() as conn:
                schema, user = conn.execute(text("SELECT current_schema(), current_user")).one()
        finally:
            engine.dispose()
        assert (schema, user) == (key, f"{PRODUCTS[key].database}_rw")

    code, out, _ = _cli(capsys, *where, "env", "lab", "--role", "migrator")
    migrator = _exports(out)
    with psycopg.connect(
        host=migrator["DB_HOST"],
        port=int(migrator["DB_PORT"]),
        dbname=migrator["DB_NAME"],
        user=migrator["DB_USER"],
        password=migrator["DB_PASSWORD"],
        autocommit=True,
    ) as conn:
        conn.execute("CREATE TABLE packs (id int)")
        conn.execute("CREATE TABLE lab_audit.audit_logs (id int)")
    lab, sim = settings["lab"], settings["sim"]
    with connect(lab, autocommit=False) as conn:
        conn.execute("INSERT INTO packs VALUES (1)")
        conn.execute("INSERT INTO lab_audit.audit_logs VALUES (1)")
        conn.commit()
    with (
        connect(sim, autocommit=False) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT * FROM lab.packs")

    code, out, _ = _cli(capsys, *where, "down")
    assert out.strip() == "stopped"
    code, out, _ = _cli(capsys, *where, "status")
    assert "dev database: stopped" in out
    code, out, _ = _cli(capsys, *where, "up")  # restart: data and passwords survive
    assert "already provisioned" in out
    with connect(lab, autocommit=False) as conn:
        assert conn.execute("SELECT count(*) FROM packs").fetchone() == (1,)

    code, out, err = _cli(capsys, *where, "reset", "--yes")
    assert code == 0, err
    code, out, _ = _cli(capsys, *where, "env", "lab")
    assert _exports(out)["DB_PASSWORD"] != lab.secret()
    fresh = _exports(out)
    with psycopg.connect(
        host=fresh["DB_HOST"],
        port=int(fresh["DB_PORT"]),
        dbname=fresh["DB_NAME"],
        user=fresh["DB_USER"],
        password=fresh["DB_PASSWORD"],
    ) as conn:
        assert conn.execute("SELECT to_regclass('packs')").fetchone() == (None,)


def test_passwords_appear_only_in_dev_env(
    dev_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("dev", "--home", str(dev_home), "--port", str(free_port()))
    _, up_out, up_err = _cli(capsys, *where, "up")
    _, status_out, _ = _cli(capsys, *where, "status")
    secrets = DevDatabase(dev_home, 1)._state()["passwords"].values()
    for secret in secrets:
        assert secret not in up_out + up_err + status_out


def test_port_in_use_is_one_clear_error(dev_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        code, _, err = _cli(capsys, "dev", "--home", str(dev_home), "--port", str(port), "up")
    assert code == 1
    assert err.startswith("sigma-db: error: Port ")
    assert "SIGMA_DB_DEV_PORT" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_state_dir_the_server_user_cannot_enter(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ServerError, match="SIGMA_DB_DEV_HOME"):
        DevDatabase(private / "dev", free_port()).up()


def test_environment_defaults(tmp_path: Path) -> None:
    env = {"SIGMA_DB_DEV_HOME": str(tmp_path / "h"), "SIGMA_DB_DEV_PORT": "6543"}
    assert DevDatabase.from_environment(env=env) == DevDatabase(tmp_path / "h", 6543)
    assert DevDatabase.from_environment(env={"SIGMA_DB_DEV_HOME": str(tmp_path)}).port == 54329
    with pytest.raises(ConfigurationError, match="SIGMA_DB_DEV_PORT"):
        DevDatabase.from_environment(env={"SIGMA_DB_DEV_PORT": "http"})
    with pytest.raises(ConfigurationError, match="Unknown product 'nope'"):
        DevDatabase(tmp_path, 1).env("nope")
    with pytest.raises(ConfigurationError, match="lowercase snake_case"):  # not "add it"
        DevDatabase(tmp_path, 1).env("Bad-Name")


def _closed_copy_of(bindir: Path, tmp_path: Path) -> Path:
    """The pgserver wheel's build under a directory only root may enter, as in ``/root``."""
    closed = tmp_path / "site-packages"  # the wheel's layout: libpq in pgserver.libs
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    installed = bindir.parent.parent.parent
    shutil.copytree(bindir.parent, closed / "pgserver" / "pginstall", symlinks=True)
    shutil.copytree(installed / "pgserver.libs", closed / "pgserver.libs", symlinks=True)
    return closed / "pgserver" / "pginstall" / "bin"


@pytest.fixture
def closed_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerBinaries]:
    """The embedded build where the server user cannot go, and a temp dir of the test's own."""
    from sigma_db.server import _embedded_bindir

    if os.geteuid() != 0:
        pytest.skip("only root runs the server as another user")
    bindir = _embedded_bindir()
    if bindir is None:
        pytest.skip("pgserver not installed (pip install 'sigma-db[embedded]')")
    # Not under tmp_path: pytest's base directory is closed to the server user too.
    shared = Path(tempfile.mkdtemp(prefix="sigma-db-shared-", dir="/tmp"))
    shared.chmod(0o1777)  # as /tmp is
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    try:
        yield ServerBinaries(_closed_copy_of(bindir, tmp_path), 16)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_cache_someone_else_made_in_tmp_is_refused(closed_build: ServerBinaries) -> None:
    # In a world-writable /tmp anyone may create the cache first and plant a pg_ctl in it.
    planted = Path(tempfile.gettempdir()) / f"sigma-db-pginstall-{os.geteuid()}"
    planted.mkdir()
    os.chown(planted, 65534, 65534)
    with pytest.raises(ServerError, match="only it may write to"):
        runnable_binaries(closed_build, server_user())


def test_a_cached_copy_cut_short_is_made_again(closed_build: ServerBinaries) -> None:
    first = runnable_binaries(closed_build, server_user())
    assert first.bindir != closed_build.bindir
    (first.bindir / "pg_ctl").unlink()  # a temp cleaner took a file, the marker still there
    again = runnable_binaries(closed_build, server_user())
    assert again == first
    assert (again.bindir / "pg_ctl").is_file()
    assert subprocess.run([again.bindir / "pg_ctl", "--version"], check=False).returncode == 0


@pytest.mark.parametrize("where", ["installed", "closed"])
def test_local_server_runs_on_the_embedded_build(
    dev_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str
) -> None:
    """The ``embedded`` extra: PostgreSQL from the pgserver wheel, no system packages.

    ``closed``: the wheel installed where the server user cannot follow, as in a virtualenv
    under ``/root`` (mode 0700) when CI runs as root; pytest's ``tmp_path`` is such a place.
    """
    from sigma_db.server import LocalServer, _embedded_bindir, find_binaries

    bindir = _embedded_bindir()
    if bindir is None:
        pytest.skip("pgserver not installed (pip install 'sigma-db[embedded]')")
    if where == "closed":
        bindir = _closed_copy_of(bindir, tmp_path)
    monkeypatch.setenv("SIGMA_DB_PG_BINDIR", str(bindir))
    binaries = find_binaries()
    assert binaries.bindir == bindir
    embedded = dev_home.parent.joinpath("embedded")
    embedded.mkdir()
    embedded.chmod(0o711)  # enterable by the server user whatever the umask
    server = LocalServer(embedded / "cluster", free_port(), binaries=binaries)
    try:
        server.start()
        with psycopg.connect(
            host="127.0.0.1",
            port=server.port,
            user=server.superuser,
            password=server.password,
            dbname="postgres",
        ) as conn:
            assert conn.execute("SHOW server_version").fetchone()[0].startswith(str(binaries.major))
    finally:
        server.stop()


def _check_port_and_fsync(
    home: Path, port: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the server runs, its recorded port wins over SIGMA_DB_DEV_PORT; fsync stays on."""
    other = free_port()
    with monkeypatch.context() as patch:
        patch.setenv("SIGMA_DB_DEV_PORT", str(other))
        assert DevDatabase.from_environment(home=home).port == port
        code, out, err = _cli(capsys, "dev", "--home", str(home), "env", "lab")
    assert code == 0, err
    env = _exports(out)
    assert env["DB_PORT"] == str(port)
    assert f"runs on port {port}, not {other}" in err
    assert len(err.strip().splitlines()) == 1
    with psycopg.connect(
        host=env["DB_HOST"],
        port=int(env["DB_PORT"]),
        dbname=env["DB_NAME"],
        user=env["DB_USER"],
        password=env["DB_PASSWORD"],
    ) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_dev_database_takes_a_new_product(dev_home: Path) -> None:
    from sigma_db.server import free_port

    dev = DevDatabase(dev_home, free_port())
    try:
        dev.up(["billing"])
        env = dev.env("billing", "rw")
        assert env["DB_SCHEMA"] == "billing"
        assert env["DB_PRODUCT"] == "billing"
        assert env["DB_USER"] == "edge_billing_rw_dev"
        dev.up()  # remembered: a later up keeps it
        assert dev.env("billing", "migrator")["DB_USER"] == "edge_billing_migrator_dev"
        with pytest.raises(ConfigurationError, match="dev up --product nope"):
            dev.env("nope")
    finally:
        dev.down()


@pytest.mark.parametrize(
    ("products", "shown"),
    [((), "lab"), (("market",), "market"), (("billing", "market"), "billing")],
)
def test_up_points_next_at_the_product_given(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    products: tuple[str, ...],
    shown: str,
) -> None:
    from sigma_db.dev import DevStatus

    asked: list[tuple[str, ...]] = []

    def up(self: DevDatabase, products: tuple[str, ...] = ()) -> DevStatus:
        asked.append(tuple(products))
        return DevStatus(self.home, self.port, running=True, initialised=True)

    monkeypatch.setattr(DevDatabase, "up", up)  # the output only: no server needed
    flags = [arg for product in products for arg in ("--product", product)]
    code, out, err = _cli(capsys, "dev", "--home", str(tmp_path / "dev"), "up", *flags)
    assert code == 0, err
    assert asked == [products]
    assert out.splitlines()[-1] == f'next: eval "$(sigma-db dev env {shown})"'


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ('{"port": "abc"}', '"port" is not a number from 1 to 65535'),
        ('{"port": true}', '"port" is not a number from 1 to 65535'),
        ('{"passwords": []}', '"passwords" is not an object of login names to non-empty strings'),
        (
            '{"passwords": {"edge_lab_rw_dev": 5}}',
            '"passwords" is not an object of login names to non-empty strings',
        ),
        ('{"superuser_password": ["x"]}', '"superuser_password" is not a non-empty string'),
        ('{"products": "billing"}', '"products" is not a list of product names'),
        ("[]", "not a JSON object"),
        ("{", "JSONDecodeError"),
    ],
)
@pytest.mark.parametrize("command", [("status",), ("env", "lab"), ("down",)])
def test_a_hand_edited_state_is_one_clear_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    state: str,
    problem: str,
    command: tuple[str, ...],
) -> None:
    home = tmp_path / "dev"
    home.mkdir()
    (home / "state.json").write_text(state, encoding="utf-8")
    code, out, err = _cli(capsys, "dev", "--home", str(home), *command)
    assert code == 1, out
    assert err == (
        f"sigma-db: error: Cannot read {home / 'state.json'} ({problem}); fix or delete it, or "
        "run sigma-db dev reset.\n"
    )


def test_reset_replaces_a_broken_state(dev_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Every command sends a broken state.json here: reset itself must not need to read it.
    dev_home.mkdir()
    (dev_home / "state.json").write_text('{"port": "abc", "passwords": []}', encoding="utf-8")
    where = ("dev", "--home", str(dev_home), "--port", str(free_port()))
    code, _, err = _cli(capsys, *where, "reset", "--yes")
    assert code == 0, err
    code, out, _ = _cli(capsys, *where, "status")
    assert "dev database: running" in out


def test_a_product_name_that_is_not_utf8_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(capsys, "dev", "--home", str(tmp_path), "env", "lab\udcff")  # $'lab\xff'
    assert code == 1
    assert err.startswith("sigma-db: error: product name 'lab\\udcff' contains bytes that are not")
    assert len(err.strip().splitlines()) == 1
