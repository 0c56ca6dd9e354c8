"""Roles and grants: three group roles per product, planned from the topology, applied idempotently.

Every product gets three NOLOGIN *group* roles, named from its database in every layout (so
``edge_lab_rw`` is Sigma Lab's write role both in ``edge_lab`` and in the consolidated dev database
``edge_products``, where it is scoped to schema ``lab`` and ``lab_*``):

``<db>_migrator``
    owns the product's schemas and everything in them; the only role with DDL.
``<db>_rw``
    reads and writes rows (SELECT, INSERT, UPDATE, DELETE; sequences; temporary tables); no DDL,
    no TRUNCATE.
``<db>_ro``
    reads (SELECT); nothing else.

Nobody else keeps anything in a product's schemas: grants to other products' roles, to PUBLIC
or to anyone, on the schemas, on the objects in them and in default privileges, are revoked,
and objects not owned by the migrator are handed to it.

People and services log in as separate LOGIN roles that are members of one group (Vault's dynamic
users, a CI user, ``sigma-db dev``'s users). A login attached by sigma_db also gets, in that
database, ``role`` set to its group — so what the migrator's login creates is owned by the
migrator and the default privileges below apply — and the product's ``search_path``, which is
what makes PgBouncer's transaction pooling work without any client-side ``SET``. Role settings
only apply to the role that logs in (never through membership or ``SET ROLE``), which is why
they go on the logins and not on the NOLOGIN groups. A plan covers the logins named for it and
the members of its groups (memberships only: a login can write its own ``role`` setting); each
keeps its one group and no other membership. Another product's login (a member of another
product's group) is never taken over.

The plan is computed, not scripted: the catalog is read first (:mod:`sigma_db.role_catalog`) and
only what is missing or wrong is emitted, so a second apply emits nothing, and drift (a missing
grant, an extra privilege, a wrong attribute or owner, a lost setting) is repaired by the next
apply. Default privileges are set ``FOR ROLE`` the migrator, because ``ALTER DEFAULT
PRIVILEGES`` without it only covers objects created by whoever ran it.
"""

from __future__ import annotations

import enum
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sigma_db import role_catalog
from sigma_db.errors import ConfigurationError, InsufficientPrivilegeError, SigmaDBError
from sigma_db.identifiers import check_identifier
from sigma_db.role_catalog import Catalog, Grant, Relation
from sigma_db.topology import PRODUCTS, Product, Topology

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from pydantic import SecretStr

    from sigma_db.settings import DatabaseSettings

__all__ = [
    "BOOKKEEPING_RELATIONS",
    "Login",
    "ProductRoles",
    "RoleKind",
    "RolePlan",
    "Statement",
    "group_role",
    "plan_roles",
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
    # _ro too: views and reports call functions; a function that writes is SECURITY INVOKER
    # (the default) so _ro's own lack of write privileges still holds inside it.
    RoleKind.RW: frozenset({"EXECUTE"}),
    RoleKind.RO: frozenset({"EXECUTE"}),
}
DATABASE_PRIVILEGES: Mapping[RoleKind, frozenset[str]] = {
    # TEMPORARY: partition maintenance stages the rows it moves out of DEFAULT in one.
    RoleKind.MIGRATOR: frozenset({"CONNECT", "TEMPORARY"}),
    # TEMPORARY: bulk upserts stage rows in a temporary table; it holds no product data.
    RoleKind.RW: frozenset({"CONNECT", "TEMPORARY"}),
    RoleKind.RO: frozenset({"CONNECT"}),
}
_REVOKE_OPTION = "REVOKE GRANT OPTION"
BOOKKEEPING_RELATIONS = frozenset({"alembic_version", "migration_runs", "migration_runs_id_seq"})
"""The version table, the ledger (sigma_db.migrations.ledger.LEDGER_TABLE) and its identity
sequence, in the product's default schema: read by _rw and _ro, written by the migrator only
(a _rw that could setval the sequence could make every later ledger insert fail)."""
_DEFAULT_ACL_KINDS = (
    ("r", "TABLES", TABLE_PRIVILEGES),
    ("S", "SEQUENCES", SEQUENCE_PRIVILEGES),
    ("f", "FUNCTIONS", FUNCTION_PRIVILEGES),
)
# pg_default_acl.defaclobjtype → the keyword ALTER DEFAULT PRIVILEGES uses for it.
_DEFAULT_ACL_KEYWORDS = {
    "r": "TABLES",
    "S": "SEQUENCES",
    "f": "FUNCTIONS",
    "T": "TYPES",
    "n": "SCHEMAS",
}
# What a database-wide default row holds when there is none (PostgreSQL's built-in default),
# besides the owner's own privileges: PUBLIC may execute functions and use types.
_BUILTIN_PUBLIC_DEFAULTS: Mapping[str, frozenset[str]] = {
    "f": frozenset({"EXECUTE"}),
    "T": frozenset({"USAGE"}),
}
# ALTER <keyword> … OWNER TO, by pg_class.relkind.
_RELATION_KEYWORDS = {
    "r": "TABLE",
    "p": "TABLE",
    "v": "VIEW",
    "m": "MATERIALIZED VIEW",
    "f": "FOREIGN TABLE",
    "S": "SEQUENCE",
}

_GROUP_ATTRIBUTES = "NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
_LOGIN_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"

_LOCK_KEY = 0x51_67_6D_61_52_6F_6C  # pg_advisory_xact_lock key: one roles apply per database
_ATTEMPTS = 3  # roles are cluster-global: a concurrent apply in another database may race us
_LOGIN_CHECK_TIMEOUT = 5  # seconds: verifying a login's password by logging in
# Role names PostgreSQL keeps for itself: CREATE ROLE refuses them, or they mean something else
# wherever a role is named (GRANT … TO public is PUBLIC; current_user is whoever runs it).
_RESERVED_ROLE_NAMES = frozenset(
    {"public", "none", "current_user", "session_user", "current_role", "system_user", "user"}
)


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
        if self.name.lower() in _RESERVED_ROLE_NAMES or self.name.lower().startswith("pg_"):
            raise ConfigurationError(
                f"login role name {self.name!r} is reserved by PostgreSQL (public, none, "
                "current_user, session_user, current_role and names starting with pg_ are); "
                "choose another name, e.g. lab_api."
            )
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
# Planning


