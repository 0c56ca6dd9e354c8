"""Numbered revisions in one straight line: ``0001_init.py``, ``0002_add_signals.py``, ...

Alembic's random hex ids are replaced, at ``alembic revision`` time, by the next four-digit
number (its ``process_revision_directives`` hook), and file names follow the id. The revision
tree must stay a single line (one head, no duplicate ids); :func:`load_revisions` checks that
before anything runs and says how to fix it, because Alembic's own errors for these cases name
neither the files nor the fix.

Each revision declares its phase as a module-level ``phase = "expand"`` (or ``"backfill"``,
``"contract"``), and may override the session timeouts with ``lock_timeout = "10s"`` /
``statement_timeout = "30min"``.
"""

from __future__ import annotations

import ast
import configparser
import enum
import os
import re
import traceback
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from sigma_db.migrations.checksum import file_checksum
from sigma_db.migrations.errors import MigrationError

__all__ = [
    "FILE_TEMPLATE",
    "Phase",
    "RevisionFile",
    "check_target",
    "load_revisions",
    "missing_downgrade",
    "next_revision_id",
    "number_revisions",
    "revision_files",
    "revision_phase",
    "script_directory",
    "timeout_setting",
]

FILE_TEMPLATE = "%(rev)s_%(slug)s"
"""Alembic ``file_template``: the file name starts with the revision number."""

_WIDTH = 4
_NUMBERED = re.compile(rf"\d{{{_WIDTH},}}\Z")
_REVISION_ID = re.compile(r"\w+\Z")
_RELATIVE_UP = re.compile(r"\+[1-9]\d*\Z")
_DEFINE_FUNCTIONS = "define upgrade() (and downgrade(), which raises if it cannot be undone)"
_DURATION = re.compile(r"(0|[1-9]\d{0,8})\s*(us|ms|s|min|h|d)?\Z")


class Phase(enum.StrEnum):
    """Where a revision sits in expand → backfill → contract."""

    EXPAND = "expand"
    """Only adds: new tables, nullable columns, indexes, NOT VALID constraints."""
    BACKFILL = "backfill"
    """Only changes data (in batches), no schema change."""
    CONTRACT = "contract"
    """Removes or tightens what old code no longer needs: drops, renames, SET NOT NULL."""


@dataclass(frozen=True)
class RevisionFile:
    """One revision on disk, as the ledger, the lock file and the dry run see it."""

    revision: str
    path: Path
    checksum: str
    description: str
    phase: Phase | None
    """``None`` when the file declares no valid phase (the dry run reports that)."""

    @property
    def name(self) -> str:
        """The file name, for messages."""
        return self.path.name


def next_revision_id(existing: Iterable[str]) -> str:
    """The number after the highest numbered id in ``existing`` (``0001`` when there is none)."""
    numbers = [int(rev) for rev in existing if _NUMBERED.match(rev)]
    return f"{max(numbers, default=0) + 1:0{_WIDTH}d}"


def number_revisions(
    context: MigrationContext, revision: Any, directives: list[MigrationScript]
) -> None:
    """``process_revision_directives`` hook: give each new revision the next number as its id."""
    script = context.opts.get("script")
    assert isinstance(script, ScriptDirectory)
    heads = script.get_heads()
    if len(heads) > 1:
        raise MigrationError(
            f"Cannot add a revision: the chain has {len(heads)} heads ({', '.join(heads)}). "
            "Make it one line first: set down_revision of the later one to the other."
        )
    taken = [rev.revision for rev in script.walk_revisions()]
    for directive in directives:
        wanted = getattr(directive, "head", None) or "head"
        if heads and wanted not in ("head", "heads", heads[0]):
            raise MigrationError(
                f"Cannot add a revision on {wanted}: revisions form one line, and a new one goes "
                f"on its head, {heads[0]}; run alembic revision without --head/--splice"
            )
        directive.rev_id = next_revision_id(taken)
        taken.append(directive.rev_id)
    # File names come from the id; set here so an alembic.ini without file_template still works.
    script.file_template = FILE_TEMPLATE


def revision_phase(module: Any) -> Phase | None:
    """The phase a revision module declares, or ``None`` if it declares none or a wrong one."""
    value = getattr(module, "phase", None)
    try:
        return Phase(value) if isinstance(value, str) else None
    except ValueError:
        return None


def timeout_setting(module: Any, name: str, default: str | None) -> str | None:
    """A revision's ``lock_timeout``/``statement_timeout`` override, checked, else ``default``.

    ``None`` (in the revision) means: leave the server's setting alone; the lint reports it.
    """
    value = getattr(module, name, default)
    if value is None:
        return None
    text = str(value).strip()
    if not _DURATION.match(text):
        where = getattr(module, "__file__", "a revision")
        raise MigrationError(
            f"{Path(str(where)).name}: {name} = {value!r} is not a duration; write e.g. "
            f'{name} = "5s" (units us, ms, s, min, h, d) or "0" to disable it.'
        )
    return text


