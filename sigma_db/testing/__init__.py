"""Test support: a real PostgreSQL per test session, a fresh database per test.

Registered as a pytest plugin (``pytest11`` entry point ``sigma_db``); its fixtures are listed in
:mod:`sigma_db.testing.plugin`.
"""

from sigma_db.testing.server import TestServer, start_test_server

__all__ = ["TestServer", "start_test_server"]
