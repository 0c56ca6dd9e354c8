from __future__ import annotations

import io
import re
from typing import Any

import pytest
from alembic.autogenerate import render_python_code
from alembic.migration import MigrationContext
from alembic.operations import Operations, ops
from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.sql.elements import conv

from sigma_db.errors import ConfigurationError, NamingError
from sigma_db.models import IdentityPrimaryKey, ProductBase, Timestamps
from sigma_db.naming import NAMING_CONVENTION

LONG_TABLE = "backtest_run_parameter_sweep_results"
SHORTENED = {
    "pk": "pk_backtest_run_parameter_sweep_results",
    "fk": "fk_backtest_run_parameter_sweep_results_strategy_confi_b2b4286a",
    "uq": "uq_backtest_run_parameter_sweep_results_strategy_confi_9154abf6",
    "ix": "ix_backtest_run_parameter_sweep_results_strategy_confi_44bf79cd",
    "ck": "ck_backtest_run_parameter_sweep_results_sweep_label_mu_4e46f961",
}


def new_base() -> Any:
    """A fresh product base, so each test's classes live in their own registry."""

    class Base(ProductBase, DeclarativeBase):
        pass

    return Base


@pytest.fixture
def base() -> Any:
    return new_base()


def define_long_models(base: Any) -> tuple[Any, Any]:
    class StrategyConfiguration(IdentityPrimaryKey, base):
        label: Mapped[str] = mapped_column(String(80))

    class BacktestRunParameterSweepResult(IdentityPrimaryKey, Timestamps, base):
        strategy_configuration_version_id: Mapped[int] = mapped_column(
            ForeignKey("strategy_configurations.id"), index=True
        )
        sweep_label: Mapped[str] = mapped_column(String(80))
        __table_args__ = (
            UniqueConstraint("strategy_configuration_version_id", "sweep_label"),
            CheckConstraint("sweep_label <> ''", name="sweep_label_must_not_be_empty"),
        )

    return StrategyConfiguration, BacktestRunParameterSweepResult


def names_by_kind(table: Table) -> dict[str, str]:
    kinds = {
        "PrimaryKeyConstraint": "pk",
        "ForeignKeyConstraint": "fk",
        "UniqueConstraint": "uq",
        "CheckConstraint": "ck",
    }
    names = {kinds[type(c).__name__]: str(c.name) for c in table.constraints}
    for index in table.indexes:
        names["ix"] = str(index.name)
    return names


# --- one MetaData per product base -------------------------------------------------------------


def test_each_product_base_gets_its_own_metadata_with_the_convention() -> None:
    lab, market = new_base(), new_base()

    class Pack(IdentityPrimaryKey, lab):
        pass

    class Entitlement(IdentityPrimaryKey, market):
        pass

    assert lab.metadata is not market.metadata
    assert lab.registry is not market.registry
    assert set(lab.metadata.tables) == {"packs"}
    assert set(market.metadata.tables) == {"entitlements"}
    for metadata in (lab.metadata, market.metadata):
        assert dict(metadata.naming_convention) == dict(NAMING_CONVENTION)
    assert "metadata" not in vars(ProductBase)


def test_same_model_name_in_two_products_does_not_collide() -> None:
    lab, sim = new_base(), new_base()

    class Signal(IdentityPrimaryKey, lab):
        pass

    class Signal2(IdentityPrimaryKey, sim):
        __tablename__ = "signals"

    assert lab.metadata.tables["signals"] is not sim.metadata.tables["signals"]


def test_a_base_may_bring_metadata_that_carries_the_convention() -> None:
    class Base(ProductBase, DeclarativeBase):
        metadata = MetaData(schema="audit", naming_convention=NAMING_CONVENTION)

    class Pack(IdentityPrimaryKey, Base):
        pass

    assert Pack.__table__.fullname == "audit.packs"
    assert str(Pack.__table__.primary_key.name) == "pk_packs"


def test_a_base_with_metadata_lacking_the_convention_is_rejected() -> None:
    with pytest.raises(
        NamingError, match=r"Base class Base: .*naming_convention=NAMING_CONVENTION"
    ):

        class Base(ProductBase, DeclarativeBase):
            metadata = MetaData(schema="audit")


