"""Map a YAML file plus ``key=value`` overrides onto ``RunConfig``, then validate it.

Unknown keys, values of the wrong type and unknown choices (template names and every other
``Literal`` field) are refused with a message that names the key (and the file), before any work
starts; a key that moved to another section says where it went. Relative data paths in a YAML file
are taken relative to that file, so a config can be run from any working directory. Gate and
evaluator names and cross-field rules are checked by ``sdft.config.validate``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from sdft.config.schema import RunConfig
from sdft.config.sources import is_hub
from sdft.config.validate import validate
from sdft.errors import ConfigError

# Fields that hold file paths: resolved against the YAML file's folder when relative.
_PATH_FIELDS = {("data", "train"), ("data", "test"), ("data", "general_prompts")}
# Keys that moved, so that an older config gets told where its key went.
MOVED = {
    **{f"{section}.{key}": f"{section}.sampling.{key}" for section in ("distill", "eval")
       for key in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")},
    "train.qlora_quant_type": "quantization.quant_type",
    "train.qlora_double_quant": "quantization.double_quant",
    "train.qlora_compute_dtype": "quantization.compute_dtype",
}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Build a validated ``RunConfig`` from a YAML file and ``a.b=value`` overrides.

    Override values are parsed as YAML scalars or lists (``train.lr=2e-4``,
    ``train.lora_targets=[q_proj,k_proj]``).
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        base = path.resolve().parent
        _resolve_paths(raw, base)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=2e-4")
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    where = f" in {path}" if path is not None else ""
    return validate(_build(RunConfig(), raw, prefix="", where=where))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what is written to ``config.yaml``)."""
    return dataclasses.asdict(cfg)


def _resolve_paths(raw: dict, base: Path) -> None:
    for section, key in _PATH_FIELDS:
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key] and not is_hub(sec[key]):
            p = Path(sec[key]).expanduser()
            sec[key] = str(p if p.is_absolute() else (base / p).resolve())


def _build(default: Any, raw: Any, prefix: str, where: str):
    """``default`` (a dataclass instance) with the values of ``raw`` put in. Nested sections start
    from their parent's default, so that e.g. ``eval.sampling`` keeps eval's greedy default when a
    YAML file sets only its length."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}{where}: expected a mapping, got {raw!r}")
    cls = type(default)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        if key in MOVED:
            raise ConfigError(f"option {key}{where} has moved to {MOVED[key]}")
        raise ConfigError(f"unknown option {key}{where}; valid options here: "
                          f"{', '.join(prefix + n for n in fields)}")
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        key = prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(getattr(default, name), value, key + ".", where)
        else:
            kwargs[name] = _coerce(value, hint, key, where)
    return dataclasses.replace(default, **kwargs)


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    origin = get_origin(hint)
    bad = ConfigError(f"{key}{where}: {value!r} is not a valid {_describe(hint)}")
    if origin is Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(get_args(hint)):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
        if value not in get_args(hint):
            raise ConfigError(f"{key}{where}: {value!r} is not one of {list(get_args(hint))}")
        return value
    if origin is dict:  # name -> a section (a user benchmark) or a value (the paper's numbers)
        _, item = get_args(hint)
        if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
            raise ConfigError(f"{key}{where}: expected a mapping of names to values, got {value!r}")
        if dataclasses.is_dataclass(item):
            return {k: _build(item(), v, f"{key}.{k}.", where) for k, v in value.items()}
        return {k: _coerce(v, item, f"{key}.{k}", where) for k, v in value.items()}
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):  # a single value or a comma list from the CLI: a,b,c
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):  # NaN passes every comparison check, and never equals itself
            raise ConfigError(f"{key}{where}: {value!r} is not a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad
        return str(value)
    raise bad


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
