"""``DatabaseSettings``: the ``DB_*`` environment, validated once, then passed explicitly.

Everything wrong is reported in one :class:`~sigma_db.ConfigurationError` (one line per variable,
each with its fix), not one at a time. The password is a :class:`~pydantic.SecretStr`, never part
of a message, a repr, or the display DSN.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import identifier_problem, utf8_problem
from sigma_db.topology import Environment, Topology, resolve_topology

__all__ = ["DatabaseSettings", "SSLMode"]

SSLMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
PoolerMode = Literal["none", "transaction"]

_HINTS: dict[str, str] = {
    "DB_HOST": "the server's host name or IP, e.g. DB_HOST=localhost",
    "DB_PORT": "a whole number from 1 to 65535, e.g. DB_PORT=5432",
    "DB_NAME": "the product database, e.g. DB_NAME=edge_lab (or edge_products in dev)",
    "DB_USER": "the login role, e.g. DB_USER=edge_lab_rw",
    "DB_PASSWORD": "the password, or DB_PASSWORD_FILE=/path/to/secret",
    "DB_PASSWORD_FILE": "a readable file holding only the password",
    "DB_SCHEMA": "app (or public) in a product database, the product name in edge_products",
    "DB_SSLMODE": "one of disable, allow, prefer, require, verify-ca, verify-full",
    "DB_CONN_MAX": "the pool size, a whole number from 1 to 1000, e.g. DB_CONN_MAX=10",
    "DB_ENV": "one of dev, staging, prod",
    "DB_POOLER": "none (direct connections) or transaction (PgBouncer transaction pooling)",
    "DB_CONNECT_TIMEOUT": "seconds to wait for a connection, 2 to 300 (libpq's least), e.g. 5",
    "DB_POOL_RECYCLE": "seconds before a pooled connection is replaced, e.g. 1800, or -1 for never",
    "DB_POOL_PRE_PING": "true or false",
    "DB_PRODUCT": "the product key, e.g. DB_PRODUCT=lab",
    "DB_APPLICATION_NAME": "at most 63 bytes of printable text, e.g. lab-api",
}
_SECRET_FIELDS = {"password", "DB_PASSWORD"}


class DatabaseSettings(BaseSettings):
    """Connection settings for one product service, read from ``DB_*`` variables and ``.env``.

    Build it once at start-up (``DatabaseSettings()``) and pass it to
    :func:`sigma_db.create_engine`. Keyword arguments override the environment, which is how
    tests and tools build settings without touching ``os.environ``.
    """

    model_config = SettingsConfigDict(
        env_prefix="DB_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    host: str = Field(description="Server host name, IP address, or Unix socket directory.")
    port: int = Field(ge=1, le=65535, description="Server TCP port.")
    name: str = Field(description="Database name: edge_<product>, or edge_products in dev.")
    user: str = Field(description="Login role.")
    password_file: Path | None = Field(
        default=None, description="File holding the password (Vault agent, Kubernetes secret)."
    )
    password: SecretStr | None = Field(
        default=None, validate_default=True, description="Password (or use DB_PASSWORD_FILE)."
    )
    schema_name: str | None = Field(
        default=None,
        validation_alias="DB_SCHEMA",
        description="Default schema: app/public per product DB, the product key in edge_products.",
    )
    sslmode: SSLMode | None = Field(default=None, description="libpq sslmode.")
    conn_max: int = Field(default=10, ge=1, le=1000, description="Connection pool size.")
    env: Environment = Field(default=Environment.DEV, description="dev, staging or prod.")
    product: str | None = Field(
        default=None, description="Product key, when DB_NAME does not say it (tests, new products)."
    )
    pooler: PoolerMode = Field(
        default="none", description="'transaction' behind PgBouncer transaction pooling."
    )
    connect_timeout: int = Field(default=5, ge=2, le=300, description="Seconds to connect.")
    pool_recycle: int = Field(default=1800, ge=-1, description="Seconds before replacing a conn.")
    pool_pre_ping: bool = Field(default=True, description="Ping a pooled conn before handing out.")
    application_name: str | None = Field(default=None, description="Shown in pg_stat_activity.")

    def __init__(self, **values: Any) -> None:
        _check_keywords(values)
        env_file = values.get("_env_file", self.model_config.get("env_file"))
        if (
            "_env_file" in values
            and isinstance(env_file, str | os.PathLike)
            and not os.path.isfile(env_file)
        ):
            raise ConfigurationError(
                f"_env_file {env_file} is not a file; pass the path of an existing .env file, "
                "or _env_file=None to read none."
            )
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # Chaining would print pydantic's own rendering; ours already names every variable.
            raise _configuration_error(exc, env_file) from None
        except (UnicodeDecodeError, OSError) as exc:  # reading .env
            raise ConfigurationError(
                f"Cannot read {env_file} ({exc.__class__.__name__}: "
                f"{' '.join(str(exc).split())}); save it as UTF-8 text, or remove it and set "
                "DB_* in the environment."
            ) from None

    @field_validator(
        "host",
        "name",
        "user",
        "password",
        "schema_name",
        "product",
        "application_name",
        mode="before",
    )
    @classmethod
    def _is_utf8(cls, value: object) -> object:
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str):
            problem = utf8_problem(text)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("pool_recycle")
    @classmethod
    def _recycle_is_not_zero(cls, value: int) -> int:
        # SQLAlchemy replaces a connection older than pool_recycle seconds: with 0 that is
        # every checkout, a new server connection (and TLS handshake) per request. Tools that
        # read 0 as "never" make the mix-up easy.
        if value == 0:
            raise ValueError("0 would open a new connection on every checkout")
        return value

    @field_validator("host")
    @classmethod
    def _host_is_plain(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        if not value.isprintable():  # a NUL would end libpq's string: later parameters vanish
            raise ValueError("contains control characters; give only the host name")
        if "@" in value or "://" in value:
            raise ValueError("looks like a URL or DSN; give only the host name")
        return value

    @field_validator("name", "schema_name", "product")
    @classmethod
    def _is_identifier(cls, value: str | None) -> str | None:
        if value is not None:
            problem = identifier_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("user", "application_name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value or len(value.encode()) > 63 or not value.isprintable():
            raise ValueError("must be 1 to 63 bytes of printable characters")
        return value

    @field_validator("user")
    @classmethod
    def _user_is_not_a_dsn(cls, value: str) -> str:
        # "user@server" is a valid login (Azure); "user:secret" or a URL is a pasted DSN, and
        # the login is shown in every error message: refuse it before it is.
        if ":" in value or "/" in value:
            raise ValueError(
                "looks like user:password or a URL; give only the login, and the password in "
                "DB_PASSWORD"
            )
        return value

    @field_validator("password_file", mode="before")
    @classmethod
    def _file_is_named(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():  # Path("") would be "."
            raise ValueError("is empty")
        return value

    @field_validator("password_file")
    @classmethod
    def _file_is_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not os.path.lexists(value):
                # Not a path at all, perhaps the password itself: never echo it.
                if "/" in str(value):
                    fix = "set it to the path of a file holding only the password"
                else:
                    fix = (
                        "with no '/' it looks more like a password than a path: put the password "
                        "in DB_PASSWORD, or set DB_PASSWORD_FILE to the path of a file holding it"
                    )
                raise ValueError(
                    f"DB_PASSWORD_FILE (value not shown) names no existing file; {fix}"
                )
            problem = _password_file_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("password")
    @classmethod
    def _password_or_file(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if "password_file" not in info.data:  # the file's own error is already reported
            return value
        has_file = info.data["password_file"] is not None
        if value is not None and has_file:
            raise ValueError("DB_PASSWORD and DB_PASSWORD_FILE are both set; keep only one")
        if value is not None and not value.get_secret_value():
            raise ValueError("is empty")
        if value is not None and "\x00" in value.get_secret_value():
            raise ValueError(_NUL_BYTE_PROBLEM)
        if value is None and not has_file:
            raise PydanticCustomError("missing", "is not set")
        return value

    @model_validator(mode="after")
    def _check_topology(self) -> DatabaseSettings:
        try:
            resolve_topology(
                database=self.name,
                schema=self.schema_name,
                environment=self.env,
                product=self.product,
            )
        except ConfigurationError as exc:
            raise ValueError(_JOIN.join(exc.problems)) from None
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DatabaseSettings:
        """Settings from a mapping of ``DB_*`` names (``os.environ``-like), ignoring the process's.

        Every field is given (unset ones as their default), so nothing leaks in from the real
        environment or a ``.env`` file: what you pass is what you get.
        """
        values: dict[str, Any] = {}
        for field, info in cls.model_fields.items():
            name = _env_name(field, info.validation_alias)
            values[field] = environ[name] if name in environ else info.get_default()
        return cls(_env_file=None, **values)

    @cached_property
    def topology(self) -> Topology:
        """The resolved product, environment, database and physical schemas."""
        return resolve_topology(
            database=self.name, schema=self.schema_name, environment=self.env, product=self.product
        )

    def secret(self) -> str:
        """Return the password, reading ``DB_PASSWORD_FILE`` at call time so rotation works.

        Raises :class:`~sigma_db.ConfigurationError` when the file, readable when the settings
        were built, no longer is (a rotation that removed it, a volume unmounted).
        """
        if self.password is not None:
            return self.password.get_secret_value()
        assert self.password_file is not None
        problem = _password_file_problem(self.password_file)
        if problem is None:
            try:
                return _read_password(self.password_file)
            except (OSError, UnicodeDecodeError) as exc:  # changed between the check and now
                problem = f"cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})"
        raise ConfigurationError(
            f"DB_PASSWORD_FILE {self.password_file} {problem} (it was readable when the settings "
            "were built); restore the file, and have rotation replace it atomically."
        )

    def url(self, *, driver: str = "psycopg") -> URL:
        """SQLAlchemy URL including the password; SQLAlchemy masks it when rendered or logged."""
        return URL.create(
            f"postgresql+{driver}",
            username=self.user,
            password=self.secret(),
            host=self.host,
            port=self.port,
            database=self.name,
        )

    @property
    def display_dsn(self) -> str:
        """A DSN for messages and logs: never contains the password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"

    def direct_connection_problem(self, who_needs: str) -> str | None:
        """Why work holding a session-level lock and SETs cannot run through these settings.

        ``who_needs`` starts the sentence: ``"Migrations need"``, ``"Partition maintenance
        needs"``. ``None`` when nothing stands in the way (no transaction pooler).
        """
        if self.pooler != "transaction":
            return None
        return (
            f"{who_needs} a direct connection (a session-level advisory lock and SET): point "
            "DB_HOST/DB_PORT at the server, not at PgBouncer, and unset DB_POOLER."
        )

    def masked(self) -> dict[str, str]:
        """Every setting as ``DB_*`` name → display value, the password masked."""
        shown: dict[str, str] = {}
        for field, info in type(self).model_fields.items():
            env_name = _env_name(field, info.validation_alias)
            value = getattr(self, field)
            if field == "password":
                value = "********" if value is not None else None
            shown[env_name] = "" if value is None else str(value)
        return shown


