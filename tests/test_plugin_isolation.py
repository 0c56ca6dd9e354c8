"""The product plugin's per-test reset: data back to the template's, a re-clone after DDL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from _connect import connect as connect_as

from sigma_db.scaffold import new_product
from sigma_db.testing import TestServer
from sigma_db.testing.product import CloneKeeper, ProductTemplate, build_template

REVISION = '''"""{doc}"""
from alembic import op

revision = "{number:04d}"
down_revision = "{number_before:04d}"
branch_labels = None
depends_on = None
phase = "{phase}"


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
    pass
'''

# Revisions after the generated 0001_init, each leaving rows the reset must restore.
SEEDS = [
    ("seed a default pack", "backfill", ["INSERT INTO packs (name) VALUES ('seeded')"]),
    (
        "seeded rows with a generated column",
        "expand",
        [
            "CREATE TABLE currencies (code text CONSTRAINT pk_currencies PRIMARY KEY, "
            "code_lower text GENERATED ALWAYS AS (lower(code)) STORED)",
            "INSERT INTO currencies (code) VALUES ('EUR'), ('USD')",
        ],
    ),
    (
        "seeded rows referencing another seeded table",
        "expand",
        [
            "CREATE TABLE pack_notes (id int CONSTRAINT pk_pack_notes PRIMARY KEY, pack_id "
            "bigint NOT NULL CONSTRAINT fk_pack_notes_pack_id_packs REFERENCES packs (id))",
            "INSERT INTO pack_notes VALUES (1, 1)",
        ],
    ),
    (
        "seeded rows in a table and one inheriting from it",
        "expand",
        [
            "CREATE TABLE notes_base (id int, body text)",
            "CREATE TABLE notes_child (extra text) INHERITS (notes_base)",
            "INSERT INTO notes_base VALUES (1, 'base')",
            "INSERT INTO notes_child VALUES (2, 'child', 'x')",
        ],
    ),
    (
        "a product trigger on TRUNCATE",
        "expand",
        [
            "CREATE TABLE wipes (name text)",
            "CREATE TABLE flags (id int)",
            "INSERT INTO flags VALUES (1)",
            "CREATE FUNCTION note_wipe() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO wipes VALUES (TG_TABLE_NAME); RETURN NULL; END $$",
            "CREATE TRIGGER flags_wiped AFTER TRUNCATE ON flags "
            "FOR EACH STATEMENT EXECUTE FUNCTION note_wipe()",
        ],
    ),
]


@pytest.fixture(scope="module")
def template(
    sigma_postgresql: TestServer, tmp_path_factory: pytest.TempPathFactory
) -> ProductTemplate:
    repo = tmp_path_factory.mktemp("lab") / "lab-service"
    new_product("lab", repo)
    versions = repo / "migrations" / "versions"
    for number, (doc, phase, statements) in enumerate(SEEDS, start=2):
        upgrade = "\n".join(f"    op.execute({statement!r})" for statement in statements)
        code = REVISION.format(
            doc=doc, number=number, number_before=number - 1, phase=phase, upgrade=upgrade
        )
        (versions / f"{number:04d}_seed.py").write_text(code, encoding="utf-8")
    built = build_template(sigma_postgresql, "lab", repo / "alembic.ini")
    with sigma_postgresql.connect() as admin:  # settings stored as quoted lists, and a literal
        for setting in (
            "search_path = 'a,b', app",
            "temp_tablespaces = 'pg_default'",
            "session_preload_libraries = 'plpgsql'",
            "statement_timeout = '5min'",
        ):
            admin.execute(f'ALTER DATABASE "{built.database}" SET {setting}')
    return built


@pytest.fixture
def keeper(sigma_postgresql: TestServer, template: ProductTemplate) -> Iterator[CloneKeeper]:
    keeper = CloneKeeper(sigma_postgresql, template.database)
    yield keeper
    keeper.close()


def connect(template: ProductTemplate, database: str) -> psycopg.Connection[tuple[object, ...]]:
    settings = template.settings(database, "rw")
    return connect_as(settings, options="-c search_path=app")


def packs(template: ProductTemplate, database: str) -> list[tuple[object, ...]]:
    with connect(template, database) as conn:
        return conn.execute("SELECT id, name FROM packs ORDER BY id").fetchall()


def test_data_is_reset_seeds_restored_sequences_rewound(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    first = keeper.acquire()
    assert packs(template, first) == [(1, "seeded")]
    with connect(template, first) as conn:
        conn.execute("DELETE FROM pack_notes")
        conn.execute("DELETE FROM packs")
        conn.execute("INSERT INTO packs (name) VALUES ('mine'), ('also mine')")
        conn.execute("INSERT INTO audit_logs (occurred_at, actor, action) VALUES (now(), 'a', 'b')")
    keeper.release()
    second = keeper.acquire()
    assert second == first  # reused, not re-cloned
    assert keeper.clones_made == 1
    assert packs(template, second) == [(1, "seeded")]
    with connect(template, second) as conn:
        assert conn.execute("SELECT count(*) FROM audit_logs").fetchone() == (0,)
        new_id = conn.execute("INSERT INTO packs (name) VALUES ('x') RETURNING id").fetchone()
    assert new_id == (2,)  # the identity sequence is back where the template left it


def test_ddl_in_a_test_means_a_fresh_clone(
    keeper: CloneKeeper, template: ProductTemplate, sigma_postgresql: TestServer
) -> None:
    first = keeper.acquire()
    settings = template.settings(first, "migrator")
    with connect_as(settings) as conn:
        conn.execute("ALTER TABLE app.packs ADD COLUMN note text")
    keeper.release()
    second = keeper.acquire()
    assert second != first
    assert keeper.clones_made == 2
    with connect(template, second) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'packs'"
        ).fetchall()
    assert ("note",) not in columns


def test_a_connection_left_open_holding_a_lock_does_not_hang_the_reset(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    first = keeper.acquire()
    leaked = connect(template, first)
    leaked.autocommit = False
    leaked.execute("INSERT INTO packs (name) VALUES ('x')")
    leaked.execute("LOCK TABLE packs IN ACCESS EXCLUSIVE MODE")  # open transaction, held lock
    try:
        keeper.release()  # ends the leftover session, then resets
        second = keeper.acquire()
        assert packs(template, second) == [(1, "seeded")]
    finally:
        leaked.close()


def test_template_database_is_a_template(template: ProductTemplate) -> None:
    server = template.server
    with server.connect() as conn:
        row = conn.execute(
            "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s",
            (template.database,),
        ).fetchone()
    assert row == (True, False)


def test_clones_keep_the_logins_database_settings(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    database = keeper.acquire()
    migrator = template.settings(database, "migrator")
    with connect_as(migrator) as conn:
        # No schema and no SET: the login's per-database settings must supply both.
        conn.execute("CREATE TABLE made_in_a_test (id int)")
    with connect(template, database) as conn:  # _rw, through the default privileges
        conn.execute("INSERT INTO made_in_a_test VALUES (1)")
        assert conn.execute("SELECT count(*) FROM app.made_in_a_test").fetchone() == (1,)


def test_large_objects_and_leftover_sessions_do_not_leak(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    first = keeper.acquire()
    leaked = connect(template, first)
    leaked.execute("SELECT pg_advisory_lock(42)")  # session state on a kept-open connection
    with connect(template, first) as conn:
        conn.execute("SELECT lo_from_bytea(0, 'blob')")
    keeper.release()
    second = keeper.acquire()
    assert second == first
    with connect(template, second) as conn:
        assert conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == (0,)
        assert conn.execute("SELECT pg_try_advisory_lock(42)").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError):
        leaked.execute("SELECT 1")  # its backend was ended by the reset
    leaked.close()


def test_seeded_rows_with_generated_columns_are_restored(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    first = keeper.acquire()
    with connect(template, first) as conn:
        conn.execute("DELETE FROM currencies WHERE code = 'USD'")
        conn.execute("INSERT INTO packs (name) VALUES ('dirty')")
    keeper.release()
    second = keeper.acquire()
    assert second == first
    with connect(template, second) as conn:
        rows = conn.execute("SELECT code, code_lower FROM currencies ORDER BY code").fetchall()
    assert rows == [("EUR", "eur"), ("USD", "usd")]
    assert packs(template, second) == [(1, "seeded")]


def test_a_test_that_breaks_its_database_hands_the_next_one_a_new_copy(
    keeper: CloneKeeper, template: ProductTemplate, sigma_postgresql: TestServer
) -> None:
    first = keeper.acquire()
    with sigma_postgresql.connect() as admin:  # a "database gone" test
        admin.execute(f'DROP DATABASE "{first}" WITH (FORCE)')
    keeper.release()
    second = keeper.acquire()
    assert second != first
    assert packs(template, second) == [(1, "seeded")]


def test_the_version_table_and_ledger_are_reset_too(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    # A test that stamps or repairs changes them without DDL.
    first = keeper.acquire()
    with connect_as(template.settings(first, "migrator")) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
        conn.execute("DELETE FROM migration_runs")
    keeper.release()
    second = keeper.acquire()
    assert second == first
    with connect_as(template.settings(second, "migrator")) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0006",)]
        assert conn.execute("SELECT count(*) FROM migration_runs").fetchone() == (6,)


def test_clones_keep_the_databases_grants(keeper: CloneKeeper, template: ProductTemplate) -> None:
    # CREATE DATABASE ... TEMPLATE does not copy datacl: _ro could make temp tables, and any
    # role connect, unlike in the product's real database.
    database = keeper.acquire()
    with template.server.connect() as admin:
        acl = "SELECT datacl::text[] FROM pg_database WHERE datname = %s"
        assert sorted(admin.execute(acl, (database,)).fetchone()[0]) == sorted(
            admin.execute(acl, (template.database,)).fetchone()[0]
        )
    with connect(template, database) as conn:  # _rw may create temp tables
        conn.execute("CREATE TEMP TABLE scratch (id int)")
    with (
        connect_as(template.settings(database, "ro")) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CREATE TEMP TABLE scratch (id int)")


def next_test_after(keeper: CloneKeeper, template: ProductTemplate, *statements: str) -> str:
    """Run ``statements`` as _rw in one test's database; the database the next test gets."""
    first = keeper.acquire()
    with connect(template, first) as conn:
        for statement in statements:
            conn.execute(statement)
    keeper.release()
    second = keeper.acquire()
    assert second == first  # reset in place: no DDL
    return second


