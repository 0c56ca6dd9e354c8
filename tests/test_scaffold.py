"""sigma-db new-product: each seed product's repo runs its tests, migrates, passes its gate."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from sigma_db import ConfigurationError
from sigma_db.scaffold import new_product
from sigma_db.testing import TestServer
from sigma_db.topology import PRODUCTS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Billing", "lowercase snake_case"),
        ("bill-ing", "lowercase snake_case"),
        ("2fa", "lowercase snake_case"),
        ("select", "reserved SQL keyword"),
        ("b" * 64, "64 bytes"),
        ("x" * 45, "too long"),  # its test login edge_x…x_migrator_test: 64 bytes
        ("lab_audit", "collide"),
        ("pg_stats", "not with pg_"),
        ("_hidden", "start with a letter"),
        ("edge_billing", "not with pg_ or edge_"),
        ("app", "reserved"),
    ],
)
def test_bad_names_are_refused_with_the_reason(tmp_path: Path, name: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        new_product(name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_empty_destination_needs_force(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"not empty.*--force"):
        new_product("lab", dest)
    new_product("lab", dest, force=True)
    assert (dest / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (dest / "alembic.ini").is_file()


def test_the_longest_name_still_fits_every_login_made_from_it(tmp_path: Path) -> None:
    from sigma_db.roles import RoleKind, group_role
    from sigma_db.topology import Product

    product = Product.named("x" * 44)
    longest = f"{group_role(product, RoleKind.MIGRATOR)}_test"  # the test plugin's login
    assert len(longest.encode()) == 63
    assert Product.named("billing_").title == "Sigma Billing"


def test_force_refreshes_only_the_same_products_repository(tmp_path: Path) -> None:
    dest = tmp_path / "repo"
    new_product("lab", dest)
    with pytest.raises(ConfigurationError, match="holds the generated repository of product 'lab'"):
        new_product("sim", dest, force=True)
    assert not (dest / "sim_service").exists()
    new_product("lab", dest, force=True)  # its own: refreshed


def test_an_unwritable_destination_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"cannot create it \(Not a directory\)"):
        new_product("lab", blocker / "repo")


def test_cli_bad_name_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sigma_db", "new-product", "Bad-Name", "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("sigma-db: error: product name 'Bad-Name'")
    assert "Traceback" not in result.stderr


def test_cli_points_the_product_at_a_sigma_db_on_no_index(tmp_path: Path) -> None:
    # sigma-db>=VERSION installs only where an index has sigma-db; a fresh venv elsewhere
    # needs the source named.
    source = "sigma-db @ git+https://git.example/sigma_db@v0.1.0"
    command = ["new-product", "billing", "--dest", str(tmp_path / "billing"), "--sigma-db", source]
    result = subprocess.run(
        [sys.executable, "-m", "sigma_db", *command],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    pyproject = (tmp_path / "billing" / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"{source}"' in pyproject
    assert '"sigma-db[test] @ git+https://git.example/sigma_db@v0.1.0"' in pyproject
    assert "note:" not in result.stdout  # the source is named: nothing to warn about


def test_cli_next_step_says_where_the_default_requirement_installs_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sigma_db import __version__
    from sigma_db.cli import main

    main(["new-product", "billing", "--dest", str(tmp_path / "billing")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"next: cd {tmp_path / 'billing'} && pip install -e '.[test]'")
    assert lines[1].startswith(f"note: that installs sigma-db>={__version__} from your package")
    assert "--force --sigma-db 'sigma-db @ git+https://" in lines[1]


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ('sigma-db"\\n[x]', "is not a requirement"),  # the shell's 'sigma-db"\n[x]'
        ("numpy>=1", "names 'numpy', not sigma-db"),
        ("sigma-db @ file:///tmp/x\n[x]", "control characters"),
        ("sigma-db>=0.1\udcff", "not UTF-8"),
    ],
)
def test_the_sigma_db_requirement_must_be_a_requirement_of_sigma_db(
    tmp_path: Path, requirement: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"^--sigma-db .*{expected}.* e\.g\. 'sigma-db>="):
        new_product("billing", tmp_path / "out", sigma_db_requirement=requirement)
    assert not (tmp_path / "out").exists()


def test_a_requirement_with_quotes_and_backslashes_is_written_as_valid_toml(
    tmp_path: Path,
) -> None:
    import tomllib

    marker = 'sigma_db[embedded] @ file:///C:\\src\\sigma_db ; python_version >= "3.11"'
    new_product("billing", tmp_path / "out", sigma_db_requirement=marker)
    with (tmp_path / "out" / "pyproject.toml").open("rb") as handle:
        project = tomllib.load(handle)["project"]
    assert project["dependencies"] == [marker]
    assert project["optional-dependencies"]["test"] == [
        'sigma_db[embedded,test] @ file:///C:\\src\\sigma_db ; python_version >= "3.11"',
        "ruff>=0.6",
    ]


def test_new_product_gets_edge_name_and_item_example(tmp_path: Path) -> None:
    generated = new_product("billing", tmp_path / "billing")
    models = (tmp_path / "billing" / "billing_service" / "models.py").read_text(encoding="utf-8")
    assert generated.product.database == "edge_billing"
    assert "class Item(" in models
    assert "edge_billing_migrator" in (tmp_path / "billing" / ".env.example").read_text(
        encoding="utf-8"
    )


def test_ci_gate_requires_the_database(tmp_path: Path) -> None:
    new_product("billing", tmp_path / "billing")
    makefile = (tmp_path / "billing" / "Makefile").read_text(encoding="utf-8")
    assert "db-migrate-gate:" in makefile
    assert "\tsigma-db migrate --dry-run --require-database\n" in makefile
    assert "\tsigma-db migrate --dry-run\n" in makefile  # db-migrate-dry still works offline
    workflow = (tmp_path / "billing" / ".github" / "workflows" / "ci.yml").read_text(
        encoding="utf-8"
    )
    assert "make db-migrate-dry" not in workflow
    assert workflow.count("make db-migrate-gate") == 3


def _lint_job(repo: Path) -> None:
    """What the generated CI lint job runs, with this environment's ruff."""
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args], cwd=repo, capture_output=True, text=True
        )
        assert result.returncode == 0, f"ruff {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_revision_template_renders_lint_clean_even_without_the_hook(tmp_path: Path) -> None:
    # What `alembic revision` writes where ruff is missing: the lint job must still pass (the
    # imports in place for isort, op/sa allowed unused), and format --check skips revisions.
    from alembic.util import format_as_comma
    from mako.template import Template

    repo = tmp_path / "lab-service"
    new_product("lab", repo)
    template = Template(filename=str(repo / "migrations" / "script.py.mako"))
    rendered = {
        "0002_add_notes.py": {"imports": "", "upgrades": None, "downgrades": None},
        "0003_add_tags.py": {
            "imports": "from sqlalchemy.dialects import postgresql",
            "upgrades": "# ### commands auto generated by Alembic - please adjust! ###\n"
            "    op.add_column('packs', sa.Column('tags', postgresql.JSONB(), nullable=True))",
            "downgrades": "op.drop_column('packs', 'tags')",
        },
    }
    for down, (name, body) in zip(("0001", "0002"), rendered.items(), strict=True):
        text = template.render(
            message=name[5:-3],
            up_revision=name[:4],
            down_revision=down,
            create_date="2026-01-01 00:00:00",
            comma=format_as_comma,  # as Alembic passes it
            **body,
        )
        (repo / "migrations" / "versions" / name).write_text(text, encoding="utf-8")
    _lint_job(repo)


