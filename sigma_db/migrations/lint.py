"""Lint the SQL a revision renders: unsafe DDL (squawk) and expand/backfill/contract (pglast).

Two real tools, each for what it is best at, and no SQL parsing of our own:

* **squawk** (``squawk-cli``) judges operational safety — the locks and rewrites a statement
  causes on a live table: NOT NULL column without default, index creation or deletion without
  CONCURRENTLY on an existing table, constraints without NOT VALID, missing ``lock_timeout`` /
  ``statement_timeout``. It also flags incompatible changes (type changes, renames, drops,
  SET NOT NULL); those are accepted in ``contract`` revisions and only there.
* **pglast** (PostgreSQL's own parser) splits the rendered SQL into statements and classifies
  each as *adds*, *data*, *changes* or *neutral*, which is what the phase rules need: ``expand``
  only adds, ``backfill`` only changes data, ``contract`` may do anything; a revision with
  ``CREATE/DROP INDEX CONCURRENTLY`` holds nothing else.

A finding on a statement is accepted by ``lint_ignore(rule, reason=...)`` placed just before it
in the revision; the reason is mandatory and an ignore that matches nothing is itself a finding.
Both tools are an optional extra (``pip install 'sigma-db[migrations-lint]'``), imported only
when linting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sigma_db.errors import ConfigurationError
from sigma_db.migrations.environment import REVISION_MARK
from sigma_db.migrations.findings import Finding
from sigma_db.migrations.ledger import LEDGER_TABLE
from sigma_db.migrations.ops import (
    AREA_SCHEMA_START,
    BATCH_TAG,
    IGNORE_MARK,
    INDEX_CHECK_START,
)
from sigma_db.migrations.revisions import Phase, RevisionFile

__all__ = [
    "ALWAYS_RULES",
    "CONTRACT_ONLY_RULES",
    "PHASE_RULES",
    "RenderedRevision",
    "Statement",
    "lint_revisions",
    "split_rendered",
]

Kind = Literal["adds", "data", "changes", "neutral", "bookkeeping"]

ALWAYS_RULES = frozenset(
    {
        "adding-required-field",
        "require-concurrent-index-creation",
        "require-concurrent-index-deletion",
        "constraint-missing-not-valid",
        "adding-foreign-key-constraint",
        "disallowed-unique-constraint",
        "adding-serial-primary-key-field",
        "adding-field-with-default",
        "ban-concurrent-index-creation-in-transaction",
        "require-lock-timeout",
        "require-statement-timeout",
        "ban-drop-database",
    }
)
"""squawk rules enforced in every phase: each is a lock or rewrite hazard on a live table."""

CONTRACT_ONLY_RULES = frozenset(
    {
        "changing-column-type",
        "renaming-column",
        "renaming-table",
        "ban-drop-column",
        "ban-drop-table",
        "ban-drop-view",
        "adding-not-nullable-field",
    }
)
"""squawk rules for changes that break running code: allowed in ``contract`` revisions only."""

PHASE_RULES = frozenset(
    {
        "phase-missing",
        "expand-adds-only",
        "backfill-data-only",
        "concurrent-index-alone",
        "unused-ignore",
    }
)
"""sigma_db's own rules, from pglast's classification of each statement."""

_VERSION_TABLE = "alembic_version"
_INSTALL_HINT = "pip install 'sigma-db[migrations-lint]'"


@dataclass(frozen=True)
class Statement:
    """One statement of a revision's rendered SQL."""

    start: int
    end: int
    sql: str
    kind: Kind
    what: str
    """Short name of the operation for messages, e.g. ``DROP COLUMN``, ``UPDATE``."""
    concurrent: bool = False
    ignores: Mapping[str, str] = field(default_factory=dict)
    """Rule → reason, from ``lint_ignore`` just before this statement."""


@dataclass(frozen=True)
class RenderedRevision:
    """The offline SQL of one revision (its transaction, timeouts and version update included)."""

    revision: RevisionFile
    sql: str
    statements: tuple[Statement, ...]
    bad_ignores: tuple[str, ...] = ()

    @property
    def own(self) -> list[Statement]:
        """The revision's own statements: no BEGIN/COMMIT, SET, version table or ledger."""
        return [s for s in self.statements if s.kind not in ("neutral", "bookkeeping")]


