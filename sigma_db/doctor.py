"""``sigma-db doctor``: what the settings resolve to, what the server says, and what to fix.

Includes what the connected role may really do against what its name promises (``…_ro`` must
not write, ``…_rw`` must not run DDL or TRUNCATE, ``…_migrator`` must be able to, none may reach
outside the product's schemas, and each must have what its name needs), because a grant that
drifted is invisible until the day it matters.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import text

from sigma_db.engine import create_engine
from sigma_db.errors import SigmaDBError
from sigma_db.roles import (
    BOOKKEEPING_RELATIONS,
    SEQUENCE_PRIVILEGES,
    ProductRoles,
    RoleKind,
    group_role,
)
from sigma_db.settings import DatabaseSettings
from sigma_db.topology import DEFAULT_SCHEMA, PRODUCTS, Topology

__all__ = ["Diagnosis", "PrivilegeReport", "diagnose", "privilege_report"]

MIN_SERVER_MAJOR = 14


@dataclass
class Diagnosis:
    """Facts to show (label → value) and problems, each a sentence ending in its fix."""

    facts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """No problem was found."""
        return not self.problems


def unknown_variables(settings: DatabaseSettings, environ: Mapping[str, str]) -> list[str]:
    """One problem per ``DB_*`` variable that is set but no setting reads (usually a typo)."""
    known = set(settings.masked())
    problems = []
    for name in sorted(n for n in environ if n.startswith("DB_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}? " if close else ""
        problems.append(f"{name} is set but is not a sigma_db setting; {hint}rename or unset it.")
    return problems


def diagnose(settings: DatabaseSettings) -> Diagnosis:
    """Connect once and compare what the server reports with what the settings promise."""
    topology = settings.topology
    result = Diagnosis()
    result.problems.extend(unknown_variables(settings, os.environ))
    result.facts.update(settings.masked())
    result.facts["DB_POOL_PRE_PING"] = str(settings.pool_pre_ping).lower()
    result.facts["product"] = f"{topology.product.key} ({topology.product.title})"
    result.facts["layout"] = (
        "consolidated dev database" if topology.consolidated else "per-product database"
    )
    result.facts["expected search_path"] = ", ".join(topology.search_path)
    pre_ping = "on" if settings.pool_pre_ping else "off"
    result.facts["pool"] = (
        f"size {settings.conn_max}, no overflow, pre-ping {pre_ping}, "
        f"recycle {settings.pool_recycle}s, pooler {settings.pooler}"
    )
    engine = create_engine(settings, pool_size=1)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT current_setting('server_version_num')::int, version(), "
                    "current_database(), current_user, current_schema(), "
                    "array_to_string(current_schemas(false), ', '), "
                    "current_setting('search_path')"
                )
            ).one()
            driver = conn.connection.driver_connection
            assert isinstance(driver, psycopg.Connection)
            missing = [
                name
                for name in topology.owned_schemas[:1]
                if conn.execute(
                    text("SELECT to_regnamespace(:name) IS NULL"), {"name": name}
                ).scalar_one()
            ]
            # Without its schema, the role's privileges in the product's schemas cannot be
            # judged: whatever it may use would read as "outside the product's schemas".
            report = None if missing else privilege_report(driver, topology)
    except SigmaDBError as exc:
        result.problems.append(str(exc))
        return result
    finally:
        engine.dispose()
    version_num, version, database, user, schema, effective, search_path = row
    result.facts["server"] = version.split(" on ")[0]
    result.facts["connected as"] = f"{user} to {database}"
    result.facts["search_path"] = f"{search_path} (effective: {effective or 'nothing'})"
    if report is None:
        result.facts["role promises"] = "not checked (the product's schema is missing)"
    else:
        result.facts["role promises"] = (
            f"{report.kind} ({report.role})" if report.kind else "nothing (not a sigma_db role)"
        )
        result.problems.extend(report.problems)
    if version_num // 10000 < MIN_SERVER_MAJOR:
        result.problems.append(
            f"Server version {version_num // 10000} is older than {MIN_SERVER_MAJOR}; "
            "upgrade the server (sigma_db relies on PostgreSQL 14+ features)."
        )
    unset = topology.product.key if topology.consolidated else DEFAULT_SCHEMA
    if missing and settings.schema_name is not None:
        result.problems.append(
            f"Schema {missing[0]} (DB_SCHEMA) does not exist in {database}; if DB_SCHEMA is "
            f"mistyped, fix it (unset, it is {unset}); else run the "
            "product's migrations (sigma-db migrate creates it) or sigma-db roles apply."
        )
    elif missing:
        result.problems.append(
            f"Schema {missing[0]} does not exist in {database}; run the product's migrations "
            "(sigma-db migrate creates it) or sigma-db roles apply."
        )
    elif schema != topology.schema:
        result.problems.append(
            f"Unqualified names resolve to schema {schema!r}, not {topology.schema!r}; with "
            "DB_POOLER=transaction set the login's search_path "
            "(sigma-db roles apply --login NAME:KIND)."
        )
    if settings.env != "dev" and settings.sslmode in (None, "disable", "allow", "prefer"):
        result.problems.append(
            f"DB_SSLMODE={settings.sslmode or 'unset'} in DB_ENV={settings.env} does not require "
            "TLS; set DB_SSLMODE=verify-full (or at least require)."
        )
    return result


# --------------------------------------------------------------------------------------------
# What the connected role may actually do, against what its name promises


@dataclass(frozen=True)
class PrivilegeReport:
    """The connected role's kind (as its name promises) and where its privileges disagree."""

    role: str
    kind: RoleKind | None
    problems: tuple[str, ...]