def test_generated_alembic_ini_runs_ruff_on_each_new_revision(tmp_path: Path) -> None:
    import configparser

    new_product("lab", tmp_path / "lab")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(tmp_path / "lab" / "alembic.ini", encoding="utf-8")
    hooks = ini["post_write_hooks"]
    assert hooks["hooks"] == "ruff"
    module = "sigma_db.migrations.revision_format"
    assert (hooks["ruff.type"], hooks["ruff.module"]) == ("module", module)
    pyproject = (tmp_path / "lab" / "pyproject.toml").read_text(encoding="utf-8")
    assert 'test = ["sigma-db[test]>=' in pyproject and '"ruff>=' in pyproject


def test_revision_hook_without_ruff_keeps_the_file_and_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util
    import shutil

    from sigma_db.migrations import revision_format

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ruff" else real(name, *a)
    )
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None)
    monkeypatch.chdir(tmp_path)
    revision = tmp_path / "migrations" / "versions" / "0002_add_notes.py"
    revision.parent.mkdir(parents=True)
    revision.write_text("import os\nx = 'unformatted'\n", encoding="utf-8")
    assert revision_format.main([str(revision)]) == 0  # the revision command goes on
    assert revision.read_text(encoding="utf-8") == "import os\nx = 'unformatted'\n"
    err = capsys.readouterr().err
    assert err.startswith("note: ruff is not installed, so 0002_add_notes.py is as Alembic")
    assert "ruff check --fix migrations/versions/0002_add_notes.py && ruff format" in err