def check_target(target: str, script: ScriptDirectory | None = None) -> None:
    """Refuse an empty ``--to`` (in CI, usually a variable that is not set).

    With ``script``, also what ``sigma-db migrate`` cannot upgrade to: a revision no file
    declares, and Alembic's other forms (ranges, branches, relative downgrades), which it would
    otherwise blame on the database or fail on with a bare assertion.
    """
    if not target.strip():
        raise MigrationError(
            "--to is empty: name a revision number or head (is the variable behind it unset?)"
        )
    if script is None or target in ("head", "heads") or _RELATIVE_UP.match(target):
        return
    usage = "name a revision number (e.g. 0003), head, or +N (N revisions ahead)"
    if not _REVISION_ID.match(target) or target == "base":
        raise MigrationError(
            f"--to {target} is not a target migrate accepts; {usage} (migrate only upgrades: "
            "alembic downgrade REVISION goes back)"
        )
    try:
        found = script.get_revision(target)
    except (CommandError, RevisionError):
        found = None
    if found is None:
        raise MigrationError(f"--to {target}: no revision file declares it; {usage}")


def script_directory(config: Config) -> ScriptDirectory:
    """The product's Alembic script directory, or one line saying what is wrong with the config."""
    try:
        return ScriptDirectory.from_config(config)
    except CommandError as exc:
        raise MigrationError(f"{exc}; check script_location in {config.config_file_name}.") from exc
    except UnicodeDecodeError as exc:
        raise MigrationError(
            f"{config.config_file_name} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "save it as UTF-8"
        ) from exc
    except configparser.Error as exc:
        reason = " ".join(str(exc).split())
        raise MigrationError(
            f"{config.config_file_name} is not a valid Alembic config ({reason}); fix the file "
            "(sigma-db new-product writes a fresh one to compare with)"
        ) from exc


def load_revisions(config: Config) -> ScriptDirectory:
    """Load the script directory and insist on one numbered line of revisions.

    Raises :class:`MigrationError` naming the files for: two heads, a duplicate id, a broken
    ``down_revision`` (usually a deleted file), or a file outside the chain.
    """
    script = script_directory(config)
    problems = revision_tree_problems(script)
    if problems:
        raise MigrationError("; ".join(problems))
    return script