def split_rendered(sql: str, files: Mapping[str, RevisionFile]) -> list[RenderedRevision]:
    """Split offline output (``alembic upgrade --sql``) into one chunk per revision.

    A chunk runs from the ``BEGIN`` before a revision's marker to the next chunk, so it holds
    exactly what that revision runs: its transaction, ``SET`` timeouts, statements, version bump.
    """
    pglast = _pglast()
    marks: list[tuple[int, str]] = []
    position = sql.find(REVISION_MARK)
    while position >= 0:
        line_end = sql.find("\n", position)
        line_end = len(sql) if line_end < 0 else line_end
        marks.append((position, sql[position + len(REVISION_MARK) : line_end].strip()))
        position = sql.find(REVISION_MARK, line_end)
    try:
        parsed = _parse(pglast, sql)
    except ConfigurationError as exc:
        # Name the revision whose statements hold the error (op.execute("SELEC 1")).
        where = exc.__cause__.args[1] if exc.__cause__ and len(exc.__cause__.args) > 1 else None
        owner = [rev for start, rev in marks if isinstance(where, int) and start <= where]
        if not owner:
            raise
        name = files[owner[-1]].path.name if owner[-1] in files else "?"
        raise ConfigurationError(
            f"revision {owner[-1]} ({name}): its SQL does not parse "
            f"({exc.__cause__.args[0] if exc.__cause__ else exc}); fix the statement it executes"
        ) from exc
    starts: list[int] = []
    for mark, _ in marks:
        start = mark
        for previous in reversed([s for s in parsed if s.end <= mark]):
            if _classify(pglast, previous.node)[0] == "bookkeeping":
                continue  # the version table Alembic creates before the first revision
            if previous.what == "BEGIN":
                start = previous.start
            break
        starts.append(start)
    chunks: list[RenderedRevision] = []
    for index, (_, revision) in enumerate(marks):
        start = starts[index]
        end = starts[index + 1] if index + 1 < len(marks) else len(sql)
        text = sql[start:end]
        statements, bad = _statements(pglast, text)
        chunks.append(RenderedRevision(files[revision], text, tuple(statements), tuple(bad)))
    return chunks


def lint_revisions(rendered: Sequence[RenderedRevision]) -> list[Finding]:
    """Every lint finding for ``rendered``, in revision then statement order."""
    squawk = _run_squawk(rendered)
    findings: list[Finding] = []
    for chunk in rendered:
        findings.extend(_lint_one(chunk, squawk.get(chunk.revision.revision, [])))
    return findings


def _lint_one(chunk: RenderedRevision, squawked: list[dict[str, Any]]) -> list[Finding]:
    rev = chunk.revision
    phase = rev.phase
    own = chunk.own
    number = {id(s): i for i, s in enumerate(own, start=1)}
    raw: list[tuple[Statement | None, str, str]] = []
    for problem in chunk.bad_ignores:
        raw.append((None, "unused-ignore", problem))
    if phase is None:
        raw.append(
            (
                None,
                "phase-missing",
                'declare the phase at module level: phase = "expand" (only adds), "backfill" '
                '(only data) or "contract" (drops, renames, SET NOT NULL)',
            )
        )
    contract_flagged: set[int] = set()
    line_starts = _line_starts(chunk.sql)
    for item in squawked:
        rule = str(item.get("rule_name"))
        offset = line_starts[min(int(item["line"]), len(line_starts) - 1)] + int(item["column"])
        statement = _statement_at(chunk.statements, offset)
        if statement is None or statement.kind == "bookkeeping":
            continue
        if rule in CONTRACT_ONLY_RULES:
            contract_flagged.add(id(statement))
            if phase is Phase.CONTRACT:
                continue
            advice = "breaks code still running; allowed only in a contract revision"
        elif rule in ALWAYS_RULES:
            advice = str(item.get("help") or "see squawk's documentation for the safe pattern")
        else:
            continue
        message = f"{str(item.get('message', '')).rstrip('.')}; {advice.rstrip('.')}"
        raw.append((statement, rule, message))
    for statement in own:
        if id(statement) in contract_flagged:
            continue
        rule_message = _phase_problem(phase, statement)
        if rule_message is not None:
            raw.append((statement, *rule_message))
    for statement in _without_partitions(own):
        raw.append(
            (
                statement,
                "partitioned-table-without-partitions",
                "a table PARTITION BY with no partition accepts no row until maintenance runs; "
                "add create_partitions(op, <table>, DatePartitioning(...)) after it in this "
                "revision (see the partitioning guide)",
            )
        )
    concurrent = [s for s in own if s.concurrent]
    if concurrent and len(own) > len(concurrent):
        raw.append(
            (
                concurrent[0],
                "concurrent-index-alone",
                "CONCURRENTLY runs outside the transaction; put it in a revision of its own so "
                "a failure cannot leave the rest half-applied",
            )
        )
    return _apply_ignores(rev, chunk.statements, number, raw)


