"""Roles and grants: three group roles per product, planned from the topology, applied idempotently.

Every product gets three NOLOGIN *group* roles, named from its database in every layout (so
``edge_lab_rw`` is Sigma Lab's write role both in ``edge_lab`` and in the consolidated dev database
``edge_products``, where it is scoped to schema ``lab`` and ``lab_*``):

``<db>_migrator``
    owns the product's schemas and everything migrations create in them; the only role with DDL.
``<db>_rw``
    reads and writes rows (SELECT, INSERT, UPDATE, DELETE; sequences); no DDL, no TRUNCATE.
``<db>_ro``
    reads (SELECT); nothing else.

People and services log in as separate LOGIN roles that are members of one group (Vault's dynamic
users, a CI user, ``sigma-db dev``'s users). A login attached by sigma_db also gets, in that
database, ``role`` set to its group — so what the migrator's login creates is owned by the
migrator and the default privileges below apply — and the product's ``search_path``, which is
what makes PgBouncer's transaction pooling work without any client-side ``SET``.

The plan is computed, not scripted: the catalog is read first and only what is missing or wrong
is emitted, so a second apply emits nothing, and drift (a missing grant, an extra privilege, a
wrong attribute or owner, a lost setting) is repaired by the next apply. Default privileges are
set ``FOR ROLE`` the migrator, because ``ALTER DEFAULT PRIVILEGES`` without it only covers
objects created by whoever ran it.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sigma_db.errors import ConfigurationError, InsufficientPrivilegeError, SigmaDBError
from sigma_db.identifiers import check_identifier
from sigma_db.topology import Product, Topology

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from pydantic import SecretStr

    from sigma_db.settings import DatabaseSettings

__all__ = [
    "Login",
    "PrivilegeReport",
    "ProductRoles",
    "RoleKind",
    "RolePlan",
    "Statement",
    "group_role",
    "plan_roles",
    "privilege_report",
    "scram_verifier_matches",
    "sync_roles",
]

logger = logging.getLogger(__name__)

PASSWORD_PLACEHOLDER = "'********'"  # noqa: S105 - a placeholder, not a password
"""What the printed plan shows instead of a password verifier."""


class RoleKind(enum.StrEnum):
    """The three group roles every product has, by what they may do."""

    MIGRATOR = "migrator"
    RW = "rw"
    RO = "ro"


def group_role(product: Product, kind: RoleKind | str) -> str:
    """The group role name, e.g. ``edge_lab_rw``: the product's database name plus the kind."""
    return check_identifier(f"{product.database}_{RoleKind(kind)}", "role name")


# What each kind gets on objects it does not own (the migrator owns them, so needs no grant).
TABLE_PRIVILEGES: Mapping[RoleKind, frozenset[str]] = {
    RoleKind.RW: frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"}),
    RoleKind.RO: frozenset({"SELECT"}),
}
SEQUENCE_PRIVILEGES: Mapping[RoleKind, frozenset[str]] = {
    RoleKind.RW: frozenset({"USAGE", "SELECT", "UPDATE"}),
    RoleKind.RO: frozenset({"SELECT"}),
}
FUNCTION_PRIVILEGES: Mapping[RoleKind, frozenset[str]] = {
    RoleKind.RW: frozenset({"EXECUTE"}),
    RoleKind.RO: frozenset({"EXECUTE"}),
}
_DEFAULT_ACL_KINDS = (("r", "TABLES", TABLE_PRIVILEGES), ("S", "SEQUENCES", SEQUENCE_PRIVILEGES))
_FUNCTIONS_DEFAULT = ("f", "FUNCTIONS", FUNCTION_PRIVILEGES)

# Role attributes no sigma_db role may have: each one is a way around the grants.
_FORBIDDEN = {
    "rolsuper": "SUPERUSER",
    "rolcreaterole": "CREATEROLE",
    "rolcreatedb": "CREATEDB",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}
_GROUP_ATTRIBUTES = "NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
_LOGIN_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"

_LOCK_KEY = 0x51_67_6D_61_52_6F_6C  # pg_advisory_xact_lock key: one roles apply per database
_ATTEMPTS = 3  # roles are cluster-global: a concurrent apply in another database may race us


@dataclass(frozen=True)
class Login:
    """A LOGIN role attached to one of a product's group roles.

    ``password`` is only needed to create the login or change its password; it is never
    printed, logged or part of a repr. It reaches the server as a SCRAM verifier, so even a
    server that logs DDL never sees it.
    """

    name: str
    kind: RoleKind
    password: SecretStr | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_identifier(self.name, "login role name")
        try:
            object.__setattr__(self, "kind", RoleKind(self.kind))
        except ValueError:
            raise ConfigurationError(
                f"login {self.name!r}: role kind {self.kind!r} is not one of migrator, rw, ro."
            ) from None


