"""The local dev database: one PostgreSQL, no Docker, every product in ``edge_products``.

``sigma-db dev up`` starts a server from the machine's PostgreSQL binaries (or the ``pgserver``
wheel: ``pip install 'sigma-db[embedded]'``) in a user data directory, creates the consolidated
database ``edge_products`` with a schema per product, every product's group roles, and one dev
login per group role (``edge_lab_rw_dev`` ...). ``sigma-db dev env lab`` prints the ``DB_*``
exports a service needs. Everything is idempotent: ``up`` on a running, provisioned server
changes nothing.

Where the state lives (``SIGMA_DB_DEV_HOME`` overrides): ``$XDG_DATA_HOME/sigma-db/dev``, else
``~/.local/share/sigma-db/dev``; as root ``/var/lib/sigma-db/dev``, because the server then runs
as an unprivileged user that cannot enter root's home. The port is ``--port`` or
``SIGMA_DB_DEV_PORT``, else the one recorded at first start, else :data:`DEFAULT_PORT`; while the
server runs, its recorded port wins (with a note): a running server cannot move. The generated
passwords are kept in ``state.json`` (mode 0600) next to the cluster — local dev secrets,
printed only by ``dev env``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigma_db.errors import ConfigurationError
from sigma_db.identifiers import identifier_problem
from sigma_db.roles import Login, ProductRoles, RoleKind, RolePlan, group_role
from sigma_db.server import (
    LocalServer,
    ServerError,
    first_closed_directory,
    owned_directory,
    server_user,
)
from sigma_db.topology import (
    CONSOLIDATED_DATABASE,
    PRODUCTS,
    Environment,
    Product,
    resolve_topology,
)

__all__ = ["DEFAULT_PORT", "DevDatabase", "DevStatus", "dev_login"]

DEFAULT_PORT = 54329
"""Not 5432, so the dev server never fights a system PostgreSQL for the port."""

_SUPERUSER = "postgres"
_STATE = "state.json"


def dev_login(product: str, kind: RoleKind | str) -> str:
    """The dev login attached to a group role: ``edge_lab_rw`` → ``edge_lab_rw_dev``."""
    return f"{group_role(Product.named(product), kind)}_dev"


@dataclass(frozen=True)
class DevStatus:
    """What ``sigma-db dev status`` shows."""

    home: Path
    port: int
    running: bool
    initialised: bool
    plan: RolePlan | None = None


@dataclass(frozen=True)
class DevDatabase:
    """The local dev server in ``home`` listening on 127.0.0.1:``port``."""

    home: Path
    port: int
    note: str | None = field(default=None, compare=False)
    """Why ``port`` is not the one asked for (the running server's recorded port wins)."""

    @classmethod
    def from_environment(
        cls,
        *,
        home: Path | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> DevDatabase:
        """Resolve the state directory and port from arguments, ``SIGMA_DB_DEV_*`` and defaults."""
        environ = os.environ if env is None else env
        if home is None:
            home = _default_home(environ)
        home = home.expanduser().absolute()
        source = "--port"
        if port is None and environ.get("SIGMA_DB_DEV_PORT"):
            text = environ["SIGMA_DB_DEV_PORT"]
            if not text.isdigit() or not 1 <= int(text) <= 65535:
                raise ConfigurationError(
                    f"SIGMA_DB_DEV_PORT={text!r} is not a port; set a number from 1 to 65535."
                )
            port, source = int(text), "SIGMA_DB_DEV_PORT"
        try:
            recorded = _read_state(home).get("port")
        except ServerError:  # said by every command that uses the state; reset replaces it
            recorded = None
        if port is None:
            return cls(home, int(recorded or DEFAULT_PORT))
        if recorded is not None and int(recorded) != port and cls(home, port).server.is_running():
            # A running server cannot move: printing the asked-for port would point services
            # at nothing (or at another program).
            return cls(
                home,
                int(recorded),
                note=f"the dev server in {home} runs on port {recorded}, not {port} ({source}); "
                f"using {recorded}. To move it: sigma-db dev down, then dev up on the new port.",
            )
        return cls(home, port)

    @property
    def server(self) -> LocalServer:
        """The cluster (data, socket and log under ``home/cluster``)."""
        return LocalServer(
            self.home / "cluster",
            self.port,
            superuser=_SUPERUSER,
            password=self._state().get("superuser_password", ""),
        )

    def status(self) -> DevStatus:
        """Whether the server is initialised and running, without changing anything."""
        server = self.server
        return DevStatus(
            self.home,
            self.port,
            running=server.is_running(),
            initialised=(server.datadir / "PG_VERSION").exists(),
        )

    def up(self, products: Sequence[str] = ()) -> DevStatus:
        """Start the server if needed, then create ``edge_products``, its schemas, roles, logins.

        ``products`` adds products beyond the seed five (a repo made by ``new-product``); the
        state remembers them, so later ``up`` runs keep them.
        """
        self._prepare_home()
        state = self._state()
        if "superuser_password" not in state:
            state = {
                "port": self.port,
                "superuser_password": secrets.token_urlsafe(24),
                "passwords": {},
            }
        recorded = int(state.get("port", self.port))
        server = self.server
        running = server.is_running()
        if running and recorded != self.port:
            raise ServerError(
                f"The dev server in {self.home} already runs on port {recorded}; run sigma-db "
                f"dev down first to move it to port {self.port}."
            )
        if not running and _port_in_use(self.port):
            raise ServerError(
                f"Port {self.port} on 127.0.0.1 is taken by another program; set "
                f"SIGMA_DB_DEV_PORT (or --port) to a free port."
            )
        extra: list[str] = state.setdefault("products", [])
        for key in products:
            if Product.named(key).key not in PRODUCTS and key not in extra:
                extra.append(key)
        passwords: dict[str, str] = state.setdefault("passwords", {})
        for key in _product_keys(state):
            for kind in RoleKind:
                passwords.setdefault(dev_login(key, kind), secrets.token_urlsafe(18))
        state["port"] = self.port
        self._write_state(state)
        LocalServer(
            server.root, self.port, superuser=_SUPERUSER, password=state["superuser_password"]
        ).start()
        plan = self._provision(state)
        return DevStatus(self.home, self.port, running=True, initialised=True, plan=plan)

    def down(self) -> bool:
        """Stop the server; return whether it was running."""
        server = self.server
        if not server.is_running():
            return False
        server.stop()
        return True

    def reset(self) -> DevStatus:
        """Stop, delete the cluster and its passwords, and start afresh (all data is lost).

        Works whatever ``state.json`` holds: stopping needs no password, and a broken state
        file is what the other commands send the user here to replace.
        """
        LocalServer(self.home / "cluster", self.port, superuser=_SUPERUSER).stop()
        shutil.rmtree(self.home / "cluster", ignore_errors=True)
        (self.home / _STATE).unlink(missing_ok=True)
        return self.up()

    def env(self, product: str, kind: RoleKind | str = RoleKind.RW) -> dict[str, str]:
        """The ``DB_*`` variables a service of ``product`` uses to connect as ``kind``."""
        kind = RoleKind(kind)
        state = self._state()
        if product not in _product_keys(state):
            Product.named(product)  # a name no product can have says so, not "add it"
            raise ConfigurationError(
                f"Unknown product {product!r}; the dev database has "
                f"{', '.join(_product_keys(state))}. Add a new one with "
                f"sigma-db dev up --product {product}."
            )
        login = dev_login(product, kind)
        password = state.get("passwords", {}).get(login)
        if password is None:
            raise ServerError(
                f"No dev database in {self.home}; run sigma-db dev up first (or set "
                "SIGMA_DB_DEV_HOME to where it lives)."
            )
        return {
            "DB_HOST": "127.0.0.1",
            "DB_PORT": str(self.port),
            "DB_NAME": CONSOLIDATED_DATABASE,
            "DB_SCHEMA": product,
            "DB_USER": login,
            "DB_PASSWORD": password,
            "DB_ENV": "dev",
            "DB_SSLMODE": "disable",
            "DB_POOLER": "none",
        } | ({} if product in PRODUCTS else {"DB_PRODUCT": product})

    # -- internals

    def _admin_settings(self, state: Mapping[str, Any]) -> Any:
        from sigma_db.settings import DatabaseSettings

        return DatabaseSettings(
            _env_file=None,
            host="127.0.0.1",
            port=self.port,
            name=CONSOLIDATED_DATABASE,
            user=_SUPERUSER,
            password=state["superuser_password"],
            password_file=None,
            schema_name="lab",
            product=None,
            env="dev",
            sslmode="disable",
            pooler="none",
            conn_max=1,
        )

    def _provision(self, state: Mapping[str, Any]) -> RolePlan:
        import psycopg
        from psycopg import sql
        from pydantic import SecretStr

        from sigma_db.roles import sync_roles

        try:
            conn = psycopg.connect(
                host="127.0.0.1",
                port=self.port,
                user=_SUPERUSER,
                password=state["superuser_password"],
                dbname="postgres",
                autocommit=True,
            )
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise ServerError(
                f"Cannot log in to the dev server in {self.home} ({reason}); if its state.json "
                "was lost or edited, run sigma-db dev reset (this deletes the dev data)."
            ) from None
        with conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [CONSOLIDATED_DATABASE]
            ).fetchone()
            if exists is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {}").format(sql.Identifier(CONSOLIDATED_DATABASE))
                )
        targets = [
            ProductRoles(
                resolve_topology(
                    database=CONSOLIDATED_DATABASE,
                    schema=key,
                    environment=Environment.DEV,
                    product=None if key in PRODUCTS else key,
                ),
                tuple(
                    Login(
                        dev_login(key, kind),
                        kind,
                        SecretStr(state["passwords"][dev_login(key, kind)]),
                    )
                    for kind in RoleKind
                ),
            )
            for key in _product_keys(state)
        ]
        return sync_roles(self._admin_settings(state), targets, apply=True)

    def _state(self) -> dict[str, Any]:
        return _read_state(self.home)

    def _write_state(self, state: Mapping[str, Any]) -> None:
        path = self.home / _STATE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
        os.replace(tmp, path)

    def _prepare_home(self) -> None:
        user = server_user()
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if user is None:
            return
        # The server runs as `user`: it must be able to walk into home (not list it: 0711).
        self.home.chmod(0o711)
        closed = first_closed_directory(self.home, user)
        if closed is not None:
            raise ServerError(
                f"{closed} cannot be entered by the {user!r} user the dev server runs as "
                f"(PostgreSQL refuses to run as root); set SIGMA_DB_DEV_HOME to a directory "
                "outside it, e.g. /var/lib/sigma-db/dev."
            )
        owned_directory(self.home / "cluster", user)