class _Planner:
    def __init__(
        self,
        conn: psycopg.Connection[Any],
        catalog: Catalog,
        targets: Sequence[ProductRoles] = (),
    ) -> None:
        from psycopg import sql

        self.sql = sql
        self.conn = conn
        self.catalog = catalog
        self.groups = {name for target in targets for name in target.roles.values()}
        """Every group role of the products planned for."""
        self.named = {login.name for target in targets for login in target.logins}
        """Every login named (``--login``) for one of them: it is that product's."""
        self.statements: list[Statement] = []
        self.borrowed: list[str] = []
        self.cascading_database = bool(catalog.database_grant_options)
        """Whether the plan revokes grant options on the database WITH CASCADE."""
        """Roles the admin is made a member of for the plan's statements, then not again."""
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
        # Privilege keywords come from the fixed maps above or the catalog, never from input.
        return self.sql.SQL(", ").join(self.sql.SQL(name) for name in sorted(names))

    def grantee(self, name: str | None) -> sql.Composable:
        """A role, or the PUBLIC keyword (``None``)."""
        return self.sql.SQL("PUBLIC") if name is None else self.sql.Identifier(name)

    @staticmethod
    def by_grantee(acl: Iterable[Grant]) -> dict[str | None, set[str]]:
        grouped: dict[str | None, set[str]] = defaultdict(set)
        for grantee, privilege in acl:
            grouped[grantee].add(privilege)
        return grouped

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
        acl = self.by_grantee(self.catalog.database_acl)
        cascading = self.catalog.database_grant_options
        for grantee in sorted(cascading):
            # Nothing is granted on a database WITH GRANT OPTION. CASCADE, as for tables: the
            # grants made from the option (CONNECT to PUBLIC, say) are out of the owner's reach.
            self.emit(
                "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON DATABASE {db} FROM {grantee} CASCADE",
                f"drift: {grantee} may grant its privileges on database {db} to others",
                db=db,
                grantee=grantee,
            )
        if acl.get(None):
            self.emit(
                "REVOKE ALL ON DATABASE {db} FROM PUBLIC",
                f"PUBLIC may {', '.join(sorted(acl[None]))} on database {db}",
                db=db,
            )
        for kind, name in target.roles.items():
            want, have = DATABASE_PRIVILEGES[kind], acl.get(name, set())
            # A wanted grant may have been made from an option the CASCADE takes: grant again.
            missing = want if cascading else want - have
            if missing:
                self.emit(
                    "GRANT {privs} ON DATABASE {db} TO {role}",
                    f"{name} needs {', '.join(sorted(missing))} on {db}"
                    + (" (again, after the CASCADE)" if cascading else ""),
                    privs=self.privileges(missing),
                    db=db,
                    role=name,
                )
            if have - want:
                self.emit(
                    "REVOKE {privs} ON DATABASE {db} FROM {role}",
                    f"drift: {name} may {', '.join(sorted(have - want))} on database {db}",
                    privs=self.privileges(have - want),
                    db=db,
                    role=name,
                )
        shared = target.topology.consolidated
        ours = set(target.roles.values())
        for holder, held in sorted(acl.items(), key=_grantee_order):
            if holder is None or holder in self.groups:
                continue  # PUBLIC: above; the planned groups: their own step
            row = self.catalog.database_holders.get(holder)
            if row is not None and {"SUPERUSER", "CREATEROLE"} & set(row.forbidden):
                continue  # an administrator (Vault's connection user): it may grant itself this
            keep: set[str] = set()
            if shared and row is not None and not row.login and _is_group_role(holder):
                # The products share the consolidated database: each product's own plan makes
                # its groups' privileges exact; none has more than these.
                keep = {"CONNECT", "TEMPORARY"}
            elif row is not None and row.login and not row.inherit:
                # A NOINHERIT login cannot use its group's CONNECT (checked before its role
                # setting applies): one of the product's (of any product's, in the shared
                # database) keeps its own.
                groups = self.catalog.member_of.get(holder, set())
                if (
                    holder in self.named
                    or groups & ours
                    or (shared and any(g in self.groups or _is_group_role(g) for g in groups))
                ):
                    keep = {"CONNECT"}
            extra = held - keep
            if not extra:
                continue
            # CONNECT too: a person or another product's role holding it directly may log in
            # here (a login reaches the database through its one group's CONNECT).
            only = "the products' group roles" if shared else ", ".join(target.roles.values())
            self.emit(
                "REVOKE {privs} ON DATABASE {db} FROM {grantee}",
                f"drift: {holder} may {', '.join(sorted(extra))} on database {db}, where only "
                f"{only} may",
                privs=self.privileges(extra),
                db=db,
                grantee=holder,
            )
        if not self.catalog.admin_super and target.migrator not in self.catalog.member_of.get(
            self.catalog.admin, set()
        ):
            self.emit(
                "GRANT {role} TO CURRENT_USER",
                f"{self.catalog.admin} (not a superuser) must be a member of {target.migrator} "
                "to hand it schemas and objects and set its default privileges",
                role=target.migrator,
            )

    # -- schemas

    def schemas(self, target: ProductRoles) -> None:
        roles = target.roles
        migrator = target.migrator
        own = set(roles.values())
        readers = (roles[RoleKind.RW], roles[RoleKind.RO])
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
            options = self.catalog.schema_grant_options.get(schema, set()) - {migrator}
            if options:  # wanted grants made from an option go with the CASCADE below
                acl = {grant for grant in acl if grant[0] not in want}
            for grantee in sorted(options, key=str):
                self.emit(
                    "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON SCHEMA {schema} FROM {grantee} "
                    "CASCADE",
                    f"drift: {'PUBLIC' if grantee is None else grantee} may grant its "
                    f"privileges on schema {schema} to others",
                    schema=schema,
                    grantee=self.grantee(grantee),
                )
            for grantee, have in sorted(self.by_grantee(acl).items(), key=_grantee_order):
                if grantee in want:
                    continue
                if grantee is None and schema == "public":
                    have = have & {"CREATE"}  # PUBLIC keeps USAGE on schema public
                elif grantee == migrator:
                    continue  # the owner-to-be: its entries merge into ownership
                if not have:
                    continue
                who = "PUBLIC" if grantee is None else grantee
                self.emit(
                    "REVOKE {privs} ON SCHEMA {schema} FROM {grantee}",
                    f"{who} may {', '.join(sorted(have))} in schema {schema}"
                    + ("" if grantee is None or grantee in own else ", which is not its product's"),
                    privs=self.privileges(have),
                    schema=schema,
                    grantee=self.grantee(grantee),
                )
            for role, privileges in want.items():
                have = {p for grantee, p in acl if grantee == role}
                if privileges - have:
                    grants[(role, frozenset(privileges - have))].append(schema)
                if have - privileges:
                    self.emit(
                        "REVOKE {privs} ON SCHEMA {schema} FROM {grantee}",
                        f"drift: {role} may {', '.join(sorted(have - privileges))} in {schema}",
                        privs=self.privileges(have - privileges),
                        schema=schema,
                        grantee=self.grantee(role),
                    )
        for (role, privileges), schemas in grants.items():
            self.emit(
                "GRANT {privs} ON SCHEMA {schemas} TO {role}",
                f"{role} needs {', '.join(sorted(privileges))} on schema {', '.join(schemas)}",
                privs=self.privileges(privileges),
                schemas=self.ident_list(schemas),
                role=role,
            )
        if self.catalog.public_schema_acl and (None, "CREATE") in self.catalog.public_schema_acl:
            self.emit(
                "REVOKE {privs} ON SCHEMA {schema} FROM PUBLIC",
                "PUBLIC may CREATE in schema public, which is on every search_path",
                privs=self.privileges({"CREATE"}),
                schema="public",
            )

    # -- default privileges

    def default_privileges(self, target: ProductRoles) -> None:
        # One statement per (owner, verb, object type, grantee, privileges) listing every schema:
        # readable plans, and ALTER DEFAULT PRIVILEGES takes several schemas at once.
        migrator = target.migrator
        own = set(target.roles.values())
        schemas = set(target.schemas)
        Key = tuple[str, str, str, str | None, frozenset[str]]
        pending: dict[Key, list[str]] = defaultdict(list)
        for schema in target.schemas:
            for objtype, keyword, table in _DEFAULT_ACL_KINDS:
                acl = self.catalog.default_acl.get((migrator, schema, objtype), set())
                for kind, privileges in table.items():
                    role = target.roles[kind]
                    have = {p for grantee, p in acl if grantee == role}
                    if privileges - have:
                        pending[(migrator, "GRANT", keyword, role, privileges - have)].append(
                            schema
                        )
                    if have - privileges:
                        pending[
                            (migrator, "REVOKE", keyword, role, frozenset(have - privileges))
                        ].append(schema)
        # Anyone else's default grants in the product's schemas, whoever they are FOR.
        for (owner, in_schema, objtype), acl in sorted(self.catalog.default_acl.items(), key=str):
            other_keyword = _DEFAULT_ACL_KEYWORDS.get(objtype)
            if in_schema is None or in_schema not in schemas or other_keyword is None:
                continue
            options = self.catalog.default_grant_options.get((owner, in_schema, objtype), set())
            for grantee, have in sorted(self.by_grantee(acl).items(), key=_grantee_order):
                if grantee == owner:
                    continue
                if grantee in own:
                    optional = frozenset(p for g, p in options if g == grantee)
                    if optional:
                        pending[(owner, _REVOKE_OPTION, other_keyword, grantee, optional)].append(
                            in_schema
                        )
                    continue
                pending[(owner, "REVOKE", other_keyword, grantee, frozenset(have))].append(
                    in_schema
                )
        for (owner, verb, keyword, grantee, privileges), where in pending.items():
            if (
                not self.catalog.admin_super
                and owner not in (target.migrator, self.catalog.admin, *self.borrowed)
                and owner not in self.catalog.member_of.get(self.catalog.admin, set())
            ):
                # ALTER DEFAULT PRIVILEGES FOR ROLE needs membership in that role (a login's
                # own defaults, say); a CREATEROLE admin takes it for the plan's statements
                # and gives it back at the end (give_back_memberships).
                self.emit(
                    "GRANT {role} TO CURRENT_USER",
                    f"{self.catalog.admin} (not a superuser) must be a member of {owner} to "
                    "change its default privileges (revoked again below)",
                    role=owner,
                )
                self.borrowed.append(owner)
            what = f"new {keyword.lower()} {owner} creates in {', '.join(where)}"
            listed = ", ".join(sorted(privileges))
            if verb == "GRANT":
                action, reason = (
                    "GRANT {privs} ON " + keyword + " TO {grantee}",
                    (f"{grantee} needs {listed} on {what}"),
                )
            elif verb == _REVOKE_OPTION:
                action = "REVOKE GRANT OPTION FOR {privs} ON " + keyword + " FROM {grantee}"
                reason = f"drift: {grantee} could grant its {listed} on {what} to others"
            else:
                action = "REVOKE {privs} ON " + keyword + " FROM {grantee}"
                reason = f"{'PUBLIC' if grantee is None else grantee} gets {listed} on {what}"
            self.emit(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schemas} " + action,
                reason,
                owner=owner,
                schemas=self.ident_list(where),
                privs=self.privileges(privileges),
                grantee=self.grantee(grantee),
            )
        self._database_wide_defaults(target)

    def give_back_memberships(self) -> None:
        """Revoke what the default-privileges step borrowed, once all products are done."""
        for owner in self.borrowed:
            self.emit(
                "REVOKE {role} FROM CURRENT_USER",
                f"{self.catalog.admin} needed membership in {owner} only for the statements above",
                role=owner,
            )

    def _database_wide_defaults(self, target: ProductRoles) -> None:
        """Database-wide defaults FOR the migrator: nobody outside the product, no PUBLIC EXECUTE.

        Per-schema defaults only add to these, so a per-schema REVOKE cannot take PUBLIC's
        built-in EXECUTE on new functions away; only a database-wide one can.
        """
        migrator = target.migrator
        own = set(target.roles.values())
        for objtype, keyword in _DEFAULT_ACL_KEYWORDS.items():
            acl = self.catalog.default_acl.get((migrator, None, objtype))
            if acl is None:
                builtin = _BUILTIN_PUBLIC_DEFAULTS.get(objtype, frozenset())
                acl = {(None, privilege) for privilege in builtin}
            options = self.catalog.default_grant_options.get((migrator, None, objtype), set())
            for grantee, have in sorted(self.by_grantee(acl).items(), key=_grantee_order):
                optional = {p for g, p in options if g == grantee}
                if grantee in own and optional:
                    self.emit(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} REVOKE GRANT OPTION FOR {privs} "
                        "ON " + keyword + " FROM {grantee}",
                        f"drift: {grantee} could grant its {', '.join(sorted(optional))} on new "
                        f"{keyword.lower()} {migrator} creates anywhere in this database to others",
                        owner=migrator,
                        privs=self.privileges(optional),
                        grantee=self.grantee(grantee),
                    )
                if grantee in own:
                    continue
                if grantee is None and objtype == "T":
                    have = have - {"USAGE"}  # types are harmless to name; the built-in default
                if not have:
                    continue
                who = "PUBLIC" if grantee is None else grantee
                self.emit(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} REVOKE {privs} ON "
                    + keyword
                    + " FROM {grantee}",
                    f"{who} gets {', '.join(sorted(have))} on new {keyword.lower()} {migrator} "
                    "creates anywhere in this database",
                    owner=migrator,
                    privs=self.privileges(have),
                    grantee=self.grantee(grantee),
                )

    # -- existing objects

    def existing_objects(self, target: ProductRoles) -> None:
        schemas = set(target.schemas)
        migrator = target.migrator
        own = set(target.roles.values())
        needs_all: dict[tuple[str, str], set[str]] = defaultdict(set)  # (role, schema) → kinds
        # The migrations' bookkeeping: _rw and _ro may read it, only the migrator writes it.
        bookkeeping: list[tuple[Relation, dict[str, set[str]]]] = []
        for relation in self.catalog.relations:
            if relation.schema not in schemas:
                continue
            keyword = _RELATION_KEYWORDS[relation.kind]
            sequence = relation.kind == "S"
            where = {"schema": relation.schema, "name": relation.name}
            if relation.owner != migrator and not relation.follows_table:
                self.emit(
                    "ALTER " + keyword + " {schema}.{name} OWNER TO {role}",
                    f"{relation.schema}.{relation.name} is owned by {relation.owner}, not "
                    f"{migrator} (its owner may ALTER and DROP it)",
                    role=migrator,
                    **where,
                )
            cascading = relation.grant_options - {migrator}
            for grantee in sorted(cascading, key=str):
                # First, and CASCADE: the grants this role made from its option go with it;
                # as the owner, the REVOKEs below could not reach them.
                self.emit(
                    "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON "
                    + ("SEQUENCE" if sequence else "TABLE")
                    + " {schema}.{name} FROM {grantee} CASCADE",
                    f"drift: {'PUBLIC' if grantee is None else grantee} may grant its "
                    f"privileges on {relation.schema}.{relation.name} to others",
                    grantee=self.grantee(grantee),
                    **where,
                )
            # The owner's entries move to the new owner with ALTER … OWNER.
            acl = self.by_grantee(
                grant for grant in relation.acl if grant[0] not in (relation.owner, migrator)
            )
            kept = (
                relation.schema == target.topology.schema and relation.name in BOOKKEEPING_RELATIONS
            )
            if kept:
                bookkeeping.append(
                    (
                        relation,
                        {
                            target.roles[k]: acl.get(target.roles[k], set())
                            for k in (RoleKind.RW, RoleKind.RO)
                        },
                    )
                )
            for kind in (RoleKind.RW, RoleKind.RO):
                role = target.roles[kind]
                want = (SEQUENCE_PRIVILEGES if sequence else TABLE_PRIVILEGES)[kind]
                if kept:
                    want = (SEQUENCE_PRIVILEGES if sequence else TABLE_PRIVILEGES)[RoleKind.RO]
                have = acl.pop(role, set())
                # A wanted grant may be one the CASCADE above takes (made from the option):
                # grant again rather than count on it.
                if want - have or cascading:
                    needs_all[(role, relation.schema)].add("SEQUENCES" if sequence else "TABLES")
                if have - want and not kept:  # the bookkeeping's: after the grants, below
                    self.emit(
                        "REVOKE {privs} ON "
                        + ("SEQUENCE" if sequence else "TABLE")
                        + " {schema}.{name} FROM {grantee}",
                        f"drift: {role} may {', '.join(sorted(have - want))} on "
                        f"{relation.schema}.{relation.name}",
                        privs=self.privileges(have - want),
                        grantee=self.grantee(role),
                        **where,
                    )
            for column, grantors in sorted(relation.column_grantors.items()):
                for grantor, privileges in sorted(grantors.items()):
                    if grantor == migrator:
                        continue  # becomes the owner's with ALTER … OWNER
                    self._revoke_column_grants_made_by(relation, column, grantor, privileges)
            for column, grants in sorted(relation.column_acl.items()):
                # Nothing is granted per column: any such grant is drift (it is how a role
                # could write a table its table-level privileges say it may only read).
                column_acl = self.by_grantee(
                    grant for grant in grants if grant[0] not in (relation.owner, migrator)
                )
                for grantee, have in sorted(column_acl.items(), key=_grantee_order):
                    self.emit(
                        # CASCADE: grants made from it (with a grant option) would block it
                        "REVOKE {privs} ON TABLE {schema}.{name} FROM {grantee} CASCADE",
                        f"drift: {'PUBLIC' if grantee is None else grantee} may "
                        f"{', '.join(sorted(have))} on column "
                        f"{relation.schema}.{relation.name}.{column}",
                        privs=self.sql.SQL(", ").join(
                            self.sql.SQL("{} ({})").format(
                                self.sql.SQL(privilege), self.sql.Identifier(column)
                            )
                            for privilege in sorted(have)
                        ),
                        grantee=self.grantee(grantee),
                        **where,
                    )
            for grantee, have in sorted(acl.items(), key=_grantee_order):
                self.emit(
                    "REVOKE {privs} ON "
                    + ("SEQUENCE" if sequence else "TABLE")
                    + " {schema}.{name} FROM {grantee}",
                    f"{'PUBLIC' if grantee is None else grantee} may "
                    f"{', '.join(sorted(have))} on {relation.schema}.{relation.name}"
                    + ("" if grantee is None or grantee in own else ", not its product's"),
                    privs=self.privileges(have),
                    grantee=self.grantee(grantee),
                    **where,
                )
        for routine in self.catalog.routines:
            if routine.schema not in schemas:
                continue
            signature: dict[str, Any] = {
                "schema": routine.schema,
                "name": routine.name,
                "args": self.sql.SQL(", ").join(
                    self.sql.Identifier(*argument) for argument in routine.arguments
                ),
            }
            label = f"{routine.schema}.{routine.name}()"
            if routine.owner != migrator:
                self.emit(
                    "ALTER ROUTINE {schema}.{name}({args}) OWNER TO {role}",
                    f"{label} is owned by {routine.owner}, not {migrator} (its owner may "
                    "replace and drop it)",
                    role=migrator,
                    **signature,
                )
            cascading = routine.grant_options - {migrator}
            for grantee in sorted(cascading, key=str):
                self.emit(
                    "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON ROUTINE {schema}.{name}({args}) "
                    "FROM {grantee} CASCADE",
                    f"drift: {'PUBLIC' if grantee is None else grantee} may grant EXECUTE on "
                    f"{label} to others",
                    grantee=self.grantee(grantee),
                    **signature,
                )
            acl = self.by_grantee(
                grant for grant in routine.acl if grant[0] not in (routine.owner, migrator)
            )
            for kind in (RoleKind.RW, RoleKind.RO):
                role = target.roles[kind]
                if FUNCTION_PRIVILEGES[kind] - acl.pop(role, set()) or cascading:
                    needs_all[(role, routine.schema)].add("ROUTINES")
            for grantee, have in sorted(acl.items(), key=_grantee_order):
                self.emit(
                    "REVOKE {privs} ON ROUTINE {schema}.{name}({args}) FROM {grantee}",
                    f"{'PUBLIC' if grantee is None else grantee} may "
                    f"{', '.join(sorted(have))} {label}",
                    privs=self.privileges(have),
                    grantee=self.grantee(grantee),
                    **signature,
                )
        tables = {
            "TABLES": TABLE_PRIVILEGES,
            "SEQUENCES": SEQUENCE_PRIVILEGES,
            "ROUTINES": FUNCTION_PRIVILEGES,
        }
        kinds = {role: kind for kind, role in target.roles.items()}
        for (role, schema), keywords in sorted(needs_all.items()):
            for keyword in sorted(keywords):
                self.emit(
                    "GRANT {privs} ON ALL " + keyword + " IN SCHEMA {schema} TO {role}",
                    f"{role} is missing privileges on existing {keyword.lower()} in {schema}",
                    privs=self.privileges(tables[keyword][kinds[role]]),
                    schema=schema,
                    role=role,
                )
        for relation, held in bookkeeping:
            sequence = relation.kind == "S"
            allowed = SEQUENCE_PRIVILEGES if sequence else TABLE_PRIVILEGES
            for role, have in held.items():
                if ("SEQUENCES" if sequence else "TABLES") in needs_all.get(
                    (role, relation.schema), set()
                ):
                    have = have | allowed[kinds[role]]  # the GRANT ON ALL just made
                extra = have - allowed[RoleKind.RO]
                if extra:
                    self.emit(
                        "REVOKE {privs} ON "
                        + ("SEQUENCE" if sequence else "TABLE")
                        + " {schema}.{name} FROM {grantee}",
                        f"{relation.schema}.{relation.name} is the migrations' record: {role} may "
                        "read it, only the migrator writes it",
                        privs=self.privileges(extra),
                        grantee=self.grantee(role),
                        schema=relation.schema,
                        name=relation.name,
                    )

    def _revoke_column_grants_made_by(
        self, relation: Relation, column: str, grantor: str, privileges: set[str]
    ) -> None:
        """Take back the column grants ``grantor`` made (from a grant option on the table).

        Neither the owner's REVOKE nor revoking the table's grant option with CASCADE reaches
        them, and PostgreSQL 15 refuses ``GRANTED BY`` another role. A column grant option of
        its own, revoked with CASCADE, takes them: this works as the owner, without SET ROLE.
        """
        where = {"schema": relation.schema, "name": relation.name}
        columns = self.sql.SQL(", ").join(
            self.sql.SQL("{} ({})").format(self.sql.SQL(privilege), self.sql.Identifier(column))
            for privilege in sorted(privileges)
        )
        label = f"{relation.schema}.{relation.name}.{column}"
        listed = ", ".join(sorted(privileges))
        self.emit(
            "GRANT {privs} ON TABLE {schema}.{name} TO {grantor} WITH GRANT OPTION",
            f"drift: {grantor} granted {listed} on column {label} to others, out of the owner's "
            "reach: give it the column's grant option, to revoke with CASCADE next",
            privs=columns,
            grantor=grantor,
            **where,
        )
        self.emit(
            "REVOKE {privs} ON TABLE {schema}.{name} FROM {grantor} CASCADE",
            f"takes back the column grants {grantor} made on {label}",
            privs=columns,
            grantor=grantor,
            **where,
        )

    # -- settings

    def nologin_members(self, target: ProductRoles) -> None:
        """Revoke the product's groups from roles that are neither a login nor a planned group.

        Only logins are members of a product's groups: a team role (or another product's group)
        holding one hands its privileges to each of its members, none of them a login any plan
        would see.
        """
        ours = set(target.roles.values())
        for member, group in sorted(self.catalog.nologin_members):
            if group in ours:
                self.emit(
                    "REVOKE {group} FROM {role}",
                    f"drift: {member} (not a login) is a member of {group}, which passes "
                    f"{group}'s privileges to every role in {member}",
                    group=group,
                    role=member,
                )

    def search_path(self, role: str, target: ProductRoles) -> None:
        """Set the product's search_path on a role that logs in (only its own settings apply)."""
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

    def logins(self, target: ProductRoles) -> None:
        """The logins named for ``target``, then the ones the catalog shows are its own."""
        for login in target.logins:
            if login.name in self.groups:
                self.conflicts.append(
                    f"Login {login.name} is a group role name; give the login its own name "
                    f"(e.g. {target.roles[login.kind]}_app) and attach it to "
                    f"{target.roles[login.kind]}."
                )
                continue
            secret = login.password.get_secret_value() if login.password is not None else None
            self._login(target, login.name, login.kind, secret)
        for name in self.catalog.discovered:
            if name not in self.named and name not in self.groups:
                self._discovered(target, name)

    def _discovered(self, target: ProductRoles, name: str) -> None:
        """A login nobody named that is a member of one of ``target``'s groups.

        Only memberships count: an administrator granted them. A login's ``role`` setting is
        its own to write (``ALTER ROLE itself IN DATABASE ... SET role``), so it never says
        which group a login serves, nor which product it belongs to.
        """
        kinds = {group: kind for kind, group in target.roles.items()}
        ours = sorted(self.catalog.member_of.get(name, set()) & kinds.keys())
        if not ours:
            return  # another planned product's login
        # A member of another product's group too, planned now or not: which one it serves
        # is not ours to pick (alone, each product's apply would take it from the other).
        theirs = self._another_products(name, target)
        if len(ours) > 1 or theirs:
            role = self._ident(name)
            revoke = "; ".join(
                f"REVOKE {self._ident(group)} FROM {role}" for group in [*ours, *theirs]
            )
            say = f"revoke the ones it must not have ({revoke}: all but one)"
            try:
                Login(name, RoleKind.RW)
                say = f"sigma-db roles apply --login {name}:KIND (migrator, rw or ro), or {say}"
            except ConfigurationError:
                pass  # a name --login refuses (Vault's v-token-...): only the SQL can say it
            self.conflicts.append(
                f"Login {name} is a member of {', '.join([*ours, *theirs])}, but a login serves "
                f"one product and acts as exactly one group; say which with {say}."
            )
            return
        self._login(target, name, kinds[ours[0]], None, named=False)

    def _ident(self, name: str) -> str:
        """``name`` quoted as SQL (for the statements a message tells someone to run)."""
        return str(self.sql.Identifier(name).as_string(self.conn))

    def _another_products(self, name: str, target: ProductRoles) -> list[str]:
        """The other products' group roles ``name`` is a member of (granted by an admin)."""
        own = set(target.roles.values())
        return sorted(
            group
            for group in self.catalog.member_of.get(name, set()) - own
            if group in self.groups or _is_group_role(group)
        )

    def _login(
        self,
        target: ProductRoles,
        name: str,
        kind: RoleKind,
        secret: str | None,
        *,
        named: bool = True,
    ) -> None:
        """Make ``name`` a member of ``target``'s group of ``kind`` only, acting as it here.

        ``named``: given with ``--login`` (else found in the catalog: see :meth:`_discovered`).
        """
        group = target.roles[kind]
        row = self.catalog.roles.get(name)
        elsewhere = self._another_products(name, target)
        if elsewhere and group not in self.catalog.member_of.get(name, set()):
            # Another product's login: taking it over would make one login serve two.
            role = self._ident(name)
            revoke = "; ".join(f"REVOKE {self._ident(other)} FROM {role}" for other in elsewhere)
            self.conflicts.append(
                f"Login {name} is a member of {', '.join(elsewhere)}: it belongs to another "
                f"product, and one login serves one product; choose another login name for "
                f"{group}, or detach it there first ({revoke}), then re-run sigma-db roles apply."
            )
            return
        if row is None:
            if secret is None:
                self.conflicts.append(
                    f"Login role {name} does not exist; give its password with "
                    "--password-env VAR or --password-file PATH to create it."
                )
                return
            self.emit(
                "CREATE ROLE {role} " + _LOGIN_ATTRIBUTES + " PASSWORD {secret}",
                f"login {name} for {group} is missing",
                role=name,
                secret=self._verifier(name, secret),
            )
        else:
            if row.forbidden:
                role = self._ident(name)
                self.conflicts.append(
                    f"Login role {name} has {', '.join(row.forbidden)}, which no service "
                    f"login may have; run ALTER ROLE {role} "
                    f"{' '.join('NO' + a for a in row.forbidden)} or "
                    + (
                        "choose another login name."
                        if named
                        else f"REVOKE {self._ident(group)} FROM {role}."
                    )
                )
                return
            if not row.login:
                self.conflicts.append(
                    f"Role {name} exists but cannot log in (NOLOGIN: a group role); "
                    "choose another login name."
                )
                return
            if secret is not None:
                works = self._password_works(name, secret)
                if works is not True:
                    self.emit(
                        "ALTER ROLE {role} PASSWORD {secret}",
                        f"login {name}'s password differs from the one given"
                        if works is False
                        else f"login {name}'s password could not be checked by logging "
                        "in with it (the server did not ask for a password), so it is set",
                        role=name,
                        secret=self._verifier(name, secret),
                    )
        member_of = self.catalog.member_of.get(name, set())
        if group not in member_of:
            self.emit(
                "GRANT {group} TO {role}",
                f"login {name} acts as {group}",
                group=group,
                role=name,
            )
        elif (name, group) in self.catalog.admin_options:
            self.emit(
                "REVOKE ADMIN OPTION FOR {group} FROM {role}",
                f"drift: login {name} may grant {group} to anyone (WITH ADMIN OPTION)",
                group=group,
                role=name,
            )
        kinds = {other: other_kind for other_kind, other in target.roles.items()}
        for other in sorted(member_of - {group}):
            # Its one group only: any other membership (another product's group, a predefined
            # pg_* role, a person) widens what it may do, through SET ROLE at least.
            self.emit(
                "REVOKE {group} FROM {role}",
                f"login {name} is attached as {kind}, not {kinds[other]}"
                if other in kinds
                else f"drift: login {name} is a member of {other}, beyond its one group {group}",
                group=other,
                role=name,
            )
        if (
            row is not None
            and not row.inherit
            # (a CASCADE planned on the database's grant options may take the one it has)
            and ((name, "CONNECT") not in self.catalog.database_acl or self.cascading_database)
        ):
            # NOINHERIT: its group's CONNECT is not its own (checked before its role setting
            # applies), and the plan revokes PUBLIC's: without its own it is locked out.
            self.emit(
                "GRANT CONNECT ON DATABASE {db} TO {role}",
                f"login {name} is NOINHERIT: it connects with its own CONNECT only",
                db=self.catalog.database,
                role=name,
            )
        for member in sorted(self.catalog.members.get(name, set())):
            # Through the login, the member would have the group's privileges too.
            self.emit(
                "REVOKE {group} FROM {role}",
                f"drift: {member} is a member of login {name}, so it may act as {group}",
                group=name,
                role=member,
            )
        current = self.catalog.settings.get(name, {}).get("role")
        if current is None or current.strip('"') != group:
            self.emit(
                "ALTER ROLE {role} IN DATABASE {db} SET role TO {value}",
                f"{name} must act as {group} in {self.catalog.database}, so what it "
                "creates is owned by the group",
                role=name,
                db=self.catalog.database,
                value=self.sql.Literal(group),
            )
        self.search_path(name, target)

    def _verifier(self, user: str, password: str) -> str:
        # libpq's PQencryptPasswordConn: a SCRAM-SHA-256 verifier computed on this side, so the
        # password itself never reaches the server (nor its logs).
        encrypted = self.conn.pgconn.encrypt_password(
            password.encode(), user.encode(), b"scram-sha-256"
        )
        return encrypted.decode()

    def _password_works(self, user: str, password: str) -> bool | None:
        """Log in as ``user`` with ``password``: True, False, or None when it proves nothing.

        Stored verifiers are readable only by superusers (and comparing one means redoing
        SCRAM's SASLprep); a short login is exact for every admin. It only counts when the
        server really asked for the password (not ``trust`` or ``peer``).
        """
        import psycopg
        from psycopg.conninfo import make_conninfo

        # Where the admin connected, as someone else: no client certificate, no options.
        where = {
            key: value
            for key, value in self.conn.info.get_parameters().items()
            if key in ("host", "hostaddr", "port", "sslmode", "sslrootcert")
        }
        conninfo = make_conninfo(
            "",
            **where,
            dbname=self.catalog.database,
            user=user,
            connect_timeout=_LOGIN_CHECK_TIMEOUT,
            application_name="sigma_db roles: password check",
        )
        try:
            with psycopg.connect(conninfo, password=password) as probe:
                return True if probe.pgconn.used_password else None
        except psycopg.OperationalError as exc:
            if exc.sqlstate == "28P01" or "password authentication failed" in str(exc):
                return False
            return None


