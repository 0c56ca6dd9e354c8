"""The product declarative base and the common column mixins.

A product declares its base in one line and gets the naming rules enforced when each model
class is defined (at import time, not in review)::

    from sqlalchemy.orm import DeclarativeBase
    from sigma_db.models import IdentityPrimaryKey, ProductBase, Timestamps


    class Base(ProductBase, DeclarativeBase):
        pass


    class OptionSignal(IdentityPrimaryKey, Timestamps, Base):  # table "option_signals"
        symbol: Mapped[str]
"""

from __future__ import annotations

import weakref
from collections.abc import Collection
from contextvars import ContextVar
from datetime import datetime
from typing import Any, ClassVar, Final

from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Constraint,
    Identity,
    Index,
    MetaData,
    Table,
    event,
    func,
)
from sqlalchemy.engine.interfaces import ReflectedColumn
from sqlalchemy.orm import (
    DeclarativeBase,
    DeclarativeBaseNoMeta,
    Mapped,
    declared_attr,
    has_inherited_table,
    mapped_column,
)

from sigma_db.errors import ConfigurationError, NamingError
from sigma_db.identifiers import identifier_problem
from sigma_db.naming import (
    NAMING_CONVENTION,
    changed_derivation,
    column_name_problem,
    column_name_suggestion,
    snake_case,
    table_name_for,
    table_name_problem,
    table_name_suggestion,
)
from sigma_db.topology import LOGICAL_SCHEMAS

__all__ = ["IdentityPrimaryKey", "ProductBase", "Timestamps"]

_DECLARATIVE_BASES = (DeclarativeBase, DeclarativeBaseNoMeta)

_PRODUCT_BASE_KEY: Final = "sigma_db.product_base"
"""``MetaData.info`` key marking a product base's MetaData; the value is the base's name.

Only MetaData so marked has its imperative tables checked: Alembic's, the migration ledger's
and any other MetaData in the process are left alone.
"""

_PLURAL_WORDS_KEY: Final = "sigma_db.plural_words"
"""``MetaData.info`` key holding the base's ``__plural_words__``, for its imperative tables."""

_building_model_table: ContextVar[bool] = ContextVar("_building_model_table", default=False)
"""True while ``ProductBase.__table_cls__`` builds a model's table (checked with its class)."""

_reflected_tables: weakref.WeakSet[Table] = weakref.WeakSet()
"""Tables that got columns by reflection: their names are the database's, not to be judged."""


class ProductBase:
    """Mixin for a product's declarative base: own MetaData, naming rules checked per class.

    Use it first, in one line: ``class Base(ProductBase, DeclarativeBase): pass``.

    It is a mixin rather than a ready-made ``DeclarativeBase`` subclass because SQLAlchemy
    builds a base's registry from ``getattr(cls, "metadata", None)``: a ``metadata`` set on a
    shared parent would be one MetaData for every product in the process. Instead each
    product base gets a fresh ``MetaData(naming_convention=NAMING_CONVENTION)`` of its own;
    there is no process-global registry.

    For each mapped subclass it:

    * derives ``__tablename__`` from the class name when none is given
      (``OptionSignal`` -> ``option_signals``);
    * checks an explicit ``__tablename__`` (or ``__table__``) *before* mapping;
    * checks every column, constraint and index name after mapping;

    and raises :class:`~sigma_db.NamingError` naming the class, the bad name, what is wrong
    and a suggested name. Abstract classes (``__abstract__ = True``) and plain mixins are not
    checked; the concrete classes that use them are.

    A subclass of a mapped class without its own ``__tablename__`` shares its parent's table
    (single-table inheritance); for joined-table inheritance give it a ``__tablename__``.

    Tables built directly on the base's MetaData (``Table("pack_tags", Base.metadata, ...)``,
    e.g. many-to-many association tables) are checked by the same rules when constructed.
    """

    __plural_words__: ClassVar[Collection[str]] = ()
    """Words this product accepts as the last word of a table name though the plural rule
    refuses them: a plural it misjudges (``alumni``), or the name of a table that already
    exists (``bonus``). Read once, from the base class."""

    @classmethod
    def __table_cls__(cls, *args: Any, **kw: Any) -> Table:
        """Build a model's Table; its class checks it after mapping, naming the class.

        The flag keeps the imperative-table check away, so a model's problems are reported
        once, by the check that can name the class.
        """
        token = _building_model_table.set(True)
        try:
            return Table(*args, **kw)
        finally:
            _building_model_table.reset(token)

    @declared_attr.directive
    def __tablename__(cls) -> str | None:
        """Derive the table name from the class name; None shares an inherited table."""
        model = _as_class(cls)
        if has_inherited_table(model):
            return None
        return table_name_for(model.__name__, _plural_words(model.metadata))

    def __init_subclass__(cls, **kw: Any) -> None:
        if not issubclass(cls, _DECLARATIVE_BASES):
            super().__init_subclass__(**kw)
            return
        if any(base in cls.__bases__ for base in _DECLARATIVE_BASES):
            _check_base_order(cls)
            if "metadata" not in cls.__dict__ and "registry" not in cls.__dict__:
                cls.metadata = MetaData(naming_convention=NAMING_CONVENTION)
            super().__init_subclass__(**kw)
            _check_base_metadata(cls)
            cls.metadata.info[_PRODUCT_BASE_KEY] = cls.__name__
            cls.metadata.info[_PLURAL_WORDS_KEY] = _plural_words_of(cls)
            return
        if cls.__dict__.get("__abstract__", False):
            super().__init_subclass__(**kw)
            return
        _check_before_mapping(cls)
        super().__init_subclass__(**kw)
        table = getattr(cls, "__table__", None)
        if isinstance(table, Table):  # not yet there for deferred reflection
            _raise_problems(_model(cls), _table_problems(table, _plural_words(cls.metadata)))


