"""The environment entry point against a real server: ledger, failure atomicity, topologies."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from _connect import connect
from _provision import provision
from alembic import command
from pglast import parser
from pydantic import SecretStr
from sample_repo import ProductRepo, db_env, make_repo

from sigma_db import DatabaseSettings
from sigma_db.migrations import MigrationError
from sigma_db.roles import RoleKind
from sigma_db.testing import TestServer

SIGNALS = """
op.create_table(
    "signals",
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
"""
LEDGER = "SELECT revision, operation FROM app.migration_runs ORDER BY id"
TIMEOUTS_PROBE = """
op.execute(
    "CREATE TABLE IF NOT EXISTS seen (rev text, lock text, stmt text);"
    "INSERT INTO seen SELECT '{rev}', current_setting('lock_timeout'), "
    "current_setting('statement_timeout')"
)
"""


def test_upgrade_applies_and_records_ledger(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS, 'op.drop_table("signals")')
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    assert repo.upgrade() == ["upgrade 0001", "upgrade 0002"]
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0002",)]
    rows = repo.query(
        "SELECT revision, operation, phase, length(checksum), success, duration_ms >= 0, "
        "description, applied_by, client IS NOT NULL FROM app.migration_runs ORDER BY id"
    )
    assert rows == [
        ("0001", "upgrade", "expand", 64, True, True, "init", "postgres", True),
        ("0002", "upgrade", "expand", 64, True, True, "add score", "postgres", True),
    ]
    assert repo.upgrade() == []  # idempotent


@pytest.mark.parametrize("path", ["text", "sqlalchemy-cte", "own-insert"])
def test_ledger_rows_are_the_same_however_they_are_written(
    repo: ProductRepo, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    from sigma_db.migrations import environment
    from sigma_db.migrations.checksum import file_checksum

    if path == "sqlalchemy-cte":  # as if Alembic's statement had parameters
        monkeypatch.setattr(environment, "_sendable_as_text", lambda compiled: False)
    if path == "own-insert":  # as if Alembic moved the version table some other way
        monkeypatch.setattr(environment, "_moves_version_table", lambda *args: False)
    # Quotes, % and : in the description: the row's values are quoted, never pasted.
    repo.add("init 100% o'clock: %(x)s", SIGNALS, 'op.drop_table("signals")')
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    assert repo.upgrade() == ["upgrade 0001", "upgrade 0002"]
    command.downgrade(repo.config(), "0001")
    rows = repo.query(
        "SELECT revision, operation, description, checksum, duration_ms >= 0 "
        "FROM app.migration_runs ORDER BY id"
    )
    files = sorted(repo.versions.glob("000*.py"))
    checksums = [file_checksum(path) for path in files]
    assert rows == [
        ("0001", "upgrade", "init 100% o'clock: %(x)s", checksums[0], True),
        ("0002", "upgrade", "add score", checksums[1], True),
        ("0002", "downgrade", "add score", checksums[1], True),
    ]


def test_downgrade_is_recorded(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS, 'op.drop_table("signals")')
    repo.upgrade()
    command.downgrade(repo.config(), "base")
    assert repo.query(LEDGER) == [("0001", "upgrade"), ("0001", "downgrade")]
    assert repo.query("SELECT count(*) FROM app.alembic_version") == [(0,)]


def test_failing_revision_leaves_version_table_and_ledger_as_before(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    before = (
        repo.query("SELECT version_num FROM app.alembic_version"),
        repo.query("SELECT * FROM app.migration_runs ORDER BY id"),
    )
    repo.add(
        "half done",
        """
        op.add_column("signals", sa.Column("score", sa.BigInteger))
        op.execute("INSERT INTO signals (name) VALUES ('a')")
        op.execute("SELECT 1/0")
        """,
    )
    with pytest.raises(MigrationError) as caught:
        repo.upgrade()
    message = str(caught.value)
    assert "0002 (0002_half_done.py) failed: division by zero" in message
    assert "\n" not in message
    after = (
        repo.query("SELECT version_num FROM app.alembic_version"),
        repo.query("SELECT * FROM app.migration_runs ORDER BY id"),
    )
    assert after == before
    columns = repo.query(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'app' AND table_name = 'signals' ORDER BY ordinal_position"
    )
    assert columns == [("id",), ("name",)]
    assert repo.query("SELECT count(*) FROM app.signals") == [(0,)]


def test_a_failing_ledger_row_names_its_revision_and_undoes_it(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.query(
        """
        CREATE FUNCTION app.refuse() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'ledger closed for %', NEW.revision; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON app.migration_runs
            FOR EACH ROW EXECUTE FUNCTION app.refuse();
        """
    )
    repo.add("score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    with pytest.raises(MigrationError) as caught:
        repo.upgrade()
    assert "revision 0002 (0002_score.py) failed: ledger closed for 0002" in str(caught.value)
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0001",)]
    assert repo.query(
        "SELECT count(*) FROM information_schema.columns WHERE column_name = 'score'"
    ) == [(0,)]


def test_timeouts_are_set_per_revision_and_overridable(repo: ProductRepo) -> None:
    repo.add("init", TIMEOUTS_PROBE.format(rev="0001"))
    overrides = 'lock_timeout = "1min"\nstatement_timeout = "0"'
    repo.add("slow", TIMEOUTS_PROBE.format(rev="0002"), extra=overrides)
    repo.upgrade()
    assert repo.query("SELECT * FROM app.seen ORDER BY rev") == [
        ("0001", "5s", "15min"),
        ("0002", "1min", "0"),
    ]


def test_a_revisions_own_set_does_not_carry_into_the_next(repo: ProductRepo) -> None:
    # Online the env sends a timeout only when it changes; a revision's own SET must not
    # leave later revisions running with it (offline, each revision states its own).
    repo.add("init", TIMEOUTS_PROBE.format(rev="0001"))
    repo.add("own set", "op.execute(\"SET lock_timeout = '1h'; SET statement_timeout = 0\")")
    repo.add("after", TIMEOUTS_PROBE.format(rev="0003"), extra="lock_timeout = None")
    repo.add("default again", TIMEOUTS_PROBE.format(rev="0004"))
    repo.upgrade()
    server_default = repo.query("SELECT reset_val FROM pg_settings WHERE name = 'lock_timeout'")
    assert repo.query("SELECT * FROM app.seen ORDER BY rev") == [
        ("0001", "5s", "15min"),
        ("0003", server_default[0][0], "15min"),
        ("0004", "5s", "15min"),
    ]


@pytest.mark.parametrize(
    "own_sql",
    [
        "op.get_bind().execute(sa.text(\"SET lock_timeout = '1ms'\"))",  # a data migration
        "op.get_bind().exec_driver_sql(\"SELECT set_config('lock_timeout', '1ms', false)\")",
        'op.execute("RESET ALL")',
        # no telling words in the statement: a function (made in 0001), a bound set_config
        'op.execute("SELECT bulk_session()")',
        "op.get_bind().execute(sa.text('SELECT set_config(:n, :v, false)'), "
        "{'n': 'statement_timeout', 'v': '50ms'})",
        # past SQLAlchemy: the driver's own cursor; and DDL text SQLAlchemy takes for DDL
        "op.get_bind().connection.driver_connection.execute(\"SET lock_timeout = '1h'\")",
        "op.execute(sa.DDL(\"SET lock_timeout = '1h'\"))",
    ],
)
def test_timeouts_set_past_op_execute_do_not_carry_into_the_next(
    repo: ProductRepo, own_sql: str
) -> None:
    function = (
        'op.execute("CREATE FUNCTION bulk_session() RETURNS void LANGUAGE sql AS '
        "$$ SELECT set_config('lock_timeout', '0', false) $$\")"
    )
    repo.add("init", TIMEOUTS_PROBE.format(rev="0001") + function)
    repo.add("own set", own_sql)
    repo.add("after", TIMEOUTS_PROBE.format(rev="0003"))
    repo.upgrade()
    assert repo.query("SELECT * FROM app.seen ORDER BY rev") == [
        ("0001", "5s", "15min"),
        ("0003", "5s", "15min"),
    ]


def _upgrade_sending(repo: ProductRepo, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Upgrade, and return each statement psycopg sent (at the driver: the env sends the
    version move on the driver's cursor itself)."""
    sent: list[str] = []
    execute = psycopg.Cursor.execute

    def capture(cursor, query, *args, **kwargs):  # type: ignore[no-untyped-def]
        sent.append(query if isinstance(query, str) else query.as_string(cursor))
        return execute(cursor, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", capture)
    repo.upgrade()
    monkeypatch.undo()
    return sent


@pytest.mark.parametrize("extra", ["lock_timeout = None", 'lock_timeout = "1000ms"'])
def test_unchanged_timeouts_are_not_sent_again(
    repo: ProductRepo, monkeypatch: pytest.MonkeyPatch, extra: str
) -> None:
    # The read-back compared the server's words ('0', '1s') with the revision's (None,
    # '1000ms'), and every revision set its timeouts again: a round trip each.
    for n in range(4):
        repo.add(f"step {n}", TIMEOUTS_PROBE.format(rev=f"{n + 1:04d}"), extra=extra)
    sent = _upgrade_sending(repo, monkeypatch)
    assert len([q for q in sent if "set_config('lock_timeout'" in q]) == 1
    seen = repo.query("SELECT DISTINCT lock FROM app.seen")
    assert seen == [("1s",)] if "1000ms" in extra else len(seen) == 1


def test_the_version_move_is_logged_like_any_statement(repo: ProductRepo) -> None:
    # It goes past SQLAlchemy (on the driver's cursor); sqlalchemy.engine at INFO (alembic.ini)
    # or echo must still show it.
    repo.add("init", SIGNALS)
    ini = repo.root / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "level = WARNING\nhandlers =\nqualname = sqlalchemy.engine",
            "level = INFO\nhandlers =\nqualname = sqlalchemy.engine",
        )
    )
    assert "level = INFO\nhandlers =\nqualname = sqlalchemy.engine" in ini.read_text()
    settings = repo.settings
    done = subprocess.run(
        [str(Path(sys.executable).with_name("alembic")), "-c", str(ini), "upgrade", "head"],
        env=os.environ | db_env(settings),
        cwd=repo.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "INSERT INTO app.alembic_version" in done.stderr


def test_alembic_says_a_failure_once(repo: ProductRepo) -> None:
    # Alembic prints a failed command as "FAILED: ..." and also logs it; the generated
    # alembic.ini keeps only the first, so an on-call reader sees the error once.
    repo.add("init", SIGNALS)
    variables = dict(db_env(repo.settings))
    del variables["DB_PASSWORD"]
    clean = {name: value for name, value in os.environ.items() if not name.startswith("DB_")}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("alembic")), "upgrade", "head"],
        env=clean | variables,
        cwd=repo.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert said.count("DB_PASSWORD is not set") == 1, said