_FIX = "run sigma-db roles apply as an admin to repair the grants"
_ROW_WRITES = ("INSERT", "UPDATE", "DELETE")
_NEVER_FOR_RW = ("TRUNCATE", "REFERENCES", "TRIGGER")  # not row writes: DDL-like, or locks
_EXPECTED: Mapping[RoleKind, tuple[str, ...]] = {
    RoleKind.RW: ("SELECT", *_ROW_WRITES),
    RoleKind.RO: ("SELECT",),
}
_SHOWN = 5  # objects named per problem


def privilege_report(conn: psycopg.Connection[Any], topology: Topology) -> PrivilegeReport:
    """Compare what the connected role can do with what its name promises.

    The promise comes from the name: ``current_user`` (a login attached by sigma_db acts as
    its group) or, failing that, the product group role it is a member of. Checked: role
    attributes; the product's schemas (usage, DDL, ownership); every table in them (extra
    privileges, and missing ones); and any schema outside the product's and ``public``.
    """
    target = ProductRoles(topology)
    row = conn.execute(
        "SELECT current_user, session_user, r.rolsuper, r.rolcreaterole, "
        "has_database_privilege(current_database(), 'CREATE') "
        "FROM pg_roles r WHERE r.rolname = current_user"
    ).fetchone()
    assert row is not None
    user: str = row[0]
    session_user: str = row[1]
    superuser, createrole, can_create_db = row[2:]
    kind = _promised_kind(conn, target, user, session_user)
    if kind is None:
        return PrivilegeReport(user, None, ())
    group = target.roles[kind]
    # A privilege may be the login's own (or come from a role only it is a member of): name
    # both, so the reader looks at the login too, not only at the group it acts as.
    who = user if session_user == user else f"{user} (logged in as {session_user})"
    problems: list[str] = []
    if superuser or createrole:
        what = "SUPERUSER" if superuser else "CREATEROLE"
        problems.append(
            f"{who} is {what}, far more than {group} promises; connect with a login that is "
            f"only a member of {group} (sigma-db roles apply --login NAME:{kind})."
        )
        if superuser:  # may do anything anywhere: the checks below would only repeat it
            return PrivilegeReport(user, kind, tuple(problems))
    schemas = list(target.schemas)
    problems.extend(_own_schemas(conn, topology, kind, who, group, schemas))
    if kind is not RoleKind.MIGRATOR and can_create_db:
        problems.append(f"{who} may CREATE schemas in this database; {_FIX}.")
    if kind is not RoleKind.MIGRATOR:
        problems.extend(_own_tables(conn, kind, who, group, schemas, topology.schema))
        problems.extend(_own_sequences(conn, kind, who, group, schemas, topology.schema))
    problems.extend(_foreign(conn, topology, who, group, schemas))
    return PrivilegeReport(user, kind, tuple(problems))


