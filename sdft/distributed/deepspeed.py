"""DeepSpeed configs: load a shipped one by name or a user's file, fill its ``"auto"`` values from the
sdft config, and refuse contradictions; and what the rest of sdft reads from a config (its ZeRO stage).

The shipped configs are package data (``sdft.distributed.ds_configs``, built from the repository's
top-level ``ds_configs/`` folder), so a wheel or a non-editable install finds them too.

Filled from the sdft config: micro batch, accumulation, global batch (micro x accum x world),
gradient clipping, bf16, and bucket sizes from the model's hidden size (the HF Trainer convention:
reduce bucket h^2, stage-3 prefetch 0.9 h^2, persistence threshold 10 h). A value the user wrote
that disagrees with the sdft config is an error naming both, never a silent pick. sdft owns the
optimizer and the schedule (``train.lr``, ``train.lr_scheduler``): a ds config that brings its own
is refused.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

from sdft.config.schema import RunConfig
from sdft.errors import ConfigError


def shipped_configs() -> dict[str, Path]:
    """The shipped configs by name (``zero1``, ``zero2``, ...)."""
    folder = resources.files("sdft.distributed.ds_configs")
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json")}


def load_ds_config(name_or_path: str, option: str = "train.deepspeed") -> tuple[dict, str]:
    """(config dict, where it came from). A bare name means a shipped config; ``option`` is the
    config key that named it, for the error message."""
    path = Path(name_or_path)
    shipped = shipped_configs()
    if not path.suffix and not path.exists() and name_or_path in shipped:
        path = shipped[name_or_path]
    if not path.is_file():
        raise ConfigError(f"{option}={name_or_path!r}: no such file; shipped configs: {sorted(shipped)}, "
                          "or give a path to your own JSON")
    try:
        return json.loads(path.read_text()), str(path)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e


def deepspeed_config(name_or_path: str, option: str, cfg: RunConfig, world: int, hidden_size: int) -> dict:
    """The config named by ``option`` (``train.deepspeed`` or ``distill.deepspeed``), loaded and filled."""
    raw, source = load_ds_config(name_or_path, option)
    return fill_ds_config(raw, cfg, world, hidden_size, source)


def fill_ds_config(raw: dict, cfg: RunConfig, world: int, hidden_size: int, source: str = "ds config") -> dict:
    """Return a copy of ``raw`` with every "auto" resolved; raise ``ConfigError`` on contradictions."""
    t = cfg.train
    ds = copy.deepcopy(raw)
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"{source}: has a {key!r} section; sdft builds the optimizer and schedule itself "
                              "(train.lr, train.weight_decay, train.lr_scheduler, train.warmup_ratio): remove it")
    if ds.get("fp16", {}).get("enabled") not in (None, False, "auto"):
        raise ConfigError(f"{source}: fp16 is not supported (unstable for training, as the paper found); "
                          "use train.precision=bf16")
    ds.setdefault("fp16", {})["enabled"] = False

    wanted = {
        ("train_micro_batch_size_per_gpu",): (t.micro_batch_size, "train.micro_batch_size"),
        ("gradient_accumulation_steps",): (t.grad_accum, "train.grad_accum"),
        ("train_batch_size",): (t.micro_batch_size * t.grad_accum * world,
                                f"train.micro_batch_size x train.grad_accum x world size {world}"),
        ("gradient_clipping",): (float(t.max_grad_norm), "train.max_grad_norm"),
        ("bf16", "enabled"): (t.precision == "bf16", "train.precision"),
    }
    for keys, (value, option) in wanted.items():
        _set(ds, keys, value, option, source)
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    h = hidden_size
    for key, value in (("reduce_bucket_size", h * h), ("allgather_bucket_size", h * h),
                       ("stage3_prefetch_bucket_size", int(0.9 * h * h)), ("stage3_param_persistence_threshold", 10 * h)):
        if zero.get(key) == "auto":
            zero[key] = value
    leftover = _find_auto(ds)
    if leftover:
        raise ConfigError(f"{source}: sdft cannot fill \"auto\" for {leftover[0]}; give a value")
    return ds


def zero_stage(ds: dict | None) -> int:
    """The ZeRO stage of a DeepSpeed config (0 without one)."""
    return int((ds or {}).get("zero_optimization", {}).get("stage", 0))


def _set(ds: dict, keys: tuple, value, option: str, source: str) -> None:
    node = ds
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    current = node.get(keys[-1], "auto")
    if current == "auto":
        node[keys[-1]] = value
    elif (float(current) != float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else current != value:
        raise ConfigError(f"{source}: {'.'.join(keys)}={current!r} contradicts {option} (= {value!r}); set it to "
                          "\"auto\" or make the two agree")


def _find_auto(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _find_auto(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def end_zero3_loading() -> None:
    """Forget ``zero3_loading``'s object in transformers, even while a model still holds it: the stage
    that loaded into partitions is over, and a later stage of the same process (eval's seed model after
    ZeRO-3 training) must load whole weights, not empty partitions."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def zero3_loading(ds: dict):
    """While the returned object lives, transformers' ``from_pretrained`` loads straight into ZeRO-3
    partitions (``zero.Init``), so no rank ever holds the whole model. transformers keeps only a weak
    reference: store it on the model (``model._sdft_ds_ref``) so it outlives the run."""
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds)
