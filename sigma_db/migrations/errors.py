"""``MigrationError``: files, lock file and database history disagree, or a revision failed.

It is also an Alembic ``CommandError``, so the plain ``alembic`` command prints it as one
``FAILED:`` line instead of a traceback, exactly as ``sigma-db migrate`` prints it as one
``sigma-db: error:`` line.
"""

from __future__ import annotations

from alembic.util import CommandError

from sigma_db.errors import SigmaDBError

__all__ = ["MigrationError"]


class MigrationError(SigmaDBError, CommandError):
    """A migration cannot run safely as asked; the message names the revision and the fix."""

    __module__ = "sigma_db.migrations"