def test_plugin_runs_a_generated_products_tests(pytester: pytest.Pytester) -> None:
    new_product("lab", pytester.path, force=True)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_plugin_usage_errors(pytester: pytest.Pytester) -> None:
    # Once for the run (pytest's usage error, exit 4), not as an error of every test.
    pytester.makeini("[pytest]\nsigma_db_alembic_ini = missing.ini\n")
    pytester.makepyfile("def test_x(sigma_database):\n    pass\n\ndef test_y():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sigma_db_alembic_ini = 'missing.ini': no file*"])
    pytester.makeini("[pytest]\nsigma_db_product = Lab-X\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sigma_db_product = 'Lab-X': product name 'Lab-X' must be*"])
    pytester.makeini("[pytest]\n")
    pytester.makepyfile("def test_x(sigma_rw_engine):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*need the product's migrations: set sigma_db_alembic_ini*"])


def test_broken_migrations_stop_the_run_with_one_message(pytester: pytest.Pytester) -> None:
    new_product("lab", pytester.path, force=True)
    versions = pytester.path / "migrations" / "versions"
    (versions / "0002_broken.py").write_text(
        '"""broken"""\nfrom alembic import op\n\nrevision = "0002"\ndown_revision = "0001"\n'
        'phase = "expand"\n\n\ndef upgrade() -> None:\n'
        '    op.execute("ALTER TABLE no_such_table ADD COLUMN x int")\n',
        encoding="utf-8",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*sigma_db: building the test template: the product's migrations failed: revision 0002*"]
    )
    assert result.stdout.str().count("no_such_table") <= 2  # one message, not one per test


