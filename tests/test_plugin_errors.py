"""A test server that cannot start stops the run once, with one line, not an error per test."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from sigma_db.scaffold import new_product
from sigma_db.server import find_binaries

# Imported by the run under test before any fixture: the machine's PostgreSQL made to fail.
NO_BINARIES = """
import sigma_db.server

sigma_db.server._candidate_bindirs = lambda: []  # nothing on PATH, no pg_config, no wheel
"""

FAKE_BINDIR = """
import sigma_db.server
from pathlib import Path

sigma_db.server._candidate_bindirs = lambda: [Path({bindir!r})]
"""

BAD_OPTION = """
import sigma_db.testing.server

sigma_db.testing.server._SERVER_OPTIONS += " -c no_such_setting=1"
"""

TESTS = "".join(f"def test_{n}(sigma_database):\n    pass\n\n\n" for n in range(5))


def _run(pytester: pytest.Pytester) -> tuple[pytest.RunResult, str]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    return result, result.stdout.str() + result.stderr.str()


def _stopped_once(result: pytest.RunResult, output: str, message: str) -> None:
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    lines = [line for line in output.splitlines() if message in line]
    assert len(lines) == 1, output  # once for the run, not once (or twice) per test
    assert "sigma_db: cannot start the test server: " in lines[0], output
    assert "Traceback" not in output, output
    assert "ERROR at setup" not in output, output
    assert len(output.splitlines()) < 20, output


def test_no_server_binaries_stop_a_generated_products_run_once(pytester: pytest.Pytester) -> None:
    new_product("lab", pytester.path, force=True)
    pytester.makeconftest(NO_BINARIES)
    result, output = _run(pytester)
    _stopped_once(result, output, "No PostgreSQL server binaries (initdb, pg_ctl) found")
    assert "set SIGMA_DB_PG_BINDIR to their directory." in output


def test_initdb_failing_stops_the_run_once(pytester: pytest.Pytester) -> None:
    real = find_binaries().bindir
    # Not under pytester's directory: as root the server user could not enter it.
    bindir = Path(tempfile.mkdtemp(prefix="sigma-db-fake-bin-", dir="/tmp"))
    try:
        bindir.chmod(0o755)
        (bindir / "pg_ctl").symlink_to(real / "pg_ctl")
        initdb = bindir / "initdb"
        initdb.write_text(
            "#!/bin/sh\necho 'initdb: error: could not create directory: disk full' >&2\nexit 1\n",
            encoding="utf-8",
        )
        initdb.chmod(0o755)
        pytester.makeconftest(FAKE_BINDIR.format(bindir=str(bindir)))
        pytester.makepyfile(TESTS)
        result, output = _run(pytester)
    finally:
        shutil.rmtree(bindir)
    _stopped_once(result, output, "initdb failed: initdb: error: could not create directory")


def test_a_server_that_does_not_start_stops_the_run_once(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(BAD_OPTION)
    pytester.makepyfile(TESTS)
    result, output = _run(pytester)
    # The reason from the server's log (deleted with its directory), not "examine the log".
    _stopped_once(
        result,
        output,
        'The test server did not start: FATAL: unrecognized configuration parameter "no_such_',
    )