def query(template: ProductTemplate, database: str, sql: str) -> list[tuple[object, ...]]:
    with connect(template, database) as conn:
        return conn.execute(sql).fetchall()


def test_seeded_rows_emptied_through_a_foreign_key_are_restored(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    # Only packs changes; TRUNCATE packs CASCADE also empties pack_notes, seeded and unchanged.
    database = next_test_after(keeper, template, "INSERT INTO packs (name) VALUES ('extra')")
    assert query(template, database, "SELECT id, pack_id FROM pack_notes") == [(1, 1)]
    assert packs(template, database) == [(1, "seeded")]


def test_seeded_rows_keep_their_order_after_a_test_changed_them_back(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    # Tests that read without ORDER BY must not depend on which tests ran before them.
    fresh = query(template, keeper.acquire(), "SELECT code FROM currencies")
    database = next_test_after(
        keeper,
        template,
        "UPDATE currencies SET code = 'XXX' WHERE code = 'EUR'",
        "UPDATE currencies SET code = 'EUR' WHERE code = 'XXX'",
    )
    assert query(template, database, "SELECT code FROM currencies") == fresh


def test_inheriting_tables_get_their_own_rows_back(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    database = next_test_after(keeper, template, "UPDATE ONLY notes_base SET body = 'changed'")
    assert query(template, database, "SELECT id, body FROM ONLY notes_base") == [(1, "base")]
    assert query(template, database, "SELECT * FROM notes_child") == [(2, "child", "x")]


def test_the_reset_fires_no_product_trigger(keeper: CloneKeeper, template: ProductTemplate) -> None:
    database = next_test_after(keeper, template, "INSERT INTO flags VALUES (2)")
    assert query(template, database, "SELECT count(*) FROM wipes") == [(0,)]
    assert query(template, database, "SELECT id FROM flags") == [(1,)]


def test_a_database_grant_a_test_changed_means_a_new_copy(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    # Event triggers do not see GRANT ... ON DATABASE or ALTER DATABASE.
    first = keeper.acquire()
    ro = template.login("ro")
    with template.server.connect() as admin:
        admin.execute(f'REVOKE CONNECT ON DATABASE "{first}" FROM edge_lab_ro')
    keeper.release()
    second = keeper.acquire()
    assert second != first
    with connect_as(template.settings(second, "ro")) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (ro,)


def test_clones_carry_the_templates_settings_and_are_reused(
    keeper: CloneKeeper, template: ProductTemplate
) -> None:
    # A setting copied wrong would differ from the template's at every reset: a new copy per
    # test, or (a library list copied as one name) no connection at all.
    settings = (
        "SELECT s.setrole, s.setconfig FROM pg_db_role_setting s JOIN pg_database d "
        "ON d.oid = s.setdatabase WHERE d.datname = %s ORDER BY 1"
    )
    for _ in range(3):
        database = keeper.acquire()
        assert packs(template, database) == [(1, "seeded")]
        keeper.release()
    assert keeper.clones_made == 1
    with template.server.connect() as admin:
        mine = admin.execute(settings, (database,)).fetchall()
        assert mine == admin.execute(settings, (template.database,)).fetchall()
