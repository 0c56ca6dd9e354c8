"""What the server says about roles and privileges: one read of the catalog per plan.

Everything :mod:`sigma_db.roles` plans from is read here, in a few queries, into plain data. An
ACL entry is a :data:`Grant`: ``(grantee, privilege)`` with ``None`` for ``PUBLIC`` (so no role
name can be mistaken for it). Entries of an object's owner are kept: the planner decides what
an owner's entries mean (they move with ``ALTER … OWNER``).

Objects that belong to an extension (``pg_depend.deptype = 'e'``) are left out: they are the
extension's, and ``ALTER EXTENSION`` manages them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import psycopg

__all__ = ["FORBIDDEN_ATTRIBUTES", "Catalog", "Grant", "Relation", "RoleRow", "Routine", "read"]

Grant = tuple[str | None, str]
"""One ACL entry: (grantee role name, or None for PUBLIC; privilege keyword)."""

FORBIDDEN_ATTRIBUTES = {
    "rolsuper": "SUPERUSER",
    "rolcreaterole": "CREATEROLE",
    "rolcreatedb": "CREATEDB",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}
"""Role attributes no sigma_db role may have (each one is a way around the grants)."""


@dataclass
class RoleRow:
    """A role that exists: can it log in, and which forbidden attributes it has."""

    name: str
    login: bool
    forbidden: tuple[str, ...]
    inherit: bool = True
    """False for NOINHERIT: it has its groups' privileges only after SET ROLE (CONNECT never)."""


@dataclass
class Relation:
    """A table, partition, view, materialized view, foreign table or sequence in a schema."""

    schema: str
    name: str
    kind: str
    """``pg_class.relkind``: r, p, v, m, f or S."""
    owner: str
    acl: set[Grant]
    follows_table: bool
    """A sequence owned by a column (identity, serial): its owner moves with its table's."""
    column_acl: dict[str, set[Grant]] = field(default_factory=dict)
    """Column-level grants (``GRANT UPDATE (col) ...``), which the table's ACL does not show."""
    column_grantors: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    """Per column, roles other than the owner that made column grants (grantor → privileges):
    made from a grant option, which revoking the option on the table does not reach."""
    grant_options: set[str | None] = field(default_factory=set)
    """Roles holding a privilege WITH GRANT OPTION, which lets them hand it on (to PUBLIC, to
    another product's roles) in grants only they, not the owner, can revoke."""


@dataclass
class Routine:
    """A function or procedure, with its argument types for naming it in SQL."""

    schema: str
    name: str
    owner: str
    arguments: tuple[tuple[str, str], ...]
    """Identity argument types as (type schema, type name)."""
    acl: set[Grant]
    grant_options: set[str | None] = field(default_factory=set)
    """Roles holding EXECUTE WITH GRANT OPTION (see :attr:`Relation.grant_options`)."""


@dataclass
class Catalog:
    """The snapshot a plan is computed from."""

    admin: str
    admin_super: bool
    database: str
    roles: dict[str, RoleRow]
    member_of: dict[str, set[str]]
    database_acl: set[Grant]
    database_grant_options: set[str]
    """Roles other than the database's owner holding a privilege on it WITH GRANT OPTION."""
    schema_owner: dict[str, str]
    schema_acl: dict[str, set[Grant]]
    """Entries other than the schema owner's."""
    schema_grant_options: dict[str, set[str | None]]
    """Per schema, roles other than its owner holding a privilege WITH GRANT OPTION."""
    public_schema_acl: set[Grant] | None
    default_acl: dict[tuple[str, str | None, str], set[Grant]]
    """(owning role, schema or None for database-wide, object type) → entries; a key exists
    exactly when a ``pg_default_acl`` row does (database-wide rows replace the built-in default)."""
    default_grant_options: dict[tuple[str, str | None, str], set[Grant]]
    """The entries of :attr:`default_acl` given WITH GRANT OPTION."""
    relations: list[Relation]
    routines: list[Routine]
    settings: dict[str, dict[str, str]]
    """Per role, its settings in this database (``ALTER ROLE … IN DATABASE … SET``)."""
    discovered: tuple[str, ...] = ()
    """LOGIN roles (not the admin, not a group) that are members of one of the groups planned
    for: the logins of those products (see ``_logins_of``)."""
    members: dict[str, set[str]] = field(default_factory=dict)
    """Per login read for the plan, the roles that are members of it (it should have none)."""
    nologin_members: set[tuple[str, str]] = field(default_factory=set)
    """(member, group): NOLOGIN roles, none of the planned groups, that are members of one."""
    database_holders: dict[str, RoleRow] = field(default_factory=dict)
    """The roles holding a privilege on the database (:attr:`database_acl`), as rows."""
    admin_options: set[tuple[str, str]] = field(default_factory=set)
    """(member, group): the roles read for the plan that hold a membership WITH ADMIN OPTION."""


