from __future__ import annotations

import hashlib

import inflection
import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table

from sigma_db.errors import NamingError
from sigma_db.naming import (
    NAMING_CONVENTION,
    check_column_name,
    check_table_name,
    column_name_problem,
    column_name_suggestion,
    shorten,
    snake_case,
    table_name_for,
    table_name_problem,
    table_name_suggestion,
)

# --- shorten: golden values --------------------------------------------------------------------
# These strings are stored as constraint names in every product database. If one of these tests
# fails, the frozen rule has been changed: revert the change, do not update the expected value.

GOLDEN = [
    pytest.param(
        "fk_backtest_run_parameter_sweep_results_strategy_configuration_version_id_"
        "strategy_configurations",
        "fk_backtest_run_parameter_sweep_results_strategy_confi_b2b4286a",
        id="long-foreign-key",
    ),
    pytest.param(
        "pk_option_signal_intraday_greeks_snapshot_history_by_underlying_symbol",
        "pk_option_signal_intraday_greeks_snapshot_history_by_u_e2cef576",
        id="long-primary-key",
    ),
    pytest.param(
        "ix_" + "a" * 61,
        "ix_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa_f23ac776",
        id="64-bytes",
    ),
    pytest.param(
        "uq_" + "a" * 50 + "_" + "b" * 20,
        "uq_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa_ad0fe412",
        id="trailing-underscore-stripped",
    ),
    pytest.param(
        "ck_" + "ü" * 40,
        "ck_üüüüüüüüüüüüüüüüüüüüüüüüü_4216c3ef",
        id="two-byte-chars-cut-before-a-split-char",
    ),
    pytest.param(
        "ix_" + "日本語" * 10,
        "ix_日本語日本語日本語日本語日本語日本_d28289de",
        id="three-byte-chars",
    ),
    pytest.param(
        "ck_signals_" + "📈" * 20,
        "ck_signals_📈📈📈📈📈📈📈📈📈📈_eab04589",
        id="four-byte-chars",
    ),
]


@pytest.mark.parametrize(("name", "expected"), GOLDEN)
def test_shorten_golden_values(name: str, expected: str) -> None:
    result = shorten(name)
    assert result == expected
    assert len(result.encode()) <= 63


@pytest.mark.parametrize(("name", "expected"), GOLDEN)
def test_shorten_golden_values_follow_the_documented_rule(name: str, expected: str) -> None:
    prefix, _, digest = expected.rpartition("_")
    assert digest == hashlib.sha256(name.encode()).hexdigest()[:8]
    assert name.startswith(prefix)
    assert len(prefix.encode()) <= 54
    assert not prefix.endswith("_")


@pytest.mark.parametrize(
    "name",
    ["pk_signals", "ix_" + "a" * 60, "ck_" + "é" * 30, ""],
    ids=["short", "exactly-63-ascii", "exactly-63-bytes-multibyte", "empty"],
)
def test_shorten_leaves_names_of_at_most_63_bytes_alone(name: str) -> None:
    assert shorten(name) == name


def test_shorten_is_idempotent_and_keeps_shared_prefixes_apart() -> None:
    first = shorten("ix_" + "x" * 70 + "_first")
    second = shorten("ix_" + "x" * 70 + "_second")
    assert first != second
    assert first[:54] == second[:54]
    assert shorten(first) == first


# --- table names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "table"),
    [
        ("OptionSignal", "option_signals"),
        ("Policy", "policies"),
        ("BacktestRun", "backtest_runs"),
        ("ModelCard", "model_cards"),
        ("AuditLog", "audit_logs"),
        ("Signal", "signals"),
        ("Pack", "packs"),
        ("Entitlement", "entitlements"),
        ("Subscription", "subscriptions"),
        ("Model", "models"),
        ("HTTPRequest", "http_requests"),
        ("APIKey", "api_keys"),
        ("UserAPIKey", "user_api_keys"),
        ("S3Object", "s3_objects"),
        ("Status", "statuses"),
        ("Analysis", "analyses"),
        ("Person", "people"),
        ("Series", "series"),
        ("News", "news"),
        ("Settings", "settings"),
        ("Datum", "data"),
    ],
)
def test_table_name_for(class_name: str, table: str) -> None:
    assert table_name_for(class_name) == table
    assert table_name_problem(table) is None


def test_only_the_last_word_is_pluralised() -> None:
    assert table_name_for("PolicyCategory") == "policy_categories"


@pytest.mark.parametrize(
    "name",
    ["signals", "option_signals", "policies", "news", "series", "equipment", "sheep", "data"],
)
def test_plural_and_uncountable_table_names_pass(name: str) -> None:
    assert table_name_problem(name) is None
    assert check_table_name(name) == name


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("policy", "policies"),
        ("option_signal", "option_signals"),
        ("OptionSignal", "option_signals"),
        ("backtest-run", "backtest_runs"),
        ("auditLog", "audit_logs"),
    ],
)
def test_bad_table_names_get_a_problem_and_a_suggestion(name: str, suggestion: str) -> None:
    assert table_name_problem(name) is not None
    assert table_name_suggestion(name) == suggestion
    with pytest.raises(NamingError, match=f"use '{suggestion}'"):
        check_table_name(name)


