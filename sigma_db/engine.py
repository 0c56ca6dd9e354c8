"""Engines built from settings: psycopg 3, a sized pool, and the search_path at connection start.

The search_path travels in the libpq startup packet (``options=-c search_path=...``), so it costs
no statement per connection or checkout. Behind PgBouncer in transaction mode
(``DB_POOLER=transaction``) startup options are rejected and session state leaks between clients,
so that mode sends none, disables server-side prepared statements, and relies on the role's
server-side ``search_path`` (``ALTER ROLE ... IN DATABASE ... SET search_path``, which
``sigma-db roles apply`` sets).

Connection failures are translated once, here, into :class:`~sigma_db.DatabaseUnavailableError`
with the cause chained and the password scrubbed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, ExceptionContext

from sigma_db.errors import ConfigurationError, DatabaseUnavailableError
from sigma_db.identifiers import quote
from sigma_db.settings import DatabaseSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["create_async_engine", "create_engine", "engine_arguments"]


def create_engine(settings: DatabaseSettings, **overrides: Any) -> Engine:
    """Create a sync engine for ``settings``; ``overrides`` go to SQLAlchemy's ``create_engine``."""
    url, kwargs = engine_arguments(settings)
    engine = sqlalchemy.create_engine(url, **_merged(kwargs, overrides))
    _instrument(engine, settings)
    return engine


def create_async_engine(settings: DatabaseSettings, **overrides: Any) -> AsyncEngine:
    """Create an asyncio engine (psycopg 3 async) with the same options as :func:`create_engine`."""
    # Imported here: SQLAlchemy's asyncio layer (and greenlet) is a cost sync services skip.
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    url, kwargs = engine_arguments(settings)
    engine = sa_create_async_engine(url, **_merged(kwargs, overrides))
    _instrument(engine.sync_engine, settings)
    return engine


def engine_arguments(settings: DatabaseSettings) -> tuple[URL, dict[str, Any]]:
    """The URL and keyword arguments both engines share; useful to build a bare engine in tests."""
    topology = settings.topology
    connect_args: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout,
        "application_name": settings.application_name or f"sigma_db:{topology.product.key}",
    }
    if settings.sslmode is not None:
        connect_args["sslmode"] = settings.sslmode
    if settings.pooler == "transaction":
        connect_args["prepare_threshold"] = None
    else:
        search_path = ",".join(quote(schema) for schema in topology.search_path)
        connect_args["options"] = f"-c search_path={search_path}"
    kwargs: dict[str, Any] = {
        "pool_size": settings.conn_max,
        "max_overflow": 0,
        "pool_pre_ping": settings.pool_pre_ping,
        "pool_recycle": settings.pool_recycle,
        "connect_args": connect_args,
    }
    translate = topology.schema_translate_map
    if translate:
        kwargs["execution_options"] = {"schema_translate_map": translate}
    return settings.url(), kwargs


_QUEUE_POOL_ARGUMENTS = ("pool_size", "max_overflow")


