"""A product repository under test: migrated once into a template, reset cheaply per test.

The template is built the way production is: the product's roles exist, a migrator login runs
``alembic upgrade head`` (so what it creates is owned by ``<db>_migrator`` and the default
privileges reach ``_rw`` and ``_ro``), and tests connect as the ``_rw`` and ``_ro`` logins.

Per test, even ``CREATE DATABASE … TEMPLATE`` costs about as much as migrating a small product
(PostgreSQL copies the template's system catalogs each time). So, as Django's and Rails' test
cleaners do, one clone is reused and its *data* reset between tests: tables that gained rows are
truncated, rows the migrations seeded are restored, sequences go back to their template values.
An event trigger records any DDL a test runs (or a grant it changes); then, or when a leftover
connection blocks the reset, the clone is dropped and a fresh one made for the next test.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from sigma_db.roles import Login, ProductRoles, RoleKind, group_role, sync_roles
from sigma_db.settings import DatabaseSettings
from sigma_db.testing.server import TestServer

__all__ = [
    "CloneKeeper",
    "ProductTemplate",
    "build_template",
    "clone_database",
    "drop_database",
]

_BOOKKEEPING = "sigma_testing"
"""Schema in the template holding the DDL log and seed snapshots (outside the product's schemas)."""

_INSTRUMENT = """
CREATE SCHEMA sigma_testing;
CREATE TABLE sigma_testing.ddl_events (tag text NOT NULL);
CREATE FUNCTION sigma_testing.note_ddl() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS
    $$ BEGIN INSERT INTO sigma_testing.ddl_events VALUES (tg_tag); END $$;
CREATE EVENT TRIGGER sigma_testing_ddl_end ON ddl_command_end
    EXECUTE FUNCTION sigma_testing.note_ddl();
CREATE EVENT TRIGGER sigma_testing_sql_drop ON sql_drop
    EXECUTE FUNCTION sigma_testing.note_ddl();
ALTER EVENT TRIGGER sigma_testing_ddl_end ENABLE ALWAYS;
ALTER EVENT TRIGGER sigma_testing_sql_drop ENABLE ALWAYS;
CREATE TABLE sigma_testing.sequence_values AS
    SELECT format('%I.%I', schemaname, sequencename) AS sequence,
           coalesce(last_value, start_value) AS value, last_value IS NOT NULL AS called
    FROM pg_catalog.pg_sequences WHERE schemaname = ANY({schemas}::text[]);
CREATE TABLE sigma_testing.data_tables AS
    SELECT n.nspname::text AS schema_name, c.relname::text AS table_name, false AS seeded,
           row_number() OVER (ORDER BY n.nspname, c.relname) AS number,
           ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = '' ORDER BY a.attnum) AS columns,
           c.relkind = 'r' AS plain,
           c.relname IN ('alembic_version', 'migration_runs') AS bookkeeping
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY({schemas}::text[]) AND c.relkind IN ('r', 'p') AND NOT c.relispartition;
CREATE TABLE sigma_testing.touched (table_name text NOT NULL);
CREATE FUNCTION sigma_testing.note_touch() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS
    $$ BEGIN INSERT INTO sigma_testing.touched VALUES (TG_TABLE_NAME); RETURN NULL; END $$;
"""
"""The version table and the ledger are data tables too: a test that stamps or repairs (no
DDL) must not leave the next test at another revision. Restoring them after every test cost
about 10 ms a test, so a statement trigger notes when a test touched them (``touched``) and
only then are they restored. ``columns`` leaves out generated columns, which PostgreSQL
computes again when seeded rows are restored; ``plain`` tables are read ``ONLY``, without the
rows of tables inheriting from them."""


@dataclass(frozen=True)
class ProductTemplate:
    """The migrated template database and the logins that act as the product's roles."""

    server: TestServer
    product: str
    database: str
    passwords: dict[RoleKind, str] = field(repr=False)

    def login(self, kind: RoleKind | str) -> str:
        """The test login acting as ``<db>_<kind>``."""
        return f"{self.template_group(kind)}_test"

    def template_group(self, kind: RoleKind | str) -> str:
        """The product's group role of that kind."""
        return group_role(
            self.server.settings(self.database, product=self.product).topology.product, kind
        )

    def settings(self, database: str, kind: RoleKind | str, **overrides: Any) -> DatabaseSettings:
        """Settings for ``database`` logged in as the test login of role ``kind``."""
        role = RoleKind(kind)
        return self.server.settings(
            database,
            product=self.product,
            user=self.login(role),
            password=SecretStr(self.passwords[role]),
            **overrides,
        )


def _admin(server: TestServer, dbname: str = "postgres") -> psycopg.Connection[Any]:
    return server.connect(dbname)


def build_template(server: TestServer, product: str, alembic_ini: Path) -> ProductTemplate:
    """Create the product's roles and a template database migrated to head, as the migrator."""
    from sigma_db.migrations.commands import load_config, migrate

    database = f"tmpl_{product}_{uuid.uuid4().hex[:8]}"
    with _admin(server) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    admin_settings = server.settings(database, product=product)
    passwords = {kind: secrets.token_urlsafe(18) for kind in RoleKind}
    topology = admin_settings.topology
    logins = tuple(
        Login(f"{group_role(topology.product, kind)}_test", kind, SecretStr(passwords[kind]))
        for kind in RoleKind
    )
    sync_roles(admin_settings, [ProductRoles(topology, logins)], apply=True)
    template = ProductTemplate(server, product, database, passwords)
    migrator = template.settings(database, RoleKind.MIGRATOR)
    migrate(load_config(alembic_ini, migrator), migrator)
    _instrument(server, database, list(topology.owned_schemas))
    with _admin(server) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                sql.Identifier(database)
            )
        )
    return template