def _own_schemas(
    conn: psycopg.Connection[Any],
    topology: Topology,
    kind: RoleKind,
    user: str,
    group: str,
    schemas: list[str],
) -> list[str]:
    problems = []
    for schema, usage, create, owns in conn.execute(
        "SELECT n.nspname, has_schema_privilege(n.oid, 'USAGE'), "
        "has_schema_privilege(n.oid, 'CREATE'), pg_has_role(n.nspowner, 'USAGE') "
        "FROM pg_namespace n WHERE n.nspname = ANY(%s) ORDER BY 1",
        [schemas],
    ):
        if not usage:
            problems.append(f"{user} cannot use schema {schema}; {_FIX}.")
        if kind is RoleKind.MIGRATOR:
            if schema == topology.schema and not create:
                problems.append(f"{user} cannot create objects in {schema} (no DDL); {_FIX}.")
        elif create or owns:
            how = "owns" if owns else "may CREATE in"
            problems.append(f"{user} {how} schema {schema}, but {group} must not run DDL; {_FIX}.")
    return problems


def _own_tables(
    conn: psycopg.Connection[Any],
    kind: RoleKind,
    user: str,
    group: str,
    schemas: list[str],
    default_schema: str,
) -> list[str]:
    checked = (*_EXPECTED[RoleKind.RW], *_NEVER_FOR_RW)
    # What the role has on the whole table (for what it lacks), and what it may do at all (for
    # what it must not): on any column too, and as the login itself, which RESET ROLE restores.
    whole = [f"has_table_privilege(c.oid, '{p}')" for p in checked]  # fixed words
    anyhow = [
        f"({check}(c.oid, '{p}') OR {check}(session_user, c.oid, '{p}'))"
        for p in checked
        for check in [
            "has_any_column_privilege"
            if p in ("SELECT", "INSERT", "UPDATE", "REFERENCES")
            else "has_table_privilege"
        ]
    ]
    columns = ", ".join([*whole, *anyhow])
    extra: dict[tuple[str, ...], list[str]] = defaultdict(list)
    missing: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for row in conn.execute(
        f"SELECT format('%%I.%%I', n.nspname, c.relname), c.relkind IN ('r', 'p'), {columns}, "  # noqa: S608
        "pg_has_role(c.relowner, 'USAGE'), n.nspname = %s AND c.relname = ANY(%s) "
        "FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
        [default_schema, sorted(BOOKKEEPING_RELATIONS), schemas],
    ):
        name, table, owns, record = row[0], row[1], row[-2], row[-1]
        has = dict(zip(checked, row[2 : 2 + len(checked)], strict=True))
        may = dict(zip(checked, row[2 + len(checked) : -2], strict=True))
        if owns:
            extra[("OWNER",)].append(name)
            continue
        # The migrations' record (alembic_version, the ledger) is the migrator's to write.
        allowed = _EXPECTED[RoleKind.RO] if record else _EXPECTED[kind]
        over = tuple(p for p in checked if may[p] and p not in allowed)
        if over:
            extra[over].append(name)
        expected = allowed if table else ("SELECT",)
        under = tuple(p for p in expected if not has[p])
        if under:
            missing[under].append(name)
    problems = []
    for privileges, names in extra.items():
        shown = _shown(names)
        if privileges == ("OWNER",):
            problems.append(f"{user} owns {shown}, so it may ALTER or DROP them; {_FIX}.")
        elif kind is RoleKind.RO and set(privileges) & {*_ROW_WRITES, "TRUNCATE"}:
            problems.append(f"{user} promises read-only but may write to {shown}; {_FIX}.")
        else:
            problems.append(
                f"{user} may {' or '.join(privileges)} on {shown}, which {group} must not; {_FIX}."
            )
    for privileges, names in missing.items():
        shown = _shown(names)
        problems.append(
            f"{user} lacks {', '.join(privileges)} on {shown}, which {group} needs; {_FIX}."
        )
    if kind is RoleKind.RO:
        temporary = conn.execute(
            "SELECT has_database_privilege(current_database(), 'TEMPORARY') "
            "OR has_database_privilege(session_user, current_database(), 'TEMPORARY')"
        ).fetchone()
        if temporary == (True,):
            problems.append(f"{user} promises read-only but may create temporary tables; {_FIX}.")
    return problems


