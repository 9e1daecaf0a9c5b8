"""Write verified fixes back to the user's files, or show them as a unified diff.

A file is rewritten only when its bytes still hash to what was analysed, atomically (a
temporary file in the same folder, then ``os.replace``, keeping the permission bits), in
UTF-8 as it was read (a byte-order mark stays) and with its line endings: the edits are
made on the text with ``\\n`` line breaks, which become the file's ``\\r\\n`` or ``\\r``
again. A file mixing line endings is not touched.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from pathlib import Path

from archlint.fix.edits import Fix, apply_edits, source_hash

BOM = "\ufeff"


class NotApplied(Exception):
    """Why a file's fixes were not written (it changed, or its line endings are mixed)."""


def _decode(data: bytes) -> tuple[str, str]:
    """The text with ``\\n`` line breaks, and the file's own line break."""
    text = data.decode("utf-8")
    crlf, cr = text.count("\r\n"), text.count("\r")
    lf = text.count("\n") - crlf
    lone_cr = cr - crlf
    styles = [s for s, n in (("\r\n", crlf), ("\n", lf), ("\r", lone_cr)) if n]
    if len(styles) > 1:
        raise NotApplied("it mixes line endings")
    newline = styles[0] if styles else "\n"
    return text.replace(newline, "\n") if newline != "\n" else text, newline


def fixed_text(path: str | os.PathLike, fixes: list[Fix]) -> tuple[str, str, str]:
    """(old text, new text, line break) of ``path`` with ``fixes`` applied, both with ``\\n``
    line breaks. Raises NotApplied when the file is not the one the fixes were made for."""
    data = Path(path).read_bytes()
    if any(f.source_hash != source_hash(data) for f in fixes):
        raise NotApplied("it changed since it was analysed")
    # A byte-order mark stays in the text, as the engine read it: the edits count it.
    old, newline = _decode(data)
    return old, apply_edits(old, [e for f in fixes for e in f.edits]), newline


def write(path: str | os.PathLike, fixes: list[Fix]) -> bool:
    """Apply ``fixes`` to ``path``; False when they change nothing."""
    path = Path(path)
    old, new, newline = fixed_text(path, fixes)
    if new == old:
        return False
    data = path.read_bytes()
    out = new.replace("\n", newline).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".archlint-fix", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(out)
            f.flush()
            os.fsync(f.fileno())
        shutil.copymode(path, tmp)
        # The last moment to notice an edit made while archlint ran.
        if source_hash(path.read_bytes()) != source_hash(data):
            raise NotApplied("it changed since it was analysed")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def diff(path: str | os.PathLike, fixes: list[Fix], shown_as: str) -> str:
    """The unified diff ``--fix`` would make to ``path`` (``shown_as``: its display path)."""
    old, new, _ = fixed_text(path, fixes)
    old, new = old.removeprefix(BOM), new.removeprefix(BOM)
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"a/{shown_as}", tofile=f"b/{shown_as}",
    ))
