"""Partitions a superuser's maintenance run made: the parent's owner, and the parent's grants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from _provision import Provisioned

from sigma_db import create_engine
from sigma_db.partitions import PartitionManager
from sigma_db.partitions.examples import ExampleBase, Signal
from sigma_db.roles import RoleKind, sync_roles

ACL = """
SELECT c.relname, g.grantee::regrole::text, g.privilege_type, g.is_grantable
FROM pg_class c
CROSS JOIN LATERAL aclexplode(c.relacl) g
WHERE c.oid = 'app.signals'::regclass
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'app.signals'::regclass)
"""


def grants(provisioned: Provisioned) -> dict[str, set[tuple[str, str, bool]]]:
    """Relation -> (grantee, privilege, grantable), the owner's own entries left out."""
    out: dict[str, set[tuple[str, str, bool]]] = {}
    with provisioned.admin_connection() as conn:
        owner = provisioned.target.roles[RoleKind.MIGRATOR]
        for relation, grantee, privilege, grantable in conn.execute(ACL).fetchall():
            out.setdefault(relation, set())
            if grantee != owner:
                out[relation].add((grantee, privilege, grantable))
        names = conn.execute(
            "SELECT relname FROM pg_class WHERE oid IN "
            "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'app.signals'::regclass)"
        ).fetchall()
    return {name: out.get(name, set()) for (name,) in names} | {"signals": out["signals"]}


def create_signals(provisioned: Provisioned) -> set[str]:
    """The migrator creates signals (and its first partitions), as a product's migration does."""
    engine = create_engine(provisioned.settings(RoleKind.MIGRATOR))
    ExampleBase.metadata.create_all(engine, tables=[Signal.__table__])
    engine.dispose()
    return set(grants(provisioned)) - {"signals"}


def run_as_superuser(provisioned: Provisioned) -> None:
    """Maintenance run by hand as the superuser, 20 days ahead: it makes 15 partitions."""
    later = datetime.now(UTC) + timedelta(days=20)
    report = PartitionManager(provisioned.admin, Signal).maintain(later)
    assert report.problem_lines() == []


def test_partitions_a_superuser_made_get_the_parents_grants(provisioned: Provisioned) -> None:
    # Handed to the parent's owner but with no grants (relacl NULL): _ro and _rw could not read
    # them directly, and roles check reported drift after every such run.
    create_signals(provisioned)
    run_as_superuser(provisioned)
    found = grants(provisioned)
    parent = found.pop("signals")
    assert parent  # the product's _rw and _ro
    assert len(found) > 15  # retention 7 days back, premake 7 ahead, and DEFAULT
    assert all(acl == parent for acl in found.values()), found
    newest = max(found)
    with provisioned.connect(RoleKind.RO) as conn:
        assert conn.execute(f"SELECT count(*) FROM app.{newest}").fetchone() == (0,)
    with provisioned.connect(RoleKind.RW) as conn:
        conn.execute(f"DELETE FROM app.{newest}")
    assert not sync_roles(provisioned.admin, [provisioned.target], apply=False).changed


def test_a_public_grant_and_grant_options_are_copied_too(provisioned: Provisioned) -> None:
    before = create_signals(provisioned)
    ro = provisioned.target.roles[RoleKind.RO]
    with provisioned.connect(RoleKind.MIGRATOR) as conn:
        conn.execute("GRANT SELECT ON app.signals TO PUBLIC")
        conn.execute(f"GRANT REFERENCES ON app.signals TO {ro} WITH GRANT OPTION")
    run_as_superuser(provisioned)
    found = grants(provisioned)
    parent = found.pop("signals")
    assert {("-", "SELECT", False), (ro, "REFERENCES", True)} <= parent
    made = {name: acl for name, acl in found.items() if name not in before}
    assert len(made) == 15
    assert all(acl == parent for acl in made.values()), made
