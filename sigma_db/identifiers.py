"""PostgreSQL identifiers: validate before anything reaches SQL, then quote.

sigma_db only accepts *conventional* identifiers (lowercase snake_case, at most 63 bytes, not a
reserved word). Those need no quoting to be read correctly, but everything that builds SQL text
still quotes them with :func:`quote`, so a validation gap could never become an injection.
"""

from __future__ import annotations

import re

from sqlalchemy.dialects.postgresql.base import RESERVED_WORDS

from sigma_db.errors import ConfigurationError

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "check_identifier",
    "identifier_problem",
    "quote",
    "utf8_problem",
]

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's NAMEDATALEN - 1; longer names are silently truncated by the server."""

_SNAKE = re.compile(r"[a-z_][a-z0-9_]*\Z")


def utf8_problem(value: str) -> str | None:
    r"""Say why ``value`` cannot be sent as UTF-8 text, or return None.

    A byte that is not UTF-8 (``$'\xff'`` in a shell, text saved as Latin-1) reaches Python as
    a lone surrogate; every later ``encode()`` (a length check, libpq's connection string) would
    fail with a traceback instead of a message.
    """
    try:
        value.encode()
    except UnicodeEncodeError:
        return "contains bytes that are not UTF-8 (another encoding, or an escape such as \\xff)"
    return None


def identifier_problem(value: str) -> str | None:
    """Say what is wrong with ``value`` as a conventional identifier, or return None."""
    if not value:
        return "is empty"
    not_utf8 = utf8_problem(value)
    if not_utf8 is not None:
        return f"{not_utf8}; retype it as UTF-8 text"
    if len(value.encode()) > MAX_IDENTIFIER_BYTES:
        return (
            f"is {len(value.encode())} bytes long; PostgreSQL identifiers hold at most "
            f"{MAX_IDENTIFIER_BYTES} bytes"
        )
    if not _SNAKE.match(value):
        return (
            "must be lowercase snake_case: a letter or underscore, then letters, digits or "
            "underscores (no quotes, spaces, semicolons, hyphens or uppercase)"
        )
    if value in RESERVED_WORDS:
        return "is a reserved SQL keyword"
    return None


def check_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a conventional identifier, else raise one clear error.

    ``what`` names the thing being checked, e.g. ``"DB_SCHEMA"`` or ``"role name"``.
    """
    problem = identifier_problem(value)
    if problem is not None:
        raise ConfigurationError(f"{what} {value!r} {problem}.")
    return value


def quote(value: str) -> str:
    """Quote an identifier for SQL text (doubling embedded quotes), after validating it."""
    check_identifier(value, "identifier")
    return '"' + value.replace('"', '""') + '"'
