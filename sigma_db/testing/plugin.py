"""pytest plugin: a real PostgreSQL for the whole session, a fresh database for each test.

Fixtures (all prefixed ``sigma_`` so they never collide with a project's own):

``sigma_postgresql`` (session)
    :class:`~sigma_db.testing.TestServer` — one server per test session, started by the run
    itself (as an unprivileged user when the run is root).
``sigma_db_template`` (session)
    :class:`~sigma_db.testing.product.ProductTemplate` when the ``sigma_db_alembic_ini`` ini
    option names the product's ``alembic.ini``: roles created and migrations applied once, as
    the migrator, into a template database. ``None`` otherwise.
``sigma_database`` (function)
    Name of a database for one test. With a template: a clone of it whose data is reset after
    each test (re-cloned when the test ran DDL); without: a new empty database, dropped after.
``sigma_db_settings`` (function)
    :class:`~sigma_db.DatabaseSettings` for that database as the superuser (default schema
    created, product from the ``sigma_db_product`` ini option, default ``lab``).
``sigma_rw_settings`` / ``sigma_ro_settings`` / ``sigma_migrator_settings`` (function)
    The same database as the product's ``_rw``, ``_ro`` and ``_migrator`` test logins.
``sigma_rw_engine`` / ``sigma_ro_engine`` (function)
    Engines for those settings, disposed after the test.
``sigma_db_env`` (function)
    Sets ``DB_*`` in ``os.environ`` to the ``_rw`` settings, for code that builds
    ``DatabaseSettings()`` itself.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    # pytest loads this plugin in every session of every project that has sigma_db installed:
    # the database stack is imported only when a fixture is actually used.
    from sqlalchemy.engine import Engine

    from sigma_db.settings import DatabaseSettings
    from sigma_db.testing.product import CloneKeeper, ProductTemplate
    from sigma_db.testing.server import TestServer


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the plugin's ini options."""
    parser.addini("sigma_db_product", "product key the test settings resolve to", default="lab")
    parser.addini(
        "sigma_db_alembic_ini",
        "the product's alembic.ini (relative to rootdir): migrate once into a template database",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Check the ini options once, before any test: a mistake is one usage error, exit 4."""
    configured = str(config.getini("sigma_db_alembic_ini"))
    if configured and not Path(config.rootpath, configured).is_file():
        raise pytest.UsageError(
            f"sigma_db_alembic_ini = {configured!r}: no file {Path(config.rootpath, configured)}; "
            "point it at the product's alembic.ini, relative to the pytest rootdir."
        )
    product = str(config.getini("sigma_db_product"))
    if not configured and product == "lab":
        return  # a project that does not use the product options pays no import here
    from sigma_db.errors import ConfigurationError
    from sigma_db.topology import Product

    try:
        Product.named(product)
    except ConfigurationError as exc:
        raise pytest.UsageError(f"sigma_db_product = {product!r}: {exc}") from None


@pytest.fixture(scope="session")
def sigma_postgresql() -> Iterator[TestServer]:
    """One real PostgreSQL server for the whole test session."""
    from sigma_db.errors import SigmaDBError
    from sigma_db.testing.server import start_test_server

    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(start_test_server())
        except SigmaDBError as exc:
            # A problem of the machine (no binaries, initdb or the server failing), not of a
            # test: say it once and stop, not in a traceback for every test that needs it.
            pytest.exit(f"sigma_db: cannot start the test server: {exc}", 1)
        yield server


@pytest.fixture(scope="session")
def sigma_db_template(
    request: pytest.FixtureRequest, sigma_postgresql: TestServer
) -> ProductTemplate | None:
    """The product's migrated template database, when ``sigma_db_alembic_ini`` is set."""
    configured = str(request.config.getini("sigma_db_alembic_ini"))
    if not configured:
        return None
    from sigma_db.errors import SigmaDBError
    from sigma_db.migrations.errors import MigrationError
    from sigma_db.testing.product import build_template

    product = str(request.config.getini("sigma_db_product"))
    try:
        return build_template(sigma_postgresql, product, Path(request.config.rootpath, configured))
    except SigmaDBError as exc:
        # No test of the product can run: say why once, not in a traceback for every test.
        what = "the product's migrations failed" if isinstance(exc, MigrationError) else "failed"
        pytest.exit(f"sigma_db: building the test template: {what}: {exc}", 1)


@pytest.fixture(scope="session")
def sigma_db_clones(
    sigma_postgresql: TestServer, sigma_db_template: ProductTemplate | None
) -> Iterator[CloneKeeper | None]:
    """The session's clone of the template, reset in place between tests."""
    if sigma_db_template is None:
        yield None
        return
    from sigma_db.testing.product import CloneKeeper

    keeper = CloneKeeper(sigma_postgresql, sigma_db_template.database)
    yield keeper
    keeper.close()


@pytest.fixture
def sigma_database(
    sigma_postgresql: TestServer, sigma_db_clones: CloneKeeper | None
) -> Iterator[str]:
    """A database for one test: the migrated template's data, or an empty database."""
    if sigma_db_clones is not None:
        yield sigma_db_clones.acquire()
        sigma_db_clones.release()
        return

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
    """Settings for the test's database as the superuser, its default schema created."""
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
        # Only when missing: even a no-op CREATE ... IF NOT EXISTS is DDL to the product
        # template's event trigger, which would force a re-clone after every test.
        schema = settings.topology.schema
        found = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (schema,)).fetchone()
        if found != (True,):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return settings


