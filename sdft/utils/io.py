"""Crash-safe file writing: atomic replace for whole files, fsync'd appends for JSONL logs.

A SIGKILL can land anywhere; these helpers guarantee a reader sees either the old or the new file
(atomic writes), and at most one torn last line in an append-only JSONL file, which
``repair_jsonl_tail`` truncates away before the file is read again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from sdft.errors import DataError


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as a whole JSONL file, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place, replacing any previous one."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows in one write and fsync, so a finished call survives a kill."""
    if not rows:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl_tail(path: Path) -> int:
    """Truncate a torn (unterminated or unparsable) last line left by a kill. Returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        keep = len(data)
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
        else:
            # A complete-looking last line that does not parse is torn too.
            last_start = data.rfind(b"\n", 0, max(keep - 1, 0)) + 1
            if keep and last_start < keep:
                try:
                    json.loads(data[last_start:keep])
                except json.JSONDecodeError:
                    keep = last_start
        if keep != len(data):
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file written by this package; a bad line is a ``DataError`` naming the line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from e
    return rows