def test_product_base_must_come_before_declarative_base() -> None:
    with pytest.raises(
        ConfigurationError, match=re.escape("write class Base(ProductBase, DeclarativeBase)")
    ):

        class Base(DeclarativeBase, ProductBase):
            pass


# --- table names -------------------------------------------------------------------------------


def test_table_names_are_derived_from_class_names(base: Any) -> None:
    class OptionSignal(IdentityPrimaryKey, base):
        pass

    class Policy(IdentityPrimaryKey, base):
        pass

    class HTTPRequest(IdentityPrimaryKey, base):
        pass

    assert OptionSignal.__tablename__ == "option_signals"
    assert Policy.__table__.name == "policies"
    assert HTTPRequest.__table__.name == "http_requests"
    assert set(base.metadata.tables) == {"option_signals", "policies", "http_requests"}


def test_an_explicit_conventional_table_name_is_kept(base: Any) -> None:
    class Equipment(IdentityPrimaryKey, base):
        __tablename__ = "lab_equipment"

    assert Equipment.__table__.name == "lab_equipment"


def test_abstract_classes_and_mixins_are_skipped(base: Any) -> None:
    class Owned(base):
        __abstract__ = True
        owner_id: Mapped[int]

    class ModelCard(IdentityPrimaryKey, Owned):
        pass

    assert not hasattr(Owned, "__table__")
    assert ModelCard.__table__.name == "model_cards"
    assert ModelCard.__table__.c.keys() == ["id", "owner_id"]


def test_single_table_inheritance_shares_the_parent_table(base: Any) -> None:
    class Run(IdentityPrimaryKey, base):
        kind: Mapped[str] = mapped_column(String(20))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "run"}

    class BacktestRun(Run):
        __mapper_args__ = {"polymorphic_identity": "backtest"}

    class SimulationRun(Run):
        __tablename__ = "simulation_runs"
        id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "simulation"}

    assert BacktestRun.__table__ is Run.__table__
    assert SimulationRun.__table__.name == "simulation_runs"
    assert names_by_kind(SimulationRun.__table__) == {
        "pk": "pk_simulation_runs",
        "fk": "fk_simulation_runs_id_runs",
    }


# --- bad declarations fail at class definition -------------------------------------------------


def test_singular_tablename_is_rejected_before_mapping(base: Any) -> None:
    with pytest.raises(NamingError) as caught:

        class Policy(IdentityPrimaryKey, base):
            __tablename__ = "policy"

    assert str(caught.value) == (
        "Model class Policy: __tablename__ 'policy' must be snake_case plural: its last word "
        "'policy' is not a plural noun; use 'policies'."
    )
    assert base.metadata.tables == {}


def test_camel_case_tablename_is_rejected(base: Any) -> None:
    with pytest.raises(
        NamingError,
        match=r"^Model class OptionSignal: __tablename__ 'OptionSignal' must be lowercase "
        r"snake_case.*; use 'option_signals'\.$",
    ):

        class OptionSignal(IdentityPrimaryKey, base):
            __tablename__ = "OptionSignal"


def test_camel_case_column_is_rejected(base: Any) -> None:
    with pytest.raises(
        NamingError,
        match=r"^Model class Signal: column 'createdAt' must be lowercase snake_case.*; "
        r"use 'created_at'\.$",
    ):

        class Signal(IdentityPrimaryKey, base):
            createdAt: Mapped[int]


def test_every_problem_of_a_class_is_listed(base: Any) -> None:
    with pytest.raises(NamingError) as caught:

        class Signal(IdentityPrimaryKey, base):
            createdAt: Mapped[int]
            order: Mapped[int]

    message = str(caught.value)
    assert message.startswith("Model class Signal breaks 2 naming rules:\n")
    assert "  - column 'createdAt' " in message
    assert "use 'created_at'." in message
    assert "  - column 'order' is a reserved SQL keyword; rename it." in message


def test_a_camel_case_attribute_over_a_snake_case_column_is_fine(base: Any) -> None:
    class Signal(IdentityPrimaryKey, base):
        createdAt: Mapped[int] = mapped_column("created_on")

    assert Signal.__table__.c.keys() == ["id", "created_on"]