@dataclass(frozen=True)
class ProductRoles:
    """What one product needs in one database: its group roles, schemas, and attached logins."""

    topology: Topology
    logins: tuple[Login, ...] = ()

    @property
    def roles(self) -> dict[RoleKind, str]:
        """Group role name by kind."""
        return {kind: group_role(self.topology.product, kind) for kind in RoleKind}

    @property
    def migrator(self) -> str:
        """The owner of the product's schemas."""
        return self.roles[RoleKind.MIGRATOR]

    @property
    def schemas(self) -> tuple[str, ...]:
        """Every schema the product owns: the default one, then its logical areas."""
        return tuple(check_identifier(s, "schema name") for s in self.topology.owned_schemas)


@dataclass(frozen=True)
class Statement:
    """One SQL statement of a plan: what runs, what is shown, and why it is needed."""

    sql: sql.Composed = field(repr=False)
    """What is executed (may hold a password verifier: never print it)."""
    text: str
    """What is shown: the same statement with any secret replaced by a placeholder."""
    reason: str


@dataclass(frozen=True)
class RolePlan:
    """The statements that bring a database's roles and grants to the desired state."""

    database: str
    products: tuple[str, ...]
    statements: tuple[Statement, ...]
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything needs doing."""
        return bool(self.statements)

    def render(self) -> str:
        """The plan as SQL text with ``--`` comments; secrets appear only as placeholders."""
        head = f"-- roles for {', '.join(self.products)} in database {self.database}"
        lines = [head]
        lines.extend(f"-- note: {note}" for note in self.notes)
        if not self.statements:
            lines.append("-- no changes: roles, grants and settings are up to date")
        for statement in self.statements:
            lines.append(f"-- {statement.reason}")
            lines.append(f"{statement.text};")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Catalog


@dataclass
class _RoleRow:
    name: str
    login: bool
    forbidden: tuple[str, ...]


Grant = tuple[str, str]  # (grantee or PUBLIC, privilege)


@dataclass
class _Catalog:
    admin: str
    admin_super: bool
    database: str
    roles: dict[str, _RoleRow]
    member_of: dict[str, set[str]]
    database_acl: set[Grant]
    schema_owner: dict[str, str]
    schema_acl: dict[str, set[Grant]]
    public_schema_acl: set[Grant] | None
    default_acl: dict[tuple[str, str, str], set[Grant]]  # (owner, schema, objtype)
    relations: dict[tuple[str, str], tuple[str, set[Grant]]]  # (schema, name) → kind, acl
    routines_missing: set[tuple[str, str]]  # (schema, grantee) lacking EXECUTE somewhere
    settings: dict[str, dict[str, str]]
    verifiers: dict[str, str | None] | None  # None: not readable (not a superuser)


def _read_catalog(conn: psycopg.Connection[Any], targets: Sequence[ProductRoles]) -> _Catalog:
    names = sorted(
        {role for t in targets for role in t.roles.values()}
        | {login.name for t in targets for login in t.logins}
    )
    schemas = sorted({schema for t in targets for schema in t.schemas})
    migrators = sorted({t.migrator for t in targets})
    groups = sorted({role for t in targets for role in t.roles.values()})

    admin, admin_super, database = _one(
        conn,
        "SELECT current_user, r.rolsuper, current_database() FROM pg_roles r "
        "WHERE r.rolname = current_user",
    )
    members = [*names, admin]
    roles = {
        row[0]: _RoleRow(
            row[0],
            row[1],
            tuple(kw for kw, flag in zip(_FORBIDDEN.values(), row[2:], strict=True) if flag),
        )
        for row in conn.execute(
            f"SELECT rolname, rolcanlogin, {', '.join(_FORBIDDEN)} FROM pg_roles "  # noqa: S608 - fixed column names
            "WHERE rolname = ANY(%s)",
            [names],
        )
    }
    member_of: dict[str, set[str]] = defaultdict(set)
    for member, group in conn.execute(
        "SELECT m.rolname, g.rolname FROM pg_auth_members a "
        "JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.roleid "
        "WHERE m.rolname = ANY(%s)",
        [members],
    ):
        member_of[member].add(group)
    database_acl = {
        (grantee, privilege)
        for grantee, privilege in conn.execute(
            "SELECT coalesce(g.rolname, 'PUBLIC'), a.privilege_type FROM pg_database d "
            "CROSS JOIN LATERAL aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
            "LEFT JOIN pg_roles g ON g.oid = a.grantee "
            "WHERE d.datname = current_database() AND a.grantee <> d.datdba"
        )
    }
    schema_owner: dict[str, str] = {}
    schema_acl: dict[str, set[Grant]] = defaultdict(set)
    public_schema_acl: set[Grant] | None = None
    for schema, owner, grantee, privilege in conn.execute(
        "SELECT n.nspname, pg_get_userbyid(n.nspowner), coalesce(g.rolname, 'PUBLIC'), "
        "a.privilege_type FROM pg_namespace n "
        "CROSS JOIN LATERAL aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a "
        "LEFT JOIN pg_roles g ON g.oid = a.grantee "
        "WHERE n.nspname = ANY(%s) OR n.nspname = 'public'",
        [schemas],
    ):
        if schema == "public":
            public_schema_acl = public_schema_acl or set()
            if grantee == "PUBLIC":
                public_schema_acl.add((grantee, privilege))
        if schema in schemas:
            schema_owner[schema] = owner
            if grantee != owner:
                schema_acl[schema].add((grantee, privilege))
    default_acl: dict[tuple[str, str, str], set[Grant]] = defaultdict(set)
    for owner, schema, objtype, grantee, privilege in conn.execute(
        "SELECT r.rolname, n.nspname, d.defaclobjtype::text, coalesce(g.rolname, 'PUBLIC'), "
        "a.privilege_type FROM pg_default_acl d "
        "JOIN pg_roles r ON r.oid = d.defaclrole "
        "JOIN pg_namespace n ON n.oid = d.defaclnamespace "
        "CROSS JOIN LATERAL aclexplode(d.defaclacl) a "
        "LEFT JOIN pg_roles g ON g.oid = a.grantee "
        "WHERE r.rolname = ANY(%s) AND n.nspname = ANY(%s)",
        [migrators, schemas],
    ):
        default_acl[(owner, schema, objtype)].add((grantee, privilege))
    relations: dict[tuple[str, str], tuple[str, set[Grant]]] = {}
    for schema, name, kind, grantee, privilege in conn.execute(
        "SELECT n.nspname, c.relname, c.relkind::text, coalesce(g.rolname, 'PUBLIC'), "
        "a.privilege_type FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault("
        "  CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner))) a "
        "LEFT JOIN pg_roles g ON g.oid = a.grantee "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')",
        [schemas],
    ):
        entry = relations.setdefault((schema, name), (kind, set()))
        entry[1].add((grantee, privilege))
    routines_missing = {
        (schema, grantee)
        for schema, grantee in conn.execute(
            "SELECT DISTINCT n.nspname, r.rolname FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "CROSS JOIN (SELECT rolname, oid FROM pg_roles WHERE rolname = ANY(%s)) r "
            "WHERE n.nspname = ANY(%s) AND p.prokind IN ('f', 'p') AND NOT EXISTS ("
            "  SELECT 1 FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
            "  WHERE a.grantee = r.oid AND a.privilege_type = 'EXECUTE')",
            [groups, schemas],
        )
    }
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
    verifiers: dict[str, str | None] | None = None
    if admin_super:
        verifiers = dict(
            conn.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)",
                [[login.name for t in targets for login in t.logins]],
            ).fetchall()
        )
    return _Catalog(
        admin=admin,
        admin_super=admin_super,
        database=database,
        roles=roles,
        member_of=member_of,
        database_acl=database_acl,
        schema_owner=schema_owner,
        schema_acl=schema_acl,
        public_schema_acl=public_schema_acl,
        default_acl=default_acl,
        relations=relations,
        routines_missing=routines_missing,
        settings=settings,
        verifiers=verifiers,
    )


def _one(conn: psycopg.Connection[Any], query: str) -> tuple[Any, ...]:
    row = conn.execute(query).fetchone()
    assert row is not None
    return tuple(row)


# --------------------------------------------------------------------------------------------
# Planning


class _Planner:
    def __init__(self, conn: psycopg.Connection[Any], catalog: _Catalog) -> None:
        from psycopg import sql

        self.sql = sql
        self.conn = conn
        self.catalog = catalog
        self.statements: list[Statement] = []
        self.notes: list[str] = []
        self.conflicts: list[str] = []
        self._seen: set[str] = set()

    def emit(self, template: str, reason: str, *, secret: str | None = None, **parts: Any) -> None:
        sql = self.sql
        values = {
            key: sql.Identifier(value) if isinstance(value, str) else value
            for key, value in parts.items()
        }
        shown = dict(values)
        if secret is not None:
            values["secret"] = sql.Literal(secret)
            shown["secret"] = sql.SQL(PASSWORD_PLACEHOLDER)
        statement = sql.SQL(template).format(**values)
        text = sql.SQL(template).format(**shown).as_string(self.conn)
        if text in self._seen:  # two products may need the same database-wide repair
            return
        self._seen.add(text)
        self.statements.append(Statement(statement, text, reason))

    def ident_list(self, names: Iterable[str]) -> sql.Composable:
        return self.sql.SQL(", ").join(self.sql.Identifier(name) for name in names)

    def privileges(self, names: Iterable[str]) -> sql.Composable:
        # Privilege keywords come from the fixed maps above, never from input.
        return self.sql.SQL(", ").join(self.sql.SQL(name) for name in sorted(names))

    # -- roles

    def group_roles(self, target: ProductRoles) -> None:
        title = target.topology.product.title
        for kind, name in target.roles.items():
            row = self.catalog.roles.get(name)
            if row is None:
                self.emit(
                    "CREATE ROLE {role} " + _GROUP_ATTRIBUTES,
                    f"{title}'s {kind} group role is missing",
                    role=name,
                )
                continue
            if row.forbidden and row.login:
                self.conflicts.append(
                    f"Role {name} already exists as a LOGIN role with {', '.join(row.forbidden)}; "
                    f"sigma_db needs that name for {title}'s {kind} group role. Rename the "
                    f"login (ALTER ROLE {name} RENAME TO <another name>) or strip it "
                    f"(ALTER ROLE {name} NOLOGIN {' '.join('NO' + a for a in row.forbidden)}), "
                    "then re-run sigma-db roles apply."
                )
                continue
            if row.forbidden:
                self.emit(
                    "ALTER ROLE {role} " + " ".join("NO" + a for a in row.forbidden),
                    f"drift: {name} has {', '.join(row.forbidden)}",
                    role=name,
                )
            if row.login:
                self.notes.append(
                    f"{name} can log in directly; kept so running services keep working "
                    f"(prefer login roles that are members of it, then ALTER ROLE {name} NOLOGIN)"
                )
            for other in sorted(self.catalog.member_of.get(name, ())):
                self.emit(
                    "REVOKE {group} FROM {role}",
                    f"drift: {name} is a member of {other}, which widens its privileges",
                    group=other,
                    role=name,
                )

    # -- database

    def database(self, target: ProductRoles) -> None:
        db = self.catalog.database
        public = {p for grantee, p in self.catalog.database_acl if grantee == "PUBLIC"}
        if public:
            self.emit(
                "REVOKE ALL ON DATABASE {db} FROM PUBLIC",
                f"PUBLIC may {', '.join(sorted(public))} on database {db}",
                db=db,
            )
        for name in target.roles.values():
            have = {p for grantee, p in self.catalog.database_acl if grantee == name}
            if "CONNECT" not in have:
                self.emit(
                    "GRANT CONNECT ON DATABASE {db} TO {role}",
                    f"{name} needs CONNECT on {db}",
                    db=db,
                    role=name,
                )
            extra = have - {"CONNECT"}
            if extra:
                self.emit(
                    "REVOKE {privs} ON DATABASE {db} FROM {role}",
                    f"drift: {name} may {', '.join(sorted(extra))} on database {db}",
                    privs=self.privileges(extra),
                    db=db,
                    role=name,
                )
        if not self.catalog.admin_super and target.migrator not in self.catalog.member_of.get(
            self.catalog.admin, set()
        ):
            self.emit(
                "GRANT {role} TO CURRENT_USER",
                f"{self.catalog.admin} (not a superuser) must be a member of {target.migrator} "
                "to hand it schemas and set its default privileges",
                role=target.migrator,
            )

    # -- schemas

    def schemas(self, target: ProductRoles) -> None:
        roles = target.roles
        migrator = target.migrator
        readers = {roles[RoleKind.RW]: RoleKind.RW, roles[RoleKind.RO]: RoleKind.RO}
        grants: dict[tuple[str, frozenset[str]], list[str]] = defaultdict(list)
        for schema in target.schemas:
            owner = self.catalog.schema_owner.get(schema)
            acl = self.catalog.schema_acl.get(schema, set())
            want: dict[str, frozenset[str]] = dict.fromkeys(readers, frozenset({"USAGE"}))
            if schema == "public":
                want[migrator] = frozenset({"USAGE", "CREATE"})
            elif owner is None:
                self.emit(
                    "CREATE SCHEMA {schema} AUTHORIZATION {role}",
                    f"schema {schema} is missing",
                    schema=schema,
                    role=migrator,
                )
                acl = set()
            elif owner != migrator:
                self.emit(
                    "ALTER SCHEMA {schema} OWNER TO {role}",
                    f"schema {schema} is owned by {owner}, not {migrator}",
                    schema=schema,
                    role=migrator,
                )
                acl = {grant for grant in acl if grant[0] != migrator}
            public = {p for grantee, p in acl if grantee == "PUBLIC"}
            if schema == "public":
                public &= {"CREATE"}
            if public:
                self.emit(
                    "REVOKE {privs} ON SCHEMA {schema} FROM PUBLIC",
                    f"PUBLIC may {', '.join(sorted(public))} in schema {schema}",
                    privs=self.privileges(public),
                    schema=schema,
                )
            for role, privileges in want.items():
                have = {p for grantee, p in acl if grantee == role}
                if privileges - have:
                    grants[(role, frozenset(privileges - have))].append(schema)
                if have - privileges:
                    self.emit(
                        "REVOKE {privs} ON SCHEMA {schema} FROM {role}",
                        f"drift: {role} may {', '.join(sorted(have - privileges))} in {schema}",
                        privs=self.privileges(have - privileges),
                        schema=schema,
                        role=role,
                    )
        for (role, privileges), schemas in grants.items():
            self.emit(
                "GRANT {privs} ON SCHEMA {schemas} TO {role}",
                f"{role} needs {', '.join(sorted(privileges))} on schema {', '.join(schemas)}",
                privs=self.privileges(privileges),
                schemas=self.ident_list(schemas),
                role=role,
            )
        if (
            self.catalog.public_schema_acl
            and ("PUBLIC", "CREATE") in self.catalog.public_schema_acl
        ):
            self.emit(
                "REVOKE {privs} ON SCHEMA {schema} FROM PUBLIC",
                "PUBLIC may CREATE in schema public, which is on every search_path",
                privs=self.privileges({"CREATE"}),
                schema="public",
            )

    # -- default privileges and existing objects

    def default_privileges(self, target: ProductRoles) -> None:
        # One statement per (object type, grantee, privileges) listing every schema: readable
        # plans, and ALTER DEFAULT PRIVILEGES takes several schemas at once.
        migrator = target.migrator
        pending: dict[tuple[str, str, str, frozenset[str]], list[str]] = defaultdict(list)
        for schema in target.schemas:
            for objtype, keyword, table in (*_DEFAULT_ACL_KINDS, _FUNCTIONS_DEFAULT):
                acl = self.catalog.default_acl.get((migrator, schema, objtype), set())
                for kind, privileges in table.items():
                    role = target.roles[kind]
                    have = {p for grantee, p in acl if grantee == role}
                    if privileges - have:
                        pending[("GRANT", keyword, role, privileges - have)].append(schema)
                    if have - privileges:
                        pending[("REVOKE", keyword, role, frozenset(have - privileges))].append(
                            schema
                        )
        for (verb, keyword, role, privileges), schemas in pending.items():
            where = f"new {keyword.lower()} {migrator} creates in {', '.join(schemas)}"
            self.emit(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schemas} "
                + (
                    "GRANT {privs} ON " + keyword + " TO {role}"
                    if verb == "GRANT"
                    else "REVOKE {privs} ON " + keyword + " FROM {role}"
                ),
                f"{role} needs {', '.join(sorted(privileges))} on {where}"
                if verb == "GRANT"
                else f"drift: {role} gets {', '.join(sorted(privileges))} on {where}",
                owner=migrator,
                schemas=self.ident_list(schemas),
                privs=self.privileges(privileges),
                role=role,
            )

    def existing_objects(self, target: ProductRoles) -> None:
        schemas = set(target.schemas)
        for kind in (RoleKind.RW, RoleKind.RO):
            role = target.roles[kind]
            needs_all: dict[str, set[str]] = defaultdict(set)  # schema → {"TABLES", ...}
            for (schema, name), (relkind, acl) in sorted(self.catalog.relations.items()):
                if schema not in schemas:
                    continue
                sequence = relkind == "S"
                want = (SEQUENCE_PRIVILEGES if sequence else TABLE_PRIVILEGES)[kind]
                have = {p for grantee, p in acl if grantee == role}
                if want - have:
                    needs_all[schema].add("SEQUENCES" if sequence else "TABLES")
                extra = have - want
                if extra:
                    self.emit(
                        "REVOKE {privs} ON "
                        + ("SEQUENCE" if sequence else "TABLE")
                        + " {schema}.{name} FROM {role}",
                        f"drift: {role} may {', '.join(sorted(extra))} on {schema}.{name}",
                        privs=self.privileges(extra),
                        schema=schema,
                        name=name,
                        role=role,
                    )
            for schema, role_missing in sorted(self.catalog.routines_missing):
                if schema in schemas and role_missing == role:
                    needs_all[schema].add("ROUTINES")
            for schema in sorted(needs_all):
                for keyword in sorted(needs_all[schema]):
                    table = {
                        "TABLES": TABLE_PRIVILEGES,
                        "SEQUENCES": SEQUENCE_PRIVILEGES,
                        "ROUTINES": FUNCTION_PRIVILEGES,
                    }[keyword]
                    self.emit(
                        "GRANT {privs} ON ALL " + keyword + " IN SCHEMA {schema} TO {role}",
                        f"{role} is missing privileges on existing {keyword.lower()} in {schema}",
                        privs=self.privileges(table[kind]),
                        schema=schema,
                        role=role,
                    )

    # -- settings

    def search_path(self, role: str, target: ProductRoles) -> None:
        wanted = list(target.topology.search_path)
        current = self.catalog.settings.get(role, {}).get("search_path")
        if current is None or _split_path(current) != wanted:
            self.emit(
                "ALTER ROLE {role} IN DATABASE {db} SET search_path TO {path}",
                f"{role}'s search_path in {self.catalog.database} must be {', '.join(wanted)} "
                "(poolers cannot set it per connection)",
                role=role,
                db=self.catalog.database,
                path=self.ident_list(wanted),
            )

    # -- logins

    def logins(self, target: ProductRoles, group_names: set[str]) -> None:
        for login in target.logins:
            if login.name in group_names:
                self.conflicts.append(
                    f"Login {login.name} is a group role name; give the login its own name "
                    f"(e.g. {target.roles[login.kind]}_app) and attach it to "
                    f"{target.roles[login.kind]}."
                )
                continue
            self._login(target, login)

    def _login(self, target: ProductRoles, login: Login) -> None:
        group = target.roles[login.kind]
        row = self.catalog.roles.get(login.name)
        secret = login.password.get_secret_value() if login.password is not None else None
        if row is None:
            if secret is None:
                self.conflicts.append(
                    f"Login role {login.name} does not exist; give its password with "
                    "--password-env VAR or --password-file PATH to create it."
                )
                return
            self.emit(
                "CREATE ROLE {role} " + _LOGIN_ATTRIBUTES + " PASSWORD {secret}",
                f"login {login.name} for {group} is missing",
                role=login.name,
                secret=self._verifier(login.name, secret),
            )
        else:
            if row.forbidden:
                self.conflicts.append(
                    f"Login role {login.name} has {', '.join(row.forbidden)}, which no service "
                    f"login may have; run ALTER ROLE {login.name} "
                    f"{' '.join('NO' + a for a in row.forbidden)} or choose another login name."
                )
                return
            if not row.login:
                self.conflicts.append(
                    f"Role {login.name} exists but cannot log in (NOLOGIN: a group role); "
                    "choose another login name."
                )
                return
            if secret is not None and not self._password_matches(login.name, secret):
                self.emit(
                    "ALTER ROLE {role} PASSWORD {secret}",
                    f"login {login.name}'s password differs from the one given"
                    if self.catalog.verifiers is not None
                    else f"login {login.name}'s password is set (only a superuser can compare it)",
                    role=login.name,
                    secret=self._verifier(login.name, secret),
                )
        member_of = self.catalog.member_of.get(login.name, set())
        if group not in member_of:
            self.emit(
                "GRANT {group} TO {role}",
                f"login {login.name} acts as {group}",
                group=group,
                role=login.name,
            )
        for kind, other in target.roles.items():
            if kind != login.kind and other in member_of:
                self.emit(
                    "REVOKE {group} FROM {role}",
                    f"login {login.name} is attached as {login.kind}, not {kind}",
                    group=other,
                    role=login.name,
                )
        current = self.catalog.settings.get(login.name, {}).get("role")
        if current is None or current.strip('"') != group:
            self.emit(
                "ALTER ROLE {role} IN DATABASE {db} SET role TO {value}",
                f"{login.name} must act as {group} in {self.catalog.database}, so what it "
                "creates is owned by the group",
                role=login.name,
                db=self.catalog.database,
                value=self.sql.Literal(group),
            )
        self.search_path(login.name, target)

    def _verifier(self, user: str, password: str) -> str:
        encrypted = self.conn.pgconn.encrypt_password(
            password.encode(), user.encode(), b"scram-sha-256"
        )
        return encrypted.decode()

    def _password_matches(self, user: str, password: str) -> bool:
        if self.catalog.verifiers is None:
            return False
        verifier = self.catalog.verifiers.get(user)
        return verifier is not None and scram_verifier_matches(verifier, password)


def scram_verifier_matches(verifier: str, password: str) -> bool:
    """Whether ``password`` produces the stored ``SCRAM-SHA-256$…`` verifier (RFC 5803 format).

    Lets a re-apply tell "same password" from "changed" without sending anything to the server.
    SASLprep is approximated by NFKC; a non-matching exotic password is merely set again.
    """
    try:
        method, rest = verifier.split("$", 1)
        params, keys = rest.split("$", 1)
        iterations_text, salt_b64 = params.split(":", 1)
        stored_b64, server_b64 = keys.split(":", 1)
        if method != "SCRAM-SHA-256":
            return False
        salt = base64.b64decode(salt_b64)
        iterations = int(iterations_text)
    except ValueError:
        return False
    normalized = unicodedata.normalize("NFKC", password).encode()
    salted = hashlib.pbkdf2_hmac("sha256", normalized, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return hmac.compare_digest(base64.b64encode(stored).decode(), stored_b64) and (
        hmac.compare_digest(base64.b64encode(server).decode(), server_b64)
    )


def _split_path(value: str) -> list[str]:
    return [part.strip().strip('"') for part in value.split(",") if part.strip()]


def plan_roles(conn: psycopg.Connection[Any], targets: Sequence[ProductRoles]) -> RolePlan:
    """Read the catalog through ``conn`` and return what must change; runs nothing.

    All ``targets`` must live in the database ``conn`` is connected to. Raises
    :class:`~sigma_db.ConfigurationError` when a name sigma_db needs is taken by a role it must
    not touch (e.g. a SUPERUSER login called ``edge_lab_rw``).
    """
    if not targets:
        raise ConfigurationError("No product given; name at least one product.")
    catalog = _read_catalog(conn, targets)
    for target in targets:
        if target.topology.database != catalog.database:
            raise ConfigurationError(
                f"{target.topology.product.title}'s roles belong in database "
                f"{target.topology.database}, but the connection is to {catalog.database}; "
                f"set DB_NAME={target.topology.database}."
            )
    planner = _Planner(conn, catalog)
    for target in targets:
        planner.group_roles(target)
    if planner.conflicts:
        raise ConfigurationError(planner.conflicts)
    for step in (
        _Planner.database,
        _Planner.schemas,
        _Planner.default_privileges,
        _Planner.existing_objects,
    ):
        for target in targets:
            step(planner, target)
    for target in targets:
        for role in target.roles.values():
            planner.search_path(role, target)
    group_names = {name for target in targets for name in target.roles.values()}
    for target in targets:
        planner.logins(target, group_names)
    if planner.conflicts:
        raise ConfigurationError(planner.conflicts)
    return RolePlan(
        database=catalog.database,
        products=tuple(t.topology.product.key for t in targets),
        statements=tuple(planner.statements),
        notes=tuple(dict.fromkeys(planner.notes)),
    )


# --------------------------------------------------------------------------------------------
# Applying


def sync_roles(
    settings: DatabaseSettings, targets: Sequence[ProductRoles], *, apply: bool
) -> RolePlan:
    """Plan (and with ``apply=True`` execute, in one transaction) the roles for ``targets``.

    ``settings`` are the *admin's*: a superuser, or a CREATEROLE role that owns the database.
    Concurrent applies are serialized per database by an advisory lock; a race with an apply
    in another database (roles are cluster-global) is retried with a fresh plan.
    """
    import psycopg

    from sigma_db.engine import create_engine

    engine = create_engine(settings, pool_size=1, pool_pre_ping=False)
    retryable = _retryable()
    try:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with engine.begin() as connection:
                    conn = connection.connection.driver_connection
                    assert isinstance(conn, psycopg.Connection)
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
                    plan = plan_roles(conn, targets)
                    if apply and plan.changed:
                        _check_admin(conn, plan)
                        for statement in plan.statements:
                            logger.info("%s", statement.text)
                            _execute(conn, statement, plan)
                return plan
            except retryable:
                # "tuple concurrently updated" (XX000) and duplicate roles: another apply got
                # there first; the next plan sees its work.
                if attempt == _ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        engine.dispose()


def _retryable() -> tuple[type[Exception], ...]:
    """Errors a concurrent apply causes (duplicate role, "tuple concurrently updated")."""
    from psycopg import errors

    return (
        errors.UniqueViolation,
        errors.DuplicateObject,
        errors.SerializationFailure,
        errors.InternalError_,
    )


def _check_admin(conn: psycopg.Connection[Any], plan: RolePlan) -> None:
    admin, superuser, createrole = _one(
        conn, "SELECT rolname, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    )
    if not superuser and not createrole:
        raise InsufficientPrivilegeError(
            f"{admin} cannot create or alter roles (it is neither SUPERUSER nor CREATEROLE); "
            f"run sigma-db roles apply as a superuser, or as a CREATEROLE role that owns database "
            f"{plan.database}: set DB_USER and DB_PASSWORD to it."
        )


def _execute(conn: psycopg.Connection[Any], statement: Statement, plan: RolePlan) -> None:
    import psycopg

    try:
        conn.execute(statement.sql)
    except psycopg.errors.InsufficientPrivilege as exc:
        reason = exc.diag.message_primary or "permission denied"
        raise InsufficientPrivilegeError(
            f"{statement.text} failed: {reason}. Run sigma-db roles apply as a superuser, or as "
            f"a CREATEROLE role that owns database {plan.database} (set DB_USER and DB_PASSWORD)."
        ) from None
    except _retryable():
        raise
    except psycopg.Error as exc:
        # Shown with the statement's display text: the executed one may hold a verifier.
        reason = exc.diag.message_primary or type(exc).__name__
        raise SigmaDBError(
            f"{statement.text} failed: {reason}. Nothing was applied (one transaction); fix "
            "the cause, check with sigma-db roles plan, then apply again."
        ) from None


# --------------------------------------------------------------------------------------------
# What a connected role may actually do (for sigma-db doctor)


@dataclass(frozen=True)
class PrivilegeReport:
    """The connected role's kind (as its name promises) and where its privileges disagree."""

    role: str
    kind: RoleKind | None
    problems: tuple[str, ...]


