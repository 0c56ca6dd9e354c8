"""The sigma-db command: one line per problem, exit codes, no tracebacks, no passwords."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _connect import connect

from sigma_db import DatabaseSettings, __version__
from sigma_db.testing import TestServer


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    return subprocess.run(
        [sys.executable, "-m", "sigma_db", *args],
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        cwd="/",
        check=False,
        timeout=60,
    )


def as_env(settings: DatabaseSettings) -> dict[str, str]:
    return {
        "DB_HOST": settings.host,
        "DB_PORT": str(settings.port),
        "DB_NAME": settings.name,
        "DB_USER": settings.user,
        "DB_PASSWORD": settings.secret(),
        "DB_PRODUCT": "lab",
    }


def test_version_and_help() -> None:
    assert __version__ in run("--version").stdout
    help_text = run("--help").stdout
    assert "doctor" in help_text and "demo" in help_text


def test_doctor_healthy(db_settings: DatabaseSettings) -> None:
    result = run("doctor", env=as_env(db_settings))
    assert result.returncode == 0, result.stderr
    assert "ok: no problems found" in result.stdout
    assert "search_path" in result.stdout and "app, public" in result.stdout
    assert "PostgreSQL 1" in result.stdout
    assert db_settings.secret() not in result.stdout + result.stderr
    assert "********" in result.stdout


def test_doctor_missing_database(
    db_settings: DatabaseSettings, sigma_postgresql: TestServer
) -> None:
    result = run("doctor", env=as_env(db_settings) | {"DB_SCHEMA": "public"})
    assert result.returncode == 0, result.stderr
    with sigma_postgresql.connect("postgres") as admin:  # an earlier test may have made it
        admin.execute("DROP DATABASE IF EXISTS edge_products WITH (FORCE)")
    env = as_env(db_settings) | {
        "DB_NAME": "edge_products",
        "DB_SCHEMA": "sim",
        "DB_PRODUCT": "sim",
    }
    missing_db = run("doctor", env=env)
    assert missing_db.returncode == 1
    assert "Create database edge_products or fix DB_NAME" in missing_db.stderr


def test_doctor_missing_schema_has_a_fix(db_settings: DatabaseSettings) -> None:
    with connect(db_settings) as conn:
        conn.execute("DROP SCHEMA app")
    result = run("doctor", env=as_env(db_settings))
    assert result.returncode == 1
    assert "Schema app does not exist" in result.stderr


def test_bad_settings_one_message_no_traceback() -> None:
    result = run("doctor", env={"DB_PORT": "abc", "DB_PASSWORD": "hunter2-secret"})
    assert result.returncode == 1
    assert result.stderr.startswith("sigma-db: error: Invalid database settings")
    assert "Traceback" not in result.stderr
    assert "DB_HOST is not set" in result.stderr and "DB_PORT (got 'abc')" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_unreachable_server_one_message(db_settings: DatabaseSettings) -> None:
    env = as_env(db_settings) | {"DB_PORT": "1"}
    result = run("doctor", env=env)
    assert result.returncode == 1
    assert "Cannot connect to postgresql://postgres@127.0.0.1:1/" in result.stderr
    assert "Traceback" not in result.stderr
    assert db_settings.secret() not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "No such command" in result.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "migrated schema lab as edge_lab_migrator_dev" in out
    assert "packs: momentum, carry, value" in out
    assert "stored in partition audit_logs_p" in out
    assert "database at 0001, 0 pending, 0 problems" in out
    assert "stopped the dev database" in out


def test_doctor_names_a_misspelled_variable(db_settings: DatabaseSettings) -> None:
    result = run("doctor", env=as_env(db_settings) | {"DB_SSL_MODE": "require"})
    assert result.returncode == 1
    assert "DB_SSL_MODE is set but is not a sigma_db setting; did you mean DB_SSLMODE?" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DB_PASSWORD": "S3cr3t\udcff"}, "DB_PASSWORD: contains bytes that are not UTF-8"),
        ({"DB_PASSWORD_FILE": "S3cr3t"}, "DB_PASSWORD_FILE (value not shown) names no existing"),
    ],
)
def test_doctor_with_a_password_it_cannot_use_is_one_line_that_hides_it(
    env: dict[str, str], expected: str
) -> None:
    # $'S3cr3t\xff' from a shell; a password pasted into DB_PASSWORD_FILE.
    result = run(
        "doctor",
        env={"DB_HOST": "localhost", "DB_PORT": "5432", "DB_NAME": "edge_lab", "DB_USER": "u"}
        | env,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()  # one problem, one line
    assert line.startswith("sigma-db: error: Invalid database settings")
    assert f"): {expected}" in line
    assert "S3cr3t" not in result.stdout + result.stderr


def test_new_product_name_that_is_not_utf8_is_one_line(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    dest = tmp_path_factory.mktemp("new-product") / "x"
    result = run("new-product", "\udcff", "--dest", str(dest))  # $'\xff' from a shell
    assert result.returncode == 1
    assert result.stderr.startswith("sigma-db: error: product name '\\udcff' contains bytes that")
    assert len(result.stderr.splitlines()) == 1