def _grantee_order(item: tuple[str | None, Any]) -> str:
    return "" if item[0] is None else item[0]


def _is_group_role(name: str) -> bool:
    """Whether ``name`` is some product's group role by its name: ``<its database>_<kind>``."""
    for kind in RoleKind:
        database = name.removesuffix(f"_{kind}")
        if database == name:
            continue
        if any(database == product.database for product in PRODUCTS.values()):
            return True
        if database.startswith("edge_"):
            try:
                return group_role(Product.named(database.removeprefix("edge_")), kind) == name
            except ConfigurationError:
                return False
    return False


def _split_path(value: str) -> list[str]:
    return [part.strip().strip('"') for part in value.split(",") if part.strip()]


def plan_roles(conn: psycopg.Connection[Any], targets: Sequence[ProductRoles]) -> RolePlan:
    """Read the catalog through ``conn`` and return what must change; changes nothing.

    All ``targets`` must live in the database ``conn`` is connected to. Raises
    :class:`~sigma_db.ConfigurationError` when a name sigma_db needs is taken by a role it must
    not touch (e.g. a SUPERUSER login called ``edge_lab_rw``). A login given with a password is
    checked by logging in with it (a short connection), so an unchanged password is not set
    again.
    """
    if not targets:
        raise ConfigurationError("No product given; name at least one product.")
    with conn.transaction():  # only pg_catalog resolves in the reads (see sync_roles)
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        catalog = role_catalog.read(
            conn,
            roles=[
                *(role for t in targets for role in t.roles.values()),
                *(login.name for t in targets for login in t.logins),
            ],
            schemas=[schema for t in targets for schema in t.schemas],
            migrators=[t.migrator for t in targets],
            groups=[role for t in targets for role in t.roles.values()],
        )
    for target in targets:
        if target.topology.database != catalog.database:
            raise ConfigurationError(
                f"{target.topology.product.title}'s roles belong in database "
                f"{target.topology.database}, but the connection is to {catalog.database}; "
                f"set DB_NAME={target.topology.database}."
            )
    planner = _Planner(conn, catalog, targets)
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
    planner.give_back_memberships()
    for target in targets:
        for role in target.roles.values():
            row = catalog.roles.get(role)
            if row is not None and row.login:  # a group that still logs in directly
                planner.search_path(role, target)
    for target in targets:
        planner.nologin_members(target)
        planner.logins(target)
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
    in another database (roles are cluster-global) is retried with a fresh plan, and after
    the last attempt reported as one :class:`~sigma_db.SigmaDBError` saying to re-run.
    """
    import psycopg
    import sqlalchemy.exc

    from sigma_db.engine import create_engine

    engine = create_engine(settings, pool_size=1, pool_pre_ping=False)
    try:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with engine.begin() as connection:
                    conn = connection.connection.driver_connection
                    assert isinstance(conn, psycopg.Connection)
                    # The admin's connection has the product's search_path, whose schemas the
                    # migrator owns: an operator or function planted there (app.=(oid, integer))
                    # would run as the admin in the catalog reads. Only pg_catalog resolves.
                    conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
                    plan = plan_roles(conn, targets)
                    if apply and plan.changed:
                        _check_admin(conn, plan)
                        for statement in plan.statements:
                            logger.info("%s", statement.text)
                            _execute(conn, statement, plan)
                return plan
            except (psycopg.Error, sqlalchemy.exc.DBAPIError) as raised:
                exc = raised.orig if isinstance(raised, sqlalchemy.exc.DBAPIError) else raised
                if not isinstance(exc, psycopg.Error):
                    raise
                reason = _reason(exc)
                if not _is_race(exc):
                    raise SigmaDBError(
                        f"roles {'apply' if apply else 'plan'} failed: {reason}. Nothing was "
                        "applied (one transaction); fix the cause, then run it again."
                    ) from None
                if attempt == _ATTEMPTS:
                    raise SigmaDBError(
                        f"roles {'apply' if apply else 'plan'} lost a race with another roles "
                        f"apply {_ATTEMPTS} times ({reason}); nothing was applied by this run "
                        "(one transaction); re-run sigma-db roles apply."
                    ) from None
                logger.info("roles: concurrent change (%s); planning again", reason)
        raise AssertionError("unreachable")  # pragma: no cover
    finally:
        engine.dispose()


def _reason(exc: BaseException) -> str:
    from psycopg import Error

    primary = exc.diag.message_primary if isinstance(exc, Error) else None
    return primary or (str(exc).splitlines() or [type(exc).__name__])[0]


def _is_race(exc: BaseException) -> bool:
    """Errors a concurrent apply causes: duplicate role, "tuple concurrently updated/deleted"."""
    from psycopg import errors

    if isinstance(exc, errors.UniqueViolation | errors.DuplicateObject):
        return True
    if isinstance(exc, errors.InternalError_):
        return "concurrently" in _reason(exc)
    return False


def _check_admin(conn: psycopg.Connection[Any], plan: RolePlan) -> None:
    # The login (session_user) is what DB_USER named; its sessions may act as a group (its
    # role setting), and what the group may do is what counts.
    login, acting, superuser, createrole = role_catalog.one(
        conn,
        "SELECT session_user, rolname, rolsuper, rolcreaterole FROM pg_roles "
        "WHERE rolname = current_user",
    )
    if not superuser and not createrole:
        who = login if login == acting else f"{login} (acting as {acting})"
        raise InsufficientPrivilegeError(
            f"DB_USER={login}: {who} cannot create or alter roles (neither SUPERUSER nor "
            f"CREATEROLE); set DB_USER and DB_PASSWORD to a superuser, or to a CREATEROLE role "
            f"that owns database {plan.database}, instead of {login}, and run sigma-db roles "
            "apply again."
        )


def _execute(conn: psycopg.Connection[Any], statement: Statement, plan: RolePlan) -> None:
    import psycopg

    try:
        conn.execute(statement.sql)
    except psycopg.errors.InsufficientPrivilege as exc:
        reason = exc.diag.message_primary or "permission denied"
        who = (
            "a superuser (only one may change a superuser role)"
            if "superuser" in reason
            else f"a superuser, or as a CREATEROLE role that owns database {plan.database}"
        )
        raise InsufficientPrivilegeError(
            f"{statement.text} failed: {reason}. Nothing was applied (one transaction); run "
            f"sigma-db roles apply as {who} (set DB_USER and DB_PASSWORD)."
        ) from None
    except psycopg.Error as exc:
        if _is_race(exc):
            raise
        # Shown with the statement's display text: the executed one may hold a verifier.
        raise SigmaDBError(
            f"{statement.text} failed: {_reason(exc)}. Nothing was applied (one transaction); "
            "fix the cause, check with sigma-db roles plan, then apply again."
        ) from None