@pytest.fixture(scope="session")
def product_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv that sees this environment's packages (so sigma_db is this working tree)."""
    venv = tmp_path_factory.mktemp("product-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    parent = sysconfig.get_path("purelib")
    Path(purelib, "_sigma_db_parent.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n", encoding="utf-8"
    )
    return venv / "bin" / "python"


@pytest.fixture
def product_database(sigma_postgresql: TestServer, request: pytest.FixtureRequest) -> Iterator[str]:
    database = PRODUCTS[request.param].database

    def admin() -> psycopg.Connection[tuple[object, ...]]:
        return sigma_postgresql.connect("postgres")

    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        yield database
    finally:
        with admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


def _run_in(
    repo: Path, env: dict[str, str], python: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in the generated repo, which must succeed."""
    result = subprocess.run(
        [str(python), "-m", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def _product_env(server: TestServer, database: str) -> dict[str, str]:
    """This environment with DB_* replaced: the superuser on the product's prod database."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DB_")} | {
        "DB_HOST": server.host,
        "DB_PORT": str(server.port),
        "DB_NAME": database,
        "DB_USER": server.superuser,
        "DB_PASSWORD": server.password,
        "DB_ENV": "prod",
        "DB_SSLMODE": "disable",
    }


@pytest.mark.slow
@pytest.mark.parametrize("product_database", list(PRODUCTS), indirect=True)
def test_seed_product_generates_tests_migrates_and_passes_its_gate(
    tmp_path: Path,
    product_venv: Path,
    product_database: str,
    sigma_postgresql: TestServer,
) -> None:
    key = next(k for k, p in PRODUCTS.items() if p.database == product_database)
    repo = tmp_path / f"{key}-service"
    new_product(key, repo, sigma_db_requirement=f"sigma-db @ {REPO.as_uri()}")
    pip = [str(product_venv), "-m", "pip", "install", "-q", "--no-deps", "-e", str(repo)]
    subprocess.run(pip, check=True, capture_output=True)
    env = _product_env(sigma_postgresql, product_database)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _run_in(repo, env, product_venv, *args)

    run("ruff", "check", ".")
    run("ruff", "format", "--check", ".")
    own_tests = run("pytest", "-q", "-p", "no:cacheprovider")
    assert "3 passed" in own_tests.stdout
    run("alembic", "upgrade", "head")
    run("alembic", "check")
    dry = run("sigma_db", "migrate", "--dry-run", "--require-database")
    assert "dry run: ok" in dry.stdout


NOTE_MODEL = """

class Note(IdentityPrimaryKey, Timestamps, Base):
    \"\"\"A note, with tags: autogenerate imports postgresql for them.\"\"\"

    body: Mapped[str] = mapped_column(String(2000))
    tags: Mapped[dict[str, str]] = mapped_column(postgresql.JSONB, default=dict)
"""


@pytest.mark.slow
@pytest.mark.parametrize("product_database", ["market"], indirect=True)
def test_new_revisions_pass_the_lint_job_as_written_and_locked_ones_stay_untouched(
    tmp_path: Path, product_database: str, sigma_postgresql: TestServer
) -> None:
    repo = tmp_path / "market-service"
    new_product("market", repo)  # env.py imports market_service: alembic.ini prepends the repo
    models = repo / "market_service" / "models.py"
    models.write_text(
        models.read_text(encoding="utf-8").replace(
            "from sqlalchemy import TIMESTAMP, String\n",
            "from sqlalchemy import TIMESTAMP, String\n"
            "from sqlalchemy.dialects import postgresql\n",
        )
        + NOTE_MODEL,
        encoding="utf-8",
    )
    env = _product_env(sigma_postgresql, product_database)

    def run(*args: str) -> str:
        done = _run_in(repo, env, Path(sys.executable), *args)
        return done.stdout + done.stderr

    run("alembic", "upgrade", "head")
    written = run("alembic", "revision", "--autogenerate", "-m", "add notes")
    assert "Running post write hook 'ruff'" in written
    run("alembic", "revision", "-m", "backfill notes")
    run("sigma_db", "migrations", "lock")
    _lint_job(repo)
    autogenerated = (repo / "migrations" / "versions" / "0002_add_notes.py").read_text("utf-8")
    assert 'op.create_table(\n        "notes",\n' in autogenerated  # ruff format's layout
    assert "from sqlalchemy.dialects import postgresql\n\nrevision" in autogenerated
    assert "dry run: ok" in run("sigma_db", "migrate", "--dry-run")
    # A later ruff with another style must not ask for a locked revision to be reformatted.
    locked = repo / "migrations" / "versions" / "0003_backfill_notes.py"
    locked.write_text(locked.read_text("utf-8").replace('"0003"', "'0003'"), encoding="utf-8")
    _lint_job(repo)


def test_pull_requests_never_get_migrator_credentials(tmp_path: Path) -> None:
    import yaml

    new_product("lab", tmp_path / "lab")
    workflow = yaml.safe_load((tmp_path / "lab" / ".github" / "workflows" / "ci.yml").read_text())
    jobs = workflow["jobs"]
    assert jobs["migration-gate"]["environment"] == "staging-readonly"
    for name in ("migrate-staging", "migrate-prod"):
        guarded = jobs[name].get(
            "if"
        ) == "github.ref == 'refs/heads/main'" or "migrate-staging" in (jobs[name].get("needs", []))
        assert guarded, name
    assert jobs["migrate-prod"]["needs"] == ["migrate-staging"]
