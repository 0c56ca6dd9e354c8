"""Naming rules: tables, columns and constraint names, all fitting PostgreSQL's 63 bytes.

Every name sigma_db puts into a database comes from here, so that a name is decided once, in
code that is tested once, instead of in each product's review:

* tables are snake_case plural (``option_signals``), derived from the model class name;
* columns are snake_case (``created_at``);
* constraints and indexes are named by :data:`NAMING_CONVENTION` (``pk_signals``,
  ``fk_signals_pack_id_packs``, ...), and any name over 63 bytes is shortened by the frozen
  :func:`shorten` rule, never by the server (which truncates silently) nor by SQLAlchemy
  (whose truncation algorithm is not promised stable, sqlalchemy #4857).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, Final

import inflection
from sqlalchemy import (
    CheckConstraint,
    Column,
    Constraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Table,
    UniqueConstraint,
)
from sqlalchemy.util import immutabledict

from sigma_db.errors import NamingError
from sigma_db.identifiers import MAX_IDENTIFIER_BYTES, identifier_problem

__all__ = [
    "NAMING_CONVENTION",
    "changed_derivation",
    "check_column_name",
    "check_table_name",
    "column_name_problem",
    "column_name_suggestion",
    "shorten",
    "snake_case",
    "table_name_for",
    "table_name_problem",
    "table_name_suggestion",
]

_SHORT_PREFIX_BYTES: Final = 54
"""Bytes of the original name kept by :func:`shorten`: 54 + ``_`` + 8 hex digits = 63."""

_SHORT_HASH_CHARS: Final = 8
"""Hex digits of the SHA-256 digest appended by :func:`shorten` (32 bits: collisions need ~65k
names sharing one 54-byte prefix)."""


def shorten(name: str) -> str:
    """Return ``name`` if it fits in 63 bytes, else a deterministic shortened form.

    The rule, applied to the UTF-8 bytes of ``name``:

    1. at most 63 bytes: returned unchanged;
    2. otherwise: keep the longest prefix of whole characters whose UTF-8 size is at most
       54 bytes, strip trailing ``_`` from it, then append ``_`` and the first 8 hex digits of
       ``sha256(name.encode("utf-8")).hexdigest()`` (the digest of the *full* name).

    The result is at most 63 bytes, so PostgreSQL never truncates it, and it is a pure
    function of ``name``, so SQLAlchemy, Alembic autogenerate and the live database always
    agree on it. The hash keeps names that share a long prefix apart.

    .. warning:: This rule is FROZEN FOREVER once released. Constraint and index names are
       stored in every product database; changing any detail here (prefix size, hash, digest
       length, separator) would make autogenerate want to rename constraints in every product
       DB. A new rule would need a new function and a migration plan, never an edit.
    """
    encoded = name.encode("utf-8")
    if len(encoded) <= MAX_IDENTIFIER_BYTES:
        return name
    size = 0
    end = 0
    for char in name:
        size += len(char.encode("utf-8"))
        if size > _SHORT_PREFIX_BYTES:
            break
        end += 1
    prefix = name[:end].rstrip("_")
    digest = hashlib.sha256(encoded).hexdigest()[:_SHORT_HASH_CHARS]
    return f"{prefix}_{digest}"


# --- constraint and index names -------------------------------------------------------------


def _column_names(columns: Any) -> list[str]:
    return [str(column.name) for column in columns]


def _primary_key_name(constraint: Constraint, table: Table) -> str:
    """``pk_<table>``: a table has one primary key, so the table alone names it."""
    return shorten(f"pk_{table.name}")


def _referred_table_name(fk: ForeignKey) -> str:
    tokens = getattr(fk, "target_tokens", None)  # SQLAlchemy >= 2.1
    if tokens is not None:
        return str(tokens.table_name)
    return fk.target_fullname.split(".")[-2]  # pragma: no cover - SQLAlchemy 2.0


def _foreign_key_name(constraint: Constraint, table: Table) -> str:
    """``fk_<table>_<col1>_<col2>_<referred_table>``, local columns in declaration order."""
    assert isinstance(constraint, ForeignKeyConstraint)
    columns = [str(element.parent.name) for element in constraint.elements]
    referred = _referred_table_name(constraint.elements[0])
    return shorten("_".join(["fk", table.name, *columns, referred]))


def _unique_name(constraint: Constraint, table: Table) -> str:
    """``uq_<table>_<col1>_<col2>``, columns in declaration order."""
    assert isinstance(constraint, UniqueConstraint)
    return shorten("_".join(["uq", table.name, *_column_names(constraint.columns)]))


def _index_name(index: Index, table: Table) -> str:
    """``ix_<table>_<col1>_<col2>``; an index over an expression must be named explicitly.

    SQLAlchemy would name ``Index(None, func.lower(t.c.email))`` after the columns the
    expression mentions, so it would clash with a plain index on ``email``; asking for a name
    is the only stable answer.
    """
    if not all(isinstance(expression, Column) for expression in index.expressions):
        raise NamingError(
            f"An index on table {table.name!r} is over an expression, so it has no name to "
            "derive; name it explicitly, e.g. "
            f"Index('ix_{table.name}_lower_code', func.lower(Model.code))."
        )
    return shorten("_".join(["ix", table.name, *_column_names(index.expressions)]))


def _check_name(constraint: Constraint, table: Table) -> str:
    """``ck_<table>_<constraint_name>``: a check's meaning is not in its columns; name it."""
    assert isinstance(constraint, CheckConstraint)
    name = constraint.name
    if not isinstance(name, str) or not name:
        raise NamingError(
            f"A check constraint on table {table.name!r} has no name; give it a short one, "
            "e.g. CheckConstraint('amount > 0', name='positive_amount') (it becomes "
            f"'ck_{table.name}_positive_amount'). For Boolean/Enum types with "
            "create_constraint=True pass name=... to the type."
        )
    return shorten(f"ck_{table.name}_{name}")


