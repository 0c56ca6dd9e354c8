"""``sigma-db partitions maintain``: plan, run, one problem line per table, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _provision import Provisioned
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from sigma_db import DatabaseSettings, create_engine
from sigma_db.cli import main
from sigma_db.partitions.examples import ExampleBase, Signal
from sigma_db.roles import RoleKind
from sigma_db.scaffold import new_product

NOW = datetime.now(UTC)


def env_of(settings: DatabaseSettings) -> dict[str, str]:
    return {
        "DB_HOST": settings.host,
        "DB_PORT": str(settings.port),
        "DB_NAME": settings.name,
        "DB_USER": settings.user,
        "DB_PASSWORD": settings.secret(),
        "DB_PRODUCT": settings.product or "lab",
        "DB_SCHEMA": settings.schema_name or "app",
    }


def run_here(
    settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> tuple[int, str, str]:
    """In-process run (fast); the subprocess test below covers the real entry point."""
    for key in list(os.environ):
        if key.startswith(("DB_", "SIGMA_DB_")):
            monkeypatch.delenv(key)
    for key, value in env_of(settings).items():
        monkeypatch.setenv(key, value)
    code = 0
    try:
        main(["partitions", "maintain", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run(
    settings: DatabaseSettings, *args: str, cwd: Path | str = "/"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "SIGMA_DB_"))}
    env |= env_of(settings)
    return subprocess.run(
        [sys.executable, "-m", "sigma_db", "partitions", "maintain", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=120,
    )


def test_dry_run_then_run(
    db_settings: DatabaseSettings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ExampleBase.metadata.create_all(engine)
    later = (NOW + timedelta(days=30)).isoformat()
    args = ("--models", "sigma_db.partitions.examples", "--now", later)
    code, out, err = run_here(db_settings, monkeypatch, capsys, *args, "--dry-run")
    assert code == 0, err
    assert "plan at" in out and "DB_ENV=dev" in out
    assert "app.signals: detach and drop expired signals_p" in out
    assert 'DROP TABLE "app"."signals_p' in out
    seen = out + err

    code, out, err = run_here(db_settings, monkeypatch, capsys, *args)
    assert code == 0, err
    assert "app.signals: created" in out and "done in" in out
    assert db_settings.secret() not in seen + out + err

    code, out, err = run_here(db_settings, monkeypatch, capsys, *args, "--dry-run")
    assert "app.signals: nothing to do" in out


def test_rows_left_in_default_exit_1_with_one_line_per_table(
    db_settings: DatabaseSettings, engine: Engine
) -> None:
    ExampleBase.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add(Signal(observed_at=NOW + timedelta(days=90), symbol="X", value=0.0))
    result = run(db_settings, "--models", "sigma_db.partitions.examples")
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line]
    assert len(problems) == 1
    assert problems[0].startswith("problem: app.signals: 1 row in DEFAULT partition")
    assert "Traceback" not in result.stderr


def test_models_module_from_the_working_directory(
    db_settings: DatabaseSettings,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ExampleBase.metadata.create_all(engine)
    (tmp_path / "labmodels.py").write_text(
        "from sigma_db.partitions.examples import AuditLog, Signal\n", encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, out, err = run_here(db_settings, monkeypatch, capsys, "--models", "labmodels")
    assert code == 0, err
    assert "app.audit_logs: created" in out


def test_bad_models_module_is_one_line(
    db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_here(db_settings, monkeypatch, capsys, "--models", "no_such_module_here")
    assert code == 1
    assert err.startswith("sigma-db: error: --models no_such_module_here: cannot import")
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_here(db_settings, monkeypatch, capsys, "--models", "sigma_db.errors")
    assert code == 1
    assert "defines no DatePartitioned models" in err


def test_bad_now_is_one_line(
    db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ("--models", "sigma_db.partitions.examples", "--now", "2026-11-27")
    code, _, err = run_here(db_settings, monkeypatch, capsys, *args)
    assert code == 1
    assert "is not an ISO-8601 instant with a zone" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--wait", "inf"), "--wait"),
        (("--wait", "nan"), "is not a number of seconds"),
        (("--lock-timeout", "nan"), "is not a number of seconds"),
        (("--now", "9999-12-31T23:00:00+00:00"), "is out of range"),
        (("--now", "0001-01-03T00:00:00+00:00"), "is out of range"),
    ],
)
def test_bad_option_values_are_errors_not_tracebacks(
    db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    expected: str,
) -> None:
    models = ("--models", "sigma_db.partitions.examples")
    code, _, err = run_here(db_settings, monkeypatch, capsys, *models, *args)
    assert code in (1, 2), err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("source", "name", "expected"),
    [
        (None, "", "--models '': cannot import"),
        (None, ".relative", "--models .relative: cannot import"),
        ("def broken(:\n", "broken_models", "importing it failed at broken_models.py:1"),
        ("raise RuntimeError('no config')\n", "raising_models", "RuntimeError: no config"),
        (  # the models' own one-line error, not "cannot import"
            "from sigma_db.errors import ConfigurationError\n"
            "raise ConfigurationError('Model Bad: column fooBar is not snake_case')\n",
            "misnamed_models",
            "sigma-db: error: Model Bad: column fooBar is not snake_case",
        ),
    ],
)
def test_a_models_module_that_cannot_be_imported_is_one_line(
    db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    source: str | None,
    name: str,
    expected: str,
) -> None:
    if source is not None:
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.chdir(tmp_path)
    code, _, err = run_here(db_settings, monkeypatch, capsys, "--models", name)
    assert code == 1
    assert err.startswith("sigma-db: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1


def test_unreachable_database_is_one_line(db_settings: DatabaseSettings) -> None:
    unreachable = db_settings.model_copy(update={"port": 1})
    result = run(unreachable, "--models", "sigma_db.partitions.examples")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sigma-db: error: Cannot connect to")
    assert db_settings.secret() not in result.stderr


def test_run_as_the_api_role_names_the_migrator_before_doing_anything(
    provisioned: Provisioned,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As _rw every partition failed on its own ("permission denied for schema app", "must be
    # owner of table"), one line each, never naming the role to use.
    engine = create_engine(provisioned.settings(RoleKind.MIGRATOR))
    ExampleBase.metadata.create_all(engine)
    engine.dispose()
    partitions = ("SELECT count(*) FROM pg_inherits WHERE inhparent = 'app.signals'::regclass",)
    with provisioned.admin_connection() as conn:
        before = conn.execute(*partitions).fetchone()
    args = (
        "--models",
        "sigma_db.partitions.examples",
        "--now",
        (NOW + timedelta(days=30)).isoformat(),
    )
    migrator = provisioned.target.migrator
    for kind in (RoleKind.RW, RoleKind.RO):
        settings = provisioned.settings(kind)
        for dry_run in ((), ("--dry-run",)):
            code, out, err = run_here(settings, monkeypatch, capsys, *args, *dry_run)
            assert code == 1, out + err
            assert out == ""  # nothing planned, nothing done
            assert err.startswith("sigma-db: error: partition maintenance creates and detaches"), (
                err
            )
            assert len(err.strip().splitlines()) == 1, err
            assert f"DB_USER ({settings.user}) is not a member of {migrator}" in err, err
            assert "run it with the migrator's credentials" in err, err
            assert settings.secret() not in err
    with provisioned.admin_connection() as conn:
        assert conn.execute(*partitions).fetchone() == before
    # The migrator, and a superuser, do run it.
    code, out, err = run_here(provisioned.settings(RoleKind.MIGRATOR), monkeypatch, capsys, *args)
    assert code == 0, err
    assert "app.signals: created" in out
    code, out, err = run_here(provisioned.admin, monkeypatch, capsys, *args, "--dry-run")
    assert code == 0, err


@pytest.fixture
def forget_imports() -> Iterator[None]:
    """The products' packages a test imports (from its tmp_path) leave sys.modules with it."""
    yield
    for name in list(sys.modules):
        if name.partition(".")[0] in ("lab_service", "shop_service"):
            del sys.modules[name]