def _without_partitions(own: Sequence[Statement]) -> list[Statement]:
    """``CREATE TABLE ... PARTITION BY`` statements with no partition created in the revision.

    Autogenerate renders a ``DatePartitioned`` model's parent only; without
    ``create_partitions`` every insert fails ("no partition of relation found for row") until
    the first maintenance run.
    """
    pglast = _pglast()
    parents: dict[str, Statement] = {}
    children: set[str] = set()
    for statement in own:
        if statement.what != "CREATE" and not statement.what.startswith("ALTER TABLE"):
            continue
        node = pglast.parser.parse_sql(statement.sql)[0].stmt
        if type(node).__name__ == "AlterTableStmt":  # ALTER TABLE parent ATTACH PARTITION
            if any(cmd.subtype.name == "AT_AttachPartition" for cmd in node.cmds or ()):
                children.add(node.relation.relname)
            continue
        if type(node).__name__ != "CreateStmt":
            continue
        if node.partspec is not None:
            parents[node.relation.relname] = statement
        if node.partbound is not None:
            children.update(parent.relname for parent in node.inhRelations or ())
    return [statement for name, statement in parents.items() if name not in children]


def _apply_ignores(
    rev: RevisionFile,
    statements: Sequence[Statement],
    number: Mapping[int, int],
    raw: list[tuple[Statement | None, str, str]],
) -> list[Finding]:
    """Drop the findings an ignore accepts; report every ignore that accepted none.

    All statements are checked, not only the revision's own: an ignore before a ``SELECT`` that
    triggers nothing is as unused as one before an ``ADD COLUMN``.
    """
    used: set[tuple[int, str]] = set()
    findings: list[Finding] = []
    for statement, rule, message in raw:
        if statement is not None and rule in statement.ignores:
            used.add((id(statement), rule))
            continue
        findings.append(
            Finding(
                rule,
                message,
                revision=rev.revision,
                file=rev.name,
                statement=None if statement is None else number.get(id(statement)),
                sql=None if statement is None else statement.sql,
            )
        )
    for statement in statements:
        for rule in statement.ignores:
            if (id(statement), rule) not in used:
                findings.append(
                    Finding(
                        "unused-ignore",
                        f"lint_ignore({rule!r}) matches no finding on this statement; remove it",
                        revision=rev.revision,
                        file=rev.name,
                        statement=number.get(id(statement)),
                        sql=statement.sql,
                    )
                )
    return findings


def _phase_problem(phase: Phase | None, statement: Statement) -> tuple[str, str] | None:
    if phase is Phase.EXPAND and statement.kind == "changes":
        return (
            "expand-adds-only",
            f"{statement.what} removes or changes what running code uses; move it to a "
            "contract revision",
        )
    if phase is Phase.EXPAND and statement.kind == "data":
        return (
            "expand-adds-only",
            f"{statement.what} changes data; move it to a backfill revision",
        )
    if phase is Phase.BACKFILL and statement.kind in ("adds", "changes"):
        target = "an expand" if statement.kind == "adds" else "a contract"
        return (
            "backfill-data-only",
            f"{statement.what} is a schema change; backfill revisions only change data (move it "
            f"to {target} revision)",
        )
    return None


def _statement_at(statements: Sequence[Statement], offset: int) -> Statement | None:
    found = None
    for statement in statements:
        if statement.start <= offset:
            found = statement
        else:
            break
    return found


def _line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(i + 1 for i, char in enumerate(text) if char == "\n")
    return starts


@dataclass(frozen=True)
class _Parsed:
    start: int
    end: int
    node: Any
    what: str


def _parse(pglast: Any, sql: str) -> list[_Parsed]:
    try:
        raw = pglast.parser.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        raise ConfigurationError(f"The rendered SQL does not parse: {exc}.") from exc
    parsed = []
    for item in raw:
        start = item.stmt_location
        end = start + item.stmt_len if item.stmt_len else len(sql)
        text = sql[start:end]
        start += len(text) - len(text.lstrip())
        parsed.append(_Parsed(start, end, item.stmt, _describe(pglast, item.stmt)))
    return parsed


