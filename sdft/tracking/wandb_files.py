"""Reading W&B's local run files (``run-<id>.wandb``) back: what an offline run holds, so that a run
that goes on after a kill sends exactly what the killed one did not write (W&B buffers its file, so a
killed process can leave it short), and so that tests check what W&B wrote, not what sdft meant to."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

_BLOCK = 32768  # the LevelDB log format: 32 KiB blocks of chunks
_HEADER = 7  # a chunk's header: checksum (4 bytes), length (2), type (1: full, 2: first, 3: middle, 4: last)


def records(run_file: Path) -> Iterator:
    """The ``wandb_internal_pb2.Record`` messages of ``run_file`` in order; a torn last chunk (a killed
    writer) ends the file."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file} is not a W&B run file")
    pending, pos = b"", _HEADER  # the file starts with its own 7-byte header
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0:  # zeros to the end of the block
            pos += _BLOCK - pos % _BLOCK
            continue
        if pos + _HEADER + length > len(data):
            return
        pending += data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def history(run_file: Path) -> Iterator[dict]:
    """The history rows of ``run_file`` (nested keys joined with ``/``), values decoded from JSON."""
    for record in records(run_file):
        if record.WhichOneof("record_type") == "history":
            yield {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}


def run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every local file of run ``run_id`` (an offline run that went on after a kill has one per start),
    oldest first."""
    return sorted(wandb_dir.glob(f"*-{run_id}/run-{run_id}.wandb"))