_JOIN = "\x1f"  # joins several problems inside one pydantic ValueError; split again below


_NUL_BYTE_PROBLEM = "contains a NUL byte, which libpq cannot send; set the real password"


def _read_password(path: Path) -> str:
    return path.read_text(encoding="utf-8").rstrip("\r\n")


def _password_file_problem(path: Path) -> str | None:
    try:
        password = _read_password(path)
    except UnicodeDecodeError:
        return "is not UTF-8 text; save the password in it as UTF-8"
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        return f"cannot be read ({reason})"
    if not password:
        return "is empty; it must hold the password"
    if "\x00" in password:
        return _NUL_BYTE_PROBLEM
    return None


_USUAL_NAMES = {
    "schema": "schema_name",
    "pool_size": "conn_max",
    "database": "name",
    "dbname": "name",
    "username": "user",
}
"""What other libraries call a setting, for the keyword error's suggestion."""


def _check_keywords(values: Mapping[str, Any]) -> None:
    """Refuse keyword arguments that are no setting: pydantic would drop them silently.

    Unknown ``DB_*`` *environment* variables stay ignored (a service may keep its own; ``sigma-db
    doctor`` names likely typos), but a keyword is always meant for these settings.
    """
    fields = DatabaseSettings.model_fields
    known = set(fields) | {
        info.validation_alias for info in fields.values() if isinstance(info.validation_alias, str)
    }
    unknown = [key for key in values if not key.startswith("_") and key not in known]
    if not unknown:
        return
    problems = []
    for key in unknown:
        field = key.lower().removeprefix("db_")  # DB_CONN_MAX=3: the variable's name
        common = _USUAL_NAMES.get(field) or (field if field in fields else None)
        guess = [common] if common else difflib.get_close_matches(field, sorted(fields), cutoff=0.6)
        fix = f"did you mean {guess[0]}?" if guess else f"the settings are {', '.join(fields)}"
        problems.append(f"{key!r} is not a setting; {fix}")
    raise ConfigurationError(problems, heading="DatabaseSettings got unknown keyword arguments:")