def _statements(pglast: Any, sql: str) -> tuple[list[Statement], list[str]]:
    """The statements of one chunk, each with the ignores placed before it, and bad ignores.

    An ignore belongs to the next statement that does something: the helpers that run in an
    ``autocommit_block`` render a ``COMMIT`` and their timeouts (a ``SELECT``) between the
    ignore and their statement.
    An ignore followed only by the version update has no statement of its own to match.
    """
    parsed = _parse(pglast, sql)
    ignores: list[tuple[int, dict[str, str]]] = []
    bad: list[str] = []
    for token in pglast.parser.scan(sql):
        if token.name != "SQL_COMMENT":
            continue
        comment = sql[token.start : token.end + 1]
        if not comment.startswith(IGNORE_MARK):
            continue
        rules, _, reason = comment[len(IGNORE_MARK) :].partition(" -- ")
        if not reason.strip():
            bad.append(f"lint_ignore without a reason ({comment!r}); say why it is safe")
            continue
        ignores.append((token.end, {rule.strip(): reason.strip() for rule in rules.split(",")}))
    statements: list[Statement] = []
    pending: dict[str, str] = {}
    for item in parsed:
        kind, concurrent = _classify(pglast, item.node)
        while ignores and ignores[0][0] < item.start:
            pending.update(ignores.pop(0)[1])
        mine: dict[str, str] = {}
        if kind == "bookkeeping":
            bad.extend(_trailing(rule) for rule in pending)
            pending = {}
        elif kind != "neutral":  # COMMIT, SET, the helpers' timeouts and checks in between
            mine, pending = pending, {}
        statements.append(
            Statement(
                item.start,
                item.end,
                sql[item.start : item.end].strip(),
                kind,
                item.what,
                concurrent,
                mine,
            )
        )
    for _, mapping in ignores:
        pending.update(mapping)
    bad.extend(_trailing(rule) for rule in pending)
    return statements, bad


def _trailing(rule: str) -> str:
    return f"lint_ignore({rule!r}) has no statement of the revision after it; remove it"


_ADDING_ALTERS = frozenset(
    {
        "AT_AddColumn",
        "AT_AddConstraint",
        "AT_ValidateConstraint",
        "AT_AddIndex",
        "AT_AddIndexConstraint",
        "AT_DropNotNull",
        "AT_AttachPartition",
        "AT_AddIdentity",
        "AT_SetStatistics",
        "AT_SetRelOptions",
        "AT_ResetRelOptions",
        "AT_EnableRowSecurity",
        "AT_ForceRowSecurity",
    }
)
_ADDING_NODES = frozenset(
    {
        "CreateStmt",
        "CreateSchemaStmt",
        "CreateSeqStmt",
        "CreateExtensionStmt",
        "CreateEnumStmt",
        "CompositeTypeStmt",
        "CreateDomainStmt",
        "CreateRangeStmt",
        "CreateTrigStmt",
        "CreatePolicyStmt",
        "CreateTableAsStmt",
        "DefineStmt",
        "CommentStmt",
        "AlterDefaultPrivilegesStmt",
        "GrantRoleStmt",
        "CreateStatsStmt",
    }
)
_DATA_NODES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "CopyStmt"})
_NEUTRAL_NODES = frozenset({"VariableSetStmt", "TransactionStmt", "SelectStmt", "VariableShowStmt"})


def _data_cte(node: Any) -> Any | None:
    """The first INSERT/UPDATE/DELETE/MERGE in a ``SELECT``'s WITH clause, if any.

    ``WITH d AS (DELETE ... RETURNING id) SELECT ...`` changes data although it is a ``SELECT``;
    PostgreSQL allows such a WITH only at the top level, so the statement's own clause is enough.
    """
    with_clause = getattr(node, "withClause", None)
    if with_clause is None:
        return None
    for cte in with_clause.ctes or ():
        if type(cte.ctequery).__name__ in _DATA_NODES:
            return cte.ctequery
    return None