def _template(template: ProductTemplate | None) -> ProductTemplate:
    if template is None:
        raise pytest.UsageError(
            "The sigma_rw/ro/migrator fixtures need the product's migrations: set "
            "sigma_db_alembic_ini = alembic.ini (and sigma_db_product) in the pytest config."
        )
    return template


@pytest.fixture
def sigma_rw_settings(
    sigma_db_template: ProductTemplate | None, sigma_database: str
) -> DatabaseSettings:
    """The test's database as the product's ``_rw`` role (what the API uses)."""
    return _template(sigma_db_template).settings(sigma_database, "rw")


@pytest.fixture
def sigma_ro_settings(
    sigma_db_template: ProductTemplate | None, sigma_database: str
) -> DatabaseSettings:
    """The test's database as the product's ``_ro`` role (what BI uses)."""
    return _template(sigma_db_template).settings(sigma_database, "ro")


@pytest.fixture
def sigma_migrator_settings(
    sigma_db_template: ProductTemplate | None, sigma_database: str
) -> DatabaseSettings:
    """The test's database as the product's ``_migrator`` role (what CI/CD migrates with)."""
    return _template(sigma_db_template).settings(sigma_database, "migrator")


@pytest.fixture
def sigma_rw_engine(sigma_rw_settings: DatabaseSettings) -> Iterator[Engine]:
    """An engine logged in as ``_rw``."""
    from sigma_db.engine import create_engine

    engine = create_engine(sigma_rw_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def sigma_ro_engine(sigma_ro_settings: DatabaseSettings) -> Iterator[Engine]:
    """An engine logged in as ``_ro``."""
    from sigma_db.engine import create_engine

    engine = create_engine(sigma_ro_settings)
    yield engine
    engine.dispose()


@pytest.fixture
def sigma_db_env(
    monkeypatch: pytest.MonkeyPatch, sigma_rw_settings: DatabaseSettings
) -> DatabaseSettings:
    """Point ``DB_*`` in ``os.environ`` at the test's database as ``_rw``."""
    # Every variable is set (none left to the shell or a .env file); unset ones are emptied out
    # by deleting them and relying on defaults only where the settings used the default.
    for name, value in sigma_rw_settings.masked().items():
        if name == "DB_PASSWORD":
            monkeypatch.setenv(name, sigma_rw_settings.secret())
        elif value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    return sigma_rw_settings
