"""Read raw records from JSON, JSONL, CSV, Parquet or a saved ``datasets`` folder.

Each record comes with a location (``file:line`` for JSONL and CSV, ``file[item]`` for JSON,
``file[row]`` for Parquet and datasets) so that every later error can point at it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdft.errors import DataError


@dataclass
class RawRecord:
    location: str
    fields: dict[str, Any] | None
    """None when the record itself could not be parsed (then ``error`` says why)."""
    error: str = ""


def read_records(path: str | Path) -> Iterator[RawRecord]:
    """Yield the records of a data file or saved ``datasets`` folder, in file order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: data file not found (check data.train / data.test in the config)")
    if path.is_dir():
        yield from _read_saved_dataset(path)
        return
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
    if suffix not in readers:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl, .csv, .parquet "
                        "or a folder written by datasets' save_to_disk")
    yield from readers[suffix](path)


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            loc = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawRecord(loc, None, f"malformed JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield RawRecord(loc, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield RawRecord(loc, obj)


def _read_json(path: Path) -> Iterator[RawRecord]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); a .json file must hold one "
                        "array of objects (use .jsonl for one object per line)") from e
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON array of objects at the top level")
    for i, item in enumerate(obj):
        loc = f"{path}[{i}]"
        if isinstance(item, dict):
            yield RawRecord(loc, item)
        else:
            yield RawRecord(loc, None, f"expected a JSON object, got {type(item).__name__}")


def _read_csv(path: Path) -> Iterator[RawRecord]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            # line_num is the physical line where the row ended (quoted fields may span lines).
            yield RawRecord(f"{path}:{reader.line_num}", dict(row))


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist()):
        yield RawRecord(f"{path}[row {i}]", row)


def _read_saved_dataset(path: Path) -> Iterator[RawRecord]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: a folder must be written by datasets' save_to_disk ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(f"{path}: holds splits {list(ds)}; point at one split's folder, "
                            f"e.g. {path}/{next(iter(ds))}")
        ds = next(iter(ds.values()))
    for i, row in enumerate(ds):
        yield RawRecord(f"{path}[row {i}]", dict(row))