_NOT_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = {cls}::regclass "
    "AND e.objid = {oid} AND e.deptype = 'e')"
)


def read(
    conn: psycopg.Connection[Any],
    *,
    roles: Sequence[str],
    schemas: Sequence[str],
    migrators: Sequence[str],
    groups: Sequence[str] = (),
) -> Catalog:
    """Read everything a plan for ``roles`` (groups and logins) in ``schemas`` needs.

    The logins of ``groups`` (see :attr:`Catalog.discovered`) are read as if named in
    ``roles``.
    """
    schema_list = sorted(set(schemas))
    admin, admin_super, database = one(
        conn,
        "SELECT current_user, r.rolsuper, current_database() FROM pg_roles r "
        "WHERE r.rolname = current_user",
    )
    discovered = _logins_of(conn, sorted(set(groups)))
    names = sorted({*roles, *discovered})
    database_acl = _database_acl(conn)
    holders = sorted({grantee for grantee, _ in database_acl["database_acl"] if grantee})
    return Catalog(
        admin=admin,
        admin_super=admin_super,
        database=database,
        roles=_roles(conn, names),
        member_of=_memberships(conn, [*names, *holders, admin]),
        **database_acl,
        database_holders=_roles(conn, holders),
        **_schemas(conn, schema_list),
        **_default_acl(conn, sorted(set(migrators)), schema_list),
        relations=_relations(conn, schema_list),
        routines=_routines(conn, schema_list),
        settings=_settings(conn, names),
        discovered=tuple(discovered),
        admin_options=_admin_options(conn, names),
        nologin_members=_nologin_members(conn, sorted(set(groups))),
        members=_members(conn, names),
    )


def one(conn: psycopg.Connection[Any], query: str) -> tuple[Any, ...]:
    """The single row ``query`` returns."""
    row = conn.execute(query).fetchone()
    assert row is not None
    return tuple(row)


# The grantee of an aclexplode() entry: NULL for PUBLIC (grantee oid 0).
_GRANTEE = "CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END"


def _roles(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, RoleRow]:
    columns = ", ".join(FORBIDDEN_ATTRIBUTES)  # fixed column names, never input
    rows = conn.execute(
        f"SELECT rolname, rolcanlogin, rolinherit, {columns} FROM pg_roles "  # noqa: S608
        "WHERE rolname = ANY(%s)",
        [names],
    )
    return {
        row[0]: RoleRow(
            row[0],
            row[1],
            tuple(
                keyword
                for keyword, flag in zip(FORBIDDEN_ATTRIBUTES.values(), row[3:], strict=True)
                if flag
            ),
            inherit=row[2],
        )
        for row in rows
    }


def _logins_of(conn: psycopg.Connection[Any], groups: list[str]) -> list[str]:
    """LOGIN roles that are members of one of ``groups``: an administrator granted that.

    Not the roles that administer the groups: a superuser, the database's owner (a CREATEROLE
    owner makes itself a member of the migrator), a CREATEROLE role holding a group WITH ADMIN
    OPTION (Vault's connection user on PostgreSQL 16). A ``role`` setting does not make a
    login one of them: the login can write its own.
    """
    if not groups:
        return []
    rows = conn.execute(
        "SELECT r.rolname FROM pg_roles r WHERE r.rolcanlogin AND NOT r.rolsuper "
        "AND r.rolname <> ALL(%(groups)s) AND r.rolname NOT IN (current_user, session_user) "
        "AND r.oid <> (SELECT datdba FROM pg_database WHERE datname = current_database()) "
        "AND EXISTS (SELECT 1 FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
        "    WHERE a.member = r.oid AND g.rolname = ANY(%(groups)s)) "
        "AND NOT (r.rolcreaterole AND EXISTS (SELECT 1 FROM pg_auth_members a "
        "    JOIN pg_roles g ON g.oid = a.roleid "
        "    WHERE a.member = r.oid AND a.admin_option AND g.rolname = ANY(%(groups)s))) "
        "ORDER BY 1",
        {"groups": groups},
    )
    return [row[0] for row in rows]


