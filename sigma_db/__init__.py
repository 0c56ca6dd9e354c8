"""sigma_db: Sigma's PostgreSQL SDK — the database conventions, held by construction.

The public face is re-exported here and loaded lazily (PEP 562): ``import sigma_db`` costs almost
nothing, and a service pays for pydantic or SQLAlchemy's asyncio layer only when it uses them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sigma_db.engine import create_async_engine, create_engine
    from sigma_db.errors import (
        ConfigurationError,
        DatabaseUnavailableError,
        InsufficientPrivilegeError,
        NamingError,
        SigmaDBError,
    )
    from sigma_db.models import IdentityPrimaryKey, ProductBase, Timestamps
    from sigma_db.partitions import (
        DatePartitioned,
        DatePartitioning,
        PartitionManager,
        copy_rows,
    )
    from sigma_db.roles import Login, ProductRoles, RoleKind, RolePlan, plan_roles, sync_roles
    from sigma_db.session import (
        async_session_dependency,
        async_session_scope,
        create_async_session_factory,
        create_session_factory,
        session_dependency,
        session_scope,
    )
    from sigma_db.settings import DatabaseSettings
    from sigma_db.topology import Environment, Product, Topology

__all__ = [
    "ConfigurationError",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "DatePartitioned",
    "DatePartitioning",
    "Environment",
    "IdentityPrimaryKey",
    "InsufficientPrivilegeError",
    "Login",
    "NamingError",
    "PartitionManager",
    "Product",
    "ProductBase",
    "ProductRoles",
    "RoleKind",
    "RolePlan",
    "SigmaDBError",
    "Timestamps",
    "Topology",
    "__version__",
    "async_session_dependency",
    "async_session_scope",
    "copy_rows",
    "create_async_engine",
    "create_async_session_factory",
    "create_engine",
    "create_session_factory",
    "plan_roles",
    "session_dependency",
    "session_scope",
    "sync_roles",
]

_HOME = {
    "create_async_engine": "engine",
    "create_engine": "engine",
    "ConfigurationError": "errors",
    "DatabaseUnavailableError": "errors",
    "InsufficientPrivilegeError": "errors",
    "NamingError": "errors",
    "SigmaDBError": "errors",
    "IdentityPrimaryKey": "models",
    "ProductBase": "models",
    "Timestamps": "models",
    "DatePartitioned": "partitions",
    "DatePartitioning": "partitions",
    "PartitionManager": "partitions",
    "copy_rows": "partitions",
    "Login": "roles",
    "ProductRoles": "roles",
    "RoleKind": "roles",
    "RolePlan": "roles",
    "plan_roles": "roles",
    "sync_roles": "roles",
    "async_session_dependency": "session",
    "async_session_scope": "session",
    "create_async_session_factory": "session",
    "create_session_factory": "session",
    "session_dependency": "session",
    "session_scope": "session",
    "DatabaseSettings": "settings",
    "Environment": "topology",
    "Product": "topology",
    "Topology": "topology",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("sigma-db")
        except PackageNotFoundError:  # pragma: no cover - a source tree without install
            return "0+unknown"
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'sigma_db' has no attribute {name!r}")
    value = getattr(import_module(f"sigma_db.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
