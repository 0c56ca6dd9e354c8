"""Role plan on a real server, checked by acting as each role (never by reading the plan back)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from _connect import connect
from _provision import Provisioned, provision, unique_key
from psycopg import errors, sql
from pydantic import SecretStr

from sigma_db import (
    ConfigurationError,
    DatabaseSettings,
    InsufficientPrivilegeError,
    SigmaDBError,
)
from sigma_db.roles import (
    Login,
    ProductRoles,
    RoleKind,
    plan_roles,
    sync_roles,
)
from sigma_db.testing import TestServer
from sigma_db.topology import Environment, Product, resolve_topology

MIGRATOR, RW, RO = RoleKind.MIGRATOR, RoleKind.RW, RoleKind.RO


def _migrate(p: Provisioned) -> None:
    """What a first migration does, as the migrator's login: tables, a sequence, a function."""
    with p.connect(MIGRATOR) as conn:
        conn.execute(
            "CREATE TABLE packs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)"
        )
        conn.execute("CREATE SEQUENCE audit.ticket_seq")
        conn.execute("CREATE TABLE audit.audit_logs (id bigint, note text)")
        conn.execute(
            "CREATE FUNCTION pack_count() RETURNS bigint LANGUAGE sql AS "
            "'SELECT count(*) FROM packs'"
        )


def test_migrator_objects_are_usable_by_rw_and_ro_without_extra_grants(
    provisioned: Provisioned,
) -> None:
    _migrate(provisioned)
    with provisioned.connect(RW) as conn:
        conn.execute("INSERT INTO packs (name) VALUES ('a'), ('b')")  # identity sequence works
        conn.execute("UPDATE packs SET name = 'c' WHERE name = 'b'")
        conn.execute("DELETE FROM packs WHERE name = 'a'")
        conn.execute("INSERT INTO audit.audit_logs VALUES (nextval('audit.ticket_seq'), 'x')")
        assert conn.execute("SELECT pack_count()").fetchone() == (1,)
    with provisioned.connect(RO) as conn:
        assert conn.execute("SELECT name FROM packs").fetchall() == [("c",)]
        assert conn.execute("SELECT count(*) FROM audit.audit_logs").fetchone() == (1,)
        assert conn.execute("SELECT pack_count()").fetchone() == (1,)
    with provisioned.connect(MIGRATOR) as conn:
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'packs'")
        assert owner.fetchone() == (provisioned.target.roles[MIGRATOR],)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO packs (name) VALUES ('x')",
        "UPDATE packs SET name = 'y'",
        "DELETE FROM packs",
        "TRUNCATE packs",
        "CREATE TABLE more_packs (id int)",
        "CREATE TABLE audit.more_logs (id int)",
        "SELECT nextval('audit.ticket_seq')",
    ],
)
def test_ro_cannot_write_or_create(provisioned: Provisioned, statement: str) -> None:
    _migrate(provisioned)
    with provisioned.connect(RO) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE more_packs (id int)",
        "ALTER TABLE packs ADD COLUMN extra int",
        "DROP TABLE packs",
        "TRUNCATE packs",
        "CREATE INDEX ON packs (name)",
        "CREATE SCHEMA sneaky",
        "ALTER SCHEMA app RENAME TO app2",
    ],
)
def test_rw_cannot_run_ddl(provisioned: Provisioned, statement: str) -> None:
    _migrate(provisioned)
    with provisioned.connect(RW) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


def test_public_cannot_connect_or_create_in_any_product_schema(provisioned: Provisioned) -> None:
    stranger = f"stranger_{uuid.uuid4().hex[:8]}"
    with provisioned.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {stranger} LOGIN PASSWORD 'pw'")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(
            host=provisioned.server.host,
            port=provisioned.server.port,
            dbname=provisioned.admin.name,
            user=stranger,
            password="pw",
        )
    # Even given CONNECT by hand, PUBLIC (which the stranger is part of) may create nowhere.
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT CONNECT ON DATABASE {provisioned.admin.name} TO {stranger}")
    with psycopg.connect(
        host=provisioned.server.host,
        port=provisioned.server.port,
        dbname=provisioned.admin.name,
        user=stranger,
        password="pw",
        autocommit=True,
    ) as conn:
        for schema in (*provisioned.topology.owned_schemas, "public"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"CREATE TABLE {schema}.intruder (id int)")


def test_consolidated_products_cannot_reach_each_other(
    products_db: dict[str, Provisioned],
) -> None:
    lab, sim = products_db["lab"], products_db["sim"]
    assert lab.target.roles[RW] == "edge_lab_rw"  # named from the product DB in every layout
    for p in (lab, sim):
        with p.connect(MIGRATOR) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS isolation_probe (product text)")
            conn.execute("INSERT INTO isolation_probe VALUES (%s)", [p.topology.product.key])
    for me, other in ((lab, sim), (sim, lab)):
        theirs = f"{other.topology.schema}.isolation_probe"
        for kind in RoleKind:
            with me.connect(kind) as conn:
                assert conn.execute("SELECT current_schema()").fetchone() == (me.topology.schema,)
                for statement in (
                    f"SELECT * FROM {theirs}",
                    f"INSERT INTO {theirs} VALUES ('x')",
                    f"CREATE TABLE {other.topology.schema}.x (id int)",
                    f"CREATE TABLE {other.topology.physical_schema('audit')}.x (id int)",
                ):
                    with pytest.raises(errors.InsufficientPrivilege):
                        conn.execute(statement)


def test_second_apply_changes_nothing_and_says_so(provisioned: Provisioned) -> None:
    assert provisioned.plan.changed
    again = sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert not again.changed
    assert "no changes" in again.render()


def test_same_product_in_two_databases_concurrently(
    sigma_postgresql: TestServer, sigma_database: str
) -> None:
    """Roles are cluster-global: two applies racing to create them must both succeed."""

    other = f"t_{uuid.uuid4().hex[:12]}"
    with sigma_postgresql.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    key = unique_key()
    failures: list[BaseException] = []

    def run(database: str) -> None:
        try:
            provision(sigma_postgresql, database, product=key)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(db,)) for db in (sigma_database, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
    finally:
        with sigma_postgresql.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(other)))