def test_a_class_name_that_derives_a_bad_table_name_must_set_one(base: Any) -> None:
    with pytest.raises(
        NamingError,
        match=r"^Model class Version2: the table name 'version2' derived from the class name "
        r".*; set __tablename__",
    ):

        class Version2(IdentityPrimaryKey, base):
            pass


def test_an_explicit_table_is_checked(base: Any) -> None:
    other = MetaData(naming_convention=NAMING_CONVENTION)  # not the base's: no check when built
    with pytest.raises(
        NamingError, match=r"^Model class Pack: table 'pack' must be snake_case plural.*use 'packs'"
    ):

        class Pack(base):
            __table__ = Table("pack", other, Column("id", Integer, primary_key=True))


def test_an_explicit_table_with_a_bad_column_is_checked(base: Any) -> None:
    other = MetaData(naming_convention=NAMING_CONVENTION)
    with pytest.raises(NamingError, match=r"^Model class Pack: column 'userId' .*use 'user_id'"):

        class Pack(base):
            __table__ = Table(
                "packs",
                other,
                Column("id", Integer, primary_key=True),
                Column("userId", Integer),
            )


def test_an_explicit_table_on_the_base_metadata_is_refused_once_when_built(base: Any) -> None:
    with pytest.raises(NamingError) as caught:

        class Pack(base):
            __table__ = Table("pack", base.metadata, Column("id", Integer, primary_key=True))

    assert str(caught.value) == (
        "Table 'pack': table 'pack' must be snake_case plural: its last word 'pack' is not a "
        "plural noun; use 'packs'."
    )
    assert base.metadata.tables == {}


def test_a_model_over_an_explicit_table_on_the_base_metadata_maps(base: Any) -> None:
    packs = Table("packs", base.metadata, Column("id", Integer, primary_key=True))

    class Pack(base):
        __table__ = packs

    assert Pack.__table__ is base.metadata.tables["packs"]


def test_an_explicit_constraint_name_over_63_bytes_is_rejected(base: Any) -> None:
    with pytest.raises(
        NamingError, match=r"^Model class Pack: UniqueConstraint name 'xxx.*' is 64 bytes long"
    ):

        class Pack(IdentityPrimaryKey, base):
            code: Mapped[str]
            __table_args__ = (UniqueConstraint("code", name="x" * 64),)


def test_a_check_constraint_needs_a_name(base: Any) -> None:
    with pytest.raises(NamingError, match=r"check constraint on table 'packs' has no name"):

        class Pack(IdentityPrimaryKey, base):
            size: Mapped[int]
            __table_args__ = (CheckConstraint("size > 0"),)


def test_an_expression_index_needs_a_name(base: Any) -> None:
    with pytest.raises(NamingError, match=r"index on table 'packs' is over an expression"):

        class Pack(IdentityPrimaryKey, base):
            code: Mapped[str]
            __table_args__ = (Index(None, func.lower(Column("code"))),)


def test_a_named_expression_index_keeps_its_name(base: Any) -> None:
    class Pack(IdentityPrimaryKey, base):
        code: Mapped[str]

    Index("ix_packs_lower_code", func.lower(Pack.__table__.c.code))
    assert {str(i.name) for i in Pack.__table__.indexes} == {"ix_packs_lower_code"}


# --- tables built directly on a product base's MetaData ----------------------------------------


def test_an_imperative_table_with_bad_names_is_refused_when_built(base: Any) -> None:
    with pytest.raises(NamingError) as caught:
        Table("PackTag", base.metadata, Column("packId", BigInteger), Column("order", Text))

    lines = str(caught.value).splitlines()
    assert lines[0] == "Table 'PackTag' breaks 3 naming rules:"
    assert lines[1].startswith("  - table 'PackTag' must be lowercase snake_case")
    assert lines[1].endswith("; use 'pack_tags'.")
    assert lines[2].startswith("  - column 'packId' must be lowercase snake_case")
    assert lines[2].endswith("; use 'pack_id'.")
    assert lines[3] == "  - column 'order' is a reserved SQL keyword; rename it."
    assert base.metadata.tables == {}