def _classify(pglast: Any, node: Any) -> tuple[Kind, bool]:
    name = type(node).__name__
    if name == "DoStmt":
        return _classify_do(pglast, node)
    relation = getattr(node, "relation", None)
    if relation is not None and getattr(relation, "relname", None) in (
        _VERSION_TABLE,
        LEDGER_TABLE,
    ):
        return "bookkeeping", False
    if name == "SelectStmt" and _data_cte(node) is not None:
        return "data", False
    if name in _NEUTRAL_NODES:
        return "neutral", False
    if name in _DATA_NODES:
        return "data", False
    if name == "IndexStmt":
        return "adds", bool(node.concurrent)
    if name == "DropStmt":
        return "changes", bool(getattr(node, "concurrent", False))
    if name in _ADDING_NODES:
        return "adds", False
    if name in ("ViewStmt", "CreateFunctionStmt"):
        return ("changes" if node.replace else "adds"), False
    if name == "GrantStmt":
        return ("adds" if node.is_grant else "changes"), False
    if name == "AlterEnumStmt":
        return ("changes" if node.oldVal else "adds"), False
    if name == "AlterTableStmt":
        for cmd in node.cmds or ():
            subtype = cmd.subtype.name
            if subtype == "AT_ColumnDefault" and cmd.def_ is not None:
                continue
            if subtype not in _ADDING_ALTERS:
                return "changes", False
        return "adds", False
    return "changes", False


def _classify_do(pglast: Any, node: Any) -> tuple[Kind, bool]:
    """The DO blocks sigma_db's helpers render are known; any other one is a change."""
    body = next((str(arg.arg.sval) for arg in node.args or () if arg.defname == "as"), "")
    if body.startswith(INDEX_CHECK_START):
        return "neutral", False
    if body.startswith(AREA_SCHEMA_START):
        return "adds", False
    if body.count(BATCH_TAG) == 2:
        inner = body.split(BATCH_TAG)[1]
        kinds = [_classify(pglast, item.stmt)[0] for item in pglast.parser.parse_sql(inner)]
        return ("data" if kinds == ["data"] else "changes"), False
    return "changes", False


def _describe(pglast: Any, node: Any) -> str:
    name = type(node).__name__
    if name == "TransactionStmt":
        return str(node.kind.name).removeprefix("TRANS_STMT_")
    if name == "SelectStmt" and (cte := _data_cte(node)) is not None:
        return f"SELECT with {_describe(pglast, cte)} in WITH"
    if name == "AlterTableStmt":
        subtypes = [cmd.subtype.name.removeprefix("AT_") for cmd in node.cmds or ()]
        return "ALTER TABLE " + ", ".join(_words(s) for s in subtypes)
    if name == "RenameStmt":
        return "RENAME"
    if name == "DropStmt":
        return "DROP " + str(node.removeType.name).removeprefix("OBJECT_")
    return _words(name.removesuffix("Stmt")).upper()


def _words(camel: str) -> str:
    out: list[str] = []
    for char in camel:
        if char.isupper() and out:
            out.append(" ")
        out.append(char)
    return "".join(out).upper()


def _pglast() -> Any:
    try:
        import pglast
        import pglast.parser
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"Linting migrations needs pglast and squawk: {_INSTALL_HINT}."
        ) from exc
    return pglast


def _squawk_binary() -> str:
    candidates = [
        Path(sys.executable).parent / "squawk",
        Path(sysconfig.get_path("scripts")) / "squawk",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("squawk")
    if found is None:
        raise ConfigurationError(f"Linting migrations needs the squawk linter: {_INSTALL_HINT}.")
    return found


def _run_squawk(rendered: Sequence[RenderedRevision]) -> dict[str, list[dict[str, Any]]]:
    if not rendered:
        return {}
    binary = _squawk_binary()
    with tempfile.TemporaryDirectory(prefix="sigma-db-lint-") as tmp:
        root = Path(tmp)
        config = root / "squawk.toml"
        config.write_text("", encoding="utf-8")  # ignore any .squawk.toml of the repository
        paths = []
        for chunk in rendered:
            path = root / f"{chunk.revision.revision}.sql"
            path.write_text(chunk.sql, encoding="utf-8")
            paths.append(str(path))
        result = subprocess.run(
            [binary, "--config", str(config), "--reporter", "json", *paths],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    if result.returncode not in (0, 1):
        raise ConfigurationError(
            f"squawk failed (exit {result.returncode}): {result.stderr.strip()[:300]}"
        )
    try:
        items = json.loads(result.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"squawk printed no JSON report: {result.stdout[:200]!r}") from exc
    by_revision: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_revision.setdefault(Path(str(item["file"])).stem, []).append(item)
    return by_revision
