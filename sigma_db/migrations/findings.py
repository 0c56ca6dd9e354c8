"""``Finding``: one problem the dry run, lint or history check reports, as one line.

Every line names the revision (and its file), the statement when there is one, the rule, and
the fix, so a CI log read on its own is enough to act on.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Finding"]

_SQL_WIDTH = 80


@dataclass(frozen=True)
class Finding:
    """One problem: where it is, which rule, what to do."""

    rule: str
    """Stable rule name, e.g. ``edited``, ``expand-adds-only``, ``renaming-column``."""
    message: str
    """What is wrong and how to fix it."""
    revision: str | None = None
    file: str | None = None
    statement: int | None = None
    """1-based position of the statement in the revision's rendered SQL."""
    sql: str | None = None

    def line(self) -> str:
        """The finding as one line of text."""
        where = []
        if self.revision is not None:
            where.append(self.revision if self.file is None else f"{self.revision} ({self.file})")
        elif self.file is not None:
            where.append(self.file)
        if self.statement is not None:
            where.append(f"statement {self.statement}")
        if self.sql:
            flat = " ".join(self.sql.split())
            if len(flat) > _SQL_WIDTH:
                flat = flat[: _SQL_WIDTH - 1] + "…"
            where.append(f"`{flat}`")
        prefix = " ".join(where)
        return (
            f"{prefix}: {self.rule}: {self.message}" if prefix else f"{self.rule}: {self.message}"
        )
