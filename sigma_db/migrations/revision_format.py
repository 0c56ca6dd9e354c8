"""The post-write hook of a product's ``alembic.ini``: ruff on each revision as it is written.

``python -m sigma_db.migrations.revision_format FILE...`` applies ruff's fixes, then its
formatter, to the new revision only, with the repository's own ruff settings, before
``sigma-db migrations lock`` checksums it. Alembic's own ``exec`` and ``module`` hook types fail
confusingly when ruff is missing (a traceback, or ``FAILED`` after the file is written); this
one leaves the file as rendered, prints what to run, and lets the revision command succeed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["format_revision", "main"]


def format_revision(path: Path) -> str | None:
    """Apply ruff's fixes, then its formatter, to the revision at ``path``.

    Returns a note for the user when ruff is not installed (the file is left as it is), else
    ``None``. Diagnostics ruff cannot fix are printed by ruff; they never fail the revision
    command, which has written the file by now.
    """
    ruff = _ruff_command()
    if ruff is None:
        shown = _shown(path)
        return (
            f"note: ruff is not installed, so {path.name} is as Alembic rendered it; before "
            f"`sigma-db migrations lock`, run: ruff check --fix {shown} && ruff format {shown} "
            "(pip install -e '.[test]' brings ruff)"
        )
    subprocess.run([*ruff, "check", "--fix", "--quiet", str(path)], check=False)
    subprocess.run([*ruff, "format", "--quiet", str(path)], check=False)
    return None


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter to copy)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _ruff_command() -> list[str] | None:
    """Ruff from this environment (``python -m ruff``), else one on ``PATH``, else ``None``."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    return [found] if found else None


def main(argv: Sequence[str] | None = None) -> int:
    """The post-write hook: ``python -m sigma_db.migrations.revision_format REVISION_FILE...``."""
    for name in sys.argv[1:] if argv is None else argv:
        note = format_revision(Path(name))
        if note is not None:
            print(note, file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover - run by Alembic in a subprocess
    raise SystemExit(main())
