"""Where a product's data lives: which database, which schema, in which environment.

Two layouts exist (see the conventions):

* **per-product database** (required in staging and prod, optional in dev): ``DB_NAME=edge_lab``,
  default schema ``app`` (or ``public``); the optional logical areas are real schemas of the same
  name (``audit``, ``lineage``, ...).
* **consolidated dev database** ``edge_products``: one schema per product (``lab``, ``sim``, ...);
  a logical area becomes ``<product>_<area>`` (``lab_audit``) so products never collide.

Models therefore say *what* they mean, never where it is: tables in the default schema leave
``schema`` unset (they are found through ``search_path``), tables in a logical area say
``schema="audit"``. :attr:`Topology.schema_translate_map` rewrites logical names to physical ones
at execution time, and is empty in the per-product layout, where they coincide.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import identifier_problem

__all__ = [
    "CONSOLIDATED_DATABASE",
    "DEFAULT_SCHEMA",
    "LOGICAL_SCHEMAS",
    "PRODUCTS",
    "Environment",
    "Product",
    "Topology",
    "resolve_topology",
]


class Environment(enum.StrEnum):
    """Deployment environment, read from ``DB_ENV``."""

    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


@dataclass(frozen=True)
class Product:
    """A Sigma product and the names derived from it."""

    key: str
    """Short name, also its schema in the consolidated dev database (``lab``)."""
    title: str
    """Human name for messages and docs (``Sigma Lab``)."""

    @property
    def database(self) -> str:
        """The product's own database (``edge_lab``); ``sigma_platform`` for the platform."""
        return "sigma_platform" if self.key == "platform" else f"edge_{self.key}"

    @classmethod
    def named(cls, key: str) -> Product:
        """Return a registered product, or a new one whose database is ``edge_<key>``."""
        if key in PRODUCTS:
            return PRODUCTS[key]
        problem = identifier_problem(key)
        if problem is not None:
            raise ConfigurationError(f"product name {key!r} {problem}.")
        if key.startswith(("pg_", "_", "edge_")) or not key[0].isalpha():
            raise ConfigurationError(
                f"product name {key!r} must start with a letter and not with pg_ or edge_ "
                "(its database is edge_<name>, its dev schema <name>); e.g. billing."
            )
        if key in LOGICAL_SCHEMAS or key in {
            DEFAULT_SCHEMA,
            "public",
            "products",
            "information_schema",
        }:
            raise ConfigurationError(
                f"product name {key!r} is reserved (it names a schema); choose another name."
            )
        area = key.rpartition("_")[2]
        if "_" in key and area in LOGICAL_SCHEMAS:
            raise ConfigurationError(
                f"product name {key!r} ends in a logical area (_{area}): in the consolidated dev "
                f"database it would collide with the {area} schema of product "
                f"{key.rpartition('_')[0]!r}; choose another name."
            )
        # The longest name derived from it: the test plugin's login edge_<key>_migrator_test.
        if len(f"edge_{key}_migrator_test".encode()) > 63:
            raise ConfigurationError(
                f"product name {key!r} is too long: its test login edge_{key}_migrator_test "
                "would exceed PostgreSQL's 63 bytes; use at most 44 characters."
            )
        words = " ".join(part for part in key.split("_") if part)
        return cls(key=key, title=f"Sigma {words.title()}")


PRODUCTS: Mapping[str, Product] = MappingProxyType(
    {
        "lab": Product("lab", "Sigma Lab"),
        "sim": Product("sim", "Sigma Sim"),
        "market": Product("market", "Sigma Market"),
        "pilot": Product("pilot", "Sigma Pilot"),
        "platform": Product("platform", "Sigma Platform"),
    }
)
"""The seed products and their registered databases (read-only)."""

CONSOLIDATED_DATABASE = "edge_products"
"""The optional single dev database holding every product, a schema each."""

DEFAULT_SCHEMA = "app"
"""Default schema inside a per-product database."""

LOGICAL_SCHEMAS: tuple[str, ...] = ("audit", "lineage", "signals", "options", "backtests")
"""Optional logical areas a model may name as its ``schema``."""


@dataclass(frozen=True)
class Topology:
    """The resolved answer: product, environment, database, and physical schema names."""

    product: Product
    environment: Environment
    database: str
    schema: str
    """Physical default schema: ``app``/``public``, or the product's key when consolidated."""
    consolidated: bool

    def physical_schema(self, logical: str | None) -> str:
        """Physical name of a logical area (``None`` means the default schema)."""
        if logical is None or logical == DEFAULT_SCHEMA:
            return self.schema
        if logical not in LOGICAL_SCHEMAS:
            raise ConfigurationError(
                f"schema {logical!r} is not a logical area; use one of "
                f"{', '.join(LOGICAL_SCHEMAS)} or leave schema unset for the default schema."
            )
        return f"{self.product.key}_{logical}" if self.consolidated else logical

    @property
    def schema_translate_map(self) -> dict[str | None, str | None]:
        """Logical → physical schema names for SQLAlchemy; empty when they coincide."""
        if not self.consolidated:
            return {}
        return {area: self.physical_schema(area) for area in LOGICAL_SCHEMAS}

    @property
    def search_path(self) -> tuple[str, ...]:
        """The default schema first (where unqualified tables live), then ``public``."""
        return (self.schema,) if self.schema == "public" else (self.schema, "public")

    @property
    def owned_schemas(self) -> tuple[str, ...]:
        """Every physical schema this product may own: default first, then logical areas."""
        return (self.schema, *(self.physical_schema(area) for area in LOGICAL_SCHEMAS))


