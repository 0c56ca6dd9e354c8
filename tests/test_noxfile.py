"""The README's commands start with ``python3 noxfile.py``: its bootstrap must never loop."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

NOXFILE = Path(__file__).resolve().parent.parent / "noxfile.py"


def test_a_bootstrap_venv_without_nox_stops_with_the_fix(tmp_path: Path) -> None:
    # The state an interrupted or offline first run leaves: a venv, but no nox in it. Re-run
    # inside it, the noxfile used to exec itself again forever at 100 % CPU.
    venv.create(tmp_path / "venv", with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")} | {
        "SIGMA_DB_NOX_BOOTSTRAP": "1"
    }
    done = subprocess.run(
        [str(python), str(NOXFILE), "-l"], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "nox did not install into .nox/_bootstrap; delete it, rerun" in done.stderr