def _merged(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win, but extend (not replace) ``connect_args`` and ``execution_options``.

    Replacing them would silently drop the search_path or the schema translation. A
    ``poolclass`` without a sized queue (``NullPool``, ``StaticPool``) takes none of the sizing
    sigma_db derives from ``DB_CONN_MAX``; SQLAlchemy would refuse it with a TypeError.
    """
    merged = defaults | overrides
    for key in ("connect_args", "execution_options"):
        if key in defaults and key in overrides:
            merged[key] = defaults[key] | overrides[key]
    poolclass = overrides.get("poolclass")
    if isinstance(poolclass, type) and not issubclass(poolclass, sqlalchemy.pool.QueuePool):
        for key in _QUEUE_POOL_ARGUMENTS:
            if key not in overrides:
                merged.pop(key, None)
    return merged


def _instrument(engine: Engine, settings: DatabaseSettings) -> None:
    if settings.password_file is not None:

        @event.listens_for(engine, "do_connect")
        def _fresh_password(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
            # Read the secret file per new connection: a rotated password (Vault agent,
            # Kubernetes secret) reaches the pool without restarting the service.
            cparams["password"] = settings.secret()

    @event.listens_for(engine, "handle_error")
    def _on_error(context: ExceptionContext) -> BaseException | None:
        # Only failures to *establish* a connection are ours to explain; statement errors
        # (IntegrityError, ...) stay SQLAlchemy's so application code handles them as usual.
        # Pre-ping failures stay SQLAlchemy's too: the pool invalidates and reconnects on them.
        if context.connection is not None or context.is_pre_ping:
            return None
        if not isinstance(context.sqlalchemy_exception, sqlalchemy.exc.OperationalError):
            return None
        return _unavailable(settings, context.original_exception)


def _unavailable(settings: DatabaseSettings, cause: BaseException) -> DatabaseUnavailableError:
    remedy = _remedy(settings, " ".join(str(cause).split()))  # libpq's words, before masking
    # Masked before whitespace is collapsed: a password with two spaces must match as it is.
    try:
        secret: str | None = settings.secret()
    except ConfigurationError:  # the file went away: what it held cannot be in libpq's words
        secret = None
    reason = " ".join(_masked(str(cause), secret).split()).rstrip(" .?")
    where = settings.display_dsn
    error = DatabaseUnavailableError(f"Cannot connect to {where}: {reason}. {remedy}")
    error.__cause__ = cause
    return error


def _masked(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (the password) replaced by ``********``.

    An end of the password that is a letter or digit must not run into another one: a short
    password ("a", "pg") then masks where it stands alone or next to punctuation (``:a@``,
    ``"a"``) but not the middle of libpq's words ("password", "pg_hba.conf").
    """
    if not secret:
        return text
    left = r"(?<!\w)" if re.match(r"\w", secret[0]) else ""
    right = r"(?!\w)" if re.match(r"\w", secret[-1]) else ""
    return re.sub(left + re.escape(secret) + right, "********", text)


def _remedy(settings: DatabaseSettings, reason: str) -> str:
    # What the server or the network said, after libpq's "connection to server at ... failed:"
    # (which names the host or socket path: a host called pg-ssl must not read as an SSL error).
    lowered = reason.lower().rpartition("failed:")[2] or reason.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return "Check DB_USER and DB_PASSWORD (or DB_PASSWORD_FILE)."
    if "timeout expired" in lowered:
        return (
            f"No answer within DB_CONNECT_TIMEOUT={settings.connect_timeout}s; check DB_HOST and "
            "DB_PORT, and that no firewall drops the traffic."
        )
    if "does not exist" in lowered and "database" in lowered:
        return f"Create database {settings.name} or fix DB_NAME."
    if "does not exist" in lowered and "role" in lowered:
        return f"Create role {settings.user} (sigma-db roles apply) or fix DB_USER."
    if "permission denied for database" in lowered:
        return (
            f"{settings.user} lacks CONNECT on {settings.name}: attach it to the product's "
            "roles (sigma-db roles apply --login NAME:rw), or fix DB_USER or DB_NAME."
        )
    if (
        "too many connections" in lowered
        or "too many clients" in lowered
        or ("connection slots are reserved" in lowered)
    ):
        return (
            "The server, or the role's CONNECTION LIMIT, has no connection free: lower "
            "DB_CONN_MAX or the number of processes, or raise the limit."
        )
    if "unsupported startup parameter" in lowered:
        return (
            "DB_HOST:DB_PORT is a connection pooler (PgBouncer?): set DB_POOLER=transaction, "
            "or point DB_PORT at PostgreSQL itself."
        )
    if "translate host name" in lowered or "name or service not known" in lowered:
        return f"DB_HOST={settings.host} does not resolve; fix DB_HOST."
    if "ssl" in lowered:
        return "Check DB_SSLMODE against what the server supports."
    if "connection refused" in lowered:  # libpq already asks whether the server is running
        return "Check DB_HOST and DB_PORT (the server refused). For a local one: sigma-db dev up."
    if "is the server running" in lowered:  # no socket at that path: libpq asked already
        return "Check DB_HOST and DB_PORT. For a local one: sigma-db dev up."
    return (
        "Is the server running and reachable at DB_HOST:DB_PORT? For a local one: sigma-db dev up."
    )
