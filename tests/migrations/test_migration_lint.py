"""Lint and phase rules on rendered SQL (offline: no database needed)."""

from __future__ import annotations

import pytest
from sample_repo import ProductRepo

from sigma_db.migrations.commands import lock
from sigma_db.migrations.dryrun import dry_run
from sigma_db.migrations.findings import Finding

SIGNALS = """
op.create_table(
    "signals",
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
op.create_index("ix_signals_name", "signals", ["name"])
"""


def findings(repo: ProductRepo) -> list[Finding]:
    lock(repo.config())
    report = dry_run(repo.config(), repo.settings)
    assert not report.database.reachable
    return report.findings


def rules(repo: ProductRepo) -> list[tuple[str | None, str]]:
    return [(f.revision, f.rule) for f in findings(repo)]


def test_a_safe_chain_has_no_findings(offline_repo: ProductRepo) -> None:
    offline_repo.add("init", SIGNALS)  # an index on a table created in the same revision is fine
    offline_repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    offline_repo.add(
        "index score", 'ops.create_index_concurrently("ix_signals_score", "signals", ["score"])'
    )
    assert findings(offline_repo) == []


@pytest.mark.parametrize(
    ("upgrade", "rule"),
    [
        (
            'op.add_column("signals", sa.Column("score", sa.BigInteger, nullable=False))',
            "adding-required-field",
        ),
        (
            'op.create_index("ix_signals_id", "signals", ["id"])',
            "require-concurrent-index-creation",
        ),
        (
            'op.create_check_constraint("ck_signals_name", "signals", "name <> \'\'")',
            "constraint-missing-not-valid",
        ),
    ],
)
def test_unsafe_ddl_is_reported_in_any_phase(
    offline_repo: ProductRepo, upgrade: str, rule: str
) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add("unsafe", upgrade, phase="contract")
    assert rules(offline_repo) == [("0002", rule)]


@pytest.mark.parametrize(
    ("upgrade", "rule"),
    [
        ('op.drop_column("signals", "name")', "ban-drop-column"),
        ('op.alter_column("signals", "name", new_column_name="title")', "renaming-column"),
        ('op.alter_column("signals", "name", type_=sa.String(20))', "changing-column-type"),
        ('op.alter_column("signals", "id", nullable=True)', None),  # DROP NOT NULL is compatible
        ('op.drop_table("signals")', "ban-drop-table"),
        ('op.drop_index("ix_signals_name", table_name="signals")', "expand-adds-only"),
    ],
)
def test_incompatible_changes_only_in_contract(
    offline_repo: ProductRepo, upgrade: str, rule: str | None
) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add("change", upgrade, phase="expand")
    found = [r for _, r in rules(offline_repo) if r != "require-concurrent-index-deletion"]
    assert found == ([] if rule is None else [rule])
    (offline_repo.versions / "0002_change.py").write_text(
        (offline_repo.versions / "0002_change.py").read_text().replace("'expand'", "'contract'")
    )
    (offline_repo.root / "migrations" / "checksums.lock").unlink()
    found = [r for _, r in rules(offline_repo) if r != "require-concurrent-index-deletion"]
    assert found == []


def test_set_not_null_is_contract_only(offline_repo: ProductRepo) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add("tighten", 'op.alter_column("signals", "name", nullable=False)')
    assert rules(offline_repo) == [("0002", "adding-not-nullable-field")]


PRICE_TICKS = """
ticks = op.create_table(
    "price_ticks",
    sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", "observed_at"),
    postgresql_partition_by="RANGE (observed_at)",
)
"""


def test_a_partitioned_table_needs_its_partitions_in_the_same_revision(
    offline_repo: ProductRepo,
) -> None:
    # What autogenerate writes for a DatePartitioned model: the parent only, so every insert
    # failed ("no partition of relation found for row") while the CI gate said ok.
    offline_repo.add("add price ticks", PRICE_TICKS)
    assert rules(offline_repo) == [("0001", "partitioned-table-without-partitions")]
    offline_repo.add(
        "add trade ticks",
        PRICE_TICKS.replace("price_ticks", "trade_ticks")
        + 'create_partitions(op, ticks, DatePartitioning(column="observed_at", interval="day"))',
        extra="from sigma_db.partitions import DatePartitioning, create_partitions\n",
    )
    assert rules(offline_repo) == [("0001", "partitioned-table-without-partitions")]
    offline_repo.add(
        "add order ticks",
        """
        op.execute("CREATE TABLE order_ticks (d date NOT NULL) PARTITION BY RANGE (d)")
        op.execute("CREATE TABLE order_ticks_2026 (d date NOT NULL)")
        op.execute(
            "ALTER TABLE order_ticks ATTACH PARTITION order_ticks_2026 "
            "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')"
        )
        """,
    )
    assert rules(offline_repo) == [("0001", "partitioned-table-without-partitions")]


def test_phase_rules(offline_repo: ProductRepo) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add("data in expand", "op.execute(\"UPDATE signals SET name = 'x'\")")
    offline_repo.add(
        "ddl in backfill",
        'op.add_column("signals", sa.Column("score", sa.BigInteger))',
        phase="backfill",
    )
    offline_repo.add("no phase", phase=None)
    offline_repo.add(
        "index and more",
        """
        ops.create_index_concurrently("ix_signals_score", "signals", ["score"])
        op.add_column("signals", sa.Column("rank", sa.BigInteger))
        """,
    )
    found = findings(offline_repo)
    assert [(f.revision, f.rule) for f in found] == [
        ("0002", "expand-adds-only"),
        ("0003", "backfill-data-only"),
        ("0004", "phase-missing"),
        ("0005", "concurrent-index-alone"),
    ]
    line = found[0].line()
    assert line.startswith("0002 (0002_data_in_expand.py) statement 1 `UPDATE signals SET")
    assert "backfill revision" in line


