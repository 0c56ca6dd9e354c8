#!/usr/bin/env python3
"""Developer and CI tasks. ``nox -l`` lists them; ``python3 noxfile.py -s NAME`` needs no nox.

Run as a script on a fresh machine, this file installs nox into ``.nox/_bootstrap`` and re-runs
itself there, which is what keeps the README's quick start at two commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import nox
except ModuleNotFoundError:  # pragma: no cover - only on a machine without nox
    if __name__ != "__main__":
        raise
    if os.environ.get("SIGMA_DB_NOX_BOOTSTRAP"):  # re-run in the venv, and still no nox
        raise SystemExit(
            "noxfile.py: nox did not install into .nox/_bootstrap; delete it, rerun"
        ) from None
    _venv = HERE / ".nox" / "_bootstrap"
    _python = _venv / "bin" / "python"
    # A venv left by an interrupted or offline first run may lack nox: install it (again).
    _has_nox = _python.exists() and subprocess.run([_python, "-c", "import nox"]).returncode == 0
    if not _has_nox:
        subprocess.run([sys.executable, "-m", "venv", str(_venv)], check=True)
        subprocess.run(
            [str(_python), "-m", "pip", "install", "--quiet", "nox>=2024.4.15"], check=True
        )
    os.environ["SIGMA_DB_NOX_BOOTSTRAP"] = "1"
    os.execv(_python, [str(_python), __file__, *sys.argv[1:]])  # noqa: S606 - re-run in venv

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the whole test suite against a real PostgreSQL the run starts itself."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy strict over sigma_db/ and this file."""
    session.install("-e", ".[test,lint]", "nox>=2024.4.15")
    session.run("mypy", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation; warnings are errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "-f", "docs/mkdocs.yml", "-d", str(HERE / "site"))


@nox.session
def demo(session: nox.Session) -> None:
    """The main job end to end on a local database the demo starts (and stops) itself."""
    session.install("-e", ".[scaffold,migrations-lint]")
    session.run("sigma-db", "demo", *session.posargs)


if __name__ == "__main__":
    nox.main()