def _default_home(environ: Mapping[str, str]) -> Path:
    configured = environ.get("SIGMA_DB_DEV_HOME")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/sigma-db/dev")
    data = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "sigma-db" / "dev"


def _read_state(home: Path) -> dict[str, Any]:
    path = home / _STATE
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        problem: str | None = exc.__class__.__name__
    else:
        problem = _state_problem(loaded)
    if problem is not None:
        raise ServerError(
            f"Cannot read {path} ({problem}); fix or delete it, or run sigma-db dev reset."
        )
    return dict(loaded)


def _state_problem(state: object) -> str | None:
    """What makes a (hand-edited) state unusable, naming the key but never its value."""
    if not isinstance(state, dict):
        return "not a JSON object"
    port = state.get("port")
    if port is not None and (type(port) is not int or not 1 <= port <= 65535):
        return '"port" is not a number from 1 to 65535'
    password = state.get("superuser_password")
    if password is not None and (not isinstance(password, str) or not password):
        return '"superuser_password" is not a non-empty string'
    passwords = state.get("passwords", {})
    if not isinstance(passwords, dict) or not all(
        isinstance(value, str) and value for value in passwords.values()
    ):
        return '"passwords" is not an object of login names to non-empty strings'
    products = state.get("products", [])
    if not isinstance(products, list) or not all(
        isinstance(key, str) and identifier_problem(key) is None for key in products
    ):
        return '"products" is not a list of product names'
    return None


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _product_keys(state: Mapping[str, Any]) -> list[str]:
    """The seed products, then those added with ``dev up --product``."""
    return [*PRODUCTS, *state.get("products", [])]
