"""``MigrationError``: files, lock file and database history disagree, or a revision failed.

It is also an Alembic ``CommandError``, so the plain ``alembic`` command prints it as one
``FAILED:`` line instead of a traceback, exactly as ``sigma-db migrate`` prints it as one
``sigma-db: error:`` line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic.util import CommandError

from sigma_db.errors import SigmaDBError

__all__ = ["MigrationError", "one_line_errors"]


class MigrationError(SigmaDBError, CommandError):
    """A migration cannot run safely as asked; the message names the revision and the fix."""

    __module__ = "sigma_db.migrations"


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Let sigma_db's errors raised inside read as one line from ``alembic`` too.

    ``env.py`` imports the product's models inside it: a model that breaks a naming rule
    raises :class:`~sigma_db.NamingError` at import, which the ``alembic`` command would show as
    a traceback through its own frames (it only prints a ``CommandError`` as one line).
    """
    try:
        yield
    except MigrationError:
        raise
    except SigmaDBError as exc:
        raise MigrationError(str(exc)) from exc
