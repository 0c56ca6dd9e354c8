"""Test support: a real PostgreSQL per test session, a fresh database per test.

Registered as a pytest plugin (``pytest11`` entry point ``sigma_db``); its fixtures are listed in
:mod:`sigma_db.testing.plugin`. The names here load lazily, so the plugin costs nothing in a
session that never uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sigma_db.testing.server import TestServer, start_test_server

__all__ = ["TestServer", "start_test_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sigma_db.testing import server

        return getattr(server, name)
    raise AttributeError(f"module 'sigma_db.testing' has no attribute {name!r}")
