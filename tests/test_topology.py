"""Topology: which database and schemas a product uses, in each layout and environment."""

from __future__ import annotations

import pytest

from sigma_db import ConfigurationError
from sigma_db.topology import (
    LOGICAL_SCHEMAS,
    PRODUCTS,
    Environment,
    Product,
    resolve_topology,
)

DEV, STAGING, PROD = Environment.DEV, Environment.STAGING, Environment.PROD


@pytest.mark.parametrize(
    ("key", "database"),
    [
        ("lab", "edge_lab"),
        ("sim", "edge_sim"),
        ("market", "edge_market"),
        ("pilot", "edge_pilot"),
        ("platform", "sigma_platform"),
    ],
)
def test_registered_products(key: str, database: str) -> None:
    assert PRODUCTS[key].database == database
    topology = resolve_topology(database=database, schema=None, environment=PROD)
    assert (topology.product.key, topology.schema, topology.consolidated) == (key, "app", False)


@pytest.mark.parametrize("key", list(PRODUCTS))
def test_consolidated_dev_uses_product_schema(key: str) -> None:
    topology = resolve_topology(database="edge_products", schema=key, environment=DEV)
    assert topology.consolidated
    assert topology.product.key == key
    assert topology.schema == key
    assert topology.search_path == (key, "public")


def test_logical_schemas_map_per_layout() -> None:
    own = resolve_topology(database="edge_lab", schema=None, environment=PROD)
    shared = resolve_topology(database="edge_products", schema="lab", environment=DEV)
    for area in LOGICAL_SCHEMAS:
        assert own.physical_schema(area) == area
        assert shared.physical_schema(area) == f"lab_{area}"
    assert own.schema_translate_map == {}
    assert shared.schema_translate_map["audit"] == "lab_audit"
    assert own.physical_schema(None) == "app"
    assert shared.physical_schema(None) == "lab"
    with pytest.raises(ConfigurationError, match="not a logical area"):
        own.physical_schema("billing")


def test_public_schema_has_no_duplicate_in_search_path() -> None:
    topology = resolve_topology(database="edge_lab", schema="public", environment=DEV)
    assert topology.search_path == ("public",)


@pytest.mark.parametrize("environment", [STAGING, PROD])
def test_consolidated_outside_dev_is_refused(environment: Environment) -> None:
    with pytest.raises(ConfigurationError, match=f"not allowed in DB_ENV={environment}"):
        resolve_topology(database="edge_products", schema="lab", environment=environment)


def test_prod_requires_the_products_own_database() -> None:
    with pytest.raises(ConfigurationError, match="DB_NAME=edge_lab"):
        resolve_topology(database="lab_copy", schema=None, environment=PROD, product="lab")


def test_dev_accepts_any_database_when_product_is_given() -> None:
    topology = resolve_topology(database="t_123", schema=None, environment=DEV, product="lab")
    assert topology.product.key == "lab"
    assert not topology.consolidated


def test_unknown_database_without_product() -> None:
    with pytest.raises(ConfigurationError, match="set DB_PRODUCT"):
        resolve_topology(database="mydb", schema=None, environment=DEV)


def test_new_product_from_database_name() -> None:
    topology = resolve_topology(database="edge_billing", schema=None, environment=PROD)
    assert topology.product == Product.named("billing")
    assert topology.product.database == "edge_billing"


def test_new_product_in_consolidated_dev_needs_db_product() -> None:
    with pytest.raises(ConfigurationError, match="set DB_PRODUCT"):
        resolve_topology(database="edge_products", schema="billing", environment=DEV)
    topology = resolve_topology(
        database="edge_products", schema="billing", environment=DEV, product="billing"
    )
    assert topology.schema == "billing"


def test_schema_of_another_product_in_own_database() -> None:
    with pytest.raises(ConfigurationError, match="another product"):
        resolve_topology(database="edge_lab", schema="sim", environment=DEV)


@pytest.mark.parametrize(
    "bad", ["Billing", "bill-ing", "audit", "app", "information_schema", "x" * 60]
)
def test_bad_product_names(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        Product.named(bad)


def test_product_names_that_would_collide_with_a_logical_area() -> None:
    with pytest.raises(ConfigurationError, match="collide with the audit schema of product 'lab'"):
        Product.named("lab_audit")


def test_database_of_another_product_is_refused_even_in_dev() -> None:
    with pytest.raises(ConfigurationError, match="is Sigma Sim's database"):
        resolve_topology(database="edge_sim", schema=None, environment=DEV, product="lab")


@pytest.mark.parametrize("system", ["pg_temp", "pg_catalog", "pg_toast", "information_schema"])
def test_a_system_schema_is_no_default_schema(system: str) -> None:
    # pg_temp would be accepted by PostgreSQL: every table a temporary one, gone at logout.
    with pytest.raises(ConfigurationError, match=f"DB_SCHEMA='{system}' is a PostgreSQL system"):
        resolve_topology(database="edge_lab", schema=system, environment=PROD)


def test_a_reserved_product_key_in_db_name_names_db_name() -> None:
    with pytest.raises(ConfigurationError) as exc:
        resolve_topology(database="edge_audit", schema=None, environment=DEV)
    assert exc.value.problems == [
        "DB_NAME='edge_audit': product name 'audit' is reserved (it names a schema); choose "
        "another name."
    ]
