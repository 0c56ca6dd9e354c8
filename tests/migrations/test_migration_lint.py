from __future__ import annotations

from sample_repo import ProductRepo

from sigma_db.migrations.commands import lock
from sigma_db.migrations.dryrun import dry_run

SIGNALS = """
op.create_table(
    "signals",
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
op.create_index("ix_signals_name", "signals", ["name"])
"""


def test_offline_dry_run_smoke(offline_repo: ProductRepo) -> None:
    repo = offline_repo
    repo.add("init", SIGNALS)
    repo.add(
        "add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger, nullable=False))'
    )
    repo.add("drop name", 'op.drop_column("signals", "name")')
    lock(repo.config())
    report = dry_run(repo.config(), repo.settings)
    for f in report.findings:
        print(f.line())
    for p in report.pending:
        print(p.sql)
    assert 0