_NamingDirective = str | Callable[[Constraint, Table], str] | Callable[[Index, Table], str]

NAMING_CONVENTION: Final[Mapping[str, _NamingDirective]] = immutabledict(
    {
        "sigma_pk": _primary_key_name,
        "sigma_fk": _foreign_key_name,
        "sigma_uq": _unique_name,
        "sigma_ix": _index_name,
        # SQLAlchemy feeds an explicit name to a template only when the template text contains
        # "constraint_name", hence the token's name.
        "sigma_ck_constraint_name": _check_name,
        "pk": "%(sigma_pk)s",
        "fk": "%(sigma_fk)s",
        "uq": "%(sigma_uq)s",
        "ix": "%(sigma_ix)s",
        "ck": "%(sigma_ck_constraint_name)s",
    }
)
"""``MetaData(naming_convention=NAMING_CONVENTION)``: the names of every constraint and index.

========  ==========================================  ======================================
kind      name                                        an explicit ``name=``
========  ==========================================  ======================================
pk        ``pk_<table>``                              is kept as given
fk        ``fk_<table>_<col1>_<col2>_<referred>``     is kept as given
uq        ``uq_<table>_<col1>_<col2>``                is kept as given
ix        ``ix_<table>_<col1>_<col2>``                is kept as given (required for
                                                      expression indexes)
ck        ``ck_<table>_<name>``                       is the ``<name>`` part (required)
========  ==========================================  ======================================

Each token is a function that builds the whole name and passes it through :func:`shorten`, so
no generated name ever exceeds 63 bytes and SQLAlchemy's own truncation never runs.
SQLAlchemy wraps the result in :class:`sqlalchemy.sql.elements.conv`, which marks it final:
the convention is not applied again, and Alembic autogenerate renders it as ``op.f('...')``.
The mapping is immutable because every product's metadata shares it.
"""


# --- table and column names -----------------------------------------------------------------

_ACRONYM_THEN_WORD = re.compile(r"([A-Z]+)([A-Z][a-z])")
_LOWER_THEN_UPPER = re.compile(r"([a-z0-9])([A-Z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def snake_case(name: str) -> str:
    """Turn ``CamelCase``, ``camelCase`` or ``kebab-case`` into ``snake_case``.

    An acronym stays one word: ``HTTPRequest`` -> ``http_request``, ``createdAt`` ->
    ``created_at``, ``S3Object`` -> ``s3_object``.
    """
    spaced = _LOWER_THEN_UPPER.sub(r"\1_\2", _ACRONYM_THEN_WORD.sub(r"\1_\2", name))
    return _NOT_WORD.sub("_", spaced.lower()).strip("_")


_PLURALS_INFLECTION_MISSES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # Singular nouns ending in -s: inflection strips the s and takes them for plurals.
        "atlas": "atlases",
        "bias": "biases",
        "bonus": "bonuses",
        "cactus": "cacti",
        "campus": "campuses",
        "canvas": "canvases",
        "census": "censuses",
        "consensus": "consensuses",
        "corpus": "corpora",
        "focus": "focuses",
        "gas": "gases",
        "lens": "lenses",
        "nexus": "nexuses",
        "prospectus": "prospectuses",
        "radius": "radii",
        "stimulus": "stimuli",
        "surplus": "surpluses",
        # Singulars whose plural inflection gets wrong (criterions, octopi, viri).
        "criterion": "criteria",
        "octopus": "octopuses",
        "virus": "viruses",
    }
)
"""Singular -> plural for the nouns whose number the inflection library misjudges.

Consulted before inflection, locally: inflection's own ``irregular``/``uncountable`` hooks
would change its answers for every other user of the library in the process. Deliberately
small; a product whose word is still misjudged lists it in its base's ``__plural_words__``.
"""

_KNOWN_PLURALS: Final = frozenset(_PLURALS_INFLECTION_MISSES.values())