def _instrument(server: TestServer, database: str, schemas: list[str]) -> None:
    """Add the DDL log, the sequence values and snapshots of seeded rows to the template."""
    with _admin(server, database) as conn, conn.transaction():
        conn.execute(sql.SQL(_INSTRUMENT).format(schemas=sql.Literal(schemas)))
        tables = conn.execute(
            "SELECT schema_name, table_name, number, plain, bookkeeping "
            "FROM sigma_testing.data_tables"
        ).fetchall()
        for schema, table, number, plain, bookkeeping in tables:
            target = sql.Identifier(schema, table)
            if bookkeeping:
                conn.execute(
                    sql.SQL(
                        "CREATE TRIGGER sigma_testing_touched AFTER INSERT OR UPDATE OR DELETE "
                        "OR TRUNCATE ON {} FOR EACH STATEMENT "
                        "EXECUTE FUNCTION sigma_testing.note_touch()"
                    ).format(target)
                )
                conn.execute(
                    sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER sigma_testing_touched").format(
                        target
                    )
                )
            rows = sql.SQL("ONLY {}" if plain else "{}").format(target)
            if conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(rows)).fetchone() != (
                True,
            ):
                continue
            conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(_seed(number), rows))
            conn.execute(
                "UPDATE sigma_testing.data_tables SET seeded = true "
                "WHERE schema_name = %s AND table_name = %s",
                (schema, table),
            )
        conn.execute("TRUNCATE sigma_testing.ddl_events")


def _seed(number: int) -> sql.Identifier:
    return sql.Identifier(_BOOKKEEPING, f"seed_{number}")


