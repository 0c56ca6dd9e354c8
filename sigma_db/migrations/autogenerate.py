"""What ``alembic revision --autogenerate`` and ``alembic check`` may look at: only this product.

Three rules, from Alembic's known traps:

* Only the product's own physical schemas are reflected (``include_schemas=True`` alone drags in
  every other product's schema in the consolidated dev database, alembic #710/#733); the default
  schema is compared as ``schema=None``, the way models name it (alembic #569). SQLAlchemy lists
  under ``schema=None`` every table the ``search_path`` can see, ``public``'s included (where
  extensions such as pg_partman put their tables): only names that exist in the default schema
  itself are reflected there (:func:`default_schema_relations`).
* Partitions (``pg_class.relispartition``) and extension-owned relations are never compared, so
  autogenerate never proposes to drop them or their indexes (alembic #539). They are not even
  reflected (``include_name``), which is what keeps ``alembic check`` from tripping over foreign
  keys between partitioned tables (alembic #1787). Partitions that maintenance detached and kept
  (``expired="detach"``) are plain tables then; maintenance comments them
  ``sigma_db: detached partition of <parent> (retention)`` and they are left alone too, so
  autogenerate never proposes to drop archived data. A foreign key to a partitioned table is also
  stored once per referenced partition, and SQLAlchemy reflects those copies on the parent
  pointing at the partitions: foreign keys whose referred table is unmanaged are not compared
  either. :func:`unmanaged_relations` is the one catalog query behind all of this.
* The SDK keeps its own declarations in ``Table.info`` (``sigma_db.partitioning``). Alembic renders
  ``info`` into ``op.create_table(...)`` by ``repr``, which is not Python for those objects:
  :func:`drop_sdk_info` removes the SDK's keys from what autogenerate renders.
* Models name logical areas (``schema="audit"``); in the consolidated database those live in
  ``<product>_audit``. :func:`physical_metadata` renames them on a copy of the metadata before
  comparison instead of relying on ``schema_translate_map`` (alembic #555, #1503). The revision
  Alembic then writes names the physical schema of the database it compared with
  (``schema='lab_audit'``), which does not exist in the per-product databases of staging and
  prod: a post-write hook (:func:`install_logical_area_hook`) rewrites those names to
  ``ops.area("audit")``, so the one file migrates both layouts.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.operations.ops import CreateTableOp, MigrationScript, OpContainer
from alembic.script import ScriptDirectory, write_hooks
from sqlalchemy import ForeignKey, ForeignKeyConstraint, MetaData, Table, text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import SchemaConst

from sigma_db.topology import LOGICAL_SCHEMAS, Topology

__all__ = [
    "LOGICAL_AREA_HOOK",
    "SDK_INFO_PREFIX",
    "AutogenerateScope",
    "default_schema_relations",
    "drop_sdk_info",
    "install_logical_area_hook",
    "logical_areas_in_revision",
    "physical_metadata",
    "unmanaged_relations",
]

SDK_INFO_PREFIX = "sigma_db."
"""``Table.info`` keys starting with this belong to the SDK and are never rendered."""

_UNMANAGED = text(
    """
    SELECT n.nspname, c.relname
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(:schemas)
      AND (c.relispartition
           OR (c.relkind = 'r'
               AND pg_catalog.obj_description(c.oid, 'pg_class')
                   LIKE :detached_marker)
           OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                      WHERE d.classid = 'pg_catalog.pg_class'::regclass
                        AND d.objid = c.oid AND d.deptype = 'e'))
    """
)


def unmanaged_relations(
    connection: Connection, schemas: Iterable[str]
) -> frozenset[tuple[str, str]]:
    """``(schema, name)`` of every partition, kept detached partition and extension-owned relation.

    Only in ``schemas``.
    """
    from sigma_db.partitions.ddl import DETACHED_COMMENT_PREFIX

    rows = connection.execute(
        _UNMANAGED,
        {"schemas": list(schemas), "detached_marker": DETACHED_COMMENT_PREFIX + "%"},
    )
    return frozenset((str(schema), str(name)) for schema, name in rows)


_IN_SCHEMA = text(
    """
    SELECT c.relname FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = :schema
    """
)


def default_schema_relations(connection: Connection, schema: str) -> frozenset[str]:
    """Names of the relations in ``schema`` itself, whatever else the search_path shows."""
    return frozenset(str(name) for (name,) in connection.execute(_IN_SCHEMA, {"schema": schema}))


@dataclass(frozen=True)
class AutogenerateScope:
    """``include_name`` / ``include_object`` hooks limiting autogenerate to one product."""

    default_schema: str
    schemas: frozenset[str]
    """Physical schemas the product owns (default schema included)."""
    unmanaged: frozenset[tuple[str, str]] = frozenset()
    """Relations never compared: partitions, extension members, the ledger."""
    in_default_schema: frozenset[str] | None = None
    """Relation names in the default schema itself (``None`` offline: nothing is reflected)."""

    def _table_key(self, schema: str | None, name: str) -> tuple[str, str]:
        return (schema or self.default_schema, name)

    def include_name(self, name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        """Alembic ``include_name``: reflect only owned schemas and managed tables."""
        if type_ == "schema":
            return name is None or name in self.schemas
        if type_ == "table":
            table = name
            schema = parent_names.get("schema_name")
        else:
            table = parent_names.get("table_name")
            schema = parent_names.get("schema_name")
        if table is None:
            return True
        seen_through_search_path = (
            schema is None
            and self.in_default_schema is not None
            and str(table) not in self.in_default_schema
        )
        if seen_through_search_path:
            return False
        return self._table_key(schema, str(table)) not in self.unmanaged

    def include_object(
        self, obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        """Alembic ``include_object``: the same rule for objects already reflected or declared.

        A foreign key is also left out when it refers to an unmanaged relation: the per-partition
        copies PostgreSQL keeps of a foreign key to a partitioned table (alembic #1787).
        """
        table = obj if isinstance(obj, Table) else getattr(obj, "table", None)
        if not isinstance(table, Table):
            return True
        if table.schema is not None and table.schema not in self.schemas:
            return False
        if self._table_key(table.schema, table.name) in self.unmanaged:
            return False
        if isinstance(obj, ForeignKeyConstraint):
            return not any(self._refers_to_unmanaged(fk) for fk in obj.elements)
        return True

    def _refers_to_unmanaged(self, foreign_key: ForeignKey) -> bool:
        # "schema.table.column" or "table.column"; reflected copies name the partition here.
        referred, _, _column = foreign_key.target_fullname.rpartition(".")
        schema, _, name = referred.rpartition(".")
        return self._table_key(schema or None, name) in self.unmanaged


def physical_metadata(metadata: MetaData | Sequence[MetaData] | None, topology: Topology) -> Any:
    """``metadata`` with logical schemas renamed to this topology's physical ones (a copy)."""
    if metadata is None or not topology.consolidated:
        return metadata
    if not isinstance(metadata, MetaData):
        return [physical_metadata(each, topology) for each in metadata]

    def physical(schema: str | None) -> str | None:
        return None if schema is None else topology.physical_schema(schema)

    copy = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        table.to_metadata(
            copy,
            schema=physical(table.schema) or SchemaConst.RETAIN_SCHEMA,
            referred_schema_fn=lambda _t, _s, _c, referred: physical(referred),
        )
    return copy


def drop_sdk_info(directives: Iterable[MigrationScript]) -> None:
    """``process_revision_directives`` step: no SDK ``Table.info`` key in rendered revisions.

    The revision creates the table; the declaration stays on the model, where maintenance and
    :func:`~sigma_db.partitions.create_partitions` read it.
    """
    for directive in directives:
        for container in (*directive.upgrade_ops_list, *directive.downgrade_ops_list):
            _drop_sdk_info(container)


def _drop_sdk_info(container: OpContainer) -> None:
    for op in container.ops:
        if isinstance(op, CreateTableOp):
            op.info = {k: v for k, v in op.info.items() if not str(k).startswith(SDK_INFO_PREFIX)}
        elif isinstance(op, OpContainer):
            _drop_sdk_info(op)


LOGICAL_AREA_HOOK = "sigma_db_logical_areas"
"""The post-write hook (Alembic ``write_hooks``) that puts ``ops.area()`` in new revisions."""

_OPS_IMPORT = "from sigma_db.migrations import ops"


def install_logical_area_hook(script: ScriptDirectory, topology: Topology) -> None:
    """Run :func:`logical_areas_in_revision` first on every revision this run writes.

    Added to the script directory's hooks for this invocation only, ahead of the ones in
    ``alembic.ini`` (a formatter then sees the final text). Alembic 1.16 keeps hooks as a list
    of dicts (``hooks``), earlier versions as one flat dict (``hook_config``).
    """
    areas = ",".join(f"{topology.physical_schema(area)}:{area}" for area in LOGICAL_SCHEMAS)
    hooks = getattr(script, "hooks", None)
    if isinstance(hooks, list):
        if not any(hook.get("_hook_name") == LOGICAL_AREA_HOOK for hook in hooks):
            hooks.insert(
                0, {"_hook_name": LOGICAL_AREA_HOOK, "type": LOGICAL_AREA_HOOK, "areas": areas}
            )
        return
    config = getattr(script, "hook_config", None)
    if config is None:
        config = {}
        script.hook_config = config  # type: ignore[attr-defined]
    if isinstance(config, dict) and LOGICAL_AREA_HOOK not in config.get("hooks", ""):
        named = [name.strip() for name in config.get("hooks", "").split(",") if name.strip()]
        config["hooks"] = ", ".join([LOGICAL_AREA_HOOK, *named])
        config[f"{LOGICAL_AREA_HOOK}.type"] = LOGICAL_AREA_HOOK
        config[f"{LOGICAL_AREA_HOOK}.areas"] = areas


@write_hooks.register(LOGICAL_AREA_HOOK)
def _logical_areas_hook(path: str, options: Mapping[str, str]) -> None:
    pairs = (pair.partition(":") for pair in options["areas"].split(","))
    areas = {physical: logical for physical, _, logical in pairs}
    revision = Path(path)
    code = revision.read_text(encoding="utf-8")
    rewritten = logical_areas_in_revision(code, areas)
    if rewritten != code:
        revision.write_text(rewritten, encoding="utf-8")


def logical_areas_in_revision(code: str, areas: Mapping[str, str]) -> str:
    """``code`` with each physical area schema (``'lab_audit'``) written as ``ops.area(...)``.

    Alembic renders schemas as literals in two places, and only those are rewritten (found in
    the syntax tree, so a server default or a comment that happens to read ``audit.x.y`` is
    left alone): the ``schema=`` keyword (and the ``source_schema=``/``referent_schema=`` of
    foreign keys), and ``'schema.table.column'`` in the column specs of ``ForeignKey`` and
    ``ForeignKeyConstraint``. ``ops`` is imported when used.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # not ours to judge: Alembic reports it when it loads the file
    edits: list[tuple[ast.expr, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in _SCHEMA_KEYWORDS:
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                logical = areas.get(value.value)
                if logical is not None:
                    edits.append((value, f'ops.area("{logical}")'))
        elif isinstance(node, ast.Call) and _called(node) in ("ForeignKey", "ForeignKeyConstraint"):
            for spec in _string_arguments(node):
                schema, _, rest = str(spec.value).partition(".")
                if schema in areas and rest.count(".") == 1:
                    edits.append((spec, f"f\"{{ops.area('{areas[schema]}')}}.{rest}\""))
    if not edits:
        return code
    lines = code.splitlines(keepends=True)
    edits.sort(key=lambda edit: (edit[0].lineno, edit[0].col_offset), reverse=True)
    for node, replacement in edits:  # from the end, so earlier offsets stay right
        lines = _replaced(lines, node, replacement)
    rewritten = "".join(lines)
    if re.search(rf"^{re.escape(_OPS_IMPORT)}$", rewritten, re.M):
        return rewritten
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    at = imports[-1].end_lineno or 0 if imports else 0
    lines = rewritten.splitlines(keepends=True)
    lines.insert(at, _OPS_IMPORT + "\n")
    return "".join(lines)


_SCHEMA_KEYWORDS = frozenset({"schema", "source_schema", "referent_schema"})


def _called(call: ast.Call) -> str | None:
    function = call.func
    if isinstance(function, ast.Attribute):
        return function.attr
    return function.id if isinstance(function, ast.Name) else None


def _string_arguments(call: ast.Call) -> list[ast.Constant]:
    """String constants among a call's arguments, in lists and tuples too (column specs)."""
    found: list[ast.Constant] = []
    for argument in [*call.args, *(k.value for k in call.keywords)]:
        items = argument.elts if isinstance(argument, ast.List | ast.Tuple) else [argument]
        found.extend(i for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str))
    return found


def _replaced(lines: list[str], node: ast.expr, replacement: str) -> list[str]:
    """``lines`` with ``node``'s source span (on one line; offsets in UTF-8 bytes) replaced."""
    index = node.lineno - 1
    raw = lines[index].encode()
    start, end = node.col_offset, node.end_col_offset
    if node.end_lineno != node.lineno or end is None:
        return lines
    lines[index] = (raw[:start] + replacement.encode() + raw[end:]).decode()
    return lines
