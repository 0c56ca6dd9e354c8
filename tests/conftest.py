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


@pytest.fixture(scope="session")
def products_db(sigma_postgresql: TestServer) -> dict[str, Provisioned]:
    """The consolidated dev database ``edge_products`` with Lab and Sim provisioned.

    Session-scoped: roles are cluster-global and ``edge_products`` is one fixed name, so it is
    built once; tests that use it must not change its grants.
    """
    import psycopg

    with psycopg.connect(
        host=sigma_postgresql.host,
        port=sigma_postgresql.port,
        user=sigma_postgresql.superuser,
        password=sigma_postgresql.password,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'edge_products'").fetchone():
            conn.execute("CREATE DATABASE edge_products")
    return {
        key: provision(sigma_postgresql, "edge_products", product=key) for key in ("lab", "sim")
    }
