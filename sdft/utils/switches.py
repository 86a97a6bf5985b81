"""Options that pick a fast path where it is known to be exact: ``auto``, the fast one, or the plain one."""

from __future__ import annotations

import logging

from sdft.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_switch(option: str, mode: str, blocker: str | None, on: str = "on", off: str = "off") -> bool:
    """Whether the fast path ``on`` runs: never for ``off``; for ``on``, always, or a ``ConfigError``
    naming what blocks it; for ``auto``, unless something blocks it (said in the log)."""
    if mode == off:
        return False
    if blocker and mode == on:
        raise ConfigError(f"{option}={on}: {blocker}; set {option}=auto or {off}")
    if blocker:
        log.info("%s: %s (%s)", option, off, blocker)
    return blocker is None