def _admin_options(conn: psycopg.Connection[Any], members: list[str]) -> set[tuple[str, str]]:
    """(member, group) for each membership of ``members`` held WITH ADMIN OPTION."""
    rows = conn.execute(
        "SELECT m.rolname, g.rolname FROM pg_auth_members a "
        "JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
        "WHERE m.rolname = ANY(%s) AND a.admin_option",
        [members],
    )
    return {(row[0], row[1]) for row in rows}


def _members(conn: psycopg.Connection[Any], roles: list[str]) -> dict[str, set[str]]:
    """Per role of ``roles``, the roles that are members of it."""
    members: dict[str, set[str]] = defaultdict(set)
    for role, member in conn.execute(
        "SELECT g.rolname, m.rolname FROM pg_auth_members a "
        "JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
        "WHERE g.rolname = ANY(%s)",
        [roles],
    ):
        members[role].add(member)
    return members


def _nologin_members(conn: psycopg.Connection[Any], groups: list[str]) -> set[tuple[str, str]]:
    """(member, group): NOLOGIN roles other than ``groups`` that are members of one of them.

    A team role holding the migrator group hands its privileges to every login in the team,
    which discovery (direct members only) would never see.
    """
    if not groups:
        return set()
    rows = conn.execute(
        "SELECT m.rolname, g.rolname FROM pg_auth_members a "
        "JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member "
        "WHERE g.rolname = ANY(%(groups)s) AND NOT m.rolcanlogin "
        "AND m.rolname <> ALL(%(groups)s)",
        {"groups": groups},
    )
    return {(row[0], row[1]) for row in rows}


def _memberships(conn: psycopg.Connection[Any], members: list[str]) -> dict[str, set[str]]:
    member_of: dict[str, set[str]] = defaultdict(set)
    for member, group in conn.execute(
        "SELECT m.rolname, g.rolname FROM pg_auth_members a "
        "JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.roleid "
        "WHERE m.rolname = ANY(%s)",
        [members],
    ):
        member_of[member].add(group)
    return member_of


