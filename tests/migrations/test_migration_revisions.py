"""Numbered revisions, one head, autogenerate limited to the product (real server)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sample_repo import ProductRepo

from sigma_db import DatabaseSettings
from sigma_db.migrations import MigrationError
from sigma_db.migrations.revisions import next_revision_id

MODEL = """
from sqlalchemy import BigInteger, Column, Date, Identity, Index, Integer, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

Table(
    "events",
    Base.metadata,
    Column("id", Integer),
    Column("at", Date),
    Index("ix_events_at", "at"),
    postgresql_partition_by="RANGE (at)",
)

class Signal(Base):
    __tablename__ = "signals"
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
"""


def test_next_revision_id() -> None:
    assert next_revision_id([]) == "0001"
    assert next_revision_id(["0001", "0009", "abc"]) == "0010"
    assert next_revision_id(["9999"]) == "10000"


def test_revision_command_numbers_files_without_a_database(offline_repo: ProductRepo) -> None:
    first = command.revision(offline_repo.config(), "init")
    second = command.revision(offline_repo.config(), "add signals")
    names = sorted(p.name for p in offline_repo.versions.glob("*.py"))
    assert names == ["0001_init.py", "0002_add_signals.py"]
    assert first.revision == "0001"  # type: ignore[union-attr]
    assert second.down_revision == "0001"  # type: ignore[union-attr]
    text = (offline_repo.versions / "0002_add_signals.py").read_text()
    assert 'phase = "expand"' in text
    # Double quotes, as ruff format writes them: a new revision passes the product's lint job.
    assert 'revision: str = "0002"\ndown_revision: str | None = "0001"\n' in text
    first_text = (offline_repo.versions / "0001_init.py").read_text()
    assert "down_revision: str | None = None\n" in first_text


def test_two_heads_is_one_clear_error(offline_repo: ProductRepo) -> None:
    offline_repo.add("init")
    offline_repo.add("a")
    offline_repo.add("b", down="0001")
    with pytest.raises(MigrationError) as caught:
        offline_repo.sql()
    message = str(caught.value)
    assert "2 heads (0002_a.py, 0003_b.py)" in message
    assert "down_revision" in message
    with pytest.raises(MigrationError, match="heads"):
        command.revision(offline_repo.config(), "c")


def test_deleted_revision_file_is_one_clear_error(offline_repo: ProductRepo) -> None:
    offline_repo.add("init")
    offline_repo.add("a").unlink()
    offline_repo.add("b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MigrationError) as caught:
            offline_repo.sql()
    assert "revision 0002 is missing: 0003_b.py follows it" in str(caught.value)
    assert "git checkout" in str(caught.value)


def test_a_helper_module_in_versions_is_named_as_such(offline_repo: ProductRepo) -> None:
    offline_repo.add("init")
    (offline_repo.versions / "helpers.py").write_text("def helper():\n    return 1\n")
    with pytest.raises(MigrationError) as caught:
        offline_repo.sql()
    assert str(caught.value).startswith(
        "helpers.py in migrations/versions is not a revision (it declares no revision = ...)"
    )


def test_a_duplicate_id_with_a_revision_after_it_names_both_files(
    offline_repo: ProductRepo,
) -> None:
    # With 0010 following one of the two 0009s, the walk failed and the message said "restore
    # the missing revision file", naming none.
    offline_repo.add("init")
    offline_repo.add("a", revision="0002")
    offline_repo.add("a2", revision="0003")
    offline_repo.add("b", revision="0002", down="0001")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MigrationError) as caught:
            offline_repo.sql()
    assert str(caught.value) == (
        "revision 0002 is declared by more than one file (0002_a.py, 0002_b.py); give the newer "
        "one the next free number"
    )


def test_a_revision_without_its_functions_names_its_file(repo: ProductRepo) -> None:
    # Alembic's AttributeError traceback, for upgrade() at once, for downgrade() on the way back.
    repo.add("init")
    path = repo.add("x")
    path.write_text(path.read_text().replace("def upgrade()", "def _upgrade()"))
    with pytest.raises(MigrationError) as caught:
        repo.sql()
    assert str(caught.value) == (
        "0002_x.py defines no upgrade(); define upgrade() (and downgrade(), which raises if it "
        "cannot be undone)"
    )
    path.write_text(path.read_text().replace("def _upgrade()", "def upgrade()"))
    path.write_text(path.read_text().replace("def downgrade()", "def _downgrade()"))
    assert repo.upgrade() == ["upgrade 0001", "upgrade 0002"]  # never reverted: not needed
    with pytest.raises(MigrationError) as caught:
        command.downgrade(repo.config(), "base")
    assert str(caught.value).startswith(
        "0002_x.py defines no downgrade(), so it cannot be reverted; define upgrade()"
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Alembic failed deep in its revision map: "migrations/versions: TypeError: 'int' ..."
        ('revision = 2\ndown_revision = "0001"', "0002_x.py:2: revision is not a string; write"),
        # "Self-loop is detected ...; restore the missing revision file"
        ('revision = "0002"\ndown_revision = "0002"', "0002_x.py names itself as its down_rev"),
        ('revision = "0002"\ndown_revision = "0001"  # \x00', "0002_x.py contains a NUL byte"),
    ],
)
def test_a_broken_revision_header_names_its_file(
    offline_repo: ProductRepo, header: str, expected: str
) -> None:
    offline_repo.add("init")
    (offline_repo.versions / "0002_x.py").write_text(
        f'"""x"""\n{header}\nphase = "expand"\n\n\ndef upgrade() -> None:\n    pass\n'
    )
    with pytest.raises(MigrationError) as caught:
        offline_repo.sql()
    assert str(caught.value).startswith(expected)


def test_a_new_revision_goes_on_the_head_only(offline_repo: ProductRepo) -> None:
    offline_repo.add("init")
    offline_repo.add("a")
    with pytest.raises(MigrationError, match=r"on its head, 0002; run alembic revision without"):
        command.revision(offline_repo.config(), "branch", head="0001", splice=True)
    assert sorted(p.name for p in offline_repo.versions.glob("*.py")) == [
        "0001_init.py",
        "0002_a.py",
    ]


def test_a_revision_failing_to_render_offline_is_named(offline_repo: ProductRepo) -> None:
    # An error from the revision's own code (here SQLAlchemy's, an index name over 63
    # characters) was blamed on DB_* ("check DB_* (DB_USER must be a member of ...").
    offline_repo.add("init", 'ops.create_index_concurrently("ix_' + "n" * 70 + '", "t", ["a"])')
    with pytest.raises(MigrationError) as caught:
        offline_repo.sql()
    message = str(caught.value)
    assert message.startswith("revision 0001 (0001_init.py): rendering its SQL offline failed (")
    assert "exceeds maximum length of 63 characters" in message
    assert "DB_" not in message


def test_an_unreadable_alembic_ini_is_one_line(offline_repo: ProductRepo) -> None:
    from sigma_db.migrations.revisions import load_revisions

    ini = offline_repo.root / "alembic.ini"
    ini.write_bytes(b"# r\xe9sum\xe9\n" + ini.read_bytes())
    with pytest.raises(
        MigrationError, match=r"alembic\.ini is not UTF-8 text .*; save it as UTF-8"
    ):
        load_revisions(Config(str(ini)))


def test_a_revision_without_down_revision_names_its_file(offline_repo: ProductRepo) -> None:
    offline_repo.add("init")
    (offline_repo.versions / "0002_x.py").write_text('"""x"""\nrevision = "0002"\n')
    with pytest.raises(MigrationError, match=r"^0002_x\.py: AttributeError: .*down_revision"):
        offline_repo.sql()


def test_autogenerate_sees_only_the_product_and_no_partitions(repo: ProductRepo) -> None:
    (repo.root / f"{repo.models}.py").write_text(
        (repo.root / f"{repo.models}.py").read_text() + MODEL
    )
    repo.query(
        """
        CREATE SCHEMA app; CREATE SCHEMA sim; CREATE TABLE sim.runs (id int);
        CREATE TABLE app.events (id int, at date) PARTITION BY RANGE (at);
        CREATE TABLE app.events_2024 PARTITION OF app.events
            FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE INDEX ix_events_at ON app.events (at);
        """.replace("CREATE SCHEMA app;", "")
    )
    script = command.revision(repo.config(), "add signals", autogenerate=True)
    assert script is not None
    text = Path(script.path).read_text()  # type: ignore[union-attr]
    assert "op.create_table('signals'" in text
    assert "events_2024" not in text
    assert "sim" not in text
    assert script.revision == "0001"  # type: ignore[union-attr]
    assert "'events'" not in text
    repo.upgrade()
    command.check(repo.config())  # no differences: not the partition, ledger or version table


def test_autogenerate_ignores_what_the_search_path_shows_from_public(repo: ProductRepo) -> None:
    # Models without a schema are the default schema's; SQLAlchemy would also list public's
    # tables there (pg_partman's part_config, say) and compare them.
    (repo.root / f"{repo.models}.py").write_text(
        (repo.root / f"{repo.models}.py").read_text() + MODEL
    )
    repo.query(
        "CREATE TABLE public.part_config (parent_table text);"
        "CREATE TABLE public.signals (id int)"  # not the product's, despite the name
    )
    script = command.revision(repo.config(), "add signals", autogenerate=True)
    assert script is not None
    text = Path(script.path).read_text()  # type: ignore[union-attr]
    assert "op.create_table('signals'" in text
    assert "part_config" not in text
    repo.upgrade()
    command.check(repo.config())
    assert repo.query("SELECT count(*) FROM public.part_config") == [(0,)]


def test_revision_needs_no_db_settings(
    offline_repo: ProductRepo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    from alembic.config import Config

    for name in [n for n in os.environ if n.startswith("DB_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(offline_repo.root)
    config = Config(str(offline_repo.root / "alembic.ini"))  # no settings handed in
    command.revision(config, "init")
    assert [p.name for p in offline_repo.versions.glob("*.py")] == ["0001_init.py"]
    out = capsys.readouterr().out  # Alembic's "Generating ... done", and no SQL
    assert "Generating" in out and "pg_advisory_lock" not in out and "SCHEMA" not in out
    with pytest.raises(MigrationError, match="DB_HOST is not set"):
        command.upgrade(Config(str(offline_repo.root / "alembic.ini")), "head", sql=True)


AREA_MODELS = """
from sqlalchemy import BigInteger, ForeignKey, Identity, Text
from sqlalchemy.orm import Mapped, mapped_column