def reset_database(server: TestServer, database: str, template: str | None = None) -> bool:
    """Put a used clone's data back to the template's; False when it must be re-cloned.

    With ``template``, also False when the database's own grants or settings no longer match
    the template's (``GRANT ... ON DATABASE`` and ``ALTER DATABASE`` fire no event trigger).
    """
    try:
        with _admin(server, database) as conn:
            # Connections the test left open would carry session state (advisory locks,
            # prepared statements, SETs) into the next test: end them first.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with _admin(server, database) as conn, conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '2s'")
            conn.execute("SELECT lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata")
            ddl = conn.execute("SELECT EXISTS (SELECT FROM sigma_testing.ddl_events)").fetchone()
            if ddl != (False,):
                return False
            if template is not None and _database_state_differs(conn, template):
                return False
            rows = conn.execute(
                "SELECT schema_name, table_name, seeded, number, columns, bookkeeping, "
                "table_name IN (SELECT table_name FROM sigma_testing.touched) "
                "FROM sigma_testing.data_tables"
            ).fetchall()
            if not rows:
                return True
            tables = [sql.Identifier(schema, table) for schema, table, *_ in rows]
            # The version table and the ledger only when a test touched them; any other table
            # when it holds rows, and seeded ones always (their rows come back in the
            # template's order).
            watched = [i for i, row in enumerate(rows) if not row[5]]
            probe = sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {} WHERE EXISTS (SELECT FROM {})").format(sql.Literal(i), tables[i])
                for i in watched
            )
            dirty = {int(row[0]) for row in conn.execute(probe)} if watched else set()
            chosen = sorted(
                dirty
                | {i for i in watched if rows[i][2]}
                | {i for i, row in enumerate(rows) if row[5] and row[6]}
            )
            # Replica before the TRUNCATE: the product's own triggers (ON TRUNCATE too) must
            # not fire, and the seeds, the template's consistent rows, skip FK checks.
            conn.execute("SET LOCAL session_replication_role = replica")
            if chosen:
                # CASCADE may also empty tables referencing these: those hold no template rows,
                # or are seeded and so restored below.
                conn.execute(
                    sql.SQL("TRUNCATE {} CASCADE").format(
                        sql.SQL(", ").join(tables[i] for i in chosen)
                    )
                )
            for i in chosen:
                if rows[i][2]:
                    columns = sql.SQL(", ").join(sql.Identifier(name) for name in rows[i][4])
                    conn.execute(
                        sql.SQL(
                            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {}"
                        ).format(tables[i], columns, columns, _seed(int(rows[i][3])))
                    )
            conn.execute(
                "SELECT setval(sequence::regclass, value, called) "
                "FROM sigma_testing.sequence_values"
            )
            conn.execute("DELETE FROM sigma_testing.touched")
        return True
    except psycopg.errors.LockNotAvailable:
        return False  # a connection the test left open holds a lock: re-clone instead


_DATABASE_STATE = """
SELECT d.datname,
       ARRAY(SELECT format('%%s %%s %%s', a.grantee, a.privilege_type, a.is_grantable)
             FROM aclexplode(d.datacl) a ORDER BY 1) AS grants,
       ARRAY(SELECT s.setrole::text || ':' || c FROM pg_catalog.pg_db_role_setting s,
             unnest(s.setconfig) c WHERE s.setdatabase = d.oid ORDER BY 1) AS settings,
       d.datconnlimit, d.datdba
FROM pg_catalog.pg_database d WHERE d.datname IN (current_database(), %(template)s)
"""
"""What the template and the copy must share beyond their contents: grants (who granted them
aside: the copy's are re-granted), database and role settings, connection limit, owner."""


def _database_state_differs(conn: psycopg.Connection[Any], template: str) -> bool:
    """Whether the connected database's grants or settings differ from ``template``'s."""
    states = [row[1:] for row in conn.execute(_DATABASE_STATE, {"template": template})]
    return len(states) != 2 or states[0] != states[1]


@dataclass
class CloneKeeper:
    """Hands out one clone of the template per test, reset in place while it stays clean."""

    server: TestServer
    template: str
    current: str | None = None
    clones_made: int = 0

    def acquire(self) -> str:
        """The database for the next test."""
        if self.current is None:
            self.current = clone_database(self.server, self.template)
            self.clones_made += 1
        return self.current

    def release(self) -> None:
        """After a test: reset the clone, or drop it when the test changed its schema.

        A reset that fails (the test dropped its database, left something the reset cannot
        undo) also means a new clone: the next test must not inherit the state.
        """
        if self.current is None:
            return
        try:
            clean = reset_database(self.server, self.current, self.template)
        except psycopg.Error:
            clean = False
        if not clean:
            drop_database(self.server, self.current)
            self.current = None

    def close(self) -> None:
        """Drop the clone at the end of the session."""
        if self.current is not None:
            drop_database(self.server, self.current)
            self.current = None