def _env_name(field: str, alias: object) -> str:
    if isinstance(alias, str):
        return alias
    return f"DB_{field.upper()}"


def _configuration_error(exc: ValidationError, env_file: object) -> ConfigurationError:
    problems: list[str] = []
    missing = False
    fields = DatabaseSettings.model_fields
    for error in exc.errors(include_input=True, include_url=False):
        loc = error.get("loc", ())
        field = str(loc[0]) if loc else ""
        if field in fields:
            env_name = _env_name(field, fields[field].validation_alias)
        elif field.startswith("DB_"):
            env_name = field
        else:
            env_name = ""
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
        if not env_name:  # model-level checks carry complete sentences already
            problems.extend(message.split(_JOIN))
            continue
        hint = _HINTS.get(env_name, "a valid value")
        if error.get("type") == "missing" or error.get("input") is PydanticUndefined:
            problems.append(f"{env_name} is not set; set {hint}.")
            missing = True
            continue
        if message.startswith(env_name):
            problems.append(f"{message}.")
            continue
        got = ""
        if env_name not in _SECRET_FIELDS and "input" in error:
            shown = str(error["input"])
            # A DSN (or user:password) pasted into the wrong variable may carry a password.
            looks_secret = "@" in shown or ":" in shown
            got = " (value not shown)" if looks_secret else f" (got {shown[:80]!r})"
        problems.append(f"{env_name}{got}: {message}; set {hint}.")
    if missing and isinstance(env_file, str | os.PathLike) and os.path.isdir(env_file):
        # Only now: a virtualenv named .env is common, and harmless when DB_* are all set.
        problems.insert(
            0,
            f"{os.fspath(env_file)} is a directory, so no DB_* settings were read from it; "
            "if it should hold them, make it a file of DB_*=value lines, else set them in "
            "the environment.",
        )
    return ConfigurationError(problems, heading=_heading(env_file))


def _heading(env_file: object) -> str:
    read = isinstance(env_file, str | os.PathLike) and os.path.isfile(env_file)
    where = f", environment and {env_file}" if read else " and environment"
    return f"Invalid database settings (from arguments{where}):"