def resolve_topology(
    *,
    database: str,
    schema: str | None,
    environment: Environment,
    product: str | None = None,
) -> Topology:
    """Resolve and check the layout; raise one :class:`ConfigurationError` listing each problem.

    ``product`` (``DB_PRODUCT``) is needed only when the database name does not say it: a product
    registered after the seed five in the consolidated database, or a test database in dev.
    """
    problems: list[str] = []
    chosen = _named_or_none(product, problems)
    if database == CONSOLIDATED_DATABASE:
        return _consolidated(schema, environment, chosen, problems)
    named_by_database = _product_from_database(database)
    if chosen is None:
        chosen = named_by_database
    elif named_by_database is not None and named_by_database != chosen:
        problems.append(
            f"DB_NAME={database!r} is {named_by_database.title}'s database, but "
            f"DB_PRODUCT={chosen.key!r}; fix one of them (DB_NAME={chosen.database})."
        )
    if chosen is None:
        problems.append(
            f"DB_NAME={database!r} does not name a product database; use edge_<product> "
            f"(e.g. edge_lab), the consolidated dev database {CONSOLIDATED_DATABASE}, or set "
            "DB_PRODUCT=<product> to say which product this database belongs to."
        )
        raise ConfigurationError(problems, heading="Invalid database settings:")
    if environment is not Environment.DEV and database != chosen.database:
        problems.append(
            f"DB_NAME={database!r} is not {chosen.title}'s database in DB_ENV={environment}; "
            f"staging and prod use the product's own database: DB_NAME={chosen.database}."
        )
    default = DEFAULT_SCHEMA if schema is None else schema
    others = set(PRODUCTS) - {chosen.key}
    if default in others or default in LOGICAL_SCHEMAS:
        problems.append(
            f"DB_SCHEMA={default!r} in {chosen.title}'s own database names another product or a "
            f"logical area; use DB_SCHEMA={DEFAULT_SCHEMA} (or public)."
        )
    elif default.startswith("pg_") or default == "information_schema":
        # pg_temp would put every table in a per-session temporary schema: data gone at logout.
        problems.append(
            f"DB_SCHEMA={default!r} is a PostgreSQL system schema; use DB_SCHEMA={DEFAULT_SCHEMA} "
            "(or public)."
        )
    if problems:
        raise ConfigurationError(problems, heading="Invalid database settings:")
    return Topology(chosen, environment, database, default, consolidated=False)


def _consolidated(
    schema: str | None, environment: Environment, chosen: Product | None, problems: list[str]
) -> Topology:
    if environment is not Environment.DEV:
        problems.append(
            f"DB_NAME={CONSOLIDATED_DATABASE} (the consolidated dev database) is not allowed in "
            f"DB_ENV={environment}; use the product's own database, e.g. DB_NAME=edge_lab."
        )
    known = dict(PRODUCTS)
    if chosen is not None:
        known[chosen.key] = chosen
    if schema is None or schema not in known:
        got = "unset" if schema is None else repr(schema)
        problems.append(
            f"DB_SCHEMA is {got}, but the consolidated database {CONSOLIDATED_DATABASE} needs the "
            f"product's schema: one of {'|'.join(known)} (set DB_PRODUCT for a newer product)."
        )
    elif chosen is not None and schema != chosen.key:
        problems.append(
            f"DB_SCHEMA={schema!r} does not match DB_PRODUCT={chosen.key!r}; in "
            f"{CONSOLIDATED_DATABASE} the schema is the product name: DB_SCHEMA={chosen.key}."
        )
    if problems:
        raise ConfigurationError(problems, heading="Invalid database settings:")
    assert schema is not None
    return Topology(known[schema], environment, CONSOLIDATED_DATABASE, schema, consolidated=True)


def _named_or_none(product: str | None, problems: list[str]) -> Product | None:
    if product is None:
        return None
    try:
        return Product.named(product)
    except ConfigurationError as exc:
        problems.append(f"DB_PRODUCT: {exc}")
        raise ConfigurationError(problems, heading="Invalid database settings:") from None


def _product_from_database(database: str) -> Product | None:
    for known in PRODUCTS.values():
        if known.database == database:
            return known
    if database.startswith("edge_") and identifier_problem(database[5:]) is None:
        try:
            return Product.named(database[5:])
        except ConfigurationError as exc:  # a reserved key: say which variable carried it
            raise ConfigurationError(
                [f"DB_NAME={database!r}: {problem}" for problem in exc.problems],
                heading="Invalid database settings:",
            ) from None
    return None
