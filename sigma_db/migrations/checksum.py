"""The checksum of a revision file: sha256 of its text with line endings normalized.

A checkout on Windows (CRLF) and one on Linux (LF) must agree, or every CI run on the other
platform would report every revision as edited; nothing else is normalized, so any real edit,
even whitespace inside a line, changes the checksum.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_checksum", "text_checksum"]


def text_checksum(data: bytes) -> str:
    """Hex sha256 of ``data`` after turning CRLF and lone CR into LF."""
    normalized = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return hashlib.sha256(normalized).hexdigest()


def file_checksum(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, line endings normalized."""
    return text_checksum(Path(path).read_bytes())