class Pack(Base):
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)


class AuditEvent(Base):
    __table_args__ = {"schema": "audit"}
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    pack_id: Mapped[int] = mapped_column(ForeignKey("packs.id"), index=True)
    note: Mapped[str] = mapped_column(Text)


class AuditNote(Base):
    __table_args__ = {"schema": "audit"}
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("audit.audit_events.id"))
"""


def test_autogenerate_in_dev_writes_logical_areas_that_migrate_every_layout(
    repo: ProductRepo, consolidated: DatabaseSettings
) -> None:
    # Compared in edge_products, where the area is lab_audit: the revision must not name
    # lab_audit, which the per-product databases of staging and prod do not have.
    models = repo.root / f"{repo.models}.py"
    models.write_text(models.read_text() + AREA_MODELS)
    repo.query("CREATE SCHEMA lab; CREATE SCHEMA lab_audit", consolidated)
    script = command.revision(repo.config(consolidated), "audit", autogenerate=True)
    assert script is not None and not isinstance(script, list)
    code = Path(script.path).read_text(encoding="utf-8")
    assert "lab_audit" not in code
    assert 'schema=ops.area("audit")' in code
    assert "[f\"{ops.area('audit')}.audit_events.id\"]" in code
    assert "from sigma_db.migrations import ops\n" in code
    assert repo.upgrade(settings=consolidated) == ["upgrade 0001"]
    command.check(repo.config(consolidated))
    repo.query("CREATE SCHEMA audit")  # what `sigma-db roles apply` creates in edge_lab
    assert repo.upgrade() == ["upgrade 0001"]
    command.check(repo.config())
    assert repo.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'audit'"
    ) == [(2,)]


NOT_VALID_MODEL = """
from sqlalchemy import BigInteger, CheckConstraint, Identity
from sqlalchemy.orm import Mapped, mapped_column