def _own_sequences(
    conn: psycopg.Connection[Any],
    kind: RoleKind,
    user: str,
    group: str,
    schemas: list[str],
    default_schema: str,
) -> list[str]:
    """Sequences as :func:`_own_tables` checks tables: USAGE is ``nextval``, UPDATE ``setval``.

    The ledger's sequence is the migrator's to advance: a ``_rw`` that could ``setval`` it
    would make every later migration fail on a duplicate key.
    """
    checked = ("SELECT", "USAGE", "UPDATE")
    whole = [f"has_sequence_privilege(c.oid, '{p}')" for p in checked]  # fixed words
    anyhow = [
        f"(has_sequence_privilege(c.oid, '{p}') "
        f"OR has_sequence_privilege(session_user, c.oid, '{p}'))"
        for p in checked
    ]
    extra: dict[tuple[str, ...], list[str]] = defaultdict(list)
    missing: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for row in conn.execute(
        f"SELECT format('%%I.%%I', n.nspname, c.relname), {', '.join([*whole, *anyhow])}, "  # noqa: S608
        "pg_has_role(c.relowner, 'USAGE'), n.nspname = %s AND c.relname = ANY(%s) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind = 'S' ORDER BY 1",
        [default_schema, sorted(BOOKKEEPING_RELATIONS), schemas],
    ):
        name, owns, record = row[0], row[-2], row[-1]
        has = dict(zip(checked, row[1 : 1 + len(checked)], strict=True))
        may = dict(zip(checked, row[1 + len(checked) : -2], strict=True))
        if owns:
            extra[("OWNER",)].append(name)
            continue
        allowed = SEQUENCE_PRIVILEGES[RoleKind.RO if record else kind]
        over = tuple(p for p in checked if may[p] and p not in allowed)
        if over:
            extra[over].append(name)
        under = tuple(p for p in checked if p in allowed and not has[p])
        if under:
            missing[under].append(name)
    words = {"USAGE": "nextval", "UPDATE": "setval"}
    problems = []
    for privileges, names in extra.items():
        shown = _shown(names)
        if privileges == ("OWNER",):
            problems.append(f"{user} owns sequence {shown}, so it may ALTER or DROP it; {_FIX}.")
        else:
            calls = " or ".join(words.get(p, p) for p in privileges)
            problems.append(f"{user} may call {calls} on {shown}, which {group} must not; {_FIX}.")
    for privileges, names in missing.items():
        problems.append(
            f"{user} lacks {', '.join(privileges)} on sequence {_shown(names)}, which {group} "
            f"needs; {_FIX}."
        )
    return problems


def _shown(names: list[str]) -> str:
    return ", ".join(names[:_SHOWN]) + (" …" if len(names) > _SHOWN else "")


