"""Where a data option points: a local file or folder, or a data set on a hub.

``data.train``, ``data.test``, ``data.general_prompts`` and ``eval.safety_prompts`` take either a path
or ``hub:<name>[?config=<c>&split=<s>&revision=<r>&data_files=<f>]``, e.g.
``hub:openai/gsm8k?config=main&split=train``. The name is what ``datasets.load_dataset`` takes: a
repository on the hub, or a local folder laid out like one (how the tests run offline). Parsed here, in
the config layer, so that a malformed spec stops at load time with the option named.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from sdft.errors import ConfigError

HUB_PREFIX = "hub:"
HUB_KEYS = ("config", "split", "revision", "data_files")


@dataclass(frozen=True)
class HubSource:
    """A data set ``datasets.load_dataset`` reads: ``load_dataset(name, config, split=..., revision=...,
    data_files=...)``. ``split`` empty: the data set's only split."""

    spec: str
    name: str
    config: str | None = None
    split: str = ""
    revision: str | None = None
    data_files: str | None = None


def is_hub(source: str) -> bool:
    return str(source).startswith(HUB_PREFIX)


def parse_hub(source: str, option: str = "") -> HubSource:
    """``hub:...`` -> ``HubSource``; a malformed spec is a ``ConfigError`` naming ``option``."""
    where = f"{option}={source!r}" if option else repr(source)
    body = source[len(HUB_PREFIX):]
    name, _, query = body.partition("?")
    if not name.strip():
        raise ConfigError(f"{where}: no data set name after 'hub:' (e.g. hub:openai/gsm8k?config=main&split=train)")
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False) if query else {}
    unknown = sorted(set(params) - set(HUB_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; a hub data set takes {', '.join(HUB_KEYS)}")
    for key, values in params.items():
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"{where}: give {key} exactly one non-empty value")
    one = {k: v[0] for k, v in params.items()}
    return HubSource(spec=source, name=name, config=one.get("config"), split=one.get("split", ""),
                     revision=one.get("revision"), data_files=one.get("data_files"))
