"""``sigma-db doctor``: what the settings resolve to, what the server says, and what to fix.

Includes what the connected role may really do against what its name promises (``…_ro`` must
not write, ``…_rw`` must not run DDL, ``…_migrator`` must be able to), because a grant that
drifted is invisible until the day it matters.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from sqlalchemy import text

from sigma_db.engine import create_engine
from sigma_db.errors import SigmaDBError
from sigma_db.roles import privilege_report
from sigma_db.settings import DatabaseSettings

__all__ = ["Diagnosis", "diagnose"]

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
            report = privilege_report(driver, topology)
            missing = [
                name
                for name in topology.owned_schemas[:1]
                if conn.execute(
                    text("SELECT to_regnamespace(:name) IS NULL"), {"name": name}
                ).scalar_one()
            ]
    except SigmaDBError as exc:
        result.problems.append(str(exc))
        return result
    finally:
        engine.dispose()
    version_num, version, database, user, schema, effective, search_path = row
    result.facts["server"] = version.split(" on ")[0]
    result.facts["connected as"] = f"{user} to {database}"
    result.facts["search_path"] = f"{search_path} (effective: {effective or 'nothing'})"
    result.facts["role promises"] = (
        f"{report.kind} ({report.role})" if report.kind else "nothing (not a sigma_db role)"
    )
    result.problems.extend(report.problems)
    if version_num // 10000 < MIN_SERVER_MAJOR:
        result.problems.append(
            f"Server version {version_num // 10000} is older than {MIN_SERVER_MAJOR}; "
            "upgrade the server (sigma_db relies on PostgreSQL 14+ features)."
        )
    if missing:
        result.problems.append(
            f"Schema {missing[0]} does not exist in {database}; run the product's migrations "
            "(sigma-db migrate creates it) or sigma-db roles apply."
        )
    elif schema != topology.schema:
        result.problems.append(
            f"Unqualified names resolve to schema {schema!r}, not {topology.schema!r}; with "
            "DB_POOLER=transaction set the role's search_path (sigma-db roles apply)."
        )
    if settings.env != "dev" and settings.sslmode in (None, "disable", "allow", "prefer"):
        result.problems.append(
            f"DB_SSLMODE={settings.sslmode or 'unset'} in DB_ENV={settings.env} does not require "
            "TLS; set DB_SSLMODE=verify-full (or at least require)."
        )
    return result
