"""The exception tree: one root, a few meanings, every message says what to do next.

Each class also inherits the standard-library class whose meaning it shares, so callers that
already catch ``ValueError`` or ``ConnectionError`` keep working.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "InsufficientPrivilegeError",
    "NamingError",
    "SigmaDBError",
]


class SigmaDBError(Exception):
    """Root of every error sigma_db raises on purpose."""

    __module__ = "sigma_db"


class ConfigurationError(SigmaDBError, ValueError):
    """Settings, arguments or files are wrong; the message lists each problem and its fix."""

    __module__ = "sigma_db"

    def __init__(self, problems: str | list[str], *, heading: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.heading = heading
        if heading is None:
            message = "\n".join(self.problems)
        elif len(self.problems) == 1:  # one problem, one line (a CI log is read line by line)
            message = f"{heading} {self.problems[0]}"
        else:
            message = heading + "".join(f"\n  - {line}" for line in self.problems)
        super().__init__(message)


class NamingError(ConfigurationError):
    """A model, table, column or constraint breaks the naming rules (raised at class definition)."""

    __module__ = "sigma_db"


class DatabaseUnavailableError(SigmaDBError, ConnectionError):
    """The server could not be reached or refused the login; never carries a password."""

    __module__ = "sigma_db"


class InsufficientPrivilegeError(SigmaDBError, PermissionError):
    """The connected role may not do what was asked (create roles, grant, own a schema).

    Distinct from a connection failure: the server is up and the login worked, but a more
    privileged role is needed; the message names the one to use.
    """

    __module__ = "sigma_db"