@pytest.mark.usefixtures("forget_imports")
def test_a_models_module_not_found_points_at_the_one_here(
    db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    # In a generated repo (package lab_service), --models lab.models was told "e.g. --models
    # lab.models": the very value that had just failed.
    repo = tmp_path / "lab-service"
    new_product("lab", repo)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for wrong in ("lab.models", "lab_service.modelz"):
        code, _, err = run_here(db_settings, monkeypatch, capsys, "--models", wrong)
        assert code == 1
        assert err.startswith(f"sigma-db: error: --models {wrong}: cannot import it"), err
        assert err.strip().endswith("pass --models lab_service.models"), err
        assert err.count(wrong) == 1 + ("No module named 'lab'" not in err), err
        assert len(err.strip().splitlines()) == 1, err

    # Nowhere near a project: the hint names the shape, never the value that failed.
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    monkeypatch.chdir(empty)
    code, _, err = run_here(db_settings, monkeypatch, capsys, "--models", "lab.models")
    assert code == 1
    assert "pass --models <your package>.models (a generated product's is <product>_service" in err
    assert "e.g. --models lab.models" not in err and err.count("lab.models") == 1, err


@pytest.mark.usefixtures("forget_imports")
def test_a_models_module_importing_what_is_not_installed_says_so(
    db_settings: DatabaseSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    package = tmp_path / "shop_service"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "models.py").write_text("import no_such_dependency\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    code, _, err = run_here(db_settings, monkeypatch, capsys, "--models", "shop_service.models")
    assert code == 1
    assert err.strip() == (
        "sigma-db: error: --models shop_service.models: importing it failed "
        "(ModuleNotFoundError: No module named 'no_such_dependency'); fix the module, or "
        "install what it imports"
    )
