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

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import TIMESTAMP, BigInteger, Constraint, Identity, Index, MetaData, Table, func
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
    column_name_problem,
    column_name_suggestion,
    table_name_for,
    table_name_problem,
    table_name_suggestion,
)

__all__ = ["IdentityPrimaryKey", "ProductBase", "Timestamps"]

_DECLARATIVE_BASES = (DeclarativeBase, DeclarativeBaseNoMeta)


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
    """

    @declared_attr.directive
    def __tablename__(cls) -> str | None:
        """Derive the table name from the class name; None shares an inherited table."""
        model = _as_class(cls)
        if has_inherited_table(model):
            return None
        return table_name_for(model.__name__)

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
            return
        if cls.__dict__.get("__abstract__", False):
            super().__init_subclass__(**kw)
            return
        _check_before_mapping(cls)
        super().__init_subclass__(**kw)
        table = getattr(cls, "__table__", None)
        if isinstance(table, Table):  # not yet there for deferred reflection
            _raise_problems(cls, _table_problems(table))


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


def _check_before_mapping(cls: type[Any]) -> None:
    """Check the table name before SQLAlchemy registers the class and its table."""
    own = cls.__dict__
    table = own.get("__table__")
    if isinstance(table, Table):
        _raise_problems(cls, _table_problems(table))
        return
    explicit = own.get("__tablename__")
    if isinstance(explicit, str):
        problem = table_name_problem(explicit)
        if problem is not None:
            _raise_problems(
                cls,
                [
                    _with_suggestion(
                        f"__tablename__ {explicit!r} {problem}", table_name_suggestion(explicit)
                    )
                ],
            )
        return
    if explicit is None and not has_inherited_table(cls):
        derived = table_name_for(cls.__name__)
        problem = table_name_problem(derived)
        if problem is not None:
            _raise_problems(
                cls,
                [
                    f"the table name {derived!r} derived from the class name {problem}; "
                    "set __tablename__ to a snake_case plural name"
                ],
            )


def _table_problems(table: Table) -> list[str]:
    """Every naming problem of a table: its name, then columns, then constraints and indexes."""
    problems: list[str] = []
    problem = table_name_problem(table.name)
    if problem is not None:
        problems.append(
            _with_suggestion(f"table {table.name!r} {problem}", table_name_suggestion(table.name))
        )
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


def _with_suggestion(text: str, suggestion: str | None) -> str:
    if suggestion is None:
        return f"{text}; rename it"
    return f"{text}; use {suggestion!r}"


def _raise_problems(cls: type[Any], problems: list[str]) -> None:
    if not problems:
        return
    if len(problems) == 1:
        raise NamingError(f"Model class {cls.__name__}: {problems[0]}.")
    raise NamingError(
        [f"{problem}." for problem in problems],
        heading=f"Model class {cls.__name__} breaks {len(problems)} naming rules:",
    )


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