def _database_acl(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    acl: set[Grant] = set()
    grant_options: set[str] = set()
    for grantee, privilege, grantable in conn.execute(
        f"SELECT {_GRANTEE}, a.privilege_type, a.is_grantable FROM pg_database d "  # noqa: S608
        "CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
        "WHERE d.datname = current_database() AND a.grantee <> d.datdba"
    ):
        acl.add((grantee, privilege))
        if grantable and grantee is not None:
            grant_options.add(grantee)
    return {"database_acl": acl, "database_grant_options": grant_options}


def _schemas(conn: psycopg.Connection[Any], schemas: list[str]) -> dict[str, Any]:
    schema_owner: dict[str, str] = {}
    schema_acl: dict[str, set[Grant]] = defaultdict(set)
    grant_options: dict[str, set[str | None]] = defaultdict(set)
    public_schema_acl: set[Grant] | None = None
    for schema, owner, grantee, privilege, grantable in conn.execute(
        f"SELECT n.nspname, pg_get_userbyid(n.nspowner), {_GRANTEE}, a.privilege_type, "  # noqa: S608
        "a.is_grantable "
        "FROM pg_namespace n "
        "CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a "
        "WHERE n.nspname = ANY(%s) OR n.nspname = 'public'",
        [schemas],
    ):
        if schema == "public":
            public_schema_acl = public_schema_acl or set()
            if grantee is None:
                public_schema_acl.add((grantee, privilege))
        if schema in schemas:
            schema_owner[schema] = owner
            if grantee != owner:
                schema_acl[schema].add((grantee, privilege))
                if grantable:
                    grant_options[schema].add(grantee)
    return {
        "schema_owner": schema_owner,
        "schema_acl": schema_acl,
        "schema_grant_options": grant_options,
        "public_schema_acl": public_schema_acl,
    }


def _default_acl(
    conn: psycopg.Connection[Any], migrators: list[str], schemas: list[str]
) -> dict[str, Any]:
    """Per-schema rows of any role in ``schemas``, and the migrators' database-wide rows."""
    default_acl: dict[tuple[str, str | None, str], set[Grant]] = {}
    grant_options: dict[tuple[str, str | None, str], set[Grant]] = defaultdict(set)
    for owner, schema, objtype, grantee, privilege, grantable in conn.execute(
        f"SELECT r.rolname, n.nspname, d.defaclobjtype::text, {_GRANTEE}, "  # noqa: S608
        "a.privilege_type, a.is_grantable FROM pg_default_acl d "
        "JOIN pg_roles r ON r.oid = d.defaclrole "
        "LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace "
        "CROSS JOIN LATERAL aclexplode(d.defaclacl) a "
        "WHERE n.nspname = ANY(%s) OR (d.defaclnamespace = 0 AND r.rolname = ANY(%s))",
        [schemas, migrators],
    ):
        default_acl.setdefault((owner, schema, objtype), set()).add((grantee, privilege))
        if grantable:
            grant_options[(owner, schema, objtype)].add((grantee, privilege))
    return {"default_acl": default_acl, "default_grant_options": grant_options}


def _relations(conn: psycopg.Connection[Any], schemas: list[str]) -> list[Relation]:
    relations: dict[tuple[str, str], Relation] = {}
    not_extension = _NOT_EXTENSION.format(cls="'pg_class'", oid="c.oid")
    for schema, name, kind, owner, follows, grantee, privilege, grantable in conn.execute(
        "SELECT n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner), "  # noqa: S608
        "  c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend t "
        "    WHERE t.classid = 'pg_class'::regclass "
        "    AND t.objid = c.oid AND t.refclassid = 'pg_class'::regclass "
        "    AND t.deptype IN ('a', 'i')), "
        f"  {_GRANTEE}, a.privilege_type, a.is_grantable "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault("
        "  CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))) a "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') "
        f"AND {not_extension} ORDER BY 1, 2",
        [schemas],
    ):
        entry = relations.setdefault(
            (schema, name), Relation(schema, name, kind, owner, set(), follows)
        )
        entry.acl.add((grantee, privilege))
        if grantable and grantee != owner:
            entry.grant_options.add(grantee)
    for schema, name, column, grantee, privilege, grantor in conn.execute(
        f"SELECT n.nspname, c.relname, att.attname, {_GRANTEE}, a.privilege_type, "  # noqa: S608
        "pg_get_userbyid(a.grantor) "
        "FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL aclexplode(att.attacl) a "
        "WHERE n.nspname = ANY(%s) AND att.attacl IS NOT NULL AND att.attnum > 0 "
        "AND NOT att.attisdropped ORDER BY 1, 2, 3",
        [schemas],
    ):
        if (schema, name) in relations:
            relation = relations[(schema, name)]
            relation.column_acl.setdefault(column, set()).add((grantee, privilege))
            if grantor != relation.owner:
                grantors = relation.column_grantors.setdefault(column, {})
                grantors.setdefault(grantor, set()).add(privilege)
    return list(relations.values())


def _routines(conn: psycopg.Connection[Any], schemas: list[str]) -> list[Routine]:
    routines: dict[int, Routine] = {}
    not_extension = _NOT_EXTENSION.format(cls="'pg_proc'", oid="p.oid")
    for row in conn.execute(
        "SELECT p.oid, n.nspname, p.proname, pg_get_userbyid(p.proowner), "  # noqa: S608
        "  ARRAY(SELECT tn.nspname FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS x(t, i) "
        "    JOIN pg_type ty ON ty.oid = x.t JOIN pg_namespace tn ON tn.oid = ty.typnamespace "
        "    ORDER BY x.i), "
        "  ARRAY(SELECT ty.typname FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS x(t, i) "
        "    JOIN pg_type ty ON ty.oid = x.t ORDER BY x.i), "
        f"  {_GRANTEE}, a.privilege_type, a.is_grantable "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "CROSS JOIN LATERAL aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
        "WHERE n.nspname = ANY(%s) AND p.prokind IN ('f', 'p', 'w') "
        f"AND {not_extension} ORDER BY 2, 3, 1",
        [schemas],
    ):
        oid, schema, name, owner, type_schemas, type_names, grantee, privilege, grantable = row
        entry = routines.setdefault(
            oid,
            Routine(schema, name, owner, tuple(zip(type_schemas, type_names, strict=True)), set()),
        )
        entry.acl.add((grantee, privilege))
        if grantable and grantee != owner:
            entry.grant_options.add(grantee)
    return list(routines.values())


def _settings(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, dict[str, str]]:
    """Each role's settings in this database (``ALTER ROLE … IN DATABASE … SET``)."""
    settings: dict[str, dict[str, str]] = defaultdict(dict)
    for role, config in conn.execute(
        "SELECT r.rolname, s.setconfig FROM pg_db_role_setting s "
        "JOIN pg_roles r ON r.oid = s.setrole JOIN pg_database d ON d.oid = s.setdatabase "
        "WHERE d.datname = current_database() AND r.rolname = ANY(%s)",
        [names],
    ):
        for item in config or ():
            key, _, value = item.partition("=")
            settings[role][key] = value
    return settings