def test_drift_is_detected_and_repaired(provisioned: Provisioned) -> None:
    _migrate(provisioned)
    roles = provisioned.target.roles
    db = provisioned.admin.name
    with provisioned.admin_connection() as admin:
        admin.execute(f"REVOKE USAGE ON SCHEMA app FROM {roles[RW]}")
        admin.execute(f"GRANT CREATE ON SCHEMA app TO {roles[RO]}")
        admin.execute(f"REVOKE SELECT ON app.packs FROM {roles[RO]}")
        admin.execute(f"GRANT TRUNCATE ON app.packs TO {roles[RW]}")
        admin.execute(f"ALTER ROLE {roles[RW]} CREATEDB")
        admin.execute(f"ALTER ROLE {provisioned.logins[RO]} IN DATABASE {db} RESET search_path")
        admin.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {roles[MIGRATOR]} IN SCHEMA app "
            f"REVOKE SELECT ON TABLES FROM {roles[RO]}"
        )
        admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        admin.execute(f"GRANT {roles[MIGRATOR]} TO {roles[RW]}")
        admin.execute("GRANT SELECT ON app.packs TO PUBLIC")
        admin.execute("CREATE TABLE app.rw_owned (id int)")
        admin.execute(f"ALTER TABLE app.rw_owned OWNER TO {roles[RW]}")
    plan = sync_roles(provisioned.admin, [provisioned.target], apply=False)
    text = plan.render()
    for expected in (
        f'GRANT USAGE ON SCHEMA "app" TO "{roles[RW]}"',
        f'REVOKE CREATE ON SCHEMA "app" FROM "{roles[RO]}"',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA "app" TO "{roles[RO]}"',
        f'REVOKE TRUNCATE ON TABLE "app"."packs" FROM "{roles[RW]}"',
        f'ALTER ROLE "{roles[RW]}" NOCREATEDB',
        f'ALTER ROLE "{provisioned.logins[RO]}" IN DATABASE "{db}" SET search_path TO "app", '
        '"public"',
        f'IN SCHEMA "app" GRANT SELECT ON TABLES TO "{roles[RO]}"',
        'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC',
        f'REVOKE "{roles[MIGRATOR]}" FROM "{roles[RW]}"',
        'REVOKE SELECT ON TABLE "app"."packs" FROM PUBLIC',
        f'ALTER TABLE "app"."rw_owned" OWNER TO "{roles[MIGRATOR]}"',
    ):
        assert expected in text, expected
    sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    with provisioned.connect(RO) as conn:
        assert conn.execute("SELECT count(*) FROM packs").fetchone() == (0,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE app.x (id int)")
    with provisioned.connect(RW) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("TRUNCATE packs")
        conn.execute("INSERT INTO rw_owned VALUES (1)")  # still usable as a row writer ...
        for ddl in ("ALTER TABLE rw_owned ADD COLUMN x int", "DROP TABLE rw_owned"):
            with pytest.raises(errors.InsufficientPrivilege):  # ... but no longer its owner
                conn.execute(ddl)
    with provisioned.admin_connection() as admin:
        public = admin.execute(
            "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = 'app.packs'::regclass AND a.grantee = 0"
        )
        assert public.fetchone() == (0,)


def test_column_level_grants_are_drift_too(provisioned: Provisioned) -> None:
    # A table's ACL does not show column grants: _ro could write through one unnoticed.
    _migrate(provisioned)
    roles = provisioned.target.roles
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT UPDATE (name), INSERT (id, name) ON app.packs TO {roles[RO]}")
        admin.execute("GRANT SELECT (name) ON app.packs TO PUBLIC")
    text = sync_roles(provisioned.admin, [provisioned.target], apply=False).render()
    for expected in (
        f'REVOKE INSERT ("name"), UPDATE ("name") ON TABLE "app"."packs" FROM "{roles[RO]}"',
        f'REVOKE INSERT ("id") ON TABLE "app"."packs" FROM "{roles[RO]}"',
        'REVOKE SELECT ("name") ON TABLE "app"."packs" FROM PUBLIC',
    ):
        assert expected in text, text
    sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    with provisioned.connect(RO) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("UPDATE packs SET name = 'x'")


def test_login_password_change_is_detected_and_never_shown(
    provisioned: Provisioned, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    new_password = f"n3w-{uuid.uuid4().hex}-'quote\"s"
    login = Login(provisioned.logins[RW], RW, SecretStr(new_password))
    target = ProductRoles(provisioned.topology, (login,))
    plan = sync_roles(provisioned.admin, [target], apply=True)
    assert [s.text for s in plan.statements] == [f"ALTER ROLE \"{login.name}\" PASSWORD '********'"]
    assert not sync_roles(provisioned.admin, [target], apply=True).changed
    shown = " ".join([plan.render(), repr(plan), repr(login), caplog.text])
    assert new_password not in shown
    assert "SCRAM-SHA-256" not in shown
    provisioned.passwords[RW] = new_password
    with provisioned.connect(RW) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (provisioned.target.roles[RW],)


def test_login_attach_sets_role_and_search_path(provisioned: Provisioned) -> None:
    with provisioned.connect(MIGRATOR) as conn:
        row = conn.execute(
            "SELECT current_user, session_user, current_setting('search_path')"
        ).fetchone()
    assert row == (provisioned.target.roles[MIGRATOR], provisioned.logins[MIGRATOR], "app, public")


def test_group_role_name_taken_by_privileged_login_is_one_clear_error(
    sigma_postgresql: TestServer, sigma_database: str
) -> None:
    key = unique_key()
    taken = f"edge_{key}_rw"
    admin = sigma_postgresql.settings(sigma_database, product=key)
    with connect(admin) as conn:
        conn.execute(f"CREATE ROLE {taken} LOGIN SUPERUSER CREATEROLE")
    try:
        with pytest.raises(ConfigurationError) as info:
            sync_roles(admin, [ProductRoles(admin.topology)], apply=True)
        message = str(info.value)
        assert "\n" not in message
        assert f"Role {taken} already exists as a LOGIN role with SUPERUSER, CREATEROLE" in message
        assert f"ALTER ROLE {taken} RENAME TO" in message
    finally:
        with connect(admin) as conn:
            conn.execute(f"DROP ROLE {taken}")


def test_insufficient_privilege_is_one_clear_error(provisioned: Provisioned) -> None:
    as_rw = provisioned.settings(RW)
    other = ProductRoles(
        provisioned.topology.__class__(
            Product.named(unique_key()),
            provisioned.topology.environment,
            provisioned.topology.database,
            "app",
            consolidated=False,
        )
    )
    with pytest.raises(InsufficientPrivilegeError) as info:
        sync_roles(as_rw, [other], apply=True)
    message = str(info.value)
    assert "\n" not in message
    assert "neither SUPERUSER nor CREATEROLE" in message
    assert "DB_USER" in message
    # It names the login DB_USER gave, not the group its sessions act as.
    login, group = provisioned.logins[RW], provisioned.target.roles[RW]
    assert message.startswith(f"DB_USER={login}: {login} (acting as {group}) cannot create"), (
        message
    )
    assert f"instead of {login}" in message


def test_names_are_validated_identifiers() -> None:
    with pytest.raises(ConfigurationError, match="login role name"):
        Login('api"; DROP ROLE x; --', RW)
    with pytest.raises(ConfigurationError, match="not one of migrator, rw, ro"):
        Login("api_user", "admin")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="product name"):
        Product.named("Lab-2")


def test_plan_needs_the_products_database(products_db: dict[str, Provisioned]) -> None:
    lab = products_db["lab"]
    topology = resolve_topology(
        database=f"edge_{unique_key()}", schema=None, environment=Environment.DEV
    )
    with lab.admin_connection() as conn, pytest.raises(ConfigurationError, match="DB_NAME="):
        plan_roles(conn, [ProductRoles(topology)])


def test_createrole_admin_that_owns_the_database(sigma_postgresql: TestServer) -> None:
    """Managed servers give no superuser: a CREATEROLE role owning the database is enough."""
    key = unique_key()
    admin_name, database = f"{key}_admin", f"t_{key}"
    with sigma_postgresql.connect("postgres") as conn:
        conn.execute(f"CREATE ROLE {admin_name} LOGIN CREATEROLE PASSWORD 'adm-pw'")
        conn.execute(f"CREATE DATABASE {database} OWNER {admin_name}")
        try:
            admin = sigma_postgresql.settings(
                database, user=admin_name, password="adm-pw", product=key
            )
            login = Login(f"{key}_api", RW, SecretStr("api-pw"))
            target = ProductRoles(admin.topology, (login,))
            plan = sync_roles(admin, [target], apply=True)
            assert f'GRANT "edge_{key}_migrator" TO CURRENT_USER' in plan.render()
            # not a superuser: cannot read the stored verifier, yet a second apply is a no-op
            assert not sync_roles(admin, [target], apply=True).changed
            assert not sync_roles(admin, [ProductRoles(admin.topology)], apply=True).changed
            changed = Login(login.name, RW, SecretStr("api-pw-2"))
            again = sync_roles(admin, [ProductRoles(admin.topology, (changed,))], apply=True)
            assert [s.text for s in again.statements] == [
                f"ALTER ROLE \"{key}_api\" PASSWORD '********'"
            ]
            login = changed
            with psycopg.connect(
                host=admin.host,
                port=admin.port,
                dbname=database,
                user=login.name,
                password="api-pw-2",
            ) as api:
                assert api.execute("SELECT current_schema()").fetchone() == ("app",)
        finally:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


def _public_or_foreign_grants(admin: psycopg.Connection, relation: str, own: set[str]) -> list:
    """Grantees of ``relation`` other than the product's own roles (PUBLIC shows as None)."""
    return admin.execute(
        "SELECT DISTINCT nullif(a.grantee, 0)::regrole::text FROM pg_class c, "
        "aclexplode(c.relacl) a WHERE c.oid = %s::regclass AND (a.grantee = 0 OR "
        "NOT pg_get_userbyid(a.grantee) = ANY(%s))",
        [relation, sorted(own)],
    ).fetchall()


def test_grants_to_other_products_and_public_are_revoked(
    sigma_postgresql: TestServer, products_db: dict[str, Provisioned]
) -> None:
    """Another product's roles and PUBLIC get nothing in our schemas, by grant or by default."""
    ours = provision(sigma_postgresql, "edge_products", product=unique_key())
    theirs = provision(sigma_postgresql, "edge_products", product=unique_key())
    schema, mine, other = ours.topology.schema, ours.target.roles, theirs.target.roles
    with ours.connect(MIGRATOR) as conn:
        conn.execute("CREATE TABLE t (id int)")
    with ours.admin_connection() as admin:
        admin.execute(f"GRANT USAGE ON SCHEMA {schema} TO {other[RW]}")
        admin.execute(f"GRANT SELECT, TRUNCATE ON {schema}.t TO {other[RW]}")
        admin.execute(f"GRANT SELECT ON {schema}.t TO PUBLIC")
        for grantee in (other[RO], "PUBLIC"):
            admin.execute(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {mine[MIGRATOR]} IN SCHEMA {schema} "
                f"GRANT SELECT ON TABLES TO {grantee}"
            )
        admin.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {mine[MIGRATOR]} GRANT SELECT ON TABLES "
            f"TO {other[RO]}"
        )
    with theirs.connect(RW) as conn:  # the reproduction: the drift is real
        conn.execute(f"TRUNCATE {schema}.t")
    plan = sync_roles(ours.admin, [ours.target], apply=True)
    text = plan.render()
    for expected in (
        f'REVOKE USAGE ON SCHEMA "{schema}" FROM "{other[RW]}"',
        f'REVOKE SELECT, TRUNCATE ON TABLE "{schema}"."t" FROM "{other[RW]}"',
        f'REVOKE SELECT ON TABLE "{schema}"."t" FROM PUBLIC',
        f'IN SCHEMA "{schema}" REVOKE SELECT ON TABLES FROM "{other[RO]}"',
        f'IN SCHEMA "{schema}" REVOKE SELECT ON TABLES FROM PUBLIC',
        f'ALTER DEFAULT PRIVILEGES FOR ROLE "{mine[MIGRATOR]}" REVOKE SELECT ON TABLES '
        f'FROM "{other[RO]}"',
    ):
        assert expected in text, expected
    assert not sync_roles(ours.admin, [ours.target], apply=False).changed
    with theirs.connect(RW) as conn:
        for statement in (f"TRUNCATE {schema}.t", f"SELECT * FROM {schema}.t"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    with ours.connect(MIGRATOR) as conn:
        conn.execute("CREATE TABLE t2 (id int)")
    with ours.admin_connection() as admin:
        own = set(mine.values())
        for relation in (f"{schema}.t", f"{schema}.t2"):
            assert _public_or_foreign_grants(admin, relation, own) == []


def test_a_grant_option_and_the_grants_made_from_it_are_revoked(
    provisioned: Provisioned,
) -> None:
    # The owner's REVOKE cannot reach a grant _rw made from its grant option: apply printed
    # the same REVOKE ... FROM PUBLIC on every run, and PUBLIC kept reading.
    rw = provisioned.target.roles[RW]
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute("CREATE TABLE secrets (id int)")
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT SELECT ON app.secrets TO {rw} WITH GRANT OPTION")
    with provisioned.connect(RW) as conn:
        conn.execute("GRANT SELECT ON app.secrets TO PUBLIC")
    plan = sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON TABLE" in plan.render()
    with provisioned.admin_connection() as admin:
        row = admin.execute(
            "SELECT has_table_privilege('public', 'app.secrets', 'SELECT'), "
            "has_table_privilege(%s, 'app.secrets', 'SELECT WITH GRANT OPTION')",
            (rw,),
        ).fetchone()
    assert row == (False, False)
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    # The same for a schema and a routine.
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute("CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT USAGE ON SCHEMA app TO {rw} WITH GRANT OPTION")
        admin.execute(f"GRANT EXECUTE ON FUNCTION app.answer() TO {rw} WITH GRANT OPTION")
    plan = sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON SCHEMA" in plan.render()
    assert "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON ROUTINE" in plan.render()
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed


def test_one_apply_repairs_grants_made_from_an_option(provisioned: Provisioned) -> None:
    # _ro's SELECT, granted by _rw from its option, goes with the CASCADE: granted again in
    # the same apply. A column grant made from a column option no longer blocks the REVOKE.
    rw, ro = provisioned.target.roles[RW], provisioned.target.roles[RO]
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute("CREATE TABLE legacy (id int, name text)")
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT ALL ON app.legacy TO {rw} WITH GRANT OPTION")
        admin.execute(f"GRANT UPDATE (name) ON app.legacy TO {ro} WITH GRANT OPTION")
    with provisioned.connect(RW) as conn:
        conn.execute(f"GRANT SELECT ON app.legacy TO {ro}")
    with provisioned.connect(RO) as conn:
        conn.execute("GRANT UPDATE (name) ON app.legacy TO PUBLIC")
    sync_roles(provisioned.admin, [provisioned.target], apply=True)
    with provisioned.connect(RO) as conn:
        assert conn.execute("SELECT count(*) FROM legacy").fetchone() == (0,)
    with provisioned.admin_connection() as admin:
        row = admin.execute(
            "SELECT has_column_privilege('public', 'app.legacy', 'name', 'UPDATE')"
        ).fetchone()
    assert row == (False,)
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed


def test_column_and_database_grants_made_from_an_option_are_revoked(
    provisioned: Provisioned,
) -> None:
    # Revoking _rw's table-level option with CASCADE leaves the column grants it made, and the
    # owner's REVOKE cannot reach them (nor CONNECT _rw gave PUBLIC from a database option):
    # apply printed the same REVOKEs on every run, and PUBLIC kept them.
    rw, ro = provisioned.target.roles[RW], provisioned.target.roles[RO]
    db = provisioned.admin.name
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute("CREATE TABLE wallets (id int, owner_name text, balance int)")
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT SELECT, UPDATE ON app.wallets TO {rw} WITH GRANT OPTION")
        admin.execute(f'GRANT CONNECT ON DATABASE "{db}" TO {rw} WITH GRANT OPTION')
    with provisioned.connect(RW) as conn:
        conn.execute("GRANT SELECT (owner_name) ON app.wallets TO PUBLIC")
        conn.execute(f"GRANT UPDATE (balance) ON app.wallets TO {ro}")
        conn.execute(f'GRANT CONNECT ON DATABASE "{db}" TO PUBLIC')
        conn.execute(f'GRANT CONNECT ON DATABASE "{db}" TO {ro}')  # ro's own CONNECT, via _rw
    with provisioned.admin_connection() as admin:
        admin.execute(f'REVOKE CONNECT ON DATABASE "{db}" FROM {ro}')  # now only via _rw
    plan = sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert "REVOKE GRANT OPTION FOR ALL PRIVILEGES ON DATABASE" in plan.render()
    with provisioned.admin_connection() as admin:
        row = admin.execute(
            "SELECT has_column_privilege('public', 'app.wallets', 'owner_name', 'SELECT'), "
            "has_column_privilege(%s, 'app.wallets', 'balance', 'UPDATE'), "
            "has_database_privilege('public', current_database(), 'CONNECT'), "
            "has_database_privilege(%s, current_database(), 'CONNECT WITH GRANT OPTION')",
            (ro, rw),
        ).fetchone()
    assert row == (False, False, False, False)
    with provisioned.connect(RO) as conn:  # the CASCADE took ro's CONNECT; apply gave it back
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed


def test_default_privileges_given_with_grant_option_lose_the_option(
    provisioned: Provisioned,
) -> None:
    rw, migrator = provisioned.target.roles[RW], provisioned.target.roles[MIGRATOR]
    with provisioned.admin_connection() as admin:
        admin.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {migrator} IN SCHEMA app "
            f"GRANT SELECT ON TABLES TO {rw} WITH GRANT OPTION"
        )
        admin.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {migrator} "
            f"GRANT USAGE ON SEQUENCES TO {rw} WITH GRANT OPTION"
        )
    text = sync_roles(provisioned.admin, [provisioned.target], apply=True).render()
    assert 'IN SCHEMA "app" REVOKE GRANT OPTION FOR SELECT ON TABLES' in text
    assert "REVOKE GRANT OPTION FOR USAGE ON SEQUENCES" in text
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute("CREATE TABLE fresh (id bigint GENERATED ALWAYS AS IDENTITY)")
        conn.execute("CREATE SEQUENCE audit.fresh_seq")
    with provisioned.admin_connection() as admin:
        row = admin.execute(
            "SELECT has_table_privilege(%s, 'app.fresh', 'SELECT'), "
            "has_table_privilege(%s, 'app.fresh', 'SELECT WITH GRANT OPTION'), "
            "has_sequence_privilege(%s, 'audit.fresh_seq', 'USAGE WITH GRANT OPTION')",
            (rw, rw, rw),
        ).fetchone()
    assert row == (True, False, False)
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed


