"""Read raw records from JSON, JSONL, CSV, Parquet, a saved ``datasets`` folder, or a hub data set
(``hub:<name>?config=&split=``, read by ``sdft.data.hub``).

Each record comes with a location (``file:line`` for JSONL and CSV, ``file[item]`` for JSON,
``file[row]`` for Parquet and datasets) so that every later error can point at it. Text files must be
UTF-8: a JSONL line that is not is a bad record (skipped with ``data.on_error=skip``); a JSON or CSV
file that is not is an error naming the line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdft.config.sources import is_hub, parse_hub
from sdft.data.hub import load_hub
from sdft.errors import DataError


@dataclass
class RawRecord:
    location: str
    fields: dict[str, Any] | None
    """None when the record itself could not be parsed (then ``error`` says why)."""
    error: str = ""


def read_records(path: str | Path) -> Iterator[RawRecord]:
    """Yield the records of a data file, a saved ``datasets`` folder or a ``hub:`` data set, in order."""
    if is_hub(str(path)):
        src = parse_hub(str(path))
        yield from _dataset_rows(load_hub(src), src.spec,
                                 lambda split: f"name one, e.g. {src.spec}{'&' if '?' in src.spec else '?'}split={split}")
        return
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


def decode_utf8(data: bytes, path: Path | str, first_line: int = 1) -> str:
    """``data`` as text; bytes that are not UTF-8 are a ``DataError`` naming the file and line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data[:e.start].count(b"\n")
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            loc = f"{path}:{lineno}"
            try:
                line = decode_utf8(raw, path, lineno)
            except DataError as e:
                yield RawRecord(loc, None, str(e).removeprefix(f"{loc}: "))
                continue
            if not line.strip():
                continue
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
        obj = json.loads(decode_utf8(path.read_bytes(), path))
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
    reader = csv.DictReader(io.StringIO(decode_utf8(path.read_bytes(), path), newline=""))
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
    yield from _dataset_rows(ds, str(path), lambda split: f"point at one split's folder, e.g. {path}/{split}")


def _dataset_rows(ds, where: str, name_one) -> Iterator[RawRecord]:
    """The rows of a ``datasets`` ``Dataset``, or of a ``DatasetDict``'s only split (several splits are a
    ``DataError`` that ends with ``name_one(first split)``: how to name one), located ``<where>[row i]``."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(f"{where}: has splits {list(ds)}; {name_one(next(iter(ds)))}")
        ds = next(iter(ds.values()))
    for i, row in enumerate(ds):
        yield RawRecord(f"{where}[row {i}]", dict(row))
