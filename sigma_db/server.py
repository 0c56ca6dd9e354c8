"""Run a local PostgreSQL server: find its binaries, and never as root.

Shared by the test harness (which drives pytest-postgresql's executor through :func:`pg_ctl`)
and by the local dev database. PostgreSQL refuses to run as root, and CI runs as root on a fresh
machine, so when the current user is root every server command runs as an unprivileged system
user (``SIGMA_DB_SERVER_USER``, else ``postgres`` if it exists, else ``sigma_postgres``, created
on first use), in directories that user owns.

Binaries are looked up in this order: ``SIGMA_DB_PG_BINDIR``, ``pg_ctl`` on ``PATH``,
``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin`` (Debian/Ubuntu) and
``/usr/pgsql-*/bin`` (RHEL) and ``/usr/local/pgsql/bin``, and last the build inside the
``pgserver`` wheel (the ``embedded`` extra) for machines without a system PostgreSQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sigma_db.errors import SigmaDBError

__all__ = [
    "LocalServer",
    "ServerBinaries",
    "ServerError",
    "as_user",
    "find_binaries",
    "first_closed_directory",
    "free_port",
    "initdb",
    "owned_directory",
    "pg_ctl",
    "runnable_binaries",
    "server_user",
    "temp_directories",
]

_FALLBACK_USER = "sigma_postgres"
_SEARCH_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")


class ServerError(SigmaDBError, RuntimeError):
    """A local server could not be found, initialised, started or stopped."""

    __module__ = "sigma_db"


@dataclass(frozen=True)
class ServerBinaries:
    """A PostgreSQL installation's ``bin`` directory and major version."""

    bindir: Path
    major: int

    def tool(self, name: str) -> Path:
        """Path of one program (``initdb``, ``pg_ctl``, ``postgres``, ``psql``)."""
        return self.bindir / name


def find_binaries() -> ServerBinaries:
    """Locate ``initdb``/``pg_ctl``; raise :class:`ServerError` with install hints if absent."""
    for candidate in _candidate_bindirs():
        if (candidate / "pg_ctl").is_file() and (candidate / "initdb").is_file():
            return ServerBinaries(candidate, _major_version(candidate))
    raise ServerError(
        "No PostgreSQL server binaries (initdb, pg_ctl) found on PATH, via pg_config, or under "
        "/usr/lib/postgresql/*/bin. Install them (Debian/Ubuntu: apt-get install postgresql; "
        "macOS: brew install postgresql), or pip install 'sigma-db[embedded]' for a build "
        "inside a wheel, or set SIGMA_DB_PG_BINDIR to their directory."
    )


def _candidate_bindirs() -> list[Path]:
    found: list[Path] = []
    configured = os.environ.get("SIGMA_DB_PG_BINDIR")
    if configured:
        found.append(Path(configured))
    on_path = shutil.which("pg_ctl")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            found.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    for pattern in _SEARCH_GLOBS:
        root = Path("/")
        matches = sorted(root.glob(pattern.lstrip("/")), key=_version_key, reverse=True)
        found.extend(matches)
    embedded = _embedded_bindir()
    if embedded is not None:
        found.append(embedded)
    return found


def _embedded_bindir() -> Path | None:
    """The server build shipped in the ``pgserver`` wheel (``pip install 'sigma-db[embedded]'``).

    Located without importing it: the package only has to be installed, not loaded.
    """
    from importlib.util import find_spec

    try:
        spec = find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(path))) or (0,)


