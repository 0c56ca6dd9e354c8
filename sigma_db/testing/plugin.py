"""pytest plugin: a real PostgreSQL for the whole session, a fresh database for each test.

Fixtures (all prefixed ``sigma_`` so they never collide with a project's own):

``sigma_postgresql`` (session)
    :class:`~sigma_db.testing.TestServer` — one server per test session, started by the run
    itself (as an unprivileged user when the run is root).
``sigma_database`` (function)
    Name of a new, empty database, dropped after the test.
``sigma_db_settings`` (function)
    :class:`~sigma_db.DatabaseSettings` for that database (superuser, schema ``app`` created,
    product from the ``sigma_db_product`` ini option, default ``lab``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sigma_db.settings import DatabaseSettings
from sigma_db.testing.server import TestServer, start_test_server


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the plugin's ini options."""
    parser.addini("sigma_db_product", "product key the test settings resolve to", default="lab")


@pytest.fixture(scope="session")
def sigma_postgresql() -> Iterator[TestServer]:
    """One real PostgreSQL server for the whole test session."""
    with start_test_server() as server:
        yield server


@pytest.fixture
def sigma_database(sigma_postgresql: TestServer) -> Iterator[str]:
    """A fresh empty database for one test (cloned from template1, dropped afterwards)."""
    from pytest_postgresql.janitor import DatabaseJanitor

    name = f"t_{uuid.uuid4().hex[:16]}"
    with DatabaseJanitor(
        user=sigma_postgresql.superuser,
        host=sigma_postgresql.host,
        port=sigma_postgresql.port,
        dbname=name,
        password=sigma_postgresql.password,
    ):
        yield name


@pytest.fixture
def sigma_db_settings(
    request: pytest.FixtureRequest, sigma_postgresql: TestServer, sigma_database: str
) -> DatabaseSettings:
    """Settings for the test's database, with its default schema already created."""
    import psycopg
    from psycopg import sql

    product = str(request.config.getini("sigma_db_product"))
    settings = sigma_postgresql.settings(sigma_database, product=product)
    with psycopg.connect(
        host=settings.host,
        port=settings.port,
        dbname=settings.name,
        user=settings.user,
        password=settings.secret(),
        autocommit=True,
    ) as conn:
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(settings.topology.schema)
            )
        )
    return settings
