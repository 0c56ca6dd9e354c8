"""The verbs end to end: migrate (--dry-run), migrations lock/repair; errors as one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sample_repo import ProductRepo, db_env

from sigma_db import DatabaseSettings
from sigma_db.cli import main

SIGNALS = """
op.create_table(
    "signals",
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
"""


@pytest.fixture
def in_repo(repo: ProductRepo, monkeypatch: pytest.MonkeyPatch) -> ProductRepo:
    for name in [n for n in os.environ if n.startswith("DB_")]:
        monkeypatch.delenv(name)
    for name, value in db_env(repo.settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(repo.root)
    return repo


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sigma-db: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def each_fails_with(expected: str, capsys: pytest.CaptureFixture[str], *argvs: list[str]) -> None:
    for argv in argvs:
        code, _, err = run(argv, capsys)
        assert code == 1, argv
        assert expected in error_line(err), argv


def test_migrate_then_dry_run_is_clean(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    assert run(["migrations", "lock"], capsys)[0] == 0
    code, out, _ = run(["migrate", "--dry-run"], capsys)
    assert code == 0
    assert "reachable, at empty (no revision applied); 1 pending" in out
    assert "pending 0001 init (expand) 0001_init.py" in out
    assert "CREATE TABLE signals" in out
    code, out, _ = run(["migrate"], capsys)
    assert (code, out.splitlines()[-1]) == (0, "ok: 1 revision(s) applied")
    assert "s3cret" not in out
    code, out, _ = run(["migrate", "--dry-run"], capsys)
    assert code == 0
    assert "at 0001; 0 pending" in out
    assert in_repo.query("SELECT count(*) FROM app.migration_runs") == [(1,)]


def applied_then_edited(in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]) -> Path:
    """The first revision locked and applied, then edited (a column renamed): its file."""
    path = in_repo.add("init", SIGNALS)
    run(["migrations", "lock"], capsys)
    run(["migrate"], capsys)
    path.write_text(path.read_text().replace('"name"', '"title"'))
    return path


def test_edited_applied_revision_fails_dry_run_until_repaired(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    applied_then_edited(in_repo, capsys)
    code, _, err = run(["migrate", "--dry-run"], capsys)
    assert code == 1
    problems = [line for line in err.splitlines() if line.startswith("problem:")]
    assert problems[0].startswith("problem: 0001 (0001_init.py): lock-mismatch:")
    assert problems[1].startswith("problem: 0001 (0001_init.py): edited: changed after it was")
    assert "sigma-db migrations repair 0001" in problems[1]
    in_repo.add("next", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    # applying on top of an edited revision refuses
    each_fails_with("0001 (0001_init.py): edited", capsys, ["migrate"])
    (in_repo.versions / "0002_next.py").unlink()
    code, out, _ = run(
        ["migrations", "repair", "0001", "--reason", "rename before release"], capsys
    )
    assert code == 0
    assert out.startswith("repaired 0001 (0001_init.py)")
    assert run(["migrate", "--dry-run"], capsys)[0] == 0
    assert in_repo.query("SELECT operation, reason FROM app.migration_runs ORDER BY id") == [
        ("upgrade", None),
        ("repair", "rename before release"),
    ]


@pytest.mark.parametrize(
    ("reason", "said"), [("x", "--reason 'x' is too short"), ("  ", "--reason is empty")]
)
def test_a_reason_too_short_says_so(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str], reason: str, said: str
) -> None:
    # It was given: "--reason is required" would send the reader looking for a missing flag.
    in_repo.add("init", SIGNALS)
    run(["migrate"], capsys)
    each_fails_with(said, capsys, ["migrations", "repair", "0001", "--reason", reason])


def test_another_products_settings_are_refused(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    # In the consolidated dev database a copied `sigma-db dev env sim` applied Lab's
    # revisions into Sim's schema, with "ok" from both the dry run and migrate.
    in_repo.add("init", SIGNALS)
    ini = in_repo.root / "alembic.ini"
    mine = in_repo.settings.topology.product.key
    assert f"sigma_db_product = {mine}\n" in ini.read_text()
    ini.write_text(
        ini.read_text().replace(f"sigma_db_product = {mine}\n", "sigma_db_product = sim\n")
    )
    code, _, err = run(["migrate", "--dry-run"], capsys)
    assert code == 1
    assert "but these are Sigma Sim's migrations (alembic.ini: sigma_db_product = sim)" in err
    each_fails_with("use Sigma Sim's settings", capsys, ["migrate"])
    assert in_repo.query("SELECT to_regclass('alembic_version')") == [(None,)]


def test_repair_takes_several_revisions_at_once(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    # A formatter run over applied revisions edits many files; one command accepts them all.
    first = in_repo.add("init", SIGNALS)
    second = in_repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    run(["migrations", "lock"], capsys)
    run(["migrate"], capsys)
    for path in (first, second):
        path.write_text(path.read_text() + "\n# reformatted\n")
    assert run(["migrate", "--dry-run"], capsys)[0] == 1
    code, out, err = run(
        ["migrations", "repair", "0001", "0002", "--reason", "ruff format, no change"], capsys
    )
    assert code == 0, err
    assert [line.split(" (")[0] for line in out.splitlines()] == ["repaired 0001", "repaired 0002"]
    assert run(["migrate", "--dry-run"], capsys)[0] == 0


def test_deleted_applied_revision_is_one_line(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    second = in_repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    run(["migrate"], capsys)
    second.unlink()
    code, _, err = run(["migrate"], capsys)
    line = error_line(err)
    assert code == 1
    assert "at revision 0002, which no revision file declares; restore the file" in line
    code, _, err = run(["migrate", "--dry-run"], capsys)
    assert code == 1
    problems = [line for line in err.splitlines() if line.startswith("problem:")]
    assert [line for line in problems if "0002" in line] == [
        next(line for line in problems if line.startswith("problem: 0002: unknown: the database"))
    ]


def test_dry_run_honours_to(in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]) -> None:
    in_repo.add("init", SIGNALS)
    in_repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    in_repo.add("add rank", 'op.add_column("signals", sa.Column("rank", sa.BigInteger))')
    run(["migrations", "lock"], capsys)
    code, out, err = run(["migrate", "--dry-run", "--no-sql", "--to", "0002"], capsys)
    assert code == 0, err
    assert "up to 0002" in out
    assert "; 2 pending" in out
    assert "pending 0002 add score" in out and "pending 0003" not in out
    run(["migrate", "--to", "0002"], capsys)
    code, out, _ = run(["migrate", "--dry-run", "--to", "0002"], capsys)
    assert (code, "at 0002; 0 pending" in out) == (0, True)
    code, _, err = run(["migrate", "--dry-run", "--to", "0009"], capsys)
    assert "--to 0009" in error_line(err)
    code, out, err = run(["migrate", "--dry-run", "--no-sql", "--to", "+1"], capsys)
    assert code == 0, err
    assert "; 1 pending" in out and "pending 0003 add rank" in out  # as migrate --to +1 would
    code, _, err = run(["migrate", "--dry-run", "--to", "+2"], capsys)
    assert "--to +2: 1 revision(s) are pending" in error_line(err)


def test_broken_tree_says_the_database_was_not_asked(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    in_repo.add("next", "pass", down="0007")
    code, out, _ = run(["migrate", "--dry-run"], capsys)
    assert code == 1
    assert "database: not asked (the revision files have problems)" in out
    assert "NOT reachable" not in out


def test_corrupt_lock_file_is_one_line(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    (in_repo.root / "migrations" / "checksums.lock").write_text("0001 not-a-checksum\n")
    code, _, err = run(["migrations", "lock"], capsys)
    assert code == 1
    assert "checksums.lock is corrupt: line 1 is not '<revision> <sha256> <file>'" in error_line(
        err
    )
    code, _, err = run(["migrate", "--dry-run"], capsys)
    assert code == 1
    assert "lock-corrupt" in err


def test_a_malformed_alembic_ini_is_one_line_for_every_verb(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    ini = in_repo.root / "alembic.ini"
    ini.write_text("garbage\n" + ini.read_text())
    each_fails_with(
        "alembic.ini is not a valid Alembic config",
        capsys,
        ["migrations", "lock"],
        ["migrate"],
        ["migrate", "--dry-run"],
        ["migrations", "repair", "0001", "--reason", "a good reason"],
    )


def test_dry_run_without_script_location_is_one_line(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    ini = in_repo.root / "alembic.ini"
    ini.write_text(
        "\n".join(line for line in ini.read_text().splitlines() if "script_location" not in line)
    )
    each_fails_with("check script_location", capsys, ["migrate", "--dry-run"])


def test_to_blames_the_typo_not_the_database(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    run(["migrate"], capsys)
    code, _, err = run(["migrate", "--to", "9999"], capsys)
    assert code == 1
    assert error_line(err) == (
        "sigma-db: error: --to 9999: no revision file declares it; name a revision number "
        "(e.g. 0003), head, or +N (N revisions ahead)"
    )
    each_fails_with(
        "--to is empty", capsys, ["migrate", "--to", ""], ["migrate", "--dry-run", "--to", " "]
    )
    # Alembic's other forms: a bare AssertionError, or "the database is at revision foo".
    for target in ("0001-1", "foo@head", "0001:0002", "-1", "x'", "base"):
        each_fails_with(
            f"--to {target} is not a target migrate accepts", capsys, ["migrate", "--to", target]
        )
    each_fails_with(
        "--to +5: fewer revisions than that are pending", capsys, ["migrate", "--to", "+5"]
    )


def test_a_statement_that_does_not_parse_names_its_revision(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    in_repo.add("typo", 'op.execute("SELEC 1")')
    each_fails_with(
        'revision 0002 (0002_typo.py): its SQL does not parse (syntax error at or near "SELEC")',
        capsys,
        ["migrate", "--dry-run"],
    )


def test_a_revision_losing_its_connection_says_to_run_again(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    in_repo.add("killed", 'op.execute("SELECT pg_terminate_backend(pg_backend_pid())")')
    code, _, err = run(["migrate"], capsys)
    assert code == 1
    line = error_line(err)
    assert "revision 0002 (0002_killed.py) failed" in line
    assert "The connection to the server was lost" in line
    assert "Fix the revision" not in line


def test_a_failed_migrate_says_which_revisions_it_committed_first(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    in_repo.add("broken", 'op.execute("SELECT 1/0")')
    code, out, err = run(["migrate"], capsys)
    assert code == 1
    assert "revision 0002 (0002_broken.py) failed" in error_line(err)
    assert "  upgrade 0001\n1 revision(s) applied and committed before the failure" in out


def test_a_revision_whose_commit_fails_is_not_listed_as_committed(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    in_repo.add(
        "deferred",
        """
        op.execute(
            "CREATE TABLE parents (id int PRIMARY KEY);"
            "CREATE TABLE children (parent int REFERENCES parents DEFERRABLE INITIALLY DEFERRED);"
            "INSERT INTO children VALUES (1)"
        )
        """,
    )
    code, out, err = run(["migrate"], capsys)
    assert code == 1
    assert "upgrade 0002 failed at COMMIT: " in error_line(err)
    assert "  upgrade 0001\n1 revision(s) applied and committed before the failure" in out
    assert in_repo.query("SELECT version_num FROM app.alembic_version") == [("0001",)]


def test_dry_run_reports_what_migrate_would_refuse(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    in_repo.add("init", SIGNALS)
    run(["migrations", "lock"], capsys)
    monkeypatch.setenv("DB_POOLER", "transaction")
    code, _, err = run(["migrate", "--dry-run"], capsys)
    assert code == 1
    assert "problem: pooler: Migrations need a direct connection" in err
    each_fails_with("Migrations need a direct connection", capsys, ["migrate"])


def test_repair_when_the_database_is_at_an_unknown_revision(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    in_repo.add("init", SIGNALS)
    run(["migrate"], capsys)
    in_repo.query("UPDATE app.alembic_version SET version_num = '0099'")
    each_fails_with(
        "the database is at revision 0099, which no revision file declares",
        capsys,
        ["migrations", "repair", "0001", "--reason", "a good reason"],
    )


def test_repair_reads_the_lock_file_before_writing_the_ledger(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    applied_then_edited(in_repo, capsys)
    lock = in_repo.root / "migrations" / "checksums.lock"
    lock.write_text(lock.read_text() + "garbage\n")
    each_fails_with(
        "checksums.lock is corrupt",
        capsys,
        ["migrations", "repair", "0001", "--reason", "a good reason"],
    )
    assert in_repo.query("SELECT operation FROM app.migration_runs ORDER BY id") == [("upgrade",)]


def test_lock_follows_a_renamed_file_and_refuses_an_empty_lock_file(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    path = in_repo.add("init", SIGNALS)
    run(["migrations", "lock"], capsys)
    path.rename(path.with_name("0001_create_signals.py"))
    code, out, _ = run(["migrations", "lock"], capsys)
    assert code == 0
    assert "renamed 0001 0001_init.py -> 0001_create_signals.py" in out
    lock = in_repo.root / "migrations" / "checksums.lock"
    assert lock.read_text().splitlines()[-1].endswith(" 0001_create_signals.py")
    lock.write_text("")
    each_fails_with(
        "checksums.lock is empty; restore it from version control", capsys, ["migrations", "lock"]
    )


def test_lock_refuses_silent_edits(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    path = in_repo.add("init", SIGNALS)
    run(["migrations", "lock"], capsys)
    path.write_text(path.read_text() + "\n# edited\n")
    each_fails_with("--accept 0001", capsys, ["migrations", "lock"])
    code, out, _ = run(["migrations", "lock", "--accept", "0001"], capsys)
    assert (code, out.splitlines()[0]) == (0, "re-locked 0001 0001_init.py (edit accepted)")


def test_crlf_checkout_has_the_same_checksum(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    path = in_repo.add("init", SIGNALS)
    run(["migrations", "lock"], capsys)
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    code, out, _ = run(["migrations", "lock"], capsys)
    assert (code, out.splitlines()[-1].endswith("already up to date")) == (0, True)


def test_unreachable_database(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    in_repo.add("init", SIGNALS)
    run(["migrations", "lock"], capsys)
    from sigma_db.server import free_port

    monkeypatch.setenv("DB_PORT", str(free_port()))
    code, _, err = run(["migrate"], capsys)
    line = error_line(err)
    assert code == 1
    assert line.startswith("sigma-db: error: Cannot connect to postgresql://postgres@127.0.0.1:")
    assert "s3cret" not in err
    code, out, err = run(["migrate", "--dry-run"], capsys)
    assert code == 0, err
    assert "database: NOT reachable, offline checks only" in out
    assert "pending 0001 init" in out
    code, out, err = run(["migrate", "--dry-run", "--require-database"], capsys)
    assert code == 1
    assert "problem: database-unreachable: Cannot connect to postgresql://" in err
    assert "--require-database" in err


def test_dry_run_that_cannot_get_in_fails(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    code, out, err = run_process(repo, "migrate", "--dry-run", DB_PASSWORD="wrong")
    line = one_error_line(code, err)
    assert "password authentication failed" in line
    assert "NOT reachable" not in out
    role = f"noread_{os.getpid()}"
    repo.query(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    try:
        repo.query(f"GRANT USAGE ON SCHEMA app TO {role}")
        code, out, err = run_process(repo, "migrate", "--dry-run", DB_USER=role, DB_PASSWORD="pw")
        line = one_error_line(code, err)
        assert "permission denied for table alembic_version" in line
        assert f"DB_USER ({role}) must be a member of edge_lab_migrator" in line
    finally:
        repo.query(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_missing_settings_and_config(
    in_repo: ProductRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DB_HOST")
    code, _, err = run(["migrate"], capsys)
    assert code == 1
    assert "DB_HOST is not set; set the server's host name" in err
    assert "Traceback" not in err
    monkeypatch.setenv("DB_HOST", "127.0.0.1")
    code, _, err = run(["migrate", "-c", "nowhere.ini"], capsys)
    assert "No Alembic config at nowhere.ini: run in the product repository" in error_line(err)


def sigma_db_process(repo: ProductRepo, *args: str, **overrides: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env.update(db_env(repo.settings))
    env.update(overrides)
    return subprocess.Popen(
        [sys.executable, "-m", "sigma_db", *args],
        cwd=repo.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_apply_each_revision_once(repo: ProductRepo) -> None:
    for number in range(1, 5):
        repo.add(
            f"step {number}",
            f'op.execute("CREATE TABLE t{number} (id int); SELECT pg_sleep(0.2)")',
        )
    first = sigma_db_process(repo, "migrate")
    second = sigma_db_process(repo, "migrate")
    results = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], results
    outs = sorted(out.splitlines()[-1] for out, _ in results)
    assert outs == ["ok: 4 revision(s) applied", "ok: already up to date"]
    assert any("Waiting for another migration run" in err for _, err in results)
    assert repo.query(
        "SELECT revision, count(*) FROM app.migration_runs GROUP BY 1 ORDER BY 1"
    ) == [("0001", 1), ("0002", 1), ("0003", 1), ("0004", 1)]
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0004",)]


def test_dry_run_subprocess_names_revision_and_statement(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.add("drop", 'op.drop_column("signals", "name")')
    lock = sigma_db_process(repo, "migrations", "lock")
    assert lock.communicate(timeout=60)[1] == "" or lock.returncode == 0
    dry = sigma_db_process(repo, "migrate", "--dry-run", "--no-sql")
    out, err = dry.communicate(timeout=60)
    assert dry.returncode == 1
    assert next(line for line in err.splitlines() if line.startswith("problem:")) == (
        "problem: 0002 (0002_drop.py) statement 1 `ALTER TABLE signals DROP COLUMN name`: "
        "ban-drop-column: Dropping a column may break existing clients; breaks code still "
        "running; allowed only in a contract revision"
    )
    assert "CREATE TABLE" not in out
    assert repo.query("SELECT to_regclass('app.alembic_version') IS NULL") == [(True,)]
    assert not (Path(repo.root) / "migrations" / "checksums.lock.tmp").exists()


def run_process(repo: ProductRepo, *args: str, **env: str) -> tuple[int, str, str]:
    process = sigma_db_process(repo, *args, **env)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def one_error_line(code: int, err: str) -> str:
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("sigma-db: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_role_without_privileges_is_one_line_with_the_fix(
    repo: ProductRepo, consolidated: DatabaseSettings
) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    role = f"nopriv_{os.getpid()}"
    repo.query(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    try:
        repo.query(f"GRANT USAGE ON SCHEMA app TO {role}")
        code, _, err = run_process(repo, "migrate", DB_USER=role, DB_PASSWORD="pw")
        line = one_error_line(code, err)
        assert "permission denied for table alembic_version" in line
        assert f"DB_USER ({role}) must be a member of edge_lab_migrator" in line
        # A Lab login pointed at another product's schema in the consolidated database: the
        # repository says whose migrations these are before the server is asked.
        code, _, err = run_process(
            repo,
            "migrate",
            DB_USER=role,
            DB_PASSWORD="pw",
            DB_NAME=consolidated.name,
            DB_SCHEMA="market",
            DB_PRODUCT="market",
        )
        line = one_error_line(code, err)
        assert "DB_* resolve to Sigma Market (database edge_products, schema market)" in line
        assert "but these are Sigma Lab's migrations" in line
    finally:
        repo.query(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_revision_the_login_may_not_run_names_the_migrator_role(repo: ProductRepo) -> None:
    # The bookkeeping is allowed (version table, ledger), the revision's ALTER is not: the
    # server says "must be owner of table", which the revision's author cannot fix.
    repo.add("init", SIGNALS)
    repo.upgrade()
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    role = f"notowner_{os.getpid()}"
    repo.query(
        f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA app TO {role}; "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON app.alembic_version, app.migration_runs "
        f"TO {role}"
    )
    try:
        code, _, err = run_process(repo, "migrate", DB_USER=role, DB_PASSWORD="pw")
        line = one_error_line(code, err)
        assert "revision 0002 (0002_add_score.py) failed: must be owner of table signals" in line
        assert f"DB_USER ({role}) lacks a privilege the revision needs" in line
        assert "as a member of edge_lab_migrator" in line
        assert "Fix the revision" not in line
    finally:
        repo.query(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_a_revision_that_does_not_compile_is_one_line(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.add("broken", "op.execute('SELECT 1'")
    for args in (("migrate",), ("migrate", "--dry-run"), ("migrations", "lock")):
        code, _, err = run_process(repo, *args)
        assert code == 1, (args, err)
        assert "Traceback" not in err, err
        assert "0002_broken.py:" in err and "SyntaxError" in err, (args, err)
        if args != ("migrate", "--dry-run"):
            one_error_line(code, err)


def test_an_exception_in_upgrade_names_the_revision(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS + "\nundefined_helper()")
    code, _, err = run_process(repo, "migrate")
    line = one_error_line(code, err)
    assert (
        "revision 0001 (0001_init.py) failed: NameError: name 'undefined_helper' is not defined; "
        "its transaction was rolled back" in line
    )
    assert repo.query("SELECT to_regclass('app.signals') IS NULL") == [(True,)]


def test_repair_without_privileges_is_one_line(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS)
    repo.upgrade()
    role = f"norepair_{os.getpid()}"
    repo.query(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA app TO {role}")
    try:
        code, _, err = run_process(
            repo,
            "migrations",
            "repair",
            "0001",
            "--reason",
            "a test",
            DB_USER=role,
            DB_PASSWORD="pw",
        )
        line = one_error_line(code, err)
        assert "permission denied for table migration_runs" in line
        assert f"DB_USER ({role}) must be a member of edge_lab_migrator" in line
    finally:
        repo.query(f"DROP OWNED BY {role}; DROP ROLE {role}")