def test_objects_not_owned_by_the_migrator_are_handed_to_it(provisioned: Provisioned) -> None:
    """A table the superuser made, or one _rw owns, would let _rw ALTER/DROP: fix the owner."""
    roles = provisioned.target.roles
    with provisioned.admin_connection() as admin:
        admin.execute("CREATE TABLE app.by_admin (id bigint GENERATED ALWAYS AS IDENTITY, v text)")
        admin.execute("CREATE TABLE app.events (at date) PARTITION BY RANGE (at)")
        admin.execute(
            "CREATE TABLE app.events_2024 PARTITION OF app.events "
            "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
        )
        admin.execute("CREATE VIEW app.admin_view AS SELECT id FROM app.by_admin")
        admin.execute("CREATE MATERIALIZED VIEW app.admin_mv AS SELECT 1 AS one")
        admin.execute("CREATE SEQUENCE audit.loose_seq")
        admin.execute(
            "CREATE FUNCTION app.f(a integer, b text[]) RETURNS int LANGUAGE sql AS 'SELECT a'"
        )
        for name in ("events", "events_2024"):
            admin.execute(f"ALTER TABLE app.{name} OWNER TO {roles[RW]}")
        admin.execute(f"ALTER FUNCTION app.f(integer, text[]) OWNER TO {roles[RW]}")
    text = sync_roles(provisioned.admin, [provisioned.target], apply=True).render()
    migrator = roles[MIGRATOR]
    for expected in (
        f'ALTER TABLE "app"."by_admin" OWNER TO "{migrator}"',
        f'ALTER TABLE "app"."events" OWNER TO "{migrator}"',
        f'ALTER TABLE "app"."events_2024" OWNER TO "{migrator}"',
        f'ALTER VIEW "app"."admin_view" OWNER TO "{migrator}"',
        f'ALTER MATERIALIZED VIEW "app"."admin_mv" OWNER TO "{migrator}"',
        f'ALTER SEQUENCE "audit"."loose_seq" OWNER TO "{migrator}"',
        f'ALTER ROUTINE "app"."f"("pg_catalog"."int4", "pg_catalog"."_text") OWNER TO "{migrator}"',
    ):
        assert expected in text, expected
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    with provisioned.connect(RW) as conn:
        conn.execute("INSERT INTO by_admin (v) VALUES ('x')")  # identity sequence followed
        conn.execute("INSERT INTO events VALUES ('2024-05-01')")
        assert conn.execute("SELECT f(1, '{}')").fetchone() == (1,)
        for ddl in (
            "DROP TABLE by_admin",
            "DROP TABLE events_2024",
            "ALTER TABLE events ADD COLUMN x int",
            "DROP FUNCTION f(integer, text[])",
            "DROP VIEW admin_view",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(ddl)
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute("ALTER TABLE by_admin ADD COLUMN extra int")
        conn.execute("REFRESH MATERIALIZED VIEW admin_mv")


def test_public_cannot_execute_new_functions(provisioned: Provisioned) -> None:
    """A SECURITY DEFINER function a migration creates is not callable by just anyone."""
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute(
            "CREATE FUNCTION definer() RETURNS text SECURITY DEFINER LANGUAGE sql "
            "AS 'SELECT current_user::text'"
        )
    stranger = f"stranger_{uuid.uuid4().hex[:8]}"
    with provisioned.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {stranger} LOGIN PASSWORD 'pw'")
        admin.execute(f"GRANT CONNECT ON DATABASE {provisioned.admin.name} TO {stranger}")
        admin.execute(f"GRANT USAGE ON SCHEMA app TO {stranger}")
    with (
        psycopg.connect(
            host=provisioned.server.host,
            port=provisioned.server.port,
            dbname=provisioned.admin.name,
            user=stranger,
            password="pw",
            autocommit=True,
        ) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT app.definer()")
    for kind in (RW, RO):
        with provisioned.connect(kind) as conn:
            row = conn.execute("SELECT definer()").fetchone()
            assert row == (provisioned.target.roles[MIGRATOR],)


def test_partition_maintenance_as_the_migrator_moves_rows_out_of_default(
    provisioned: Provisioned,
) -> None:
    # The role the partitioning guide says runs maintenance: moving rows stages them in a
    # temporary table, so the migrator needs TEMPORARY on the database.
    from datetime import UTC, datetime, timedelta

    from sigma_db import create_engine
    from sigma_db.partitions import PartitionManager
    from sigma_db.partitions.examples import ExampleBase, Signal

    engine = create_engine(provisioned.settings(MIGRATOR))
    ExampleBase.metadata.create_all(engine, tables=[Signal.__table__])
    engine.dispose()
    now = datetime.now(UTC)
    with provisioned.connect(RW) as conn:  # beyond the premade window: lands in DEFAULT
        conn.execute(
            "INSERT INTO signals (observed_at, symbol, value) VALUES (%s, 'A', 1)",
            (now + timedelta(days=10),),
        )
    report = PartitionManager(provisioned.settings(MIGRATOR), Signal).maintain(
        now + timedelta(days=5)
    )
    assert report.problem_lines() == []
    with provisioned.connect(RO) as conn:
        assert conn.execute("SELECT count(*) FROM signals_default").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM signals").fetchone() == (1,)


def test_partition_maintenance_as_a_superuser_hands_its_partitions_to_the_owner(
    provisioned: Provisioned,
) -> None:
    # Run by hand as postgres, maintenance made partitions postgres owned, and the migrator's
    # next run could not detach them ("must be owner"); they are handed to the parent's owner.
    from datetime import UTC, datetime, timedelta

    from sigma_db import create_engine
    from sigma_db.partitions import PartitionManager
    from sigma_db.partitions.examples import ExampleBase, Signal

    engine = create_engine(provisioned.settings(MIGRATOR))
    ExampleBase.metadata.create_all(engine, tables=[Signal.__table__])
    engine.dispose()
    later = datetime.now(UTC) + timedelta(days=20)
    report = PartitionManager(provisioned.admin, Signal).maintain(later)
    assert report.problem_lines() == []
    with provisioned.admin_connection() as admin:
        owners = admin.execute(
            "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'app.signals'::regclass"
        ).fetchall()
    assert owners == [(provisioned.target.roles[MIGRATOR],)]
    with provisioned.connect(RW) as conn:
        conn.execute(
            "INSERT INTO signals (observed_at, symbol, value) VALUES (%s, 'A', 1)",
            (later,),
        )
    assert (
        PartitionManager(provisioned.settings(MIGRATOR), Signal)
        .maintain(later + timedelta(days=400))
        .problem_lines()
        == []
    )


def test_rw_may_create_temporary_tables_ro_may_not(provisioned: Provisioned) -> None:
    with provisioned.connect(RW) as conn:
        conn.execute("CREATE TEMP TABLE staging (id int)")
        conn.execute("INSERT INTO staging VALUES (1)")
    with provisioned.connect(RO) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("CREATE TEMP TABLE staging (id int)")


def test_search_path_is_set_on_logins_not_on_nologin_groups(provisioned: Provisioned) -> None:
    """Role settings apply to the role that logs in, never through membership or SET ROLE."""
    text = provisioned.plan.render()
    for kind, group in provisioned.target.roles.items():
        assert f'ALTER ROLE "{group}" IN DATABASE' not in text
        assert f'ALTER ROLE "{provisioned.logins[kind]}" IN DATABASE' in text
        with provisioned.connect(kind) as conn:
            row = conn.execute(
                "SELECT current_schema(), source FROM pg_settings WHERE name = 'search_path'"
            ).fetchone()
            assert row == ("app", "database user")
    # An externally created login (Vault's dynamic users) is attached without a password.
    external = f"v_{uuid.uuid4().hex[:10]}"
    with provisioned.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {external} LOGIN PASSWORD 'vault-pw'")
    target = ProductRoles(provisioned.topology, (Login(external, RO),))
    sync_roles(provisioned.admin, [target], apply=True)
    assert not sync_roles(provisioned.admin, [target], apply=False).changed
    with psycopg.connect(
        host=provisioned.server.host,
        port=provisioned.server.port,
        dbname=provisioned.admin.name,
        user=external,
        password="vault-pw",
    ) as conn:
        row = conn.execute("SELECT current_user, current_schema()").fetchone()
        assert row == (provisioned.target.roles[RO], "app")


def test_only_concurrency_errors_are_retried_then_one_clear_error(
    provisioned: Provisioned, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sigma_db.roles as roles_module

    calls: list[str] = []

    def failing(error: Exception):
        def execute(conn: psycopg.Connection, statement, plan) -> None:
            calls.append(statement.text)
            raise error

        return execute

    with provisioned.admin_connection() as admin:
        admin.execute(f"ALTER ROLE {provisioned.target.roles[RO]} CREATEDB")  # something to do
    monkeypatch.setattr(
        roles_module, "_execute", failing(errors.InternalError_("tuple concurrently updated"))
    )
    with pytest.raises(SigmaDBError) as info:
        sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert len(calls) == 3
    message = str(info.value)
    assert "\n" not in message
    assert "concurrently" in message
    assert "re-run" in message
    calls.clear()
    monkeypatch.setattr(
        roles_module, "_execute", failing(errors.InternalError_("could not open relation"))
    )
    with pytest.raises(SigmaDBError, match="could not open relation"):
        sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert len(calls) == 1


# -- logins: which a plan covers, and what they keep


@pytest.fixture
def elsewhere(sigma_postgresql: TestServer) -> Iterator[Provisioned]:
    """Another product's roles and one login per kind, in a database of its own."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    with sigma_postgresql.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        yield provision(sigma_postgresql, database)
    finally:
        with sigma_postgresql.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))


def _memberships(p: Provisioned, login: str) -> set[str]:
    with p.admin_connection() as admin:
        rows = admin.execute(
            "SELECT g.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid "
            "WHERE a.member = %s::regrole",
            [login],
        ).fetchall()
    return {row[0] for row in rows}


def test_another_products_login_is_not_taken_over(
    provisioned: Provisioned, elsewhere: Provisioned
) -> None:
    # The audit: --login sim_rw:rw for Lab changed Sim's login's password and made it Lab's
    # too, so one login served two products.
    theirs, their_group = elsewhere.logins[RW], elsewhere.target.roles[RW]
    taken = ProductRoles(provisioned.topology, (Login(theirs, RW, SecretStr("t4ken-pw-x")),))
    with pytest.raises(ConfigurationError) as info:
        sync_roles(provisioned.admin, [taken], apply=True)
    message = str(info.value)
    assert "\n" not in message
    assert "t4ken-pw-x" not in message
    assert f"Login {theirs} is a member of {their_group}: it belongs to another product" in (
        message
    )
    assert f'REVOKE "{their_group}" FROM "{theirs}"' in message
    assert "choose another login name" in message
    assert _memberships(provisioned, theirs) == {their_group}
    with elsewhere.connect(RW) as conn:  # its password is the one it had
        assert conn.execute("SELECT current_user").fetchone() == (their_group,)


def test_a_login_serving_two_products_is_seen_by_both(
    provisioned: Provisioned, elsewhere: Provisioned
) -> None:
    theirs, ours = elsewhere.logins[RW], provisioned.target.roles[RW]
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT {ours} TO {theirs}")
        # A role setting is the login's own to write: it decides nothing.
        admin.execute(
            f"ALTER ROLE {theirs} IN DATABASE {provisioned.admin.name} SET role TO {ours}"
        )
    # A member of both products' groups: neither plan may take it from the other.
    for p in (provisioned, elsewhere):
        with pytest.raises(ConfigurationError) as info:
            sync_roles(p.admin, [ProductRoles(p.topology)], apply=False)
        message = str(info.value)
        assert "\n" not in message
        assert f"Login {theirs} is a member of " in message
        assert "a login serves one product" in message
        assert f'REVOKE "{ours}" FROM "{theirs}"' in message


def test_login_drift_is_seen_without_naming_the_logins(provisioned: Provisioned) -> None:
    # The audit: with no --login, plan said "no changes" while the read-only login could
    # SET ROLE to the migrator and DROP tables.
    _migrate(provisioned)
    roles, db = provisioned.target.roles, provisioned.admin.name
    ro_login, rw_login = provisioned.logins[RO], provisioned.logins[RW]
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT {roles[MIGRATOR]} TO {ro_login}")
        admin.execute(f"ALTER ROLE {rw_login} IN DATABASE {db} RESET search_path")
    bare = ProductRoles(provisioned.topology)
    # Which of its two groups it serves is not the plan's to guess (its role setting is its
    # own to write): a conflict naming the fix, not "no changes".
    with pytest.raises(ConfigurationError) as info:
        sync_roles(provisioned.admin, [bare], apply=False)
    assert f'REVOKE "{roles[MIGRATOR]}" FROM "{ro_login}"' in str(info.value)
    assert f"--login {ro_login}:KIND" in str(info.value)
    text = sync_roles(provisioned.admin, [provisioned.target], apply=False).render()
    for expected in (
        f'REVOKE "{roles[MIGRATOR]}" FROM "{ro_login}"',
        f'ALTER ROLE "{rw_login}" IN DATABASE "{db}" SET search_path TO "app", "public"',
    ):
        assert expected in text, text
    sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert not sync_roles(provisioned.admin, [bare], apply=False).changed
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    with provisioned.connect(RO) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(f"SET ROLE {roles[MIGRATOR]}")


@pytest.mark.parametrize("named", [True, False])
def test_a_login_keeps_no_membership_but_its_group(
    provisioned: Provisioned, elsewhere: Provisioned, named: bool
) -> None:
    # With --login lab_ro:ro only the product's own other groups were revoked: another
    # product's group and predefined roles stayed, reachable by SET ROLE (NONE: the login itself).
    # Found without --login, a login in another product's group too is a conflict (below);
    # a predefined role is revoked either way.
    _migrate(provisioned)
    ro_login, their_group = provisioned.logins[RO], elsewhere.target.roles[RW]
    extra = [their_group, "pg_write_all_data"] if named else ["pg_write_all_data"]
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT {', '.join(extra)} TO {ro_login}")
    with provisioned.connect(RO) as conn:  # the reproduction: the read-only login writes
        conn.execute("SET ROLE NONE")
        conn.execute("INSERT INTO packs (name) VALUES ('x')")
    target = provisioned.target if named else ProductRoles(provisioned.topology)
    text = sync_roles(provisioned.admin, [target], apply=True).render()
    for other in extra:
        assert f'REVOKE "{other}" FROM "{ro_login}"' in text, text
        assert f"drift: login {ro_login} is a member of {other}" in text
    assert _memberships(provisioned, ro_login) == {provisioned.target.roles[RO]}
    assert not sync_roles(provisioned.admin, [target], apply=False).changed
    with provisioned.connect(RO) as conn:
        conn.execute("SET ROLE NONE")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("INSERT INTO packs (name) VALUES ('y')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"SET ROLE {their_group}")


def test_logins_made_outside_sigma_db_are_found_by_membership(
    provisioned: Provisioned, elsewhere: Provisioned
) -> None:
    roles, db = provisioned.target.roles, provisioned.admin.name
    suffix = uuid.uuid4().hex[:8]
    vault, both, visitor = f"v-token-rw-{suffix}", f"both_{suffix}", f"visitor_{suffix}"
    with provisioned.admin_connection() as admin:
        # Vault's creation statement without the settings lines; a name --login would refuse.
        admin.execute(f"CREATE ROLE \"{vault}\" LOGIN PASSWORD 'vault-pw' IN ROLE {roles[RW]}")
        admin.execute(f"CREATE ROLE {both} LOGIN IN ROLE {roles[RW]}, {roles[RO]}")
        # Its own role setting names another product's group: a claim anyone can write.
        admin.execute(f"CREATE ROLE {visitor} LOGIN IN ROLE {roles[RO]}")
        admin.execute(
            f"ALTER ROLE {visitor} IN DATABASE {db} SET role TO {elsewhere.target.roles[RO]}"
        )
    bare = ProductRoles(provisioned.topology)
    with pytest.raises(ConfigurationError) as info:
        sync_roles(provisioned.admin, [bare], apply=False)
    message = str(info.value)
    assert "\n" not in message
    assert f"Login {both} is a member of {roles[RO]}, {roles[RW]}" in message
    assert f"sigma-db roles apply --login {both}:KIND" in message
    with provisioned.admin_connection() as admin:  # an administrator says which
        admin.execute(f"REVOKE {roles[RW]} FROM {both}")
    text = sync_roles(provisioned.admin, [bare], apply=True).render()
    for expected in (
        f'ALTER ROLE "{vault}" IN DATABASE "{db}" SET role TO \'{roles[RW]}\'',
        f'ALTER ROLE "{vault}" IN DATABASE "{db}" SET search_path TO "app", "public"',
        f'ALTER ROLE "{visitor}" IN DATABASE "{db}" SET role TO \'{roles[RO]}\'',
    ):
        assert expected in text, text
    assert "PASSWORD" not in text
    assert not sync_roles(provisioned.admin, [bare], apply=False).changed
    assert _memberships(provisioned, both) == {roles[RO]}
    assert _memberships(provisioned, visitor) == {roles[RO]}
    with psycopg.connect(
        host=provisioned.server.host,
        port=provisioned.server.port,
        dbname=db,
        user=vault,
        password="vault-pw",
    ) as conn:
        row = conn.execute("SELECT current_user, current_schema()").fetchone()
        assert row == (roles[RW], "app")


def test_a_role_setting_a_login_writes_itself_gives_it_nothing(provisioned: Provisioned) -> None:
    # A third review: any login could ALTER ROLE itself IN DATABASE ... SET role TO the
    # migrator, and the next plan granted it the migrator group (or, set for two products,
    # stopped both products' plans; or, moved to another database, took it out of every check).
    mallory = f"mallory_{uuid.uuid4().hex[:8]}"
    roles, db = provisioned.target.roles, provisioned.admin.name
    with provisioned.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {mallory} LOGIN PASSWORD 'pw-m'")
    with psycopg.connect(
        host=provisioned.server.host,
        port=provisioned.server.port,
        dbname="postgres",  # it need not even connect to the product's database
        user=mallory,
        password="pw-m",
        autocommit=True,
    ) as conn:
        conn.execute(f"ALTER ROLE {mallory} IN DATABASE {db} SET role TO '{roles[MIGRATOR]}'")
        conn.execute(f"ALTER ROLE {mallory} IN DATABASE postgres SET role TO '{roles[RW]}'")
    # ... and a login of the product moving its own setting elsewhere stays checked.
    rw_login = provisioned.logins[RW]
    with provisioned.connect(RW) as conn:
        conn.execute("SET ROLE NONE")
        conn.execute(f"ALTER ROLE {rw_login} IN DATABASE {db} RESET role")
        conn.execute(f"ALTER ROLE {rw_login} IN DATABASE postgres SET role TO '{roles[RW]}'")
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT pg_write_all_data TO {rw_login}")
    bare = ProductRoles(provisioned.topology)
    text = sync_roles(provisioned.admin, [bare], apply=True).render()
    assert mallory not in text, text
    assert f'REVOKE "pg_write_all_data" FROM "{rw_login}"' in text, text
    assert f'ALTER ROLE "{rw_login}" IN DATABASE "{db}" SET role TO \'{roles[RW]}\'' in text
    assert _memberships(provisioned, mallory) == set()
    assert not sync_roles(provisioned.admin, [bare], apply=False).changed


def test_a_login_holding_its_group_with_admin_option_loses_the_option(
    provisioned: Provisioned,
) -> None:
    # It could grant the group to anyone, whom the next plan then took for a product login.
    roles, ro_login = provisioned.target.roles, provisioned.logins[RO]
    with provisioned.admin_connection() as admin:
        admin.execute(f"GRANT {roles[RO]} TO {ro_login} WITH ADMIN OPTION")
    text = sync_roles(provisioned.admin, [ProductRoles(provisioned.topology)], apply=True).render()
    assert f'REVOKE ADMIN OPTION FOR "{roles[RO]}" FROM "{ro_login}"' in text, text
    with provisioned.admin_connection() as admin:
        held = admin.execute(
            "SELECT a.admin_option FROM pg_auth_members a "
            "WHERE a.member = %s::regrole AND a.roleid = %s::regrole",
            [ro_login, roles[RO]],
        ).fetchall()
    assert held == [(False,)]


def test_database_privileges_are_the_products_roles_only(
    provisioned: Provisioned, elsewhere: Provisioned
) -> None:
    # The audit: CONNECT given to another product's role or to a login was never revoked;
    # extra CREATE/TEMPORARY of the product's own roles were.
    db, their_ro = provisioned.admin.name, elsewhere.target.roles[RO]
    rw_login = provisioned.logins[RW]
    person = f"person_{uuid.uuid4().hex[:8]}"
    with provisioned.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {person} LOGIN PASSWORD 'person-pw'")
        admin.execute(f'GRANT CONNECT ON DATABASE "{db}" TO {their_ro}')
        admin.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{db}" TO {rw_login}')
        admin.execute(f'GRANT CONNECT, CREATE ON DATABASE "{db}" TO {person} WITH GRANT OPTION')
    person_dsn = {
        "host": provisioned.server.host,
        "port": provisioned.server.port,
        "dbname": db,
        "password": "person-pw",
        "autocommit": True,
    }
    with psycopg.connect(user=person, **person_dsn) as conn:  # from its option: CASCADE's
        conn.execute(f'GRANT CONNECT ON DATABASE "{db}" TO {elsewhere.target.roles[RW]}')
    text = sync_roles(provisioned.admin, [provisioned.target], apply=True).render()
    for expected in (
        f'REVOKE CONNECT ON DATABASE "{db}" FROM "{their_ro}"',
        f'REVOKE CONNECT, TEMPORARY ON DATABASE "{db}" FROM "{rw_login}"',
        f'REVOKE CONNECT, CREATE ON DATABASE "{db}" FROM "{person}"',
    ):
        assert expected in text, text
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    with provisioned.admin_connection() as admin:
        holders = admin.execute(
            "SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_database d, aclexplode(d.datacl) a "
            "WHERE d.datname = current_database() AND a.grantee <> d.datdba"
        ).fetchall()
    assert {row[0] for row in holders} == set(provisioned.target.roles.values())
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(user=person, **person_dsn)
    with provisioned.connect(RW) as conn:  # the login connects through its group
        conn.execute("CREATE TEMP TABLE staging (id int)")


def test_consolidated_database_keeps_each_products_connect(
    sigma_postgresql: TestServer, products_db: dict[str, Provisioned]
) -> None:
    # In edge_products the products share the database: only grantees that are no product's
    # group role lose their privileges on it.
    ours = provision(sigma_postgresql, "edge_products", product=unique_key())
    theirs = provision(sigma_postgresql, "edge_products", product=unique_key())
    login = ours.logins[RW]
    with ours.admin_connection() as admin:
        admin.execute(f"GRANT CONNECT ON DATABASE edge_products TO {login}")
    text = sync_roles(ours.admin, [ours.target], apply=True).render()
    assert f'REVOKE CONNECT ON DATABASE "edge_products" FROM "{login}"' in text, text
    # (Other tests' leftover logins on this shared server may lose theirs too; no group does.)
    groups = [g for p in (ours, theirs, *products_db.values()) for g in p.target.roles.values()]
    database_lines = [line for line in text.splitlines() if "ON DATABASE" in line]
    assert not [line for line in database_lines if any(f'"{g}"' in line for g in groups)], text
    for p in (ours, theirs, *products_db.values()):
        # (lab's and sim's groups may have gained members on this shared server since their
        # last apply: the test plugin's logins. Apply, then the plan converges.)
        sync_roles(p.admin, [p.target], apply=True)
        assert not sync_roles(p.admin, [p.target], apply=False).changed
        for kind in RoleKind:
            with p.connect(kind) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    "name", ["public", "none", "pg_x", "current_user", "session_user", "current_role"]
)
def test_reserved_role_names_are_refused_as_logins(name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Login(name, RW)
    message = str(info.value)
    assert "\n" not in message
    assert f"login role name {name!r} is reserved by PostgreSQL" in message


def test_a_found_login_two_products_could_claim_is_a_conflict(
    sigma_postgresql: TestServer, products_db: dict[str, Provisioned]
) -> None:
    # Planned together, each product would attach it and revoke the other's group.
    ours = provision(sigma_postgresql, "edge_products", product=unique_key())
    theirs = provision(sigma_postgresql, "edge_products", product=unique_key())
    shared, boss = f"shared_{uuid.uuid4().hex[:8]}", f"boss_{uuid.uuid4().hex[:8]}"
    with ours.admin_connection() as admin:
        admin.execute(
            f"CREATE ROLE {shared} LOGIN IN ROLE {ours.target.roles[RW]}, {theirs.target.roles[RW]}"
        )
    try:
        with pytest.raises(ConfigurationError) as info:
            sync_roles(ours.admin, [ours.target, theirs.target], apply=False)
        message = str(info.value)
        assert f"Login {shared} is a member of " in message
        assert f"--login {shared}:KIND" in message
        # A login found in a group with BYPASSRLS is not stripped: one line saying what to run.
        with ours.admin_connection() as admin:
            admin.execute(f"DROP ROLE {shared}")
            admin.execute(f"CREATE ROLE {boss} LOGIN BYPASSRLS IN ROLE {ours.target.roles[RO]}")
        with pytest.raises(ConfigurationError) as info:
            sync_roles(ours.admin, [ours.target], apply=False)
        message = str(info.value)
        assert "\n" not in message
        assert f"Login role {boss} has BYPASSRLS" in message
        assert f'REVOKE "{ours.target.roles[RO]}" FROM "{boss}"' in message
        # A superuser in a group administers it (a DBA): not one of the product's logins.
        with ours.admin_connection() as admin:
            admin.execute(f"ALTER ROLE {boss} NOBYPASSRLS SUPERUSER")
        plan = sync_roles(ours.admin, [ours.target], apply=False)
        assert boss not in plan.render()
    finally:
        with ours.admin_connection() as admin:
            admin.execute(f"DROP ROLE IF EXISTS {shared}")
            admin.execute(f"DROP ROLE IF EXISTS {boss}")


def _createrole_owner(server: TestServer) -> tuple[str, DatabaseSettings]:
    """A new product database owned by a CREATEROLE login (roles.md's non-superuser admin).

    Returns the product key and the owner's settings; the owner's login is ``<key>_dba``.
    """
    key = unique_key()
    with server.connect() as admin:
        admin.execute(f"CREATE ROLE {key}_dba LOGIN CREATEROLE PASSWORD 'dba-pw'")
        admin.execute(f"CREATE DATABASE db_{key} OWNER {key}_dba")
    owner = server.settings(
        f"db_{key}", user=f"{key}_dba", password=SecretStr("dba-pw"), product=key
    )
    return key, owner


def test_those_who_administer_the_groups_are_not_its_logins(sigma_postgresql: TestServer) -> None:
    # The CREATEROLE owner of the database makes itself a member of the migrator, and Vault's
    # connection user holds the groups WITH ADMIN OPTION to hand them out: taken for the
    # product's logins, each made every later plan a conflict (or rewrote their settings).
    key, owner = _createrole_owner(sigma_postgresql)
    database, vault, granter = owner.name, f"{key}_vault", f"{key}_granter"
    superuser = sigma_postgresql.settings(database, product=key)
    groups = ProductRoles(owner.topology).roles
    sync_roles(owner, [ProductRoles(owner.topology)], apply=True)
    with sigma_postgresql.connect(database) as admin:
        admin.execute(f"CREATE ROLE {vault} LOGIN CREATEROLE")
        admin.execute(f"GRANT {groups[RW]} TO {vault} WITH ADMIN OPTION")
        admin.execute(f"CREATE ROLE {granter} LOGIN CREATEROLE")  # Vault on PostgreSQL 16
        admin.execute(f"GRANT {groups[RW]}, {groups[RO]} TO {granter} WITH ADMIN OPTION")
    for settings in (owner, superuser):
        plan = sync_roles(settings, [ProductRoles(settings.topology)], apply=False)
        assert not plan.changed, plan.render()


def test_a_login_in_two_groups_gets_a_fix_it_can_run(provisioned: Provisioned) -> None:
    # Vault's names (v-token-...) are refused by --login, and the SQL offered was unquoted.
    groups = provisioned.target.roles
    name = f"v-token-{uuid.uuid4().hex[:6]}-AbC"
    with provisioned.admin_connection() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL("GRANT {}, {} TO {}").format(
                sql.Identifier(groups[RW]), sql.Identifier(groups[RO]), sql.Identifier(name)
            )
        )
    with pytest.raises(ConfigurationError) as caught:
        sync_roles(provisioned.admin, [provisioned.target], apply=False)
    message = str(caught.value)
    assert "--login" not in message, message
    revoke = f'REVOKE "{groups[RW]}" FROM "{name}"'
    assert revoke in message, message
    with provisioned.admin_connection() as admin:
        admin.execute(revoke)  # runs as written
    sync_roles(provisioned.admin, [provisioned.target], apply=True)
    plan = sync_roles(provisioned.admin, [provisioned.target], apply=False)
    assert not plan.changed, plan.render()
    with provisioned.admin_connection() as admin:
        held = admin.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
            (name,),
        ).fetchall()
    assert held == [(groups[RO],)]


def _login_works(p: Provisioned, name: str, password: str) -> bool:
    try:
        with psycopg.connect(
            host=p.server.host,
            port=p.server.port,
            dbname=p.admin.name,
            user=name,
            password=password,
            autocommit=True,
        ) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def _converges(p: Provisioned) -> None:
    sync_roles(p.admin, [p.target], apply=True)
    plan = sync_roles(p.admin, [p.target], apply=False)
    assert not plan.changed, plan.render()


def test_logins_found_in_the_catalog_are_kept_working(provisioned: Provisioned) -> None:
    # A second review: a login named like a group (edge_..._bi_ro) lost its group; a
    # NOINHERIT login lost its own CONNECT (it cannot use its group's); a login with a role
    # setting for a non-Sigma role in another database was taken for another product's; an
    # administrator's (Vault's connection user's) CONNECT was revoked.
    p, groups, key = provisioned, provisioned.target.roles, unique_key()
    bi, noinherit, analyst, vault = f"edge_{key}_bi_ro", f"{key}_ni", f"{key}_bi", f"{key}_vault"
    with p.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {bi} LOGIN PASSWORD 'pw-bi' IN ROLE {groups[RO]}")
        admin.execute(f"CREATE ROLE {noinherit} LOGIN NOINHERIT PASSWORD 'pw-ni'")
        admin.execute(f"GRANT {groups[RW]} TO {noinherit}")
        admin.execute(f"GRANT CONNECT ON DATABASE {p.admin.name} TO {noinherit}")
        admin.execute(f"CREATE ROLE {analyst} LOGIN PASSWORD 'pw-an' IN ROLE {groups[RO]}")
        admin.execute(f"ALTER ROLE {analyst} IN DATABASE postgres SET role TO pg_monitor")
        admin.execute(f"CREATE ROLE {vault} LOGIN CREATEROLE PASSWORD 'pw-v'")
        admin.execute(f"GRANT CONNECT ON DATABASE {p.admin.name} TO {vault}")
    _converges(p)
    for name, password in (
        (bi, "pw-bi"),
        (noinherit, "pw-ni"),
        (analyst, "pw-an"),
        (vault, "pw-v"),
    ):
        assert _login_works(p, name, password), name
    assert _memberships(p, bi) == {groups[RO]}
    assert _memberships(p, analyst) == {groups[RO]}


def test_a_login_reaching_a_group_through_another_role_loses_it(provisioned: Provisioned) -> None:
    # A team role holding the migrator group gave its members DDL, and plan said no changes.
    p, groups, key = provisioned, provisioned.target.roles, unique_key()
    with p.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {key}_team NOLOGIN IN ROLE {groups[MIGRATOR]}")
        admin.execute(f"CREATE ROLE {key}_alice LOGIN PASSWORD 'pw-a' IN ROLE {key}_team")
        # ... or through a login of the product: a role that is a member of the login
        admin.execute(f"CREATE ROLE {key}_bob LOGIN IN ROLE {p.logins[MIGRATOR]}")
    plan = sync_roles(p.admin, [p.target], apply=False).render()
    assert f'REVOKE "{groups[MIGRATOR]}" FROM "{key}_team"' in plan, plan
    assert f'REVOKE "{p.logins[MIGRATOR]}" FROM "{key}_bob"' in plan, plan
    _converges(p)
    assert _memberships(p, f"{key}_team") == _memberships(p, f"{key}_bob") == set()


def test_a_service_login_made_an_administrator_is_a_conflict(provisioned: Provisioned) -> None:
    # Attached (its role setting names the group), then given CREATEROLE: it could grant
    # itself the migrator, while plan said no changes.
    p = provisioned
    with p.admin_connection() as admin:
        admin.execute(f"ALTER ROLE {p.logins[RW]} CREATEROLE")
    with pytest.raises(ConfigurationError, match=f"Login role {p.logins[RW]} has CREATEROLE"):
        sync_roles(p.admin, [ProductRoles(p.topology)], apply=False)  # without --login


def test_a_login_of_two_products_is_a_conflict_for_each_alone(
    sigma_postgresql: TestServer, products_db: dict[str, Provisioned]
) -> None:
    # Planned alone, each product's apply took the login and stripped the other's group.
    ours = provision(sigma_postgresql, "edge_products", product=unique_key())
    theirs = provision(sigma_postgresql, "edge_products", product=unique_key())
    shared = f"shared_{uuid.uuid4().hex[:8]}"
    with ours.admin_connection() as admin:
        admin.execute(
            f"CREATE ROLE {shared} LOGIN IN ROLE {ours.target.roles[RW]}, {theirs.target.roles[RW]}"
        )
    try:
        for p in (ours, theirs):
            with pytest.raises(ConfigurationError, match=f"Login {shared} is a member of"):
                sync_roles(p.admin, [p.target], apply=False)
    finally:
        with ours.admin_connection() as admin:
            admin.execute(f"DROP ROLE {shared}")


def test_a_login_named_like_a_group_holds_no_privilege_on_the_shared_database(
    sigma_postgresql: TestServer, products_db: dict[str, Provisioned]
) -> None:
    ours = provision(sigma_postgresql, "edge_products", product=unique_key())
    mallory = f"edge_{unique_key()}_rw"  # a LOGIN role: no product's group, whatever its name
    anything = f"edge_{unique_key()}_ro"  # NOLOGIN, named like a group: no more than a group's
    with ours.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {mallory} LOGIN")
        admin.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE edge_products TO {mallory}")
        admin.execute(f"CREATE ROLE {anything} NOLOGIN")
        admin.execute(f"GRANT CONNECT, CREATE ON DATABASE edge_products TO {anything}")
    try:
        plan = sync_roles(ours.admin, [ours.target], apply=False).render()
        assert f'REVOKE CONNECT, TEMPORARY ON DATABASE "edge_products" FROM "{mallory}"' in plan
        assert f'REVOKE CREATE ON DATABASE "edge_products" FROM "{anything}"' in plan, plan
    finally:
        with ours.admin_connection() as admin:
            admin.execute(f"DROP OWNED BY {mallory}, {anything}; DROP ROLE {mallory}, {anything}")


@pytest.mark.parametrize("own_connect", [True, False])
def test_a_noinherit_login_keeps_its_connect_when_attached(
    provisioned: Provisioned, own_connect: bool
) -> None:
    # Attached in the same apply, it was not yet a member: its CONNECT went with the GRANT;
    # relying on PUBLIC's CONNECT, it lost that with PUBLIC's.
    name = f"ci_{uuid.uuid4().hex[:8]}"
    with provisioned.admin_connection() as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN NOINHERIT PASSWORD 'pw-ci'")
        if own_connect:
            admin.execute(f"GRANT CONNECT ON DATABASE {provisioned.admin.name} TO {name}")
    target = ProductRoles(provisioned.topology, (Login(name, MIGRATOR),))
    sync_roles(provisioned.admin, [target], apply=True)
    assert not sync_roles(provisioned.admin, [target], apply=False).changed
    assert _login_works(provisioned, name, "pw-ci")


def test_an_operator_planted_in_the_products_schema_does_not_run_as_the_admin(
    provisioned: Provisioned,
) -> None:
    # A fourth review: the admin's catalog reads ran with the product's search_path, whose
    # schema the migrator owns; app.=(oid, integer) was chosen over pg_catalog's and ran as the
    # superuser during a mere plan (CVE-2018-1058's pattern).
    key = unique_key()
    with provisioned.connect(MIGRATOR) as conn:
        conn.execute(
            "CREATE FUNCTION app.oideqint(oid, integer) RETURNS boolean LANGUAGE plpgsql AS $$ "
            "BEGIN IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) "
            f"THEN EXECUTE 'CREATE ROLE evil_{key} LOGIN SUPERUSER'; END IF; "
            "RETURN $1 OPERATOR(pg_catalog.=) $2::oid; END $$"
        )
        conn.execute(
            "CREATE OPERATOR app.= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = app.oideqint)"
        )
    for apply in (False, True):
        sync_roles(provisioned.admin, [provisioned.target], apply=apply)
    with provisioned.admin_connection() as admin:
        assert admin.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = %s", [f"evil_{key}"]
        ).fetchone() == (0,)


def test_a_createrole_owner_repairs_a_logins_own_default_privileges(
    sigma_postgresql: TestServer,
) -> None:
    # A fourth review: a _ro login's own ALTER DEFAULT PRIVILEGES (it needs no privilege for
    # that) made every apply by the CREATEROLE owner fail: "must be member of role".
    key, owner = _createrole_owner(sigma_postgresql)
    database, dba, ro = owner.name, owner.user, f"{key}_ro_login"
    target = ProductRoles(owner.topology, (Login(ro, RO, SecretStr("ro-pw-1")),))
    sync_roles(owner, [target], apply=True)
    # Its own default privileges, and the admin's (which need no borrowed membership).
    for user, password in ((ro, "ro-pw-1"), (dba, "dba-pw")):
        with psycopg.connect(
            host=sigma_postgresql.host,
            port=sigma_postgresql.port,
            dbname=database,
            user=user,
            password=password,
            autocommit=True,
        ) as conn:
            conn.execute("SET ROLE NONE")
            conn.execute(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {user} IN SCHEMA app "
                "GRANT SELECT ON TABLES TO PUBLIC"
            )
    text = sync_roles(owner, [target], apply=True).render()
    assert f'GRANT "{dba}" TO CURRENT_USER' not in text, text
    assert f'REVOKE "{ro}" FROM CURRENT_USER' in text, text
    assert not sync_roles(owner, [target], apply=False).changed
    with sigma_postgresql.connect(database) as admin:
        assert admin.execute(
            "SELECT count(*) FROM pg_default_acl WHERE defaclrole = %s::regrole", [ro]
        ).fetchone() == (0,)
        assert admin.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", [dba, ro]).fetchone() == (
            False,
        )


def test_a_change_only_a_superuser_may_make_says_so(sigma_postgresql: TestServer) -> None:
    # A login made a member of a superuser role: the CREATEROLE owner's apply cannot revoke it,
    # and was told to run as "a superuser, or a CREATEROLE role that owns the database", which
    # it already is.
    key, owner = _createrole_owner(sigma_postgresql)
    api = f"{key}_api"
    target = ProductRoles(owner.topology, (Login(api, RW, SecretStr("api-pw-1")),))
    sync_roles(owner, [target], apply=True)
    with sigma_postgresql.connect() as admin:
        admin.execute(f"GRANT postgres TO {api}")
    try:
        with pytest.raises(InsufficientPrivilegeError) as caught:
            sync_roles(owner, [target], apply=True)
        message = str(caught.value)
        assert "run sigma-db roles apply as a superuser (only one may" in message, message
        assert "CREATEROLE role that owns" not in message
    finally:
        with sigma_postgresql.connect() as admin:
            admin.execute(f"REVOKE postgres FROM {api}")
