"""Crash-safe file writing: atomic replace for whole files and folders, fsync'd appends for JSONL logs,
temporary files that a later run recognises and removes, and write failures named by path.

A SIGKILL can land anywhere; these helpers guarantee a reader sees either the old or the new file
(atomic writes), and at most one torn last line in an append-only JSONL file, which
``repair_jsonl_tail`` truncates away before the file is read again. Everything half-written lives
under a temporary name beside its target (``.<name>.tmp-<tag>``, ``is_temp``); the run that next holds
the output folder removes them (``remove_temp_files``). Each step is a write boundary
(``sdft.utils.faults.boundary``) where the crash tests kill the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdft.errors import DataError, OutputError
from sdft.utils.faults import boundary

TEMP_MARK = ".tmp-"
# Words of the errors that libraries (safetensors, torch.save) raise, instead of an OSError, when a
# write fails for want of space or permission.
_WRITE_FAILURES = ("No space left", "StorageFull", "os error", "write failed", "Read-only file system",
                   "Permission denied", "Disk quota")


def temp_sibling(target: Path, tag: str) -> Path:
    """Where ``target`` is written before it is renamed into place."""
    return target.with_name(f".{target.name}{TEMP_MARK}{tag}")


@contextlib.contextmanager
def publishing(target: Path) -> Iterator[Path]:
    """Write the folder ``target`` in a new temporary folder beside it, then move it into place
    atomically. A write that fails for want of space or permission is an ``OutputError`` naming
    ``target``, and the temporary folder is removed at once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{TEMP_MARK}"))
    try:
        with writing(target):
            yield tmp
        atomic_publish_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_temp(name: str) -> bool:
    """True for the names of ``temp_sibling`` and ``publishing``."""
    return name.startswith(".") and TEMP_MARK in name


def remove_temp_files(root: Path) -> list[Path]:
    """Remove every temporary file and folder under ``root`` (left by a killed run, or by a full disk).
    Call it only while holding the output folder, so that no other run is writing there."""
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if is_temp(d)]:
            shutil.rmtree(Path(folder) / name, ignore_errors=True)
            removed.append(Path(folder) / name)
            dirs.remove(name)
        for name in files:
            if is_temp(name):
                (Path(folder) / name).unlink(missing_ok=True)
                removed.append(Path(folder) / name)
    return removed


def output_error(path: Path, cause: BaseException) -> OutputError:
    reason = f"{cause.strerror}" if isinstance(cause, OSError) and cause.strerror else str(cause).strip()
    return OutputError(f"{path}: cannot write it: {reason}. What was written before is kept: free the space "
                       "or fix the folder, then rerun the same command")


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around a library's save (``save_pretrained``, ``torch.save``, DeepSpeed checkpoints): a failed
    write (full disk, read-only folder) becomes an ``OutputError`` naming ``path``; other errors pass."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise output_error(path, e) from e
    except Exception as e:  # safetensors' SafetensorError, torch's RuntimeError: not OSErrors
        reason = _filesystem_problem(path)
        if reason or any(word in str(e) for word in _WRITE_FAILURES):
            raise output_error(path, OSError(0, reason) if reason else e) from e
        raise


def _filesystem_problem(path: Path) -> str | None:
    """Why nothing can be written where ``path`` is (a full or read-only file system), or None.
    torch.save, for one, reports a full disk only as "unexpected pos 72640 vs 72532"."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    st = os.statvfs(folder)
    if st.f_flag & os.ST_RDONLY:
        return "Read-only file system"
    if st.f_bavail * st.f_frsize < 2**20:
        return "No space left on device"
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = temp_sibling(path, str(os.getpid()))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        boundary("written")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise output_error(path, e) from e
    boundary("renamed")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as a whole JSONL file, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def atomic_publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place, replacing any previous one."""
    final_dir = Path(final_dir)
    try:
        if final_dir.exists():
            trash = temp_sibling(final_dir, f"old-{os.getpid()}")
            os.replace(final_dir, trash)
            boundary("renamed")
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp_dir, final_dir)
        _fsync_dir(final_dir.parent)
    except OSError as e:
        raise output_error(final_dir, e) from e
    boundary("renamed")


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows in one write and fsync, so a finished call survives a kill (a kill during it leaves
    a torn last line, which ``repair_jsonl_tail`` removes)."""
    if not rows:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    try:
        with open(path, "ab") as f:
            half = len(data) // 2
            f.write(data[:half])
            f.flush()
            boundary("torn")  # a kill here is a kill in the middle of the write
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise output_error(path, e) from e
    boundary("appended")


def remove(path: Path) -> None:
    """Delete a file, as a write boundary."""
    Path(path).unlink(missing_ok=True)
    boundary("unlinked")


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
                except (json.JSONDecodeError, UnicodeDecodeError):
                    keep = last_start
        if keep != len(data):
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        return len(data) - keep


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file written by this package; a bad line is a ``DataError`` naming the line."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    rows.append(json.loads(line))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({getattr(e, 'msg', e)})") from e
    return rows