def test_singular_table_name_problem_names_the_word() -> None:
    assert table_name_problem("option_signal") == (
        "must be snake_case plural: its last word 'signal' is not a plural noun"
    )


SINGULARS_ENDING_IN_S = [
    ("atlas", "atlases"),
    ("bias", "biases"),
    ("bonus", "bonuses"),
    ("cactus", "cacti"),
    ("campus", "campuses"),
    ("canvas", "canvases"),
    ("census", "censuses"),
    ("corpus", "corpora"),
    ("focus", "focuses"),
    ("gas", "gases"),
    ("lens", "lenses"),
    ("radius", "radii"),
    ("virus", "viruses"),
    ("status", "statuses"),
    ("alias", "aliases"),
]


@pytest.mark.parametrize(("singular", "plural"), SINGULARS_ENDING_IN_S)
def test_singulars_ending_in_s_are_not_taken_for_plurals(singular: str, plural: str) -> None:
    assert table_name_problem(singular) == (
        f"must be snake_case plural: its last word {singular!r} is not a plural noun"
    )
    assert table_name_problem(f"player_{singular}") is not None
    assert table_name_suggestion(singular) == plural
    assert table_name_for(singular.title()) == plural
    assert table_name_problem(plural) is None


@pytest.mark.parametrize(
    ("class_name", "table"),
    [("Criterion", "criteria"), ("Octopus", "octopuses"), ("SignalBonus", "signal_bonuses")],
)
def test_plurals_inflection_gets_wrong_are_derived_right(class_name: str, table: str) -> None:
    assert table_name_for(class_name) == table
    assert table_name_problem(table) is None


@pytest.mark.parametrize(
    "name",
    [
        "menus",
        "schemas",
        "quotas",
        "ideas",
        "areas",
        "formulas",
        "deltas",
        "news",
        "series",
        "data",
        "settings",
        "people",
        "statuses",
        "bonuses",
        "aliases",
        "analyses",
        "criteria",
        "radii",
        "cacti",
    ],
)
def test_real_plurals_still_pass(name: str) -> None:
    assert table_name_problem(name) is None
    assert table_name_for(name.title()) == name


def test_a_product_can_accept_a_word_the_rule_refuses() -> None:
    assert table_name_problem("alumni") is not None
    assert table_name_problem("former_alumni", plural_words={"alumni"}) is None


def test_the_inflection_library_is_left_as_it_was() -> None:
    table_name_for("Virus")
    assert inflection.pluralize("virus") == "viri"
    assert inflection.singularize("bonus") == "bonu"


def test_too_long_table_name_has_no_suggestion() -> None:
    name = "signals_" * 8 + "signals"
    assert "bytes" in (table_name_problem(name) or "")
    assert table_name_suggestion(name) is None
    with pytest.raises(NamingError, match="rename it"):
        check_table_name(name)


# --- column names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("createdAt", "created_at"),
        ("UserID", "user_id"),
        ("pack-id", "pack_id"),
        ("Bad Name", "bad_name"),
    ],
)
def test_bad_column_names(name: str, suggestion: str) -> None:
    assert column_name_problem(name) is not None
    assert column_name_suggestion(name) == suggestion
    with pytest.raises(NamingError, match=f"column name '{name}' .*; use '{suggestion}'"):
        check_column_name(name)


@pytest.mark.parametrize("name", ["id", "created_at", "pack_id", "price_2"])
def test_good_column_names(name: str) -> None:
    assert column_name_problem(name) is None
    assert check_column_name(name) == name


def test_column_names_have_the_63_byte_limit() -> None:
    assert column_name_problem("c" * 63) is None
    assert "63 bytes" in (column_name_problem("c" * 64) or "")


def test_reserved_column_name_is_rejected_without_a_suggestion() -> None:
    assert column_name_problem("order") == "is a reserved SQL keyword"
    assert column_name_suggestion("order") is None


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("OptionSignal", "option_signal"),
        ("HTTPRequest", "http_request"),
        ("already_ok", "already_ok"),
    ],
)
def test_snake_case(name: str, snake: str) -> None:
    assert snake_case(name) == snake


# --- the convention mapping --------------------------------------------------------------------


def test_naming_convention_is_immutable() -> None:
    with pytest.raises(TypeError):
        NAMING_CONVENTION["pk"] = "pk_%(table_name)s"  # type: ignore[index]


def test_naming_convention_works_on_plain_core_tables() -> None:
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    Table("packs", metadata, Column("id", Integer, primary_key=True))
    signals = Table(
        "signals",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("pack_id", ForeignKey("packs.id"), index=True, unique=True),
    )
    names = {str(c.name) for c in signals.constraints} | {str(i.name) for i in signals.indexes}
    assert names == {"pk_signals", "fk_signals_pack_id_packs", "ix_signals_pack_id"}
