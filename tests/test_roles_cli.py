"""``sigma-db roles plan|apply`` and ``doctor``'s privilege check, through ``main()``."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import psycopg
import pytest
from _connect import connect
from _provision import Provisioned, unique_key

from sigma_db import DatabaseSettings
from sigma_db.cli import main
from sigma_db.roles import RoleKind, sync_roles
from sigma_db.server import free_port
from sigma_db.testing import TestServer


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    monkeypatch.chdir(tmp_path)  # no stray .env

    def invoke(settings: DatabaseSettings, *args: str, **extra_env: str) -> tuple[int, str, str]:
        for name in list(os.environ):
            if name.startswith("DB_"):
                monkeypatch.delenv(name)
        env = {
            "DB_HOST": settings.host,
            "DB_PORT": str(settings.port),
            "DB_NAME": settings.name,
            "DB_USER": settings.user,
            "DB_PASSWORD": settings.secret(),
            "DB_ENV": "dev",
            "DB_SSLMODE": "disable",
        }
        if settings.product:
            env["DB_PRODUCT"] = settings.product
        if settings.schema_name:
            env["DB_SCHEMA"] = settings.schema_name
        for name, value in (env | extra_env).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sigma-db: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_plan_then_apply_then_no_changes(
    run, sigma_postgresql: TestServer, sigma_database: str
) -> None:
    key = unique_key()
    admin = sigma_postgresql.settings(sigma_database, product=key)
    password = f"pw-{uuid.uuid4().hex}"
    login = f"{key}_api"
    args = ("--login", f"{login}:rw", "--password-env", "API_DB_PASSWORD")
    code, out, _ = run(admin, "roles", "plan", *args, API_DB_PASSWORD=password)
    assert code == 0
    assert f'CREATE ROLE "edge_{key}_rw"' in out
    assert "PASSWORD '********'" in out
    assert password not in out
    code, out, _ = run(admin, "roles", "apply", *args, API_DB_PASSWORD=password)
    assert code == 0
    assert "-- applied" in out
    assert password not in out
    code, out, _ = run(admin, "roles", "apply", *args, API_DB_PASSWORD=password)
    assert code == 0
    assert "no changes" in out
    assert "nothing to apply" in out
    with psycopg.connect(
        host=admin.host, port=admin.port, dbname=admin.name, user=login, password=password
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (f"edge_{key}_rw",)


def test_password_from_file(
    run, sigma_postgresql: TestServer, sigma_database: str, tmp_path: Path
) -> None:
    key = unique_key()
    admin = sigma_postgresql.settings(sigma_database, product=key)
    secret = tmp_path / "secret"
    secret.write_text("file-pw-123\n")
    code, out, _ = run(
        admin, "roles", "apply", "--login", f"{key}_ci:migrator", "--password-file", str(secret)
    )
    assert code == 0, out
    assert "file-pw-123" not in out
    with psycopg.connect(
        host=admin.host,
        port=admin.port,
        dbname=admin.name,
        user=f"{key}_ci",
        password="file-pw-123",
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (f"edge_{key}_migrator",)


def test_unknown_product_is_one_line(run, products_db: dict[str, Provisioned]) -> None:
    admin = products_db["lab"].admin
    code, _, err = run(admin, "roles", "plan", "--product", "nope")
    assert code == 1
    line = _one_line_error(err)
    assert "Unknown product 'nope'" in line
    assert "DB_NAME=edge_nope" in line
    assert "DB_PRODUCT=nope" in line


@pytest.mark.parametrize(
    ("key", "why"), [("Lab", "snake_case"), ("app", "reserved"), ('lab";drop', "snake_case")]
)
def test_a_product_name_no_product_may_have_is_refused_as_such(
    run, products_db: dict[str, Provisioned], key: str, why: str
) -> None:
    # Not "unknown product ...: set DB_NAME=edge_Lab", a value that is refused in turn.
    code, _, err = run(products_db["lab"].admin, "roles", "plan", "--product", key)
    line = _one_line_error(err)
    assert (code, "Unknown product" in line, why in line) == (1, False, True), line


def test_all_products_in_consolidated_db_is_up_to_date(
    run, products_db: dict[str, Provisioned]
) -> None:
    admin = products_db["lab"].admin
    # (The groups may have gained members on this shared server since the fixture's apply: the
    # test plugin's logins, which the plan covers too. Apply, then nothing is left to do.)
    code, _, err = run(admin, "roles", "apply", "--product", "lab", "--product", "sim")
    assert code == 0, err
    code, out, _ = run(admin, "roles", "plan", "--product", "lab", "--product", "sim")
    assert code == 0
    assert "no changes" in out


def test_unreachable_server_is_one_line(run, sigma_postgresql: TestServer) -> None:
    admin = sigma_postgresql.settings("edge_lab", port=free_port(), product=None)
    code, _, err = run(admin, "roles", "plan")
    assert code == 1
    line = _one_line_error(err)
    assert "Cannot connect to postgresql://postgres@127.0.0.1" in line
    assert sigma_postgresql.password not in err


def test_insufficient_privilege_is_one_line(run, provisioned: Provisioned) -> None:
    as_rw = provisioned.settings(RoleKind.RW, product=unique_key())
    code, _, err = run(as_rw, "roles", "apply")
    assert code == 1
    line = _one_line_error(err)
    assert "neither SUPERUSER nor CREATEROLE" in line
    assert provisioned.passwords[RoleKind.RW] not in err


def test_conflicting_login_is_one_line(
    run, sigma_postgresql: TestServer, sigma_database: str
) -> None:
    key = unique_key()
    admin = sigma_postgresql.settings(sigma_database, product=key)
    with connect(admin) as conn:
        conn.execute(f"CREATE ROLE edge_{key}_ro LOGIN SUPERUSER")
        try:
            code, _, err = run(admin, "roles", "apply")
        finally:
            conn.execute(f"DROP ROLE edge_{key}_ro")
    assert code == 1
    line = _one_line_error(err)
    assert "already exists as a LOGIN role with SUPERUSER" in line
    assert "RENAME TO" in line


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("--login", "api"), {}, "must be NAME:KIND"),
        (("--login", "api:admin"), {}, "must be NAME:KIND"),
        (("--login", "Bad-Name:rw"), {}, "login role name 'Bad-Name'"),
        (("--login", "x_api:rw", "--password-env", "NOPE_UNSET"), {}, "NOPE_UNSET"),
        (("--login", "x_missing:rw"), {}, "does not exist; give its password"),
        (("--password-env", "A", "--password-file", "/x"), {"A": "b"}, "not both"),
        (("--all-products",), {}, "only applies to the consolidated"),
        (("--product", "sim"), {}, "does not match DB_NAME"),
        (("--login", "x_api\udcff:rw"), {}, "contains bytes that are not UTF-8"),
        (
            ("--login", "x_api:rw", "--password-env", "PW"),
            {"PW": "S3cr3t\udcff"},  # $'S3cr3t\xff' in a shell
            "--password-env PW: the password contains bytes that are not UTF-8",
        ),
    ],
)
def test_bad_arguments_are_one_line(
    run, provisioned: Provisioned, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    code, _, err = run(provisioned.admin, "roles", "plan", *args, **env)
    assert code == 1
    assert expected in _one_line_error(err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"Str0ng\x00Tail-pw\n", "contains a NUL byte, which libpq cannot send"),
        (b"Str0ng\xffTail-pw\n", "is not UTF-8 text"),
    ],
)
def test_a_password_file_libpq_cannot_send_whole_is_refused(
    run, provisioned: Provisioned, tmp_path: Path, content: bytes, expected: str
) -> None:
    # libpq would end the password at the NUL: the login would get only "Str0ng".
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    login = f"{provisioned.topology.product.key}_nul"
    args = ("--login", f"{login}:rw", "--password-file", str(secret))
    code, out, err = run(provisioned.admin, "roles", "apply", *args)
    assert code == 1, out
    line = _one_line_error(err)
    assert f"--password-file {secret} {expected}" in line
    assert "Str0ng" not in out + err and "Tail-pw" not in out + err
    with provisioned.admin_connection() as admin:
        found = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login]).fetchone()
    assert found is None


def test_there_is_no_password_argument(run, provisioned: Provisioned) -> None:
    code, _, err = run(provisioned.admin, "roles", "apply", "--password", "x")
    assert code == 2
    assert "No such option '--password'" in err


# -- doctor


def test_doctor_is_healthy_for_each_provisioned_role(run, provisioned: Provisioned) -> None:
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("CREATE TABLE probes (id int)")
    for kind in RoleKind:
        code, out, err = run(provisioned.settings(kind), "doctor")
        assert code == 0, err
        assert re.search(rf"role promises +{kind} \(", out), out


def test_doctor_reports_privileges_beyond_the_name(run, provisioned: Provisioned) -> None:
    roles = provisioned.target.roles
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("CREATE TABLE probes (id int)")
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT INSERT ON app.probes TO {roles[RoleKind.RO]}")
        admin.execute(f"GRANT CREATE ON SCHEMA app TO {roles[RoleKind.RW]}")
    code, _, err = run(provisioned.settings(RoleKind.RO), "doctor")
    assert code == 1
    assert "promises read-only but may write to app.probes" in err
    code, _, err = run(provisioned.settings(RoleKind.RW), "doctor")
    assert code == 1
    assert f"may CREATE in schema app, but {roles[RoleKind.RW]} must not run DDL" in err
    assert "sigma-db roles apply" in err


def test_doctor_sees_column_grants_the_login_itself_and_temporary_tables(
    run, provisioned: Provisioned
) -> None:
    # A _ro login that could write said "ok": a column grant to the group, a grant to the
    # login itself (RESET ROLE brings it back), and TEMPORARY on the database.
    roles = provisioned.target.roles
    login = provisioned.logins[RoleKind.RO]
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("CREATE TABLE probes (id int, name text)")
        conn.execute("CREATE TABLE notes (id int)")
    checks = [
        (f"GRANT UPDATE (name) ON app.probes TO {roles[RoleKind.RO]}", "write to app.probes"),
        (f"GRANT INSERT ON app.notes TO {login}", "write to app.notes"),
        (
            f"GRANT TEMPORARY ON DATABASE {provisioned.admin.name} TO {roles[RoleKind.RO]}",
            "create temporary tables",
        ),
    ]
    for grant, said in checks:
        with provisioned.admin_connection() as admin:
            admin.execute(grant)
        code, _, err = run(provisioned.settings(RoleKind.RO), "doctor")
        assert code == 1, grant
        assert f"promises read-only but may {said}" in err, err


def test_doctor_flags_truncate_and_missing_privileges(run, provisioned: Provisioned) -> None:
    roles = provisioned.target.roles
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("CREATE TABLE probes (id int)")
        conn.execute("CREATE TABLE lost (id int)")
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT TRUNCATE, TRIGGER ON app.probes TO {roles[RoleKind.RW]}")
        admin.execute(f"REVOKE INSERT ON app.lost FROM {roles[RoleKind.RW]}")
        admin.execute(f"REVOKE SELECT ON app.lost FROM {roles[RoleKind.RO]}")
    code, _, err = run(provisioned.settings(RoleKind.RW), "doctor")
    assert code == 1
    assert "may TRUNCATE or TRIGGER on app.probes" in err
    assert "lacks INSERT on app.lost" in err
    code, _, err = run(provisioned.settings(RoleKind.RO), "doctor")
    assert code == 1
    assert "lacks SELECT on app.lost" in err


def test_doctor_checks_sequences_the_ledgers_included(run, provisioned: Provisioned) -> None:
    # A _rw that may setval the ledger's sequence makes every later migration fail; doctor
    # said "ok" for it, and for a _ro that may call nextval.
    roles = provisioned.target.roles
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("CREATE SEQUENCE counters")
        conn.execute("CREATE SEQUENCE migration_runs_id_seq")  # as the ledger's, by name
    for kind in (RoleKind.RW, RoleKind.RO):
        code, _, err = run(provisioned.settings(kind), "doctor")
        if kind is RoleKind.RW:
            assert "may call nextval or setval on app.migration_runs_id_seq" in err, err
        else:
            assert code == 0, err
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT USAGE ON SEQUENCE app.counters TO {roles[RoleKind.RO]}")
        admin.execute(f"REVOKE USAGE ON SEQUENCE app.counters FROM {roles[RoleKind.RW]}")
    code, _, err = run(provisioned.settings(RoleKind.RO), "doctor")
    assert code == 1
    assert f"may call nextval on app.counters, which {roles[RoleKind.RO]} must not" in err
    code, _, err = run(provisioned.settings(RoleKind.RW), "doctor")
    assert "lacks USAGE on sequence app.counters" in err, err
    code, _, err = run(provisioned.admin, "roles", "apply")
    assert code == 0, err
    for kind in (RoleKind.RW, RoleKind.RO):  # the fix doctor names repairs all of it
        code, _, err = run(provisioned.settings(kind), "doctor")
        assert code == 0, err


def test_doctor_names_the_fix_that_fixes_it(run, provisioned: Provisioned) -> None:
    # Each of these said "run sigma-db roles apply", which changed nothing.
    roles, login = provisioned.target.roles, provisioned.logins[RoleKind.RO]
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("CREATE TABLE probes (id int)")
    with provisioned.admin_connection() as admin:
        admin.execute(f"CREATE SCHEMA rogue AUTHORIZATION {roles[RoleKind.RW]}")
        admin.execute(f"GRANT pg_write_all_data TO {login}")
    code, _, err = run(provisioned.settings(RoleKind.RW), "doctor")
    assert "may use and CREATE in schema rogue" in err
    assert f"{roles[RoleKind.RW]} owns it, which sigma-db roles apply does not manage" in err
    # The write privilege is the login's, not its group's: both are named.
    code, _, err = run(provisioned.settings(RoleKind.RO), "doctor")
    assert f"{roles[RoleKind.RO]} (logged in as {login}) promises read-only" in err, err
    # A mistyped DB_SCHEMA: one problem naming it, not "app is outside the product's schemas".
    code, _, err = run(provisioned.settings(RoleKind.RW), "doctor", DB_SCHEMA="nope")
    assert code == 1
    assert "Schema nope (DB_SCHEMA) does not exist" in err and "unset, it is app" in err
    assert "outside" not in err, err


def test_doctor_flags_access_to_another_products_schema(
    run, sigma_postgresql, products_db: dict[str, Provisioned]
) -> None:
    from _provision import provision

    ours = provision(sigma_postgresql, "edge_products", product=unique_key())
    theirs = provision(sigma_postgresql, "edge_products", product=unique_key())
    schema = ours.topology.schema
    with ours.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("CREATE TABLE t (id int)")
    code, _, err = run(theirs.settings(RoleKind.RO), "doctor")
    assert code == 0, err
    with ours.admin_connection() as admin:
        admin.execute(f"GRANT SELECT ON {schema}.t TO {theirs.target.roles[RoleKind.RO]}")
    code, _, err = run(theirs.settings(RoleKind.RO), "doctor")
    assert code == 1
    assert f"{schema}.t" in err
    assert "another product" in err
    with ours.admin_connection() as admin:
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {theirs.target.roles[RoleKind.RO]}")
    code, _, err = run(theirs.settings(RoleKind.RO), "doctor")
    assert f"may use schema {schema}" in err
    sync_roles(ours.admin, [ours.target], apply=True)
    code, _, err = run(theirs.settings(RoleKind.RO), "doctor")
    assert code == 0, err


def test_consolidated_without_db_schema(
    run, sigma_postgresql: TestServer, products_db: dict[str, Provisioned]
) -> None:
    """In edge_products, --all-products / --product stand in for an unset DB_SCHEMA."""
    admin = sigma_postgresql.settings("edge_products", schema_name="lab", product=None)
    env_without_schema = admin.model_copy(update={"schema_name": None})
    code, out, err = run(env_without_schema, "roles", "plan", "--all-products")
    assert code == 0, err
    assert "-- roles for lab, sim, market, pilot, platform in database edge_products" in out
    code, _, err = run(env_without_schema, "roles", "plan", "--product", "bogus")
    assert code == 1
    assert "Unknown product 'bogus'" in _one_line_error(err)
    code, out, err = run(env_without_schema, "roles", "plan", "--product", "sim")
    assert code == 0, err
    assert "no changes" in out


def test_retry_exhaustion_is_one_line(
    run, provisioned: Provisioned, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sigma_db.roles as roles_module

    def execute(conn, statement, plan) -> None:
        raise psycopg.errors.InternalError_("tuple concurrently updated")

    monkeypatch.setattr(roles_module, "_execute", execute)
    with provisioned.admin_connection() as admin:
        admin.execute(f"ALTER ROLE {provisioned.target.roles[RoleKind.RO]} CREATEDB")
    code, _, err = run(provisioned.admin, "roles", "apply")
    assert code == 1
    assert "re-run" in _one_line_error(err)


# -- logins of another product, reserved names, who the admin is


def test_another_products_login_is_refused_in_one_line(
    run, sigma_postgresql: TestServer, provisioned: Provisioned
) -> None:
    # The audit: `roles apply --login sim_rw:rw` for Lab set Sim's login's password and
    # granted it Lab's group; one login served two products.
    from _provision import provision
    from psycopg import sql

    database = f"t_{uuid.uuid4().hex[:12]}"
    with sigma_postgresql.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        theirs = provision(sigma_postgresql, database)
        login, group = theirs.logins[RoleKind.RW], theirs.target.roles[RoleKind.RW]
        args = ("--login", f"{login}:rw", "--password-env", "PW")
        code, out, err = run(provisioned.admin, "roles", "apply", *args, PW="n3w-Pw-x1")
        assert code == 1, out
        line = _one_line_error(err)
        assert f"Login {login} is a member of {group}: it belongs to another product" in line
        assert f'REVOKE "{group}" FROM "{login}"' in line
        assert "n3w-Pw-x1" not in out + err
        with theirs.connect(RoleKind.RW) as conn:  # the password it had still works
            assert conn.execute("SELECT current_user").fetchone() == (group,)
    finally:
        with sigma_postgresql.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


@pytest.mark.parametrize(
    "name", ["public", "pg_x", "none", "current_user", "session_user", "current_role"]
)
def test_reserved_login_names_are_refused_up_front(
    run, provisioned: Provisioned, name: str
) -> None:
    code, out, err = run(provisioned.admin, "roles", "plan", "--login", f"{name}:rw")
    assert code == 1, out
    line = _one_line_error(err)
    assert f"login role name {name!r} is reserved by PostgreSQL" in line
    assert "choose another name" in line


def test_admin_check_names_the_login_used(run, provisioned: Provisioned) -> None:
    # It named the group the login acts as ("edge_…_rw cannot create …; set DB_USER … to it").
    login, group = provisioned.logins[RoleKind.RW], provisioned.target.roles[RoleKind.RW]
    as_rw = provisioned.settings(RoleKind.RW, product=unique_key())
    code, _, err = run(as_rw, "roles", "apply")
    assert code == 1
    line = _one_line_error(err)
    assert f"DB_USER={login}: {login} (acting as {group}) cannot create or alter roles" in line
    assert f"instead of {login}" in line
    assert provisioned.passwords[RoleKind.RW] not in err
