from __future__ import annotations

from collections.abc import Iterator

import pytest
from _pgbouncer import PgBouncer, start_pgbouncer
from _provision import Provisioned, provision
from sqlalchemy.engine import Engine

from sigma_db import DatabaseSettings, create_engine
from sigma_db.testing import TestServer


@pytest.fixture
def db_settings(sigma_db_settings: DatabaseSettings) -> DatabaseSettings:
    return sigma_db_settings


@pytest.fixture
def engine(db_settings: DatabaseSettings) -> Iterator[Engine]:
    engine = create_engine(db_settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pgbouncer(sigma_postgresql: TestServer) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction pooling mode in front of the session's server."""
    with start_pgbouncer(sigma_postgresql) as bouncer:
        yield bouncer


@pytest.fixture
def provisioned(sigma_postgresql: TestServer, sigma_database: str) -> Provisioned:
    """A unique product's roles, schemas and one login per kind, in a fresh database."""
    return provision(sigma_postgresql, sigma_database)


_products_db_cache: dict[str, object] = {}


@pytest.fixture
def products_db(sigma_postgresql: TestServer) -> dict[str, Provisioned]:
    """The consolidated dev database ``edge_products`` with Lab and Sim provisioned.

    Provisioned once and reused while the database lives: ``edge_products`` is one fixed,
    cluster-wide name, and other tests (the consolidated-layout ones) drop and recreate it, so
    the database's oid is checked on each use and a replaced database is provisioned again.
    Tests that use it must not change its grants.
    """

    with sigma_postgresql.connect("postgres") as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = 'edge_products'").fetchone()
        if row is None:
            conn.execute("CREATE DATABASE edge_products")
            row = conn.execute(
                "SELECT oid FROM pg_database WHERE datname = 'edge_products'"
            ).fetchone()
    assert row is not None
    if _products_db_cache.get("oid") != row[0]:
        _products_db_cache["oid"] = row[0]
        _products_db_cache["provisioned"] = {
            key: provision(sigma_postgresql, "edge_products", product=key) for key in ("lab", "sim")
        }
    provisioned = _products_db_cache["provisioned"]
    assert isinstance(provisioned, dict)
    return provisioned


@pytest.fixture
def consolidated(sigma_postgresql: TestServer) -> Iterator[DatabaseSettings]:
    """Settings for Lab in the consolidated dev layout: database ``edge_products``, schema ``lab``.

    The database is created empty for the test and dropped after it.
    """
    import psycopg

    admin = sigma_postgresql.settings("postgres")
    dsn = {"host": admin.host, "port": admin.port, "user": admin.user, "password": admin.secret()}
    with psycopg.connect(dbname="postgres", autocommit=True, **dsn) as conn:
        conn.execute("DROP DATABASE IF EXISTS edge_products WITH (FORCE)")
        conn.execute("CREATE DATABASE edge_products")
    yield sigma_postgresql.settings("edge_products", schema_name="lab", product=None)
    with psycopg.connect(dbname="postgres", autocommit=True, **dsn) as conn:
        conn.execute("DROP DATABASE IF EXISTS edge_products WITH (FORCE)")