def test_an_imperative_table_with_a_singular_name_is_refused(base: Any) -> None:
    with pytest.raises(NamingError) as caught:
        Table("pack_tag", base.metadata, Column("pack_id", BigInteger))

    assert str(caught.value) == (
        "Table 'pack_tag': table 'pack_tag' must be snake_case plural: its last word 'tag' is "
        "not a plural noun; use 'pack_tags'."
    )


def test_an_imperative_table_with_a_bad_explicit_constraint_name_is_refused(base: Any) -> None:
    with pytest.raises(
        NamingError, match=r"^Table 'pack_tags': UniqueConstraint name 'uq PackTags' must be "
    ):
        Table(
            "pack_tags",
            base.metadata,
            Column("pack_id", BigInteger),
            Column("tag_id", BigInteger),
            UniqueConstraint("pack_id", "tag_id", name="uq PackTags"),
        )


def test_a_conventional_association_table_gets_convention_names(base: Any) -> None:
    class Pack(IdentityPrimaryKey, base):
        pass

    class Tag(IdentityPrimaryKey, base):
        pass

    pack_tags = Table(
        "pack_tags",
        base.metadata,
        Column("pack_id", ForeignKey("packs.id"), primary_key=True),
        Column("tag_id", ForeignKey("tags.id"), primary_key=True),
    )
    assert names_by_kind(pack_tags)["pk"] == "pk_pack_tags"
    ddl = str(CreateTable(pack_tags).compile(dialect=postgresql.dialect()))
    assert "CREATE TABLE pack_tags (" in ddl
    assert "CONSTRAINT fk_pack_tags_pack_id_packs FOREIGN KEY" in ddl


def test_extend_existing_on_a_product_table_is_not_checked_again(base: Any) -> None:
    first = Table("pack_tags", base.metadata, Column("pack_id", BigInteger))
    again = Table("pack_tags", base.metadata, Column("tag_id", BigInteger), extend_existing=True)
    assert again is first
    assert first.c.keys() == ["pack_id", "tag_id"]


def test_extend_existing_on_a_model_table_keeps_working(base: Any) -> None:
    class Pack(IdentityPrimaryKey, base):
        code: Mapped[str]

    same = Table("packs", base.metadata, Column("note", Text), extend_existing=True)
    assert same is Pack.__table__
    assert "note" in same.c


def test_other_metadata_in_the_process_is_not_checked() -> None:
    from sigma_db.migrations.ledger import ledger_table

    new_base()  # a product base exists in the process
    Table("PackTag", MetaData(), Column("packId", BigInteger), schema="Audit Trail")
    Table("PackTag", MetaData(naming_convention=NAMING_CONVENTION), Column("order", Text))
    assert ledger_table("app").name == "migration_runs"


# --- schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["Audit Trail", "app", "public", "billing"])
def test_a_model_schema_must_be_unset_or_a_logical_area(base: Any, schema: str) -> None:
    with pytest.raises(NamingError) as caught:

        class AuditLog(IdentityPrimaryKey, base):
            __table_args__ = {"schema": schema}

    assert str(caught.value) == (
        f"Model class AuditLog: schema {schema!r} is not a logical area; leave schema unset for "
        "the default schema (the search_path finds it in every layout) or use one of audit, "
        "lineage, signals, options, backtests."
    )


def test_an_imperative_table_schema_must_be_unset_or_a_logical_area(base: Any) -> None:
    with pytest.raises(NamingError, match=r"^Table 'pack_tags': schema 'app' is not a logical"):
        Table("pack_tags", base.metadata, Column("pack_id", BigInteger), schema="app")


@pytest.mark.parametrize("schema", ["audit", "lineage", "signals", "options", "backtests"])
def test_logical_areas_are_accepted_as_schemas(base: Any, schema: str) -> None:
    class AuditLog(IdentityPrimaryKey, base):
        __table_args__ = {"schema": schema}

    tags = Table("audit_tags", base.metadata, Column("tag", Text), schema=schema)
    assert AuditLog.__table__.fullname == f"{schema}.audit_logs"
    assert tags.fullname == f"{schema}.audit_tags"