class Price(Base):
    __table_args__ = (CheckConstraint("cents >= 0", name="cents_not_negative"),)
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    cents: Mapped[int]
"""


def test_check_and_autogenerate_take_not_valid_checks_without_warnings(repo: ProductRepo) -> None:
    # The lint asks for NOT VALID; SQLAlchemy 2.1 warns when it reflects one, and the suite
    # (like a product's) turns warnings into errors.
    models = repo.root / f"{repo.models}.py"
    models.write_text(models.read_text() + NOT_VALID_MODEL)
    repo.query(
        "CREATE TABLE app.prices (id bigint GENERATED BY DEFAULT AS IDENTITY "
        "CONSTRAINT pk_prices PRIMARY KEY, cents integer NOT NULL); ALTER TABLE app.prices ADD "
        "CONSTRAINT ck_prices_cents_not_negative CHECK (cents >= 0) NOT VALID"
    )
    repo.add("init")
    repo.upgrade()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        command.check(repo.config())


def test_only_schemas_and_foreign_key_specs_become_areas() -> None:
    # In the per-product layout each area is its own physical name: a default that reads like
    # one must stay as written.
    from sigma_db.migrations.autogenerate import logical_areas_in_revision

    code = (
        "import sqlalchemy as sa\n"
        "from alembic import op\n\n\n"
        "def upgrade() -> None:\n"
        "    op.create_table('events',\n"
        "    sa.Column('note', sa.Text(), server_default='signals.daily.close'),\n"
        "    sa.Column('d', sa.Text(), server_default=sa.text(\"'audit.greeks.delta'\")),\n"
        "    sa.Column('audit', sa.Text()),\n"
        "    sa.ForeignKeyConstraint(['x_id'], ['audit.xs.id'], name='fk_ü'),\n"
        "    schema='audit')\n"
    )
    rewritten = logical_areas_in_revision(code, {"audit": "audit", "signals": "signals"})
    assert rewritten == code.replace("['audit.xs.id']", "[f\"{ops.area('audit')}.xs.id\"]").replace(
        "schema='audit')", 'schema=ops.area("audit"))'
    ).replace(
        "from alembic import op\n", "from alembic import op\nfrom sigma_db.migrations import ops\n"
    )
