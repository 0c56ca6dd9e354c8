"""The migration ledger: one row per revision applied, reverted, stamped or repaired.

The table (``migration_runs``, in the product's default schema beside ``alembic_version``) holds
what Alembic's version table cannot: which file content was applied (sha256, line endings
normalized), in which phase, by whom, when, and for how long. The environment writes each row in
the same transaction as its revision, so a revision that fails leaves no row, and the version
table and the ledger always agree.

:func:`history_findings` compares the ledger with the files on disk: an applied revision whose
file changed (``edited``), whose file is gone (``missing``), or that the version table holds but
no file or no ledger row knows (``unknown``).
"""

from __future__ import annotations

import functools
import getpass
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    literal_column,
    select,
    text,
    true,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from sigma_db.identifiers import quote
from sigma_db.migrations.findings import Finding
from sigma_db.migrations.revisions import RevisionFile

__all__ = [
    "APPLIED_BY",
    "LEDGER_TABLE",
    "LedgerRow",
    "Operation",
    "applied_revisions",
    "client_name",
    "history_findings",
    "ledger_exists",
    "ledger_table",
    "read_ledger",
]

LEDGER_TABLE = "migration_runs"
"""Snake_case plural, like every table: each row is one run of one revision."""

APPLIED_BY: ColumnElement[str] = literal_column("session_user", Text)
"""What every ledger insert writes to ``applied_by`` (ledgers made with the old default too)."""

Operation = Literal["upgrade", "downgrade", "stamp", "repair"]
_APPLYING = ("upgrade", "stamp", "repair")


@functools.cache
def ledger_table(schema: str) -> Table:
    """The ledger ``Table`` in ``schema`` (its own ``MetaData``, never the product's).

    Built once per schema: every migration run, dry run and repair asks for it.
    """
    return Table(
        LEDGER_TABLE,
        MetaData(),
        Column("id", BigInteger, Identity(always=True), nullable=False),
        Column("revision", Text, nullable=False),
        Column("operation", Text, nullable=False),
        Column("description", Text, nullable=True),
        Column("phase", Text, nullable=True),
        Column("checksum", Text, nullable=False),
        # session_user: the login that ran it; current_user would be the group role (the
        # migrator) once the login's `role` setting or SET ROLE applies.
        Column("applied_by", Text, nullable=False, server_default=text("session_user")),
        Column("client", Text, nullable=True),
        Column(
            "applied_at",
            DateTime(timezone=True),
            nullable=False,
            server_default=text("clock_timestamp()"),
        ),
        Column("duration_ms", BigInteger, nullable=True),
        Column("success", Boolean, nullable=False, server_default=true()),
        Column("reason", Text, nullable=True),
        PrimaryKeyConstraint("id", name=f"pk_{LEDGER_TABLE}"),
        CheckConstraint(
            "operation IN ('upgrade', 'downgrade', 'stamp', 'repair')",
            name=f"ck_{LEDGER_TABLE}_operation",
        ),
        schema=schema,
    )


@dataclass(frozen=True)
class LedgerRow:
    """One ledger row as read back."""

    id: int
    revision: str
    operation: str
    checksum: str
    phase: str | None
    applied_by: str
    applied_at: datetime
    reason: str | None


def client_name() -> str:
    """Who ran the migration on the client side: ``user@host`` (the role is recorded too)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def ledger_exists(connection: Connection, schema: str) -> bool:
    """Whether the ledger table exists (without touching it, so no lock is taken)."""
    name = f"{quote(schema)}.{quote(LEDGER_TABLE)}"
    return (
        connection.execute(
            select(text("to_regclass(:name) IS NOT NULL")), {"name": name}
        ).scalar_one()
        is True
    )


def read_ledger(
    connection: Connection, schema: str, *, exists: bool | None = None
) -> list[LedgerRow]:
    """Every ledger row, oldest first; empty when there is no ledger yet.

    ``exists`` saves the lookup when the caller already knows whether the table exists.
    """
    if not (ledger_exists(connection, schema) if exists is None else exists):
        return []
    table = ledger_table(schema)
    rows = connection.execute(
        select(
            table.c.id,
            table.c.revision,
            table.c.operation,
            table.c.checksum,
            table.c.phase,
            table.c.applied_by,
            table.c.applied_at,
            table.c.reason,
        ).order_by(table.c.id)
    )
    return [LedgerRow(*row) for row in rows]


def applied_revisions(rows: Iterable[LedgerRow]) -> dict[str, LedgerRow]:
    """Revision → the row that holds its current checksum, for revisions currently applied."""
    latest: dict[str, LedgerRow] = {}
    for row in rows:
        latest[row.revision] = row
    return {rev: row for rev, row in latest.items() if row.operation in _APPLYING}


def history_findings(
    files: Sequence[RevisionFile],
    rows: Sequence[LedgerRow],
    version_lineage: Iterable[str],
    *,
    unknown_heads: Iterable[str] = (),
) -> list[Finding]:
    """Compare applied history with the files: edited, missing and unknown revisions.

    ``version_lineage`` is every revision the version table says is applied (its heads and
    their ancestors); ``unknown_heads`` are heads no revision file declares.
    """
    by_revision = {f.revision: f for f in files}
    applied = applied_revisions(rows)
    findings: list[Finding] = []
    unknown_heads = list(unknown_heads)
    for head in unknown_heads:
        findings.append(
            Finding(
                "unknown",
                f"the database is at revision {head}, which no revision file declares; restore "
                "the file from version control, or point DB_* at the right database",
                revision=head,
            )
        )
    for rev, row in applied.items():
        file = by_revision.get(rev)
        if file is None and rev in unknown_heads:
            continue  # one problem, already reported above as the version table's head
        if file is None:
            findings.append(
                Finding(
                    "missing",
                    f"applied on {row.applied_at:%Y-%m-%d} by {row.applied_by} but its file is "
                    "gone; restore it from version control "
                    f"(git checkout -- 'migrations/versions/{rev}_*.py')",
                    revision=rev,
                )
            )
        elif file.checksum != row.checksum:
            findings.append(
                Finding(
                    "edited",
                    f"changed after it was applied (ledger sha256 {row.checksum[:12]}, file "
                    f"{file.checksum[:12]}); revert the edit, or accept it with: sigma-db "
                    f"migrations repair {rev} --reason '...'",
                    revision=rev,
                    file=file.name,
                )
            )
    for rev in version_lineage:
        if rev not in applied and rev in by_revision:
            findings.append(
                Finding(
                    "unknown",
                    "applied according to the version table but never recorded in the ledger "
                    "(applied outside sigma-db?); if the file is what ran, record it with: "
                    f"sigma-db migrations repair {rev} --reason '...'",
                    revision=rev,
                    file=by_revision[rev].name,
                )
            )
    return findings