def test_a_base_metadata_with_a_default_schema_that_is_no_logical_area_is_rejected() -> None:
    with pytest.raises(
        NamingError, match=r"^Base class Base: its MetaData's default schema 'app' is not a logical"
    ):

        class Base(ProductBase, DeclarativeBase):
            metadata = MetaData(schema="app", naming_convention=NAMING_CONVENTION)


# --- the plural rule's misjudged words ---------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "table", "old"),
    [("Bonus", "bonuses", "bonus"), ("SignalCampus", "signal_campuses", "signal_campus")],
)
def test_a_class_named_after_a_misjudged_word_must_say_its_table(
    base: Any, model: str, table: str, old: str
) -> None:
    # Derived silently, a model deployed as "bonus" would get "bonuses", and autogenerate would
    # drop its table: the author chooses.
    with pytest.raises(NamingError) as caught:
        type(model, (IdentityPrimaryKey, base), {})
    message = str(caught.value)
    assert f"the table name derived from the class name is {table!r}" in message
    assert f"__tablename__ = {table!r}, or to keep an existing table" in message
    assert f"__tablename__ = {old!r} with __plural_words__" in message
    mapped = type(model, (IdentityPrimaryKey, base), {"__tablename__": table})
    assert mapped.__table__.name == table


def test_plural_words_keep_a_derived_name(base: Any) -> None:
    class Base(ProductBase, DeclarativeBase):
        __plural_words__ = ("bonus",)

    class Bonus(IdentityPrimaryKey, Base):
        pass

    assert Bonus.__table__.name == "bonus"


def test_a_singular_ending_in_s_is_refused_as_tablename(base: Any) -> None:
    with pytest.raises(NamingError) as caught:

        class Bonus(IdentityPrimaryKey, base):
            __tablename__ = "bonus"

    assert str(caught.value) == (
        "Model class Bonus: __tablename__ 'bonus' must be snake_case plural: its last word "
        "'bonus' is not a plural noun; use 'bonuses'."
    )


def test_a_base_can_accept_words_the_plural_rule_misjudges() -> None:
    class Base(ProductBase, DeclarativeBase):
        __plural_words__ = ("alumni", "bonus")

    class Alumnus(IdentityPrimaryKey, Base):
        __tablename__ = "alumni"

    class Bonus(IdentityPrimaryKey, Base):
        __tablename__ = "bonus"

    Table("alumni_bonus", Base.metadata, Column("bonus_id", BigInteger))
    assert set(Base.metadata.tables) == {"alumni", "bonus", "alumni_bonus"}
    with pytest.raises(NamingError, match="'alumni' is not a plural noun"):

        class Other(IdentityPrimaryKey, new_base()):
            __tablename__ = "alumni"


def test_plural_words_must_be_a_collection_of_words() -> None:
    with pytest.raises(ConfigurationError, match=r"__plural_words__ = \('alumni',\)"):

        class Base(ProductBase, DeclarativeBase):
            __plural_words__ = "alumni"


# --- the constraint naming convention ----------------------------------------------------------


def test_convention_names_for_every_kind(base: Any) -> None:
    class Pack(IdentityPrimaryKey, base):
        code: Mapped[str] = mapped_column(String(40), unique=True)

    class Signal(IdentityPrimaryKey, base):
        pack_id: Mapped[int] = mapped_column(ForeignKey("packs.id"), index=True)
        symbol: Mapped[str] = mapped_column(String(20))
        score: Mapped[int]
        __table_args__ = (
            UniqueConstraint("pack_id", "symbol"),
            CheckConstraint("score >= 0", name="score_non_negative"),
        )

    assert names_by_kind(Signal.__table__) == {
        "pk": "pk_signals",
        "fk": "fk_signals_pack_id_packs",
        "uq": "uq_signals_pack_id_symbol",
        "ck": "ck_signals_score_non_negative",
        "ix": "ix_signals_pack_id",
    }
    assert names_by_kind(Pack.__table__) == {"pk": "pk_packs", "uq": "uq_packs_code"}