def clone_database(server: TestServer, template: str) -> str:
    """A new database copied from ``template``, with its per-database role settings; its name.

    ``ALTER ROLE … IN DATABASE`` settings (the logins' ``search_path`` and ``SET role``) live
    outside the database, so the copy does not carry them: they are copied here.
    """
    name = f"t_{uuid.uuid4().hex[:16]}"
    with _admin(server) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        settings = admin.execute(
            "SELECT r.rolname, unnest(s.setconfig) FROM pg_db_role_setting s "
            "LEFT JOIN pg_roles r ON r.oid = s.setrole JOIN pg_database d "
            "ON d.oid = s.setdatabase WHERE d.datname = %s",
            (template,),
        ).fetchall()
        # Nor the database's own grants (datacl): CONNECT for the product's roles only,
        # TEMPORARY not for _ro, as `sigma-db roles apply` set them on the template.
        grants = admin.execute(
            "SELECT a.privilege_type, coalesce(r.rolname, 'PUBLIC'), a.is_grantable "
            "FROM pg_database d, aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE d.datname = %s AND a.grantee <> d.datdba",
            (template,),
        ).fetchall()
        if admin.execute(
            "SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", (template,)
        ).fetchone() == (True,):
            admin.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            )
        for privilege, grantee, grantable in grants:
            admin.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(str(privilege)),
                    sql.Identifier(name),
                    sql.SQL("PUBLIC") if grantee == "PUBLIC" else sql.Identifier(str(grantee)),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
        for role, setting in settings:
            key, _, value = str(setting).partition("=")
            target = (
                sql.SQL("DATABASE {}").format(sql.Identifier(name))  # ALTER DATABASE ... SET
                if role is None
                else sql.SQL("ROLE {} IN DATABASE {}").format(
                    sql.Identifier(str(role)), sql.Identifier(name)
                )
            )
            admin.execute(
                sql.SQL("ALTER {} SET {} = {}").format(
                    target, sql.Identifier(key), _setting_value(key, value)
                )
            )
    return name


_LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)
"""Settings PostgreSQL stores as a list of double-quoted names (GUC_LIST_QUOTE), as pg_dump's
``variable_is_guc_list_quote`` knows them: stored ``"a,b", app`` is two names, not a string."""


def _setting_value(key: str, value: str) -> sql.Composable:
    """A stored setting as SQL, the way pg_dump writes it back.

    A list setting element by element, any other one as one literal.
    """
    if key.lower() not in _LIST_SETTINGS:
        return sql.Literal(value)
    return sql.SQL(", ").join(sql.Literal(name) for name in _split_list(value))


def _split_list(value: str) -> list[str]:
    """``a, "b,c", "we""ird"`` -> ``['a', 'b,c', 'we"ird']`` (PostgreSQL's flattened list)."""
    names: list[str] = []
    position = 0
    while position < len(value):
        while position < len(value) and value[position] in " ,":
            position += 1
        if position >= len(value):
            break
        if value[position] == '"':
            end = position + 1
            name = ""
            while end < len(value):
                if value[end] == '"':
                    if value[end + 1 : end + 2] == '"':
                        name += '"'
                        end += 2
                        continue
                    break
                name += value[end]
                end += 1
            names.append(name)
            position = end + 1
        else:
            end = value.find(",", position)
            end = len(value) if end < 0 else end
            names.append(value[position:end].strip())
            position = end
    return names or [""]


def drop_database(server: TestServer, name: str) -> None:
    """Drop ``name``, ending any connection still open to it."""
    with _admin(server) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