def revision_tree_problems(script: ScriptDirectory) -> list[str]:
    """Everything wrong with the shape of the revision tree, one sentence each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            revisions = list(script.walk_revisions())
        except (CommandError, KeyError) as exc:
            # A down_revision naming no file: Alembic warns "Revision X referenced from Y is
            # not present", then fails on the lookup. A duplicate id fails the walk too when a
            # revision follows it.
            messages = [str(w.message) for w in caught] + [str(exc)]
            duplicates = [_duplicate(m, script) for m in messages if "more than once" in m]
            return duplicates or [_broken_chain(script, " ".join(messages))]
        except Exception as exc:  # a revision file that does not import: name file and line
            return [_load_error(script, exc)]
    problems = [
        _duplicate(str(w.message), script) for w in caught if "more than once" in str(w.message)
    ]
    heads = script.get_heads()
    if len(heads) > 1:
        named = sorted(_file_of(script, head) for head in heads)
        problems.append(
            f"the revisions have {len(heads)} heads ({', '.join(named)}); keep one line: "
            "renumber the newer file and set its down_revision to the other head"
        )
    # Alembic stores resolved paths; resolve (a few syscalls per file) only on a mismatch.
    chained = {os.path.abspath(rev.path) for rev in revisions}
    resolved: set[Path] = set()
    for path in _version_files(script):
        if os.path.abspath(path) in chained or problems:
            continue
        resolved = resolved or {Path(rev.path).resolve() for rev in revisions}
        if path.resolve() not in resolved:
            problems.append(f"{path.name} is not a revision Alembic can load; fix or remove it")
    for rev in revisions:
        if not callable(getattr(rev.module, "upgrade", None)):
            problems.append(f"{Path(rev.path).name} defines no upgrade(); {_DEFINE_FUNCTIONS}")
        if not _NUMBERED.match(rev.revision):
            problems.append(
                f"{Path(rev.path).name}: revision id {rev.revision!r} is not numbered; use the "
                f"next number (alembic revision -m ... assigns it)"
            )
    return problems


def revision_files(script: ScriptDirectory) -> list[RevisionFile]:
    """Every revision, oldest first, with its checksum, description and phase."""
    files: list[RevisionFile] = []
    for rev in reversed(list(script.walk_revisions())):
        assert isinstance(rev, Script)
        files.append(
            RevisionFile(
                revision=rev.revision,
                path=Path(rev.path),
                checksum=file_checksum(rev.path),
                description=(rev.doc or "").strip(),
                phase=revision_phase(rev.module),
            )
        )
    return files


def _version_files(script: ScriptDirectory) -> Sequence[Path]:
    return sorted(p for p in Path(script.versions).glob("*.py") if p.name != "__init__.py")


def _file_of(script: ScriptDirectory, revision: str) -> str:
    named = [p.name for p in _version_files(script) if p.name.startswith(f"{revision}_")]
    return named[0] if len(named) == 1 else revision


def _relative(script: ScriptDirectory) -> str:
    return "/".join(Path(script.versions).parts[-2:])


def _duplicate(message: str, script: ScriptDirectory) -> str:
    match = re.search(r"Revision (\S+) is present more than once", message)
    rev = match.group(1) if match else "?"
    files = [p.name for p in _version_files(script) if p.name.startswith(f"{rev}_")]
    return (
        f"revision {rev} is declared by more than one file "
        f"({', '.join(files) or 'see versions/'}); "
        "give the newer one the next free number"
    )


def _load_error(script: ScriptDirectory, exc: Exception) -> str:
    """``0002_x.py:7: SyntaxError: ...`` for a revision file that cannot be imported."""
    if isinstance(exc, SyntaxError) and exc.filename:
        name, line = Path(exc.filename).name, exc.lineno
        message = exc.msg
    else:
        versions = Path(script.versions).resolve()
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if Path(frame.filename).resolve().parent == versions
        ]
        message = str(exc)
        name = Path(frames[-1].filename).name if frames else _module_file(script, message)
        line = frames[-1].lineno if frames else None
        if not frames and name == _relative(script):
            suspect = _suspect_file(script)
            if suspect is not None:
                return suspect
    where = f"{name}:{line}" if line else name
    return f"{where}: {type(exc).__name__}: {' '.join(message.split())}; fix the revision file"


def _suspect_file(script: ScriptDirectory) -> str | None:
    """The revision file behind an error Alembic raised without naming one, if it can be told.

    Read only on that error path: a NUL byte (Python refuses the source), or a ``revision`` /
    ``down_revision`` that is not a string (Alembic fails deep inside its revision map).
    """
    for path in _version_files(script):
        source = path.read_bytes()
        if b"\x00" in source:
            return f"{path.name} contains a NUL byte; save it again as plain text"
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue  # Python names such a file itself
        for node in tree.body:
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                name = getattr(target, "id", None)
                if name not in ("revision", "down_revision"):
                    continue
                value = node.value
                text = isinstance(value, ast.Constant) and isinstance(value.value, str)
                if text or (name == "down_revision" and _none_or_strings(value)):
                    continue
                return (
                    f"{path.name}:{node.lineno}: {name} is not a string; write it quoted, "
                    f'e.g. {name} = "0002"'
                )
    return None


def _none_or_strings(value: ast.expr) -> bool:
    if isinstance(value, ast.Constant):
        return value.value is None or isinstance(value.value, str)
    if isinstance(value, ast.Tuple | ast.List):
        return all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in value.elts)
    return False


def missing_downgrade(script: ScriptDirectory, exc: AttributeError) -> str | None:
    """The one-line error for downgrading past a revision without ``downgrade()``, if that is it.

    Not a tree problem: a revision that is never reverted may leave it out, and only a
    downgrade through it needs one.
    """
    if getattr(exc, "name", None) != "downgrade":
        return None
    return (
        f"{_module_file(script, str(exc))} defines no downgrade(), so it cannot be reverted; "
        f"{_DEFINE_FUNCTIONS}"
    )


def _module_file(script: ScriptDirectory, message: str) -> str:
    """The revision file an error names by Alembic's module name (``0002_x_py``), if any."""
    named = re.search(r"module '([^']+)'", message)
    if named:
        for path in _version_files(script):
            if path.name.replace(".", "_") == named.group(1):
                return path.name
    return _relative(script)


def _broken_chain(script: ScriptDirectory, message: str) -> str:
    not_revision = re.search(r"Could not determine revision id from filename (\S+?)\.? Be", message)
    if not_revision:
        return (
            f"{not_revision.group(1)} in {_relative(script)} is not a revision (it declares no "
            "revision = ...); keep only revisions there and move helper code into the product's "
            "package"
        )
    loop = re.search(r"Self-loop is detected in revisions \((\w+)\)", message)
    if loop:
        return (
            f"{_file_of(script, loop.group(1))} names itself as its down_revision; set "
            "down_revision to the revision before it"
        )
    match = re.search(r"Revision (\w+) referenced from (?:\w+ -> )?(\w+)", message)
    if match:
        missing, child = match.groups()
        return (
            f"revision {missing} is missing: {_file_of(script, child)} follows it "
            f"(down_revision = {missing!r}) but no file declares it; restore it from version "
            f"control (git checkout -- '{_relative(script)}/{missing}_*.py')"
        )
    return f"the revision chain cannot be loaded ({message}); restore the missing revision file"