def test_generated_names_are_final(base: Any) -> None:
    _, result = define_long_models(base)
    items = [*result.__table__.constraints, *result.__table__.indexes]
    assert all(isinstance(item.name, conv) for item in items)


def test_long_names_are_shortened_by_the_frozen_rule(base: Any) -> None:
    _, result = define_long_models(base)
    assert result.__table__.name == LONG_TABLE
    names = names_by_kind(result.__table__)
    assert names == SHORTENED
    assert all(len(name.encode()) <= 63 for name in names.values())


def test_postgresql_ddl_uses_the_convention_names(base: Any) -> None:
    _, result = define_long_models(base)
    dialect = postgresql.dialect()
    ddl = str(CreateTable(result.__table__).compile(dialect=dialect))
    for kind in ("pk", "fk", "uq", "ck"):
        assert f"CONSTRAINT {SHORTENED[kind]} " in ddl
    (index,) = result.__table__.indexes
    assert str(CreateIndex(index).compile(dialect=dialect)) == (
        f"CREATE INDEX {SHORTENED['ix']} ON {LONG_TABLE} (strategy_configuration_version_id)"
    )


def test_alembic_autogenerate_renders_the_names_as_final(base: Any) -> None:
    strategy, result = define_long_models(base)
    upgrade = ops.UpgradeOps(
        ops=[
            ops.CreateTableOp.from_table(strategy.__table__),
            ops.CreateTableOp.from_table(result.__table__),
            *(ops.CreateIndexOp.from_index(index) for index in result.__table__.indexes),
        ]
    )
    code = render_python_code(upgrade)
    for name in [*SHORTENED.values(), "pk_strategy_configurations"]:
        assert f"op.f('{name}')" in code
    assert render_python_code(upgrade) == code


# --- mixins ------------------------------------------------------------------------------------


def test_identity_primary_key_column(base: Any) -> None:
    class Pack(IdentityPrimaryKey, base):
        pass

    column = Pack.__table__.c.id
    assert column.primary_key
    assert isinstance(column.type, BigInteger)
    assert isinstance(column.identity, Identity)
    assert not column.identity.always
    ddl = str(CreateTable(Pack.__table__).compile(dialect=postgresql.dialect()))
    assert "id BIGINT GENERATED BY DEFAULT AS IDENTITY" in ddl


def test_timestamp_columns(base: Any) -> None:
    class AuditLog(Timestamps, IdentityPrimaryKey, base):
        message: Mapped[str]

    table = AuditLog.__table__
    assert table.c.keys() == ["id", "message", "created_at", "updated_at"]
    for name in ("created_at", "updated_at"):
        column = table.c[name]
        assert isinstance(column.type, TIMESTAMP)
        assert column.type.timezone
        assert not column.nullable
        assert str(column.server_default.arg) == "now()"
    assert table.c.created_at.onupdate is None
    assert str(table.c.updated_at.onupdate.arg) == "now()"
    ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))
    assert "created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL" in ddl
    assert "updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL" in ddl


def test_mixins_give_each_model_its_own_columns(base: Any) -> None:
    class Pack(IdentityPrimaryKey, Timestamps, base):
        pass

    class Policy(IdentityPrimaryKey, Timestamps, base):
        pass

    assert Pack.__table__.c.id is not Policy.__table__.c.id
    assert Pack.__table__.c.created_at is not Policy.__table__.c.created_at


def test_hand_written_alembic_operations_apply_the_convention() -> None:
    output = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": output, "target_metadata": new_base().metadata},
    )
    op = Operations(context)
    op.create_check_constraint("score_non_negative", "signals", "score >= 0")
    op.create_unique_constraint(None, "signals", ["pack_id", "symbol"])
    op.create_foreign_key(None, "signals", "packs", ["pack_id"], ["id"])
    op.create_index(op.f("ix_signals_pack_id"), "signals", ["pack_id"])
    sql = output.getvalue()
    for name in (
        "ck_signals_score_non_negative",
        "uq_signals_pack_id_symbol",
        "fk_signals_pack_id_packs",
        "ix_signals_pack_id",
    ):
        assert f" {name} " in sql
