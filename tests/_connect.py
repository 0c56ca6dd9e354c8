"""A plain psycopg connection as a ``DatabaseSettings`` says (test setup and inspection)."""

from __future__ import annotations

from typing import Any

import psycopg

from sigma_db import DatabaseSettings


def connect(settings: DatabaseSettings, **options: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """Connect with ``settings``' host, port, database, user and password.

    Autocommit unless ``autocommit=False`` is passed; other ``options`` go to psycopg.
    """
    options.setdefault("autocommit", True)
    return psycopg.connect(
        host=settings.host,
        port=settings.port,
        dbname=settings.name,
        user=settings.user,
        password=settings.secret(),
        **options,
    )