def test_backfill_helper_passes_backfill_rules(offline_repo: ProductRepo) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add(
        "fill",
        'ops.run_in_batches("UPDATE signals SET name = upper(name) WHERE id IN (SELECT id FROM '
        'signals WHERE name <> upper(name) LIMIT :batch_size)")',
        phase="backfill",
    )
    assert findings(offline_repo) == []


def test_missing_timeout_is_reported(offline_repo: ProductRepo) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add(
        "no timeouts",
        'op.add_column("signals", sa.Column("score", sa.BigInteger))',
        extra="lock_timeout = None\nstatement_timeout = None",
    )
    assert sorted(r for _, r in rules(offline_repo)) == [
        "require-lock-timeout",
        "require-statement-timeout",
    ]


def test_lint_ignore_needs_a_reason_and_a_match(offline_repo: ProductRepo) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add(
        "index",
        """
        ops.lint_ignore("require-concurrent-index-creation", reason="signals is empty in prod")
        op.create_index("ix_signals_id", "signals", ["id"])
        ops.lint_ignore("ban-drop-column", reason="nothing to drop here")
        op.add_column("signals", sa.Column("score", sa.BigInteger))
        """,
    )
    assert rules(offline_repo) == [("0002", "unused-ignore")]


@pytest.mark.parametrize(
    "upgrade",
    [
        """
        ops.lint_ignore("expand-adds-only", reason="signals is tiny")
        ops.run_in_batches("UPDATE signals SET name = upper(name) WHERE id IN (SELECT id FROM "
                           "signals WHERE name <> upper(name) LIMIT :batch_size)")
        """,
        """
        op.add_column("signals", sa.Column("score", sa.BigInteger))
        ops.lint_ignore("concurrent-index-alone", reason="a failed index build is retried")
        ops.create_index_concurrently("ix_signals_score", "signals", ["score"])
        """,
    ],
)
def test_lint_ignore_applies_to_a_helper_after_its_commit(
    offline_repo: ProductRepo, upgrade: str
) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add("helper", upgrade)
    assert rules(offline_repo) == []


@pytest.mark.parametrize(
    "upgrade",
    [
        """
        op.add_column("signals", sa.Column("score", sa.BigInteger))
        ops.lint_ignore("ban-drop-column", reason="trailing")
        """,
        """
        ops.lint_ignore("ban-drop-column", reason="nothing to drop here")
        op.execute("SELECT 1")
        """,
    ],
)
def test_lint_ignore_with_no_revision_statement_after_it_is_reported(
    offline_repo: ProductRepo, upgrade: str
) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add("stray ignore", upgrade)
    assert rules(offline_repo) == [("0002", "unused-ignore")]


def test_data_changing_cte_in_a_select_is_a_data_change(offline_repo: ProductRepo) -> None:
    offline_repo.add("init", SIGNALS)
    offline_repo.add(
        "hidden delete",
        'op.execute("WITH d AS (DELETE FROM signals RETURNING id) SELECT count(*) FROM d")',
    )
    offline_repo.add(
        "hidden insert",
        "op.execute(\"WITH d AS (INSERT INTO signals (name) VALUES ('x') RETURNING id) "
        'SELECT id FROM d")',
        phase="backfill",
    )
    found = findings(offline_repo)
    assert [(f.revision, f.rule) for f in found] == [("0002", "expand-adds-only")]
    assert "DELETE" in found[0].message
    assert "backfill revision" in found[0].message


def test_lint_ignore_without_reason_is_refused(offline_repo: ProductRepo) -> None:
    from sigma_db.migrations import MigrationError

    offline_repo.add("init", 'ops.lint_ignore("ban-drop-column", reason="  ")')
    with pytest.raises(MigrationError, match="needs at least one rule and a reason"):
        findings(offline_repo)


def test_the_documented_rename_passes_lint_and_runs(repo: ProductRepo) -> None:
    """docs/migrations.md's expand → backfill → contract example, verbatim in spirit."""
    repo.add("init", SIGNALS.replace('op.create_index("ix_signals_name", "signals", ["name"])', ""))
    repo.add("add title", 'op.add_column("signals", sa.Column("title", sa.Text, nullable=True))')
    repo.add(
        "fill title",
        'ops.run_in_batches("UPDATE signals SET title = name WHERE id IN (SELECT id FROM '
        'signals WHERE title IS NULL AND name IS NOT NULL LIMIT :batch_size)", batch_size=2)',
        phase="backfill",
    )
    repo.add(
        "index title", 'ops.create_index_concurrently("ix_signals_title", "signals", ["title"])'
    )
    repo.add(
        "require title",
        'op.execute("ALTER TABLE signals ADD CONSTRAINT ck_signals_title '
        'CHECK (title IS NOT NULL) NOT VALID")',
        phase="contract",
    )
    repo.add(
        "validate title",
        'op.execute("ALTER TABLE signals VALIDATE CONSTRAINT ck_signals_title")',
        phase="contract",
    )
    repo.add(
        "drop name",
        """
        op.alter_column("signals", "title", nullable=False)
        op.drop_column("signals", "name")
        """,
        phase="contract",
    )
    lock(repo.config())
    assert dry_run(repo.config(), repo.settings).findings == []
    repo.upgrade("0002")
    repo.query("INSERT INTO app.signals (name) SELECT 'n' || g FROM generate_series(1, 5) AS g")
    repo.upgrade()
    assert repo.query("SELECT count(*) FROM app.signals WHERE title LIKE 'n%'") == [(5,)]
    assert repo.query(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'app.ix_signals_title'::regclass"
    ) == [(True,)]