def _is_plural(word: str, plural_words: Collection[str] = ()) -> bool:
    """Whether ``word`` reads as a plural or as uncountable (news, series, sheep).

    ``plural_words`` (a product's ``__plural_words__``) and :data:`_PLURALS_INFLECTION_MISSES`
    decide first; otherwise the inflection library (a port of Rails' inflector, the rules most
    ORMs use) does: a plural has a different singular, an uncountable word is its own plural.
    """
    if word in plural_words or word in _KNOWN_PLURALS:
        return True
    if word in _PLURALS_INFLECTION_MISSES or not word.isalpha():
        return False
    return inflection.singularize(word) != word or inflection.pluralize(word) == word


def _pluralize(word: str) -> str:
    """Plural of ``word``, leaving it alone when it already is one (settings, data, people)."""
    if word in _KNOWN_PLURALS or not word.isalpha():
        return word
    if word in _PLURALS_INFLECTION_MISSES:
        return _PLURALS_INFLECTION_MISSES[word]
    singular = inflection.singularize(word)
    if singular != word and inflection.pluralize(singular) == word:
        return word
    return str(inflection.pluralize(word))


def _pluralize_last_word(snake: str) -> str:
    head, _, last = snake.rpartition("_")
    plural = _pluralize(last)
    return f"{head}_{plural}" if head else plural


def table_name_for(class_name: str, plural_words: Collection[str] = ()) -> str:
    """Derive the table name for a model class: snake_case, last word made plural.

    ``OptionSignal`` -> ``option_signals``, ``Policy`` -> ``policies``, ``HTTPRequest`` ->
    ``http_requests``, ``Series`` -> ``series``, ``Bonus`` -> ``bonuses``. Only the last word is
    pluralised, because the earlier words qualify it (``backtest_runs`` are runs, not
    backtests). A last word in ``plural_words`` (a product's ``__plural_words__``) is kept.
    """
    snake = snake_case(class_name)
    if snake.rpartition("_")[2] in plural_words:
        return snake
    return _pluralize_last_word(snake)


def changed_derivation(class_name: str) -> str | None:
    """The last word of ``class_name`` when its derived table name changed in sigma_db 0.1.

    For the nouns in :data:`_PLURALS_INFLECTION_MISSES` (``Bonus``) the name used to keep the
    singular (``bonus``) and is now plural (``bonuses``): a model deployed under the old name
    must say which one it means, or autogenerate would drop its table and create another.
    """
    last = snake_case(class_name).rpartition("_")[2]
    return last if last in _PLURALS_INFLECTION_MISSES else None


def table_name_problem(name: str, plural_words: Collection[str] = ()) -> str | None:
    """Say what is wrong with ``name`` as a table name, or return None.

    A table name is a conventional identifier (see :func:`sigma_db.identifiers.identifier_problem`)
    whose last ``_``-separated word is plural or uncountable: a word in ``plural_words`` (the
    product's own list) passes; a noun the inflection library misjudges is looked up in a short
    table (``bonus`` is singular, ``radii`` plural); any other word passes when inflection's
    ``singularize(word) != word`` or ``pluralize(word) == word``.
    """
    problem = identifier_problem(name)
    if problem is not None:
        return problem
    last = name.rpartition("_")[2]
    if not _is_plural(last, plural_words):
        return f"must be snake_case plural: its last word {last!r} is not a plural noun"
    return None


def table_name_suggestion(name: str) -> str | None:
    """Suggest a conventional table name close to ``name``, or None when there is none."""
    suggestion = _pluralize_last_word(snake_case(name))
    if suggestion and suggestion[0].isdigit():
        return None
    if suggestion == name or table_name_problem(suggestion) is not None:
        return None
    return suggestion


def column_name_problem(name: str) -> str | None:
    """Say what is wrong with ``name`` as a column name (snake_case, <= 63 bytes), or None."""
    return identifier_problem(name)


def column_name_suggestion(name: str) -> str | None:
    """Suggest a conventional column name close to ``name``, or None when there is none."""
    suggestion = snake_case(name)
    if suggestion == name or column_name_problem(suggestion) is not None:
        return None
    return suggestion


def _problem_message(kind: str, name: str, problem: str, suggestion: str | None) -> str:
    if suggestion is None:
        return f"{kind} {name!r} {problem}; rename it."
    return f"{kind} {name!r} {problem}; use {suggestion!r}."


def check_table_name(name: str) -> str:
    """Return ``name`` if it is a conventional table name, else raise :class:`NamingError`."""
    problem = table_name_problem(name)
    if problem is not None:
        raise NamingError(
            _problem_message("table name", name, problem, table_name_suggestion(name))
        )
    return name


def check_column_name(name: str) -> str:
    """Return ``name`` if it is a conventional column name, else raise :class:`NamingError`."""
    problem = column_name_problem(name)
    if problem is not None:
        raise NamingError(
            _problem_message("column name", name, problem, column_name_suggestion(name))
        )
    return name
