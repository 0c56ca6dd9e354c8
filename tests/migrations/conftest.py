"""Fixtures: a sample product repository from the shipped templates, on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sample_repo import ProductRepo, make_repo

from sigma_db import DatabaseSettings
from sigma_db.testing import TestServer


@pytest.fixture
def repo(tmp_path: Path, db_settings: DatabaseSettings) -> ProductRepo:
    """A product repo (lab, per-product layout, schema app) on a fresh database."""
    return make_repo(tmp_path / "lab", db_settings)


@pytest.fixture
def offline_repo(tmp_path: Path, sigma_postgresql: TestServer) -> ProductRepo:
    """A product repo whose settings name a database that does not exist (offline use)."""
    return make_repo(tmp_path / "lab", sigma_postgresql.settings("edge_lab"))


@pytest.fixture
def consolidated(sigma_postgresql: TestServer) -> Iterator[DatabaseSettings]:
    """Settings for Lab in the consolidated dev layout: database ``edge_products``, schema ``lab``.

    The database is created empty for the test and dropped after it.
    """
    import psycopg

    admin = sigma_postgresql.settings("postgres")
    dsn = {"host": admin.host, "port": admin.port, "user": admin.user, "password": admin.secret()}
    with psycopg.connect(dbname="postgres", autocommit=True, **dsn) as conn:
        conn.execute("DROP DATABASE IF EXISTS edge_products")
        conn.execute("CREATE DATABASE edge_products")
    yield sigma_postgresql.settings("edge_products", schema_name="lab", product=None)
    with psycopg.connect(dbname="postgres", autocommit=True, **dsn) as conn:
        conn.execute("DROP DATABASE edge_products WITH (FORCE)")
