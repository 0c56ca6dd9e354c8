"""Role plan on a real server, checked by acting as each role (never by reading the plan back)."""

from __future__ import annotations

import logging
import threading
import uuid

import psycopg
import pytest
from _provision import Provisioned, provision, unique_key
from psycopg import errors
from pydantic import SecretStr

from sigma_db import ConfigurationError, InsufficientPrivilegeError
from sigma_db.roles import (
    Login,
    ProductRoles,
    RoleKind,
    plan_roles,
    scram_verifier_matches,
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
    import psycopg as pg

    other = f"t_{uuid.uuid4().hex[:12]}"
    with pg.connect(
        host=sigma_postgresql.host,
        port=sigma_postgresql.port,
        user=sigma_postgresql.superuser,
        password=sigma_postgresql.password,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(f"CREATE DATABASE {other}")
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
        with pg.connect(
            host=sigma_postgresql.host,
            port=sigma_postgresql.port,
            user=sigma_postgresql.superuser,
            password=sigma_postgresql.password,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute(f"DROP DATABASE {other} WITH (FORCE)")


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
        admin.execute(f"ALTER ROLE {roles[RO]} IN DATABASE {db} RESET search_path")
        admin.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {roles[MIGRATOR]} IN SCHEMA app "
            f"REVOKE SELECT ON TABLES FROM {roles[RO]}"
        )
        admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        admin.execute(f"GRANT {roles[MIGRATOR]} TO {roles[RW]}")
    plan = sync_roles(provisioned.admin, [provisioned.target], apply=False)
    text = plan.render()
    for expected in (
        f'GRANT USAGE ON SCHEMA "app" TO "{roles[RW]}"',
        f'REVOKE CREATE ON SCHEMA "app" FROM "{roles[RO]}"',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA "app" TO "{roles[RO]}"',
        f'REVOKE TRUNCATE ON TABLE "app"."packs" FROM "{roles[RW]}"',
        f'ALTER ROLE "{roles[RW]}" NOCREATEDB',
        f'ALTER ROLE "{roles[RO]}" IN DATABASE "{db}" SET search_path TO "app", "public"',
        f'IN SCHEMA "app" GRANT SELECT ON TABLES TO "{roles[RO]}"',
        'REVOKE CREATE ON SCHEMA "public" FROM PUBLIC',
        f'REVOKE "{roles[MIGRATOR]}" FROM "{roles[RW]}"',
    ):
        assert expected in text, expected
    sync_roles(provisioned.admin, [provisioned.target], apply=True)
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed
    with provisioned.connect(RO) as conn:
        assert conn.execute("SELECT count(*) FROM packs").fetchone() == (0,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE app.x (id int)")
    with provisioned.connect(RW) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute("TRUNCATE packs")


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


def test_scram_verifier_check() -> None:
    verifier = (
        "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$"
        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
        "4uzfQkCdz7zFzgzmRuBfyrtz6tuVkq0VMr5gnRW1Wa4="
    )
    assert not scram_verifier_matches(verifier, "wrong")
    assert not scram_verifier_matches("md5abcdef", "x")
    assert not scram_verifier_matches("garbage", "x")


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
    with psycopg.connect(
        host=admin.host,
        port=admin.port,
        user=admin.user,
        password=admin.secret(),
        dbname=admin.name,
        autocommit=True,
    ) as conn:
        conn.execute(f"CREATE ROLE {taken} LOGIN SUPERUSER CREATEROLE")
    try:
        with pytest.raises(ConfigurationError) as info:
            sync_roles(admin, [ProductRoles(admin.topology)], apply=True)
        message = str(info.value)
        assert "\n" not in message
        assert f"Role {taken} already exists as a LOGIN role with SUPERUSER, CREATEROLE" in message
        assert f"ALTER ROLE {taken} RENAME TO" in message
    finally:
        with psycopg.connect(
            host=admin.host,
            port=admin.port,
            user=admin.user,
            password=admin.secret(),
            dbname=admin.name,
            autocommit=True,
        ) as conn:
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
    with psycopg.connect(
        host=sigma_postgresql.host,
        port=sigma_postgresql.port,
        user=sigma_postgresql.superuser,
        password=sigma_postgresql.password,
        dbname="postgres",
        autocommit=True,
    ) as conn:
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
            # not a superuser: cannot compare the stored verifier, so the password is set again
            again = sync_roles(admin, [target], apply=True)
            assert [s.text for s in again.statements] == [
                f"ALTER ROLE \"{key}_api\" PASSWORD '********'"
            ]
            assert not sync_roles(admin, [ProductRoles(admin.topology)], apply=True).changed
            with psycopg.connect(
                host=admin.host,
                port=admin.port,
                dbname=database,
                user=login.name,
                password="api-pw",
            ) as api:
                assert api.execute("SELECT current_schema()").fetchone() == ("app",)
        finally:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
