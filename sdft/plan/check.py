"""Refuse, before any stage runs on a GPU, a configuration whose plan does not fit the card.

The command's training step (its configured ZeRO setting, micro-batch and checkpointing) and its
generation engines (distillation, evaluation) are planned as ``sdft plan`` plans them; one that needs
more than the card holds stops the command with the stage, the figures and the cheapest setting that
fits. ``check_memory=false`` runs it anyway (the plan is an estimate: see docs/plan.md).
"""

from __future__ import annotations

from sdft.config.schema import RunConfig
from sdft.distributed.deepspeed import load_ds_config, zero_stage
from sdft.errors import ConfigError
from sdft.plan.cards import Card
from sdft.plan.memory import ZeroSetting
from sdft.plan.plan import GIB, TrainingMemory, generation, load_model_config
from sdft.plan.recommend import cheapest
from sdft.plan.shape import model_shape


def configured_setting(cfg: RunConfig) -> ZeroSetting:
    """The ZeRO setting ``train.deepspeed`` selects (plain PyTorch counts as stage 0)."""
    if not cfg.train.deepspeed:
        return ZeroSetting(0)
    ds = load_ds_config(cfg.train.deepspeed)[0]
    zero = ds.get("zero_optimization", {})
    on_cpu = {key: (zero.get(key) or {}).get("device") == "cpu" for key in ("offload_optimizer", "offload_param")}
    return ZeroSetting(zero_stage(ds), on_cpu["offload_optimizer"], on_cpu["offload_param"])


def shortfalls(cfg: RunConfig, config, memory_bytes: int, gpus_per_node: int, nodes: int, trains: bool,
               generates: list[str]) -> list[str]:
    """One line per planned stage that does not fit ``memory_bytes`` per GPU (empty when all fit)."""
    shape = model_shape(config)
    have = memory_bytes / GIB
    out = []
    if trains:
        t = cfg.train
        mem = TrainingMemory(cfg, config, shape, gpus_per_node, nodes)
        setting = configured_setting(cfg)
        need = mem.needed(setting, t.gradient_checkpointing)
        if mem.supported(setting) and need > memory_bytes:  # an unsupported one is refused by its objective
            fix = cheapest(mem.needed, t.micro_batch_size, t.grad_accum, memory_bytes, gpus_per_node * nodes)
            hint = (f"`sdft plan` finds {' '.join(fix.overrides())} fits ({fix.needed_bytes / GIB:.1f} GiB)" if fix
                    else "nothing fits these cards (`sdft plan` shows the figures)")
            out.append(f"train: {setting.name}, micro-batch {t.micro_batch_size} x {t.cutoff_len} tokens, gradient "
                       f"checkpointing {'on' if t.gradient_checkpointing else 'off'} needs {need / GIB:.1f} GiB per GPU, "
                       f"the card has {have:.1f} GiB ({need / GIB - have:.1f} GiB short); {hint}")
    card = Card("this GPU", have)
    for g in generation(cfg, config, shape, card, gpus_per_node * nodes):
        if g["stage"] in generates and not g["fits"]:
            option = "distill.batch_size" if g["stage"] == "distill" else "eval.batch_size"
            out.append(f"{g['stage']}: the weights ({g['weights_gib']:.1f} GiB), the KV cache of {g['slots']} slots "
                       f"({g['kv_cache_gib']:.1f} GiB) and their prefill ({g['prefill_gib']:.1f} GiB) do not fit the "
                       f"card's {have:.1f} GiB; lower {option}")
    return out


def check_fits(cfg: RunConfig, stages: list[str], memory_bytes: int, gpus_per_node: int, nodes: int) -> None:
    """Raise ``ConfigError`` when a stage among ``stages`` is planned not to fit ``memory_bytes`` per GPU."""
    if not cfg.check_memory:
        return
    trains = "train" in stages
    generates = [s for s in ("distill", "eval") if s in stages]
    if not trains and not generates:
        return
    lines = shortfalls(cfg, load_model_config(cfg), memory_bytes, gpus_per_node, nodes, trains, generates)
    if lines:
        raise ConfigError("the plan does not fit the GPU (nothing has run):\n  " + "\n  ".join(lines)
                          + "\n  check_memory=false runs it anyway (docs/plan.md)")