def _major_version(bindir: Path) -> int:
    out = subprocess.run(
        [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if match is None:
        raise ServerError(f"Cannot read the PostgreSQL version from {out!r} ({bindir}).")
    return int(match.group(1))


def server_user() -> str | None:
    """The OS user to run the server as: ``None`` when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get("SIGMA_DB_SERVER_USER")
    for name in (wanted,) if wanted else ("postgres", _FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    name = wanted or _FALLBACK_USER
    useradd = ["useradd", "--system", "--no-create-home", "--shell", "/bin/false"]
    result = subprocess.run(
        [*useradd, "--user-group", name], capture_output=True, text=True, check=False
    )
    if result.returncode == 9 and not _user_exists(name):
        # 9 is also "group exists" (a half-removed user): join that group instead.
        result = subprocess.run(
            [*useradd, "--gid", name, name], capture_output=True, text=True, check=False
        )
    if not _user_exists(name):  # 9 with the user there: created meanwhile by a concurrent run
        raise ServerError(
            f"Running as root, and PostgreSQL refuses root; creating the system user {name!r} "
            f"failed: {result.stderr.strip()}. Create an unprivileged user and set "
            "SIGMA_DB_SERVER_USER to it."
        )
    return name


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _setpriv(user: str) -> list[str]:
    # The primary group by number: it is not always named after the user (nobody:nogroup).
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups"]


def as_user(argv: list[str], user: str | None) -> list[str]:
    """``argv`` prefixed to run as ``user`` (from :func:`server_user`), or unchanged for None.

    Public because other daemons that refuse root (PgBouncer in the tests) need it too.
    """
    if user is None:
        return argv
    return [*_setpriv(user), *argv]


def first_closed_directory(path: Path, user: str | None) -> Path | None:
    """The first of ``path`` and its parents that ``user`` cannot enter, or None.

    Root can read anything, so as root a server user is chosen, and a checkout or a temporary
    directory under ``/root`` (mode 0700) is out of its reach. Checked from the mode bits and
    the user's groups, which is what PostgreSQL's own access comes down to.
    """
    if user is None:
        return None
    entry = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, entry.pw_gid))
    # Through a symlink both count: the link's own parents, and the target's.
    resolved = path.resolve()
    for directory in (path, *path.parents, resolved, *resolved.parents):
        try:
            info = directory.stat()
        except OSError:
            continue  # not created yet: its parent decides
        if info.st_uid == entry.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def runnable_binaries(binaries: ServerBinaries, user: str | None) -> ServerBinaries:
    """``binaries``, or a copy of their installation that ``user`` can run.

    The embedded build lives inside a virtualenv, and as root that is often under ``/root``,
    where the server user cannot follow. The installation is then copied once into a cache
    directory of root's own in the temporary directory (:func:`_private_cache`: a world-writable
    place must not decide what runs), keyed by its build, and reused by later runs. A copy
    counts only once it is complete (a marker written last; a copy cut short by a crash or a
    temp cleaner is made again), and runs copying at once take turns (a lock file). The copy
    keeps the installation's place two levels below an anchor directory, with the anchor's
    ``*.libs`` directories beside it: that is where a wheel's vendored libraries are found
    (pgserver's binaries load libpq through ``RPATH $ORIGIN/../../../pgserver.libs``).
    """
    if first_closed_directory(binaries.bindir, user) is None:
        return binaries
    install = binaries.bindir.parent
    anchor = install.parent.parent
    place = install.relative_to(anchor)
    built = (binaries.bindir / "postgres").stat()  # copies keep it: one cache entry per build
    key = hashlib.sha256(f"{place}:{built.st_size}:{built.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = _private_cache(_shared_directory(user))
    copy = cache / f"pginstall-{binaries.major}-{key}"
    bindir = copy / place / "bin"

    def complete() -> bool:
        # The marker, and the programs themselves: a temp cleaner going by age takes files one
        # at a time, so a copy missing any of them is made again.
        return (copy / _COMPLETE).is_file() and all(
            (bindir / name).is_file() for name in ("postgres", "pg_ctl", "initdb")
        )

    if not complete():
        with open(cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not complete():
                shutil.rmtree(copy, ignore_errors=True)  # incomplete: start over
                _copy_installation(install, anchor, place, copy)
    return ServerBinaries(bindir, binaries.major)


_COMPLETE = ".sigma-db-complete"
"""Written last into a copy of the server binaries: the copy may be used."""


def _copy_installation(install: Path, anchor: Path, place: Path, copy: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f"{copy.name}.", dir=copy.parent))
    try:
        shutil.copytree(install, staging / place, symlinks=True)
        for libs in anchor.glob("*.libs"):
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for directory, _, files in os.walk(staging):
            os.chmod(directory, 0o755)  # noqa: S103 - binaries every user may run
            for name in files:
                item = Path(directory, name)
                if not item.is_symlink():
                    item.chmod(item.stat().st_mode & ~0o022 | stat.S_IRGRP | stat.S_IROTH)
        (staging / _COMPLETE).touch()
        os.rename(staging, copy)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _private_cache(shared: Path) -> Path:
    """``<shared>/sigma-db-pginstall-<uid>``: ours alone to write, everyone's to enter.

    In a world-writable ``/tmp`` anyone could create it first and plant a ``pg_ctl`` that the
    server user would run: a directory there that is not ours, or that others may write to, or
    a symlink, is refused rather than used.
    """
    cache = shared / f"sigma-db-pginstall-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        cache.mkdir()
        cache.chmod(0o755)
    info = cache.lstat()
    if (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        if not info.st_mode & stat.S_IXOTH:  # made, then the run died before its chmod
            cache.chmod(0o755)
        return cache
    raise ServerError(
        f"{cache} is not a directory of this user's that only it may write to (made by "
        "someone else, or on a file system that maps root to another user); server binaries "
        "copied there could be replaced: remove it, or set TMPDIR to a local directory."
    )


def temp_directories() -> tuple[Path, ...]:
    """Where a server's files may go, in order of preference: ``TMPDIR``, /tmp, /var/tmp."""
    return (Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"))  # noqa: S108


def _shared_directory(user: str | None) -> Path:
    """A temporary directory the server user can enter: ``TMPDIR`` if it can, else /tmp."""
    for candidate in temp_directories():
        if candidate.is_dir() and first_closed_directory(candidate, user) is None:
            return candidate
    raise ServerError(
        f"No temporary directory that the {user!r} user the server runs as can enter "
        "(PostgreSQL refuses to run as root); set TMPDIR to one every user can enter, e.g. /tmp."
    )


def owned_directory(path: Path, user: str | None) -> Path:
    """Create ``path`` (mode 0700) owned by ``user``; its parents must already be traversable."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def initdb(
    binaries: ServerBinaries,
    datadir: Path,
    *,
    superuser: str,
    password: str,
    os_user: str | None,
) -> None:
    """Initialise a cluster: socket logins trusted, TCP logins need the password (scram)."""
    owned_directory(datadir.parent, os_user)
    pwfile = datadir.parent / ".pwfile"
    pwfile.write_text(password + "\n", encoding="utf-8")
    pwfile.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if os_user is not None:
        entry = pwd.getpwnam(os_user)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        _run(
            as_user(
                [
                    str(binaries.tool("initdb")),
                    f"--pgdata={datadir}",
                    f"--username={superuser}",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ],
                os_user,
            ),
            what="initdb",
        )
    finally:
        pwfile.unlink(missing_ok=True)


def pg_ctl(binaries: ServerBinaries, os_user: str | None, directory: Path) -> Path:
    """Path of a ``pg_ctl`` that runs as ``os_user``: the real one, or a wrapper script.

    pytest-postgresql's executor shells out to ``pg_ctl`` for start, status and stop; pointing it
    at this wrapper is how the same executor works as root.
    """
    real = binaries.tool("pg_ctl")
    if os_user is None:
        return real
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "pg_ctl"
    # cd /: the caller's working directory may not be readable by the server user.
    setpriv = " ".join(_setpriv(os_user))
    wrapper.write_text(
        f'#!/bin/sh\ncd / || exit 1\nexec {setpriv} "{real}" "$@"\n', encoding="utf-8"
    )
    wrapper.chmod(0o755)
    return wrapper


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(argv: list[str], *, what: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd="/")
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ServerError(f"{what} failed: {' / '.join(detail[-3:]) or result.returncode}")
    return result.stdout


@dataclass
class LocalServer:
    """A PostgreSQL cluster in ``root`` (data, socket and log inside it), listening on 127.0.0.1.

    The process outlives this object: ``start`` is idempotent, ``stop`` ends it. ``durable``
    keeps ``fsync`` on (the dev database: a host crash must not corrupt it); a throwaway
    cluster (the demo) may turn it off for speed.
    """

    root: Path
    port: int
    superuser: str = "postgres"
    password: str = field(default="postgres", repr=False)  # a throwaway cluster, loopback only
    binaries: ServerBinaries | None = None
    durable: bool = True

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """Where the Unix socket lives (inside ``root``, so paths stay short and private)."""
        return self.root / "run"

    @property
    def logfile(self) -> Path:
        """The server log."""
        return self.root / "postgresql.log"

    def _binaries(self) -> ServerBinaries:
        if self.binaries is None:
            self.binaries = find_binaries()
        self.binaries = runnable_binaries(self.binaries, server_user())
        return self.binaries

    def is_running(self) -> bool:
        """Whether the cluster's postmaster is alive."""
        if not (self.datadir / "PG_VERSION").exists():
            return False
        result = subprocess.run(
            as_user(
                [str(self._binaries().tool("pg_ctl")), "status", "-D", str(self.datadir)],
                server_user(),
            ),
            capture_output=True,
            check=False,
            cwd="/",
        )
        return result.returncode == 0

    def start(self, *, timeout: float = 60) -> LocalServer:
        """Initialise the cluster if needed, then start it and wait until it accepts logins."""
        binaries = self._binaries()
        user = server_user()
        owned_directory(self.root, user)
        owned_directory(self.socket_dir, user)
        if not (self.datadir / "PG_VERSION").exists():
            initdb(
                binaries,
                self.datadir,
                superuser=self.superuser,
                password=self.password,
                os_user=user,
            )
        if self.is_running():
            return self
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories='{self.socket_dir}'"
        )
        if not self.durable:
            options += " -c fsync=off"
        _run(
            as_user(
                [
                    str(binaries.tool("pg_ctl")),
                    "start",
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(timeout)),
                ],
                user,
            ),
            what=f"starting PostgreSQL (log: {self.logfile})",
        )
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown); a no-op when it is not running."""
        if not self.is_running():
            return
        _run(
            as_user(
                [str(self._binaries().tool("pg_ctl")), "stop", "-D", str(self.datadir), "-m", "f"],
                server_user(),
            ),
            what="stopping PostgreSQL",
        )
