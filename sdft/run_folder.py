"""Holding an output folder: one run at a time, and what a killed run left behind cleared away.

``hold(layout)`` (rank 0, before any stage) creates the folder, takes an OS lock on ``.sdft.lock``
and, holding it, removes the temporary files a killed run or a full disk left (``sdft.utils.io``).
The lock is ``flock``: the kernel releases it when the process ends, however it ends (SIGKILL, OOM),
so a stale lock never blocks; a second run on the same folder stops at once, naming the holder that
the lock file records. The other ranks of a run write only after a collective that rank 0 joins after
``hold``, so the cleanup never races a rank of the same run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time

from sdft.distributed import runtime
from sdft.errors import OutputError, StageError
from sdft.layout import RunLayout
from sdft.utils.io import output_error, remove_temp_files

log = logging.getLogger(__name__)

_held: dict[str, int] = {}  # folder -> lock file descriptor, open for the life of the process


def hold(layout: RunLayout, command: str) -> None:
    """On rank 0: own ``layout.root`` for this process (a no-op on the other ranks, and when held already)."""
    if not runtime.is_main() or str(layout.root) in _held:
        return
    root = layout.root
    if root.exists() and not root.is_dir():
        raise OutputError(f"{root}: output_dir is a file, not a folder; name another output_dir or move the file")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise output_error(root, e) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
        os.close(fd)
        raise StageError(f"{root} is in use by another sdft run ({_describe(holder)}); wait for it to end, "
                         "or give this one another output_dir") from None
    _held[str(root)] = fd
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "argv": sys.argv,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    for path in remove_temp_files(root):
        log.info("removed %s, left by an interrupted run", path)


def _describe(holder: str) -> str:
    try:
        h = json.loads(holder)
        return f"sdft {h['command']}, pid {h['pid']} on {h['host']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return holder