def test_a_model_breaking_a_naming_rule_is_one_line_from_alembic(repo: ProductRepo) -> None:
    # env.py imports the models: the NamingError was a 33-line traceback through Alembic.
    models = repo.root / f"{repo.models}.py"
    models.write_text(
        models.read_text()
        + "\n\nfrom sigma_db.models import IdentityPrimaryKey\n\n\n"
        + 'class Signal(IdentityPrimaryKey, Base):\n    __tablename__ = "signal"\n'
    )
    clean = {name: value for name, value in os.environ.items() if not name.startswith("DB_")}
    for verb in (["upgrade", "head"], ["check"], ["revision", "--autogenerate", "-m", "x"]):
        done = subprocess.run(
            [str(Path(sys.executable).with_name("alembic")), *verb],
            env=clean | db_env(repo.settings),
            cwd=repo.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        said = (done.stdout + done.stderr).strip()
        assert done.returncode != 0, verb
        assert "Traceback" not in said, said
        assert said.startswith("FAILED: Model class Signal: __tablename__ 'signal'"), said
        assert len(said.splitlines()) == 1, said


def test_a_lost_connection_at_the_version_move_still_names_the_revision(
    repo: ProductRepo,
) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.query(
        "CREATE FUNCTION app.die() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$; "
        "CREATE TRIGGER die BEFORE UPDATE ON app.alembic_version "
        "FOR EACH ROW EXECUTE FUNCTION app.die()"
    )
    repo.add("two")
    with pytest.raises(MigrationError) as caught:
        repo.upgrade()
    message = str(caught.value)
    assert message.startswith("revision 0002 (0002_two.py) failed: terminating connection")
    assert "The connection to the server was lost" in message


def test_a_refused_revoke_on_the_record_is_one_line(
    sigma_postgresql: TestServer, sigma_database: str, tmp_path: Path
) -> None:
    provisioned = provision(sigma_postgresql, sigma_database)
    with provisioned.admin_connection() as admin:
        admin.execute(
            "CREATE FUNCTION no_revoke() RETURNS event_trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF session_user <> 'postgres' THEN "
            "RAISE EXCEPTION 'privilege changes go through the DBA team'; END IF; END $$; "
            "CREATE EVENT TRIGGER no_revoke ON ddl_command_start WHEN TAG IN ('REVOKE') "
            "EXECUTE FUNCTION no_revoke()"
        )
    repo = make_repo(tmp_path / "lab", provisioned.admin)
    repo.add("init", SIGNALS)
    with pytest.raises(MigrationError) as caught:
        repo.upgrade(settings=provisioned.settings(RoleKind.MIGRATOR))
    assert "privilege changes go through the DBA team" in str(caught.value)
    assert str(caught.value).startswith("cannot migrate ")


def test_a_timeout_the_server_refuses_names_the_revision(repo: ProductRepo) -> None:
    # It passes the duration check; the server refuses it. The error blamed DB_*.
    repo.add("init", "pass", extra='lock_timeout = "99999999d"')
    with pytest.raises(MigrationError) as caught:
        repo.upgrade()
    message = str(caught.value)
    assert message.startswith("revision 0001 (0001_init.py) failed: ")
    assert 'invalid value for parameter "lock_timeout"' in message
    assert "DB_" not in message


def test_bad_timeout_value_is_one_clear_error(repo: ProductRepo) -> None:
    repo.add("init", "pass", extra='lock_timeout = "5 s\'; DROP TABLE x; --"')
    with pytest.raises(MigrationError, match=r"0001_init.py: lock_timeout = .* is not a duration"):
        repo.upgrade()


def test_schema_is_created_but_not_by_current_and_version_table_lives_there(
    sigma_postgresql: TestServer, sigma_database: str, tmp_path: Path
) -> None:
    settings = sigma_postgresql.settings(sigma_database, schema_name="app")
    repo = make_repo(tmp_path / "lab", settings)
    repo.add("init", SIGNALS)
    command.current(repo.config())  # read-only: leaves a fresh database as it is
    assert repo.query("SELECT to_regnamespace('app') IS NULL") == [(True,)]
    repo.upgrade()
    assert repo.query(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 2"
    ) == [("app", "alembic_version"), ("app", "migration_runs"), ("app", "signals")]


def test_pooler_transaction_mode_is_refused(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    settings = repo.settings.model_copy(update={"pooler": "transaction"})
    with pytest.raises(MigrationError, match="direct connection"):
        repo.upgrade(settings=settings)


AREA_REVISION = """
ops.create_area_schema("audit")
op.create_table(
    "audit_logs",
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    schema=ops.area("audit"),
)
"""


def test_same_revisions_migrate_both_topologies(
    repo: ProductRepo, consolidated: DatabaseSettings
) -> None:
    repo.add("init", SIGNALS)
    repo.add("audit", AREA_REVISION)
    repo.add(
        "backfill", "op.execute(\"INSERT INTO signals (name) VALUES ('x')\")", phase="backfill"
    )
    assert repo.upgrade() == ["upgrade 0001", "upgrade 0002", "upgrade 0003"]
    assert repo.upgrade(settings=consolidated) == ["upgrade 0001", "upgrade 0002", "upgrade 0003"]
    tables = (
        "SELECT table_schema || '.' || table_name FROM information_schema.tables "
        "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
    )
    assert [r[0] for r in repo.query(tables)] == [
        "app.alembic_version",
        "app.migration_runs",
        "app.signals",
        "audit.audit_logs",
    ]
    assert [r[0] for r in repo.query(tables, consolidated)] == [
        "lab.alembic_version",
        "lab.migration_runs",
        "lab.signals",
        "lab_audit.audit_logs",
    ]
    assert repo.query("SELECT name FROM lab.signals", consolidated) == [("x",)]


def test_create_area_schema_works_for_the_migrator(
    tmp_path: Path, sigma_postgresql: TestServer, sigma_database: str
) -> None:
    # The migrator has no CREATE on the database, and PostgreSQL checks that privilege before
    # IF NOT EXISTS looks: the area roles apply created must simply be found.
    provisioned = provision(sigma_postgresql, sigma_database)
    repo = make_repo(tmp_path / "lab", provisioned.admin)
    repo.add("init", SIGNALS)
    repo.add("audit", AREA_REVISION)
    migrator = provisioned.settings(RoleKind.MIGRATOR)
    assert repo.upgrade(settings=migrator) == ["upgrade 0001", "upgrade 0002"]
    assert repo.query("SELECT to_regclass('audit.audit_logs') IS NOT NULL") == [(True,)]


def test_rw_and_ro_may_read_the_migrations_record_but_not_write_it(
    sigma_postgresql: TestServer, sigma_database: str, tmp_path: Path
) -> None:
    # The migrator's default privileges gave _rw INSERT, UPDATE, DELETE on the version table
    # and the ledger: the application's login could rewrite what the CI gate checks.
    from sigma_db.doctor import privilege_report
    from sigma_db.migrations.commands import repair
    from sigma_db.migrations.ledger import LEDGER_TABLE
    from sigma_db.roles import BOOKKEEPING_RELATIONS, sync_roles

    # roles.py names them without importing the migrations
    assert {LEDGER_TABLE, f"{LEDGER_TABLE}_id_seq"} <= BOOKKEEPING_RELATIONS

    provisioned = provision(sigma_postgresql, sigma_database)
    repo = make_repo(tmp_path / "lab", provisioned.admin)
    repo.add("init", SIGNALS)
    assert repo.upgrade(settings=provisioned.settings(RoleKind.MIGRATOR)) == ["upgrade 0001"]
    for kind in (RoleKind.RW, RoleKind.RO):
        with provisioned.connect(kind) as conn:
            for table in ("alembic_version", LEDGER_TABLE):
                assert conn.execute(f"SELECT count(*) FROM app.{table}").fetchone() == (1,)
                for statement in (f"DELETE FROM app.{table}", f"TRUNCATE app.{table}"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(statement)
            # Nor setval the ledger's sequence, which would fail every later ledger insert.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT setval('app.{LEDGER_TABLE}_id_seq', 1, false)")
            # sigma-db doctor agrees: read-only there is what each role promises.
            report = privilege_report(conn, provisioned.topology)
            assert report.problems == (), report.problems
    # roles apply agrees (no drift), and takes a write privilege given back by hand.
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    with provisioned.admin_connection() as admin:
        admin.execute(
            f"GRANT UPDATE ON app.{LEDGER_TABLE} TO {provisioned.target.roles[RoleKind.RW]}"
        )
        # _rw's GRANT ... ON ALL TABLES that repairs this gives it the bookkeeping's too:
        admin.execute(f"REVOKE SELECT ON app.signals FROM {provisioned.target.roles[RoleKind.RW]}")
    plan = sync_roles(provisioned.admin, [provisioned.target], apply=True)
    for table in ("alembic_version", LEDGER_TABLE):
        assert f'REVOKE DELETE, INSERT, UPDATE ON TABLE "app"."{table}"' in plan.render()
    with (
        provisioned.connect(RoleKind.RW) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(f"DELETE FROM app.{LEDGER_TABLE}")
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    # A record made again by another path is read-only too: alembic stamp after the version
    # table went, and migrations repair after the ledger went.
    migrator = provisioned.settings(RoleKind.MIGRATOR)
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute(f"DROP TABLE app.alembic_version, app.{LEDGER_TABLE}")
    command.stamp(repo.config(migrator), "head")
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute(f"DROP TABLE app.{LEDGER_TABLE}")
    path = repo.versions / "0001_init.py"
    path.write_text(path.read_text() + "\n# reviewed\n")
    repair(repo.config(migrator), migrator, "0001", "a comment only")
    with provisioned.connect(RoleKind.RW) as conn:
        for table in ("alembic_version", LEDGER_TABLE):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"DELETE FROM app.{table}")


def _fingerprints(statements: list[str]) -> list[str]:
    found = []
    for statement in statements:
        sql = re.sub(r"%\((\w+)\)s", "$1", statement)
        for raw in parser.split(sql):
            found.append(parser.fingerprint(raw))
    return found


def test_offline_sql_matches_what_the_online_run_executes(
    repo: ProductRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    chain = [
        ("init", SIGNALS, {}),
        ("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))', {}),
        (
            "index score",
            'ops.create_index_concurrently("ix_signals_score", "signals", ["score"])',
            {},
        ),
        (
            "fill score",
            'ops.run_in_batches("UPDATE signals SET score = 0 WHERE id IN (SELECT id FROM '
            'signals WHERE score IS NULL LIMIT :batch_size)", batch_size=10)',
            {"phase": "backfill"},
        ),
    ]
    for message, upgrade, kw in chain:
        repo.add(message, upgrade, **kw)
    offline = repo.sql()
    executed = _upgrade_sending(repo, monkeypatch)
    online = [s for s in executed if not s.lstrip().upper().startswith(("SELECT", "SHOW"))]
    # Online the version move also returns the session's timeouts (offline there is no reader).
    online = [
        re.sub(
            r",? (RETURNING )?current_setting\('lock_timeout'\), current_setting\("
            r"'statement_timeout'\)$",
            "",
            s,
        )
        for s in online
    ]
    offline_statements = []
    for statement in parser.split(offline):
        if statement.strip().upper().startswith(("BEGIN", "COMMIT")):
            continue
        if statement.startswith(("DO $$ BEGIN IF to_regnamespace(", "SET search_path", "SELECT")):
            # The standalone preamble (online: the schema exists, the login's search_path and
            # the lock are SELECTs) and the final unlock.
            continue
        if statement.startswith(
            (
                "DO $sigma_db$ BEGIN WHILE NOT",
                "DO $sigma_db$ DECLARE sigma_db_f",
                "DO $sigma_db$ DECLARE r record",
            )
        ):
            # What the online run does in Python: poll for the lock, check the version table's
            # rowcount (offline, each revision checks the version it expects), and look up who
            # may write the bookkeeping (a query; offline a DO block revokes in a loop).
            continue
        if statement.startswith("DO $sigma_db$") and "$sigma_db_batch$" in statement:
            # Offline a backfill loops in a DO block; online Python loops the same statement.
            statement = statement.split("$sigma_db_batch$")[1]
        if statement.startswith(("SET lock_timeout", "SET statement_timeout", "RESET ")):
            # Offline each revision states its timeouts; online only changes are sent, with
            # set_config (a SELECT: it returns them as the server states them).
            continue
        offline_statements.append(statement)
    # Same statements in the same order: timeouts, DDL, CONCURRENTLY, backfill, version table
    # and ledger bookkeeping (constants differ: durations, bind values). The table is empty, so
    # run_in_batches runs its statement once online too.
    assert len(offline_statements) >= 11
    assert _fingerprints(offline_statements) == _fingerprints(online)
    # Each revision's ledger row rides on the statement that moves the version table.
    version_moves = [s for s in online if s.startswith("WITH sigma_db_ledger AS (INSERT")]
    assert len(version_moves) == len(chain)
    assert repo.query("SELECT count(*) FROM app.migration_runs") == [(4,)]


def test_stamp_head_on_a_fresh_schema_creates_the_ledger(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    command.stamp(repo.config(), "head")
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0002",)]
    assert repo.query(LEDGER) == [("0001", "stamp"), ("0002", "stamp")]


def test_stamp_records_every_revision_it_skips(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    repo.add("add rank", 'op.add_column("signals", sa.Column("rank", sa.BigInteger))')
    repo.upgrade("0001")
    command.stamp(repo.config(), "head")
    assert repo.query(LEDGER) == [("0001", "upgrade"), ("0002", "stamp"), ("0003", "stamp")]
    command.stamp(repo.config(), "0001")
    assert repo.query(LEDGER)[3:] == [("0003", "downgrade"), ("0002", "downgrade")]
    from sigma_db.migrations.dryrun import dry_run

    command.stamp(repo.config(), "head")
    report = dry_run(repo.config(), repo.settings)
    assert [f.rule for f in report.findings if f.rule == "unknown"] == []


def test_stamp_purge_leaves_the_ledger_agreeing_with_the_version_table(
    repo: ProductRepo,
) -> None:
    from sigma_db.migrations.ledger import applied_revisions, read_ledger

    repo.add("init", SIGNALS)
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    repo.add("add rank", 'op.add_column("signals", sa.Column("rank", sa.BigInteger))')
    repo.upgrade()
    command.stamp(repo.config(), "0001", purge=True)
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0001",)]
    assert repo.query(LEDGER)[-2:] == [("0003", "downgrade"), ("0002", "downgrade")]
    from sigma_db.migrations.environment import migration_engine

    engine = migration_engine(repo.settings)
    with engine.connect() as conn:
        assert set(applied_revisions(read_ledger(conn, "app"))) == {"0001"}
    engine.dispose()


def test_upgrade_refuses_when_alembic_skips_the_revision_wrapper(
    repo: ProductRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sigma_db.migrations import environment

    # As if a future Alembic stopped calling the migration_fn the env replaced.
    monkeypatch.setattr(environment._Run, "_wrap_step", lambda self, step, m: step.migration_fn)
    repo.add("init", SIGNALS)
    with pytest.raises(MigrationError, match=r"Alembic version .* is not supported by sigma_db"):
        repo.upgrade()
    assert repo.query("SELECT to_regclass('app.signals') IS NULL") == [(True,)]


def test_dry_run_refuses_when_revisions_render_without_the_wrapper(
    repo: ProductRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sigma_db.migrations import environment
    from sigma_db.migrations.dryrun import dry_run

    monkeypatch.setattr(environment._Run, "_wrap_plan", lambda self, planned: planned)
    monkeypatch.setattr(environment._Run, "_record", lambda self, **kw: None)
    repo.add("init", SIGNALS)
    with pytest.raises(MigrationError, match=r"Alembic version .* is not supported by sigma_db"):
        dry_run(repo.config(), repo.settings)


def test_an_alembic_outside_the_tested_range_is_refused(
    repo: ProductRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alembic

    from sigma_db.migrations.dryrun import dry_run

    monkeypatch.setattr(alembic, "__version__", "1.99.0")
    repo.add("init", SIGNALS)
    for attempt in (repo.upgrade, lambda: dry_run(repo.config(), repo.settings)):
        with pytest.raises(MigrationError, match=r"Alembic 1\.99\.0 is not supported .*alembic>="):
            attempt()


def test_a_timeout_of_none_means_the_servers_value(repo: ProductRepo) -> None:
    repo.add("init", TIMEOUTS_PROBE.format(rev="0001"), extra='lock_timeout = "1min"')
    repo.add("unset", TIMEOUTS_PROBE.format(rev="0002"), extra="lock_timeout = None")
    repo.add("again", TIMEOUTS_PROBE.format(rev="0003"), extra="statement_timeout = None")
    repo.upgrade()
    server = repo.query("SELECT reset_val FROM pg_settings WHERE name = 'lock_timeout'")[0][0]
    assert repo.query("SELECT * FROM app.seen ORDER BY rev") == [
        ("0001", "1min", "15min"),
        ("0002", server, "15min"),
        ("0003", "5s", "0"),
    ]


def test_ledger_records_the_login_not_the_group_role(repo: ProductRepo) -> None:
    login, group = f"ci_login_{os.getpid()}", f"ci_group_{os.getpid()}"
    name = repo.settings.name
    repo.query(
        f"CREATE ROLE {group} NOLOGIN; CREATE ROLE {login} LOGIN PASSWORD 'pw' IN ROLE {group};"
        f"GRANT CREATE, USAGE ON SCHEMA app TO {group};"
        f'ALTER ROLE {login} IN DATABASE "{name}" SET role = {group}'
    )
    try:
        repo.add("init", SIGNALS)
        as_login = repo.settings.model_copy(update={"user": login, "password": SecretStr("pw")})
        assert repo.upgrade(settings=as_login) == ["upgrade 0001"]
        assert repo.query("SELECT applied_by FROM app.migration_runs") == [(login,)]
    finally:
        repo.query(f"DROP OWNED BY {login}, {group}; DROP ROLE {login}; DROP ROLE {group}")


def test_offline_sql_applies_on_its_own(repo: ProductRepo) -> None:
    from sigma_db.migrations.environment import advisory_lock_key

    repo.add("init", SIGNALS)
    repo.add("fill", "op.execute(\"INSERT INTO signals (name) VALUES ('x')\")", phase="backfill")
    sql = repo.sql()
    key = advisory_lock_key(repo.settings.topology)
    statements = [s.strip() for s in parser.split(sql)]
    assert statements[:3] == [
        'DO $$ BEGIN IF to_regnamespace(\'"app"\') IS NULL THEN CREATE SCHEMA "app"; END IF; '
        "END $$",
        'SET search_path = "app", "public"',
        "DO $sigma_db$ BEGIN WHILE NOT pg_try_advisory_lock("
        f"{key}) LOOP COMMIT; PERFORM pg_sleep(0.05); END LOOP; END $sigma_db$",
    ]
    assert statements[-1] == f"SELECT pg_advisory_unlock({key})"
    # A DBA pipes it into psql as a login whose search_path is the default, schema absent.
    repo.query("DROP SCHEMA app CASCADE")
    s = repo.settings
    with connect(s) as conn:
        for statement in statements:
            conn.execute(statement)
    assert repo.query("SELECT name FROM app.signals") == [("x",)]
    assert repo.query(LEDGER) == [("0001", "upgrade"), ("0002", "upgrade")]
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0002",)]


def test_a_waiting_runner_does_not_deadlock_create_index_concurrently(repo: ProductRepo) -> None:
    # CREATE INDEX CONCURRENTLY waits for every older snapshot; a runner waiting for the lock
    # inside `SELECT pg_advisory_lock()` would hold one, and the two would deadlock.
    from sigma_db.migrations.environment import advisory_lock_key

    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    s = repo.settings
    key = advisory_lock_key(s.topology)
    with connect(s) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(repo.upgrade)
            time.sleep(0.5)  # the runner is waiting for the lock now
            holder.execute("SET lock_timeout = '20s'")
            holder.execute("CREATE INDEX CONCURRENTLY ix_signals_name ON app.signals (name)")
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
            assert waiting.result(timeout=60) == ["upgrade 0002"]
    assert repo.query("SELECT to_regclass('app.ix_signals_name') IS NOT NULL") == [(True,)]


def test_a_connection_lost_while_waiting_for_the_lock_is_reported_as_such(
    repo: ProductRepo,
) -> None:
    # A failover or restart while a runner waits: the error names what happened, not a
    # follow-up error from cleaning up the dead connection.
    from sigma_db.migrations.environment import advisory_lock_key

    repo.add("init", SIGNALS)
    s = repo.settings
    with connect(s) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_lock_key(s.topology),))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(repo.upgrade)
            time.sleep(0.5)  # the runner polls for the lock now
            holder.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND query LIKE '%%pg_try_advisory_lock%%'"
            )
            with pytest.raises(MigrationError) as failure:
                waiting.result(timeout=60)
    message = str(failure.value)
    assert "invalid transaction" not in message
    assert re.search(r"terminat|closed", message), message
    assert "connection to the server was lost" in message
    assert "\n" not in message


def test_a_runner_that_waited_sees_the_ledger_the_holder_created(repo: ProductRepo) -> None:
    # On a fresh database the waiting runner first finds no schema and no ledger; the run that
    # held the lock creates both. The waiter must look again, or it would skip the history check.
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    from sigma_db.migrations.environment import advisory_lock_key
    from sigma_db.migrations.ledger import ledger_table

    repo.add("init", SIGNALS)
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    s = repo.settings
    ledger_ddl = str(CreateTable(ledger_table("app")).compile(dialect=postgresql.dialect()))
    with connect(s) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (advisory_lock_key(s.topology),))
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(repo.upgrade)
            time.sleep(0.5)  # the runner has looked, found nothing, and waits
            # What the holder's run leaves: 0001 applied, from a different file content.
            holder.execute("CREATE SCHEMA IF NOT EXISTS app")
            holder.execute(ledger_ddl)
            holder.execute(
                "INSERT INTO app.migration_runs (revision, operation, checksum) "
                "VALUES ('0001', 'upgrade', 'not-this-file')"
            )
            holder.execute("CREATE TABLE app.alembic_version (version_num varchar(32) PRIMARY KEY)")
            holder.execute("INSERT INTO app.alembic_version VALUES ('0001')")
            holder.execute("SELECT pg_advisory_unlock(%s)", (advisory_lock_key(s.topology),))
            with pytest.raises(MigrationError, match=r"0001.*edited"):
                waiting.result(timeout=60)


def test_create_index_concurrently_replaces_an_invalid_index_left_by_a_failed_run(
    repo: ProductRepo,
) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    with connect(repo.settings) as conn:
        conn.execute("INSERT INTO app.signals (name) VALUES ('x'), ('x')")
        # A failed CREATE INDEX CONCURRENTLY leaves the index behind, marked invalid.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ix_signals_name ON app.signals (name)")
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.ix_signals_name'::regclass"
    assert repo.query(valid) == [(False,)]
    repo.add("index name", 'ops.create_index_concurrently("ix_signals_name", "signals", ["name"])')
    assert repo.upgrade() == ["upgrade 0002"]
    assert repo.query(valid) == [(True,)]


def test_a_failed_unique_build_drops_the_invalid_index_it_leaves(repo: ProductRepo) -> None:
    # Left behind, an invalid unique index still rejects writes the application makes.
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.query("INSERT INTO app.signals (name) VALUES ('x'), ('x')")
    repo.add(
        "unique name",
        'ops.create_index_concurrently("uq_signals_name", "signals", ["name"], unique=True)',
    )
    with pytest.raises(MigrationError) as failed:
        repo.upgrade()
    message = str(failed.value)
    assert "revision 0002 (0002_unique_name.py) failed: could not create unique index" in message
    assert 'the invalid index "uq_signals_name" the failed build left was dropped' in message
    assert repo.query("SELECT to_regclass('app.uq_signals_name')") == [(None,)]
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0001",)]
    repo.query("DELETE FROM app.signals WHERE id = (SELECT max(id) FROM app.signals)")
    assert repo.upgrade() == ["upgrade 0002"]


def test_a_concurrent_build_waits_for_older_transactions_past_the_lock_timeout(
    repo: ProductRepo,
) -> None:
    # The build waits for every older transaction (a report, pg_dump); with the revision's
    # lock_timeout it failed whenever one ran longer than that.
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.add(
        "index name",
        'ops.create_index_concurrently("ix_signals_name", "signals", ["name"])',
        extra='lock_timeout = "200ms"',
    )
    with connect(repo.settings) as report:
        report.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        report.execute("SELECT count(*) FROM app.signals")
        with ThreadPoolExecutor(1) as pool:
            upgrading = pool.submit(repo.upgrade)
            time.sleep(1.0)  # five lock timeouts
            assert not upgrading.done()
            report.execute("COMMIT")
            assert upgrading.result(timeout=60) == ["upgrade 0002"]
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.ix_signals_name'::regclass"
    assert repo.query(valid) == [(True,)]


def test_an_invalid_index_beside_a_table_in_public_is_replaced(repo: ProductRepo) -> None:
    # The table is found through the search_path, in public, not in the default schema.
    repo.query("CREATE TABLE public.legacy (code text); INSERT INTO public.legacy VALUES ('a')")
    with connect(repo.settings) as conn:
        conn.execute("INSERT INTO public.legacy VALUES ('a')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY uq_legacy_code ON public.legacy (code)")
        conn.execute("DELETE FROM public.legacy WHERE ctid = (SELECT max(ctid) FROM public.legacy)")
    repo.add(
        "unique code",
        'ops.create_index_concurrently("uq_legacy_code", "legacy", ["code"], unique=True)',
    )
    assert repo.upgrade() == ["upgrade 0001"]
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.uq_legacy_code'::regclass"
    assert repo.query(valid) == [(True,)]


def test_a_backfill_that_fails_after_some_batches_says_they_stay_committed(
    repo: ProductRepo,
) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.query("INSERT INTO app.signals (name) SELECT 'n' || g FROM generate_series(1, 5) g")
    repo.query("ALTER TABLE app.signals ADD CONSTRAINT ck_no_n4 CHECK (name <> 'N4')")
    repo.add(
        "upper",
        'ops.run_in_batches("UPDATE signals SET name = upper(name) WHERE id IN (SELECT id FROM '
        'signals WHERE name <> upper(name) ORDER BY id LIMIT :batch_size)", batch_size=2)',
        phase="backfill",
    )
    with pytest.raises(MigrationError) as failed:
        repo.upgrade()
    message = str(failed.value)
    assert "violates check constraint" in message
    assert "LIMIT :batch_size) (with batch_size=2)" in message
    assert "the 1 batch(es) before it (2 row(s)) stay committed" in message
    assert "running the migration again resumes after them" in message
    assert repo.query("SELECT count(*) FROM app.signals WHERE name = upper(name)") == [(2,)]


@pytest.mark.parametrize("size", [2.5, "5", True])
def test_a_batch_size_that_is_no_whole_number_is_refused(repo: ProductRepo, size: object) -> None:
    repo.add("init", SIGNALS)
    repo.add(
        "fill",
        f'ops.run_in_batches("UPDATE signals SET name = name WHERE id IN (SELECT id FROM signals '
        f'LIMIT :batch_size)", batch_size={size!r})',
        phase="backfill",
    )
    with pytest.raises(MigrationError, match=r"batch_size=.*: use a whole number of rows"):
        repo.upgrade()


def _psql(
    server: TestServer, settings: DatabaseSettings, sql: str
) -> subprocess.CompletedProcess[str]:
    """Run a script as a DBA would pipe it in: plain psql, no ON_ERROR_STOP."""
    return subprocess.run(
        [
            str(server.binaries.tool("psql")),
            "-X",
            "-q",
            "-h",
            settings.host,
            "-p",
            str(settings.port),
            "-U",
            settings.user,
            "-d",
            settings.name,
        ],
        input=sql,
        env=os.environ | {"PGPASSWORD": settings.secret()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_offline_scripts_loop_backfills_and_stop_at_a_failed_index_build(
    repo: ProductRepo, sigma_postgresql: TestServer
) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.query("INSERT INTO app.signals (name) SELECT 'n' || g FROM generate_series(1, 2500) g")
    repo.add("add title", 'op.add_column("signals", sa.Column("title", sa.Text))')
    repo.add(
        "fill title",
        'ops.run_in_batches("UPDATE signals SET title = name WHERE id IN (SELECT id FROM signals '
        'WHERE title IS NULL LIMIT :batch_size)")',
        phase="backfill",
    )
    script = repo.sql("0001:0003")
    done = _psql(sigma_postgresql, repo.settings, script)
    assert done.returncode == 0, done.stderr
    # All 2,500 rows in batches of 1,000, not one batch then "applied".
    assert repo.query("SELECT count(*) FROM app.signals WHERE title IS NULL") == [(0,)]
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0003",)]
    repo.query("INSERT INTO app.signals (name, title) VALUES ('x', 'dup'), ('y', 'dup')")
    repo.add(
        "unique title",
        'ops.create_index_concurrently("uq_signals_title", "signals", ["title"], unique=True)',
    )
    done = _psql(sigma_postgresql, repo.settings, repo.sql("0003:0004"))
    assert "could not create unique index" in done.stderr
    assert "is missing or invalid: its concurrent build failed" in done.stderr
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0003",)]
    assert repo.query(LEDGER)[-1] == ("0003", "upgrade")


def test_an_offline_backfill_is_not_bounded_by_the_statement_timeout_as_a_whole(
    repo: ProductRepo, sigma_postgresql: TestServer
) -> None:
    # Offline the batches run in one DO statement: a 1 s statement_timeout meant for each batch
    # cancelled the whole backfill after three batches of 0.3 s.
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.query("INSERT INTO app.signals (name) SELECT 'n' || g FROM generate_series(1, 5) g")
    repo.add(
        "slow fill",
        "ops.run_in_batches(\"UPDATE signals SET name = name || '!' || pg_sleep(0.3) "
        "WHERE id IN (SELECT id FROM signals WHERE name NOT LIKE '%%!' LIMIT :batch_size)\", "
        "batch_size=1)\n" + TIMEOUTS_PROBE.format(rev="0002"),
        phase="backfill",
        extra='statement_timeout = "1s"',
    )
    done = _psql(sigma_postgresql, repo.settings, repo.sql("0001:0002"))
    assert "statement timeout" not in done.stderr
    assert repo.query("SELECT count(*) FROM app.signals WHERE name LIKE '%!'") == [(5,)]
    assert repo.query("SELECT * FROM app.seen") == [("0002", "5s", "1s")]  # restored after


def test_an_offline_script_never_applies_a_revision_twice_or_out_of_order(
    repo: ProductRepo, sigma_postgresql: TestServer
) -> None:
    # Online, Alembic checks the version table's rowcount; a script piped into psql did not:
    # run after an online runner applied the same revision, it applied it again (two seed
    # rows, two ledger rows); run on past a failed revision, it applied the next one.
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.add("seed", "op.execute(\"INSERT INTO signals (name) VALUES ('seed')\")", phase="backfill")
    script = repo.sql("0001:0002")
    repo.upgrade()  # an online runner got there first
    done = _psql(sigma_postgresql, repo.settings, script)
    assert "revision 0002 expects the database at 0001, but its version table says 0002" in (
        done.stderr
    )
    assert repo.query("SELECT count(*) FROM app.signals") == [(1,)]
    assert repo.query(LEDGER) == [("0001", "upgrade"), ("0002", "upgrade")]
    repo.add("broken", 'op.execute("CREATE TABLE t3 (id int)")\nop.execute("SELECT 1/0")')
    repo.add("after", 'op.execute("CREATE TABLE t4 (id int)")')
    done = _psql(sigma_postgresql, repo.settings, repo.sql("0002:0004"))  # no ON_ERROR_STOP
    assert "division by zero" in done.stderr
    assert "revision 0004 expects the database at 0003, but its version table says 0002" in (
        done.stderr
    )
    assert repo.query("SELECT to_regclass('app.t3'), to_regclass('app.t4')") == [(None, None)]
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0002",)]
    assert repo.query(LEDGER)[-1] == ("0002", "upgrade")


def test_an_offline_script_run_on_past_a_failed_check_does_not_record_a_helper_revision(
    repo: ProductRepo, sigma_postgresql: TestServer
) -> None:
    # A helper's autocommit block ended the transaction the check had failed: its backfill ran
    # again, and the ledger recorded the revision a second time.
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.query("INSERT INTO app.signals (name) VALUES ('a'), ('b')")
    repo.add(
        "fill",
        "ops.run_in_batches(\"UPDATE signals SET name = name || '!' WHERE id IN (SELECT id "
        "FROM signals WHERE name NOT LIKE '%%!' LIMIT :batch_size)\")\n"
        'ops.create_index_concurrently("ix_signals_name", "signals", ["name"])',
        phase="backfill",
    )
    script = repo.sql("0001:0002")
    repo.upgrade()
    repo.query("UPDATE app.signals SET name = 'c' WHERE name = 'a!'")  # would be filled again
    done = _psql(sigma_postgresql, repo.settings, script)  # no ON_ERROR_STOP
    assert "revision 0002 expects the database at 0001, but its version table says 0002" in (
        done.stderr
    )
    assert repo.query("SELECT name FROM app.signals ORDER BY id") == [("c",), ("b!",)]
    assert repo.query(LEDGER) == [("0001", "upgrade"), ("0002", "upgrade")]


def test_an_offline_stamp_records_nothing_when_it_did_not_move_the_version_table(
    repo: ProductRepo, sigma_postgresql: TestServer
) -> None:
    # The stamp's UPDATE matched no row (the database was elsewhere), yet the ledger recorded
    # it, once per run of the script.
    for message in ("init", "a", "b"):
        repo.add(message)
    repo.upgrade("0001")
    config = repo.config()
    command.stamp(config, "0002:0003", sql=True)
    buffer = config.output_buffer
    assert isinstance(buffer, io.StringIO)
    done = _psql(sigma_postgresql, repo.settings, buffer.getvalue())
    assert (
        "stamp to 0003 (after moving the version table) expects the database at 0003, but its "
        "version table says 0001"
    ) in done.stderr
    assert repo.query(LEDGER) == [("0001", "upgrade")]


def test_an_offline_script_waiting_for_the_lock_does_not_deadlock_an_index_build(
    repo: ProductRepo, sigma_postgresql: TestServer
) -> None:
    # A blocking `SELECT pg_advisory_lock()` in the script held its snapshot while it waited,
    # and the online runner's CREATE INDEX CONCURRENTLY, waiting for that snapshot, failed
    # with "deadlock detected".
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.add("wait", 'op.execute("SELECT pg_sleep(1)")')
    repo.add("index", 'ops.create_index_concurrently("ix_signals_name", "signals", ["name"])')
    script = repo.sql("0001:0002")
    with ThreadPoolExecutor(1) as pool:
        online = pool.submit(repo.upgrade)
        time.sleep(0.5)  # the online runner holds the lock, in 0002's pg_sleep
        offline = _psql(sigma_postgresql, repo.settings, script)
        assert online.result(timeout=60) == ["upgrade 0002", "upgrade 0003"]
    assert "deadlock" not in offline.stderr
    assert "expects the database at 0001, but its version table says 0003" in offline.stderr
    assert repo.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.ix_signals_name'::regclass"
    ) == [(True,)]


def test_concurrent_index_on_tables_whose_names_need_quoting(repo: ProductRepo) -> None:
    # Legacy tables keep their names; Alembic quotes them, and so must the helper.
    repo.query('CREATE TABLE app."order" (x int); CREATE TABLE app."LegacyThing" (y int)')
    repo.add("index order", 'ops.create_index_concurrently("ix_order_x", "order", ["x"])')
    repo.add("index legacy", 'ops.create_index_concurrently("ix_legacy_y", "LegacyThing", ["y"])')
    assert repo.upgrade() == ["upgrade 0001", "upgrade 0002"]


def test_a_concurrent_index_whose_name_holds_dollar_quotes(repo: ProductRepo) -> None:
    # The check after the build is a DO $$ ... $$ block: the name ended it early.
    repo.query("CREATE TABLE app.legacy (code text)")
    repo.add("index", 'ops.create_index_concurrently("ix$$code", "legacy", ["code"])')
    assert repo.upgrade() == ["upgrade 0001"]
    assert repo.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.\"ix$$code\"'::regclass"
    ) == [(True,)]


def test_the_check_after_a_build_looks_beside_the_table(repo: ProductRepo) -> None:
    # An unrelated relation of the index's name earlier on the search_path must not count.
    repo.query("CREATE TABLE app.ix_legacy_code (z int); CREATE TABLE public.legacy (code text)")
    repo.add("index legacy", 'ops.create_index_concurrently("ix_legacy_code", "legacy", ["code"])')
    assert repo.upgrade() == ["upgrade 0001"]
    valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.ix_legacy_code'::regclass"
    assert repo.query(valid) == [(True,)]


def test_a_failed_statement_shows_no_bound_values_but_batch_size(repo: ProductRepo) -> None:
    # A revision's values may be data, or secrets; batch_size is the helper's own.
    repo.add(
        "seed token",
        'op.execute(sa.text("INSERT INTO no_such_table VALUES (:token)")'
        '.bindparams(token="sk_live_S3CRET"))',
    )
    with pytest.raises(MigrationError) as failed:
        repo.upgrade()
    assert 'relation "no_such_table" does not exist' in str(failed.value)
    assert "S3CRET" not in str(failed.value)