def privilege_report(conn: psycopg.Connection[Any], topology: Topology) -> PrivilegeReport:
    """Compare what the connected role can do in the product's schemas with what it promises.

    The promise comes from the name: ``current_user`` (a login attached by sigma_db acts as
    its group) or, failing that, the product group role it is a member of.
    """
    target = ProductRoles(topology)
    user, session_user, superuser, createrole, can_create_db = _one(
        conn,
        "SELECT current_user, session_user, r.rolsuper, r.rolcreaterole, "
        "has_database_privilege(current_database(), 'CREATE') "
        "FROM pg_roles r WHERE r.rolname = current_user",
    )
    kind = _promised_kind(conn, target, user, session_user)
    problems: list[str] = []
    if kind is None:
        return PrivilegeReport(user, None, ())
    group = target.roles[kind]
    if superuser or createrole:
        what = "SUPERUSER" if superuser else "CREATEROLE"
        problems.append(
            f"{user} is {what}, far more than {group} promises; connect with a login that is "
            f"only a member of {group} (sigma-db roles apply --login NAME:{kind})."
        )
    schemas = [
        row[0]
        for row in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [list(target.schemas)]
        )
    ]
    rows = conn.execute(
        "SELECT n.nspname, has_schema_privilege(n.oid, 'USAGE'), "
        "has_schema_privilege(n.oid, 'CREATE'), pg_has_role(n.nspowner, 'USAGE') "
        "FROM pg_namespace n WHERE n.nspname = ANY(%s)",
        [schemas],
    ).fetchall()
    fix = "run sigma-db roles apply as an admin to repair the grants"
    for schema, usage, create, owns in rows:
        if not usage:
            problems.append(f"{user} cannot use schema {schema}; {fix}.")
        if kind is RoleKind.MIGRATOR:
            if schema == topology.schema and not create:
                problems.append(f"{user} cannot create objects in {schema} (no DDL); {fix}.")
        elif create or owns:
            how = "owns" if owns else "may CREATE in"
            problems.append(f"{user} {how} schema {schema}, but {group} must not run DDL; {fix}.")
    if kind is not RoleKind.MIGRATOR and can_create_db:
        problems.append(f"{user} may CREATE schemas in this database; {fix}.")
    if kind is RoleKind.RO:
        writable = conn.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') "
            "AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') "
            "ORDER BY 1 LIMIT 5",
            [schemas],
        ).fetchall()
        if writable:
            names = ", ".join(row[0] for row in writable)
            problems.append(f"{user} promises read-only but may write to {names}; {fix}.")
    if kind is not RoleKind.MIGRATOR:
        owned = conn.execute(
            "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND pg_has_role(c.relowner, 'USAGE') "
            "ORDER BY 1 LIMIT 5",
            [schemas],
        ).fetchall()
        if owned:
            names = ", ".join(row[0] for row in owned)
            problems.append(f"{user} owns {names}, so it may ALTER or DROP them; {fix}.")
    return PrivilegeReport(user, kind, tuple(problems))


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
