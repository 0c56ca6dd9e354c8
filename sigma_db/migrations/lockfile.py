"""The committed lock file: each revision's checksum, so CI detects an edit without a database.

``migrations/checksums.lock`` is plain text, one revision a line, so a changed checksum is a
visible one-line diff in review::

    # sigma-db checksum lock ...
    0001 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 0001_init.py

It changes only through ``sigma-db migrations lock``, which adds new revisions and refuses to
change a locked checksum unless told (``--accept REVISION``), and through ``repair``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sigma_db.migrations.errors import MigrationError
from sigma_db.migrations.findings import Finding
from sigma_db.migrations.revisions import RevisionFile

__all__ = [
    "LOCK_FILE_NAME",
    "LockEntry",
    "lock_findings",
    "lock_revision",
    "read_lock",
    "update_lock",
    "write_lock",
]

LOCK_FILE_NAME = "checksums.lock"
"""Lives in the script directory, beside ``env.py`` and ``versions/``."""

_HEADER = (
    "# sigma-db checksum lock: sha256 of each revision file (line endings normalized).\n"
    "# Written by `sigma-db migrations lock`; CI checks it with `sigma-db migrate --dry-run`.\n"
)
_LINE = re.compile(r"(?P<rev>\S+) (?P<sum>[0-9a-f]{64}) (?P<file>\S+)\Z")


@dataclass(frozen=True)
class LockEntry:
    """One locked revision."""

    revision: str
    checksum: str
    file: str


def read_lock(path: Path) -> dict[str, LockEntry] | None:
    """The entries of the lock file, ``None`` if there is none; a corrupt file is an error."""
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationError(
            f"Cannot read {path}: {exc}; restore it from version control."
        ) from exc
    if not content.strip():
        # Never written this way: `lock` always writes a header. Truncated (a bad merge, a full
        # disk); treating it as "nothing locked" would let `lock` re-lock edited revisions.
        raise MigrationError(
            f"{path} is empty; restore it from version control, or delete it and run: "
            "sigma-db migrations lock"
        )
    entries: dict[str, LockEntry] = {}
    for number, raw in enumerate(content.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None or match["rev"] in entries:
            what = "repeats a revision" if match else "is not '<revision> <sha256> <file>'"
            raise MigrationError(
                f"{path} is corrupt: line {number} {what} ({line[:60]!r}); restore it from "
                "version control, or delete it and run: sigma-db migrations lock"
            )
        entries[match["rev"]] = LockEntry(match["rev"], match["sum"], match["file"])
    return entries


def write_lock(path: Path, files: Sequence[RevisionFile]) -> None:
    """Write the lock file for ``files`` (oldest first), atomically."""
    body = "".join(f"{f.revision} {f.checksum} {f.name}\n" for f in files)
    partial = path.with_suffix(".lock.tmp")
    partial.write_text(_HEADER + body, encoding="utf-8", newline="\n")
    partial.replace(path)


def lock_findings(
    files: Sequence[RevisionFile], entries: Mapping[str, LockEntry] | None, path: Path
) -> list[Finding]:
    """Differences between the files and the lock file, one finding each."""
    if entries is None:
        return [
            Finding(
                "lock-absent",
                f"no lock file at {path}; create it with: sigma-db migrations lock (and commit it)",
            )
        ]
    findings: list[Finding] = []
    on_disk = {f.revision: f for f in files}
    for file in files:
        entry = entries.get(file.revision)
        if entry is None:
            findings.append(
                Finding(
                    "not-locked",
                    "new revision not in the lock file; "
                    "run: sigma-db migrations lock (and commit it)",
                    revision=file.revision,
                    file=file.name,
                )
            )
        elif entry.checksum != file.checksum:
            findings.append(
                Finding(
                    "lock-mismatch",
                    f"file differs from its locked checksum ({entry.checksum[:12]} locked, "
                    f"{file.checksum[:12]} now): an edited revision. Revert it; if the edit is "
                    f"deliberate: sigma-db migrations repair {file.revision} --reason '...' "
                    f"(applied somewhere) or sigma-db migrations lock --accept {file.revision} "
                    "(never applied)",
                    revision=file.revision,
                    file=file.name,
                )
            )
    for rev, entry in entries.items():
        if rev not in on_disk:
            findings.append(
                Finding(
                    "lock-missing-file",
                    f"locked but its file {entry.file} is gone; restore it from version control",
                    revision=rev,
                    file=entry.file,
                )
            )
    return findings


def update_lock(
    path: Path, files: Sequence[RevisionFile], *, accept: Collection[str] = ()
) -> list[str]:
    """Lock new revisions; change a locked checksum only for revisions in ``accept``.

    Returns one line per change. Raises :class:`MigrationError` (and writes nothing) when a locked
    revision was edited and not accepted, or when ``accept`` names an unknown revision.
    """
    entries = read_lock(path) or {}
    known = {f.revision for f in files}
    unknown = sorted(set(accept) - known - set(entries))
    if unknown:
        raise MigrationError(f"--accept {', '.join(unknown)}: no such revision file or lock entry.")
    refused = [
        f.revision
        for f in files
        if f.revision in entries
        and entries[f.revision].checksum != f.checksum
        and f.revision not in accept
    ]
    refused += [rev for rev in entries if rev not in known and rev not in accept]
    if refused:
        raise MigrationError(
            f"revision {', '.join(refused)} changed or lost its file since it was locked; revert "
            f"that, or accept it: sigma-db migrations lock --accept {refused[0]} (never applied "
            f"anywhere) or sigma-db migrations repair {refused[0]} --reason '...' (already applied)"
        )
    changes: list[str] = []
    for file in files:
        entry = entries.get(file.revision)
        if entry is None:
            changes.append(f"locked {file.revision} {file.name}")
        elif entry.checksum != file.checksum:
            changes.append(f"re-locked {file.revision} {file.name} (edit accepted)")
        elif entry.file != file.name:
            changes.append(f"renamed {file.revision} {entry.file} -> {file.name}")
    changes.extend(
        f"unlocked {rev} (file removed, accepted)" for rev in entries if rev not in known
    )
    if changes or not path.exists():
        write_lock(path, files)
    return changes


def lock_revision(path: Path, file: RevisionFile) -> None:
    """Set one revision's entry (``repair``), leaving every other entry exactly as it was."""
    entries = dict(read_lock(path) or {})
    entries[file.revision] = LockEntry(file.revision, file.checksum, file.name)
    body = "".join(f"{e.revision} {e.checksum} {e.file}\n" for _, e in sorted(entries.items()))
    partial = path.with_suffix(".lock.tmp")
    partial.write_text(_HEADER + body, encoding="utf-8", newline="\n")
    partial.replace(path)