def _foreign(
    conn: psycopg.Connection[Any], topology: Topology, user: str, group: str, schemas: list[str]
) -> list[str]:
    """Any reach outside the product's schemas (and ``public``): another product's, or any."""
    outside = f"outside {topology.product.title}'s schemas (another product's or someone else's)"
    problems = []
    system = (
        "n.nspname <> ALL(%(own)s) AND n.nspname <> 'public' "
        "AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"
    )
    for schema, owner, owned, usage, create in conn.execute(
        "SELECT n.nspname, pg_get_userbyid(n.nspowner), pg_has_role(n.nspowner, 'USAGE'), "  # noqa: S608
        "has_schema_privilege(n.oid, 'USAGE'), has_schema_privilege(n.oid, 'CREATE') "
        f"FROM pg_namespace n WHERE {system} ORDER BY 1",
        {"own": schemas},
    ):
        if usage or create:
            what = "use and CREATE in" if usage and create else "use" if usage else "CREATE in"
            fix = _foreign_fix(schema, owner, owned, group)
            problems.append(f"{user} may {what} schema {schema}, {outside}; {fix}.")
    reachable: dict[str, list[str]] = defaultdict(list)
    for name, schema, owner, owned in conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname), n.nspname, "  # noqa: S608
        "pg_get_userbyid(n.nspowner), pg_has_role(n.nspowner, 'USAGE') FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {system} "
        "AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND has_table_privilege(c.oid, "
        "'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') ORDER BY 1",
        {"own": schemas},
    ):
        reachable[_foreign_fix(schema, owner, owned, group)].append(name)
    for fix, names in reachable.items():
        problems.append(f"{user} has privileges on {_shown(names)}, {outside}; {fix}.")
    return problems


def _foreign_fix(schema: str, owner: str, owned: bool, group: str) -> str:
    """What repairs a reach into ``schema``: the owning product's roles apply, or an admin.

    ``roles apply`` makes the grants in a product's own schemas exact, so a reach into another
    product's schema is repaired by that product's apply; any other schema is nobody's to fix
    but an admin's.
    """
    product = _product_of_owner(owner)
    if product is not None and not owned:
        return f"run sigma-db roles apply --product {product} as an admin to repair the grants"
    if owned:
        return (
            f"{group} owns it, which sigma-db roles apply does not manage: an admin must give it "
            f'to its real owner (ALTER SCHEMA "{schema}" OWNER TO ...) or drop it'
        )
    return (
        f"sigma-db roles apply manages only the products' own schemas: an admin must revoke "
        f'it there (REVOKE ALL ON SCHEMA "{schema}" FROM {group}, and on its tables)'
    )


def _product_of_owner(owner: str) -> str | None:
    """The product whose migrator role ``owner`` is, if it is one (``edge_sim_migrator``)."""
    for key, product in PRODUCTS.items():
        if owner == group_role(product, RoleKind.MIGRATOR):
            return key
    match = re.fullmatch(r"edge_([a-z][a-z0-9_]*)_migrator", owner)
    return match.group(1) if match else None


def _promised_kind(
    conn: psycopg.Connection[Any], target: ProductRoles, user: str, session_user: str
) -> RoleKind | None:
    by_name = {group: kind for kind, group in target.roles.items()}
    for name in (user, session_user):
        if name in by_name:
            return by_name[name]
    # Membership only counts for non-superusers: a superuser "is a member" of every role.
    row = conn.execute(
        "SELECT g.rolname FROM pg_roles g, pg_roles u "
        "WHERE g.rolname = ANY(%s) AND u.rolname = %s AND NOT u.rolsuper "
        "AND pg_has_role(u.oid, g.oid, 'MEMBER') ORDER BY g.rolname DESC LIMIT 1",
        [list(by_name), session_user],
    ).fetchone()
    return by_name[row[0]] if row is not None else None