def _as_class(value: object) -> type[Any]:
    """Narrow a declared_attr's ``cls`` argument (typed as an instance) to the class it is."""
    assert isinstance(value, type)
    return value


def _check_base_order(cls: type[Any]) -> None:
    mro = cls.__mro__
    declarative = next(base for base in mro if base in _DECLARATIVE_BASES)
    if mro.index(ProductBase) > mro.index(declarative):
        raise ConfigurationError(
            f"Base class {cls.__name__} lists {declarative.__name__} before ProductBase, so "
            "SQLAlchemy sets it up without the naming convention; write "
            f"class {cls.__name__}(ProductBase, {declarative.__name__})."
        )


def _check_base_metadata(cls: type[Any]) -> None:
    """A base given its own ``metadata`` or ``registry`` must still carry the convention."""
    metadata: MetaData = cls.metadata
    convention = metadata.naming_convention
    if any(convention.get(key) != value for key, value in NAMING_CONVENTION.items()):
        raise NamingError(
            f"Base class {cls.__name__}: its MetaData lacks sigma_db's naming convention; "
            "create it as MetaData(naming_convention=NAMING_CONVENTION, ...) "
            "(from sigma_db.naming), or leave metadata out and ProductBase creates it."
        )
    problem = _schema_problem(metadata.schema)
    if problem is not None:
        raise NamingError(f"Base class {cls.__name__}: its MetaData's default {problem}.")


def _plural_words_of(cls: type[Any]) -> frozenset[str]:
    words = cls.__plural_words__
    if isinstance(words, str) or not all(isinstance(word, str) for word in words):
        raise ConfigurationError(
            f"Base class {cls.__name__}: __plural_words__ must be a collection of words, "
            f"e.g. __plural_words__ = ({words!r},)."
        )
    return frozenset(words)


def _plural_words(metadata: MetaData) -> frozenset[str]:
    """The product's ``__plural_words__`` (none for a model on a MetaData of its own)."""
    words = metadata.info.get(_PLURAL_WORDS_KEY, frozenset())
    assert isinstance(words, frozenset)
    return words


def _check_before_mapping(cls: type[Any]) -> None:
    """Check the table name before SQLAlchemy registers the class and its table."""
    own = cls.__dict__
    plural_words = _plural_words(cls.metadata)
    table = own.get("__table__")
    if isinstance(table, Table):
        _raise_problems(_model(cls), _table_problems(table, plural_words))
        return
    explicit = own.get("__tablename__")
    if isinstance(explicit, str):
        problem = table_name_problem(explicit, plural_words)
        if problem is not None:
            _raise_problems(
                _model(cls),
                [
                    _with_suggestion(
                        f"__tablename__ {explicit!r} {problem}", table_name_suggestion(explicit)
                    )
                ],
            )
        return
    if explicit is None and not has_inherited_table(cls):
        derived = table_name_for(cls.__name__, plural_words)
        changed = changed_derivation(cls.__name__)
        if changed is not None and changed not in plural_words:
            _raise_problems(
                _model(cls),
                [
                    f"the table name derived from the class name is {derived!r}, where sigma_db "
                    f"derived {snake_case(cls.__name__)!r} before; say which: "
                    f"__tablename__ = {derived!r}, or to keep an existing table, "
                    f"__tablename__ = {snake_case(cls.__name__)!r} with "
                    f"__plural_words__ = ({changed!r},) on the base"
                ],
            )
        problem = table_name_problem(derived, plural_words)
        if problem is not None:
            _raise_problems(
                _model(cls),
                [
                    f"the table name {derived!r} derived from the class name {problem}; "
                    "set __tablename__ to a snake_case plural name"
                ],
            )


