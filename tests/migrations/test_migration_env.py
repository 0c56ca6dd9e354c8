from __future__ import annotations

from sample_repo import ProductRepo

SIGNALS = """
op.create_table(
    "signals",
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
)
"""


def test_upgrade_applies_and_records_ledger(repo: ProductRepo) -> None:
    repo.add("init", SIGNALS, 'op.drop_table("signals")')
    repo.add("add score", 'op.add_column("signals", sa.Column("score", sa.BigInteger))')
    assert repo.upgrade() == ["upgrade 0001", "upgrade 0002"]
    assert repo.query("SELECT version_num FROM app.alembic_version") == [("0002",)]
    rows = repo.query(
        "SELECT revision, operation, phase, length(checksum), success, duration_ms >= 0, "
        "description FROM app.migration_runs ORDER BY id"
    )
    assert rows == [
        ("0001", "upgrade", "expand", 64, True, True, "init"),
        ("0002", "upgrade", "expand", 64, True, True, "add score"),
    ]
    assert repo.query("SELECT to_regclass('app.signals') IS NOT NULL") == [(True,)]