def _table_problems(table: Table, plural_words: Collection[str] = ()) -> list[str]:
    """Every naming problem of a table: its name and schema, columns, constraints, indexes."""
    problems: list[str] = []
    problem = table_name_problem(table.name, plural_words)
    if problem is not None:
        problems.append(
            _with_suggestion(f"table {table.name!r} {problem}", table_name_suggestion(table.name))
        )
    problem = _schema_problem(table.schema)
    if problem is not None:
        problems.append(problem)
    for column in table.columns:
        problem = column_name_problem(column.name)
        if problem is not None:
            problems.append(
                _with_suggestion(
                    f"column {column.name!r} {problem}", column_name_suggestion(column.name)
                )
            )
    if problems:  # generated constraint names would only repeat these
        return problems
    named: list[Constraint | Index] = [*table.constraints, *table.indexes]
    for item in sorted(named, key=lambda item: str(item.name)):
        name = item.name
        if not isinstance(name, str):  # unnamed, or SQLAlchemy's deferred-name marker
            continue
        problem = identifier_problem(name)
        if problem is not None:
            problems.append(
                f"{type(item).__name__} name {name!r} {problem}; rename it "
                "(or leave name= out and the naming convention names it)"
            )
    return problems


def _schema_problem(schema: str | None) -> str | None:
    """A table's schema is unset (the default schema) or a logical area.

    Only logical areas are translated per layout; any other name, ``app`` included, would be
    looked up as is, and ``edge_products`` has no such schema.
    """
    if schema is None or schema in LOGICAL_SCHEMAS:
        return None
    return (
        f"schema {schema!r} is not a logical area; leave schema unset for the default schema "
        f"(the search_path finds it in every layout) or use one of {', '.join(LOGICAL_SCHEMAS)}"
    )


def _with_suggestion(text: str, suggestion: str | None) -> str:
    if suggestion is None:
        return f"{text}; rename it"
    return f"{text}; use {suggestion!r}"


def _model(cls: type[Any]) -> str:
    return f"Model class {cls.__name__}"


def _raise_problems(subject: str, problems: list[str]) -> None:
    """One NamingError about ``subject`` (``Model class Pack``, ``Table 'pack_tags'``)."""
    if not problems:
        return
    if len(problems) == 1:
        raise NamingError(f"{subject}: {problems[0]}.")
    raise NamingError(
        [f"{problem}." for problem in problems],
        heading=f"{subject} breaks {len(problems)} naming rules:",
    )


def _check_imperative_table(table: Table, parent: Any) -> None:
    """``after_parent_attach``: check a Table built directly on a product base's MetaData.

    SQLAlchemy fires it once per new Table, after its columns, constraints and indexes are
    attached, and drops the table from the MetaData again when this raises. A Table looked up
    or extended with ``extend_existing`` is not new, so it is not checked twice.
    """
    if not isinstance(parent, MetaData) or _PRODUCT_BASE_KEY not in parent.info:
        return
    if _building_model_table.get() or table in _reflected_tables:
        return
    _raise_problems(f"Table {table.name!r}", _table_problems(table, _plural_words(parent)))


def _remember_reflected(_inspector: Any, table: Table, _column: ReflectedColumn) -> None:
    """``column_reflect``: fired while a table is reflected, before it is attached."""
    _reflected_tables.add(table)


event.listen(Table, "after_parent_attach", _check_imperative_table)
event.listen(Table, "column_reflect", _remember_reflected)


class IdentityPrimaryKey:
    """Mixin: a ``bigint`` identity primary key named ``id``.

    ``GENERATED BY DEFAULT AS IDENTITY`` is the SQL-standard successor of ``serial``: the
    sequence belongs to the column (dropped and granted with it), and BY DEFAULT still lets
    data migrations and fixtures insert explicit ids. ``bigint`` because high-volume tables
    (signals, audit logs) outgrow 2**31 rows, and widening a key later rewrites the table.
    """

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True, sort_order=-100)
    """The row's surrogate key, assigned by the database on insert."""


class Timestamps:
    """Mixin: ``created_at`` and ``updated_at``, both ``timestamptz NOT NULL``.

    ``timestamp with time zone`` stores an instant, so rows written by services in different
    zones compare correctly. The defaults are server-side (``now()``), so rows inserted by
    migrations, psql or other tools get them too. ``now()`` is the *transaction* start time:
    every row written in one transaction carries the same value.

    ``eager_defaults``: the database computes both values, and PostgreSQL hands them back in
    the INSERT/UPDATE's own ``RETURNING``, so they are readable after the unit of work ends
    (``expire_on_commit=False``) at no extra round trip. A model that declares its own
    ``__mapper_args__`` should keep ``"eager_defaults": True`` in it.
    """

    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}

    created_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now(), nullable=False, sort_order=100
    )
    """When the row was inserted; set by the database, never by application clocks."""

    updated_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True),
        server_default=func.now(),
        onupdate=func.now(),
        nullable=False,
        sort_order=101,
    )
    """When the row was last updated through SQLAlchemy.

    ``onupdate`` adds ``now()`` to every UPDATE that SQLAlchemy emits (ORM or Core); UPDATEs
    written as raw SQL elsewhere must set it themselves (there is no trigger).
    """
