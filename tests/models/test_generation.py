import torch

from sdft.config.schema import SamplingConfig
from sdft.models.generation import generate_all, generate_batches, left_pad, plan_batches


def test_plan_sorts_longest_first_and_is_deterministic():
    prompts = {"a": [1], "b": [1, 2, 3], "c": [1, 2], "d": [1, 2, 3]}
    assert plan_batches(prompts, 2) == [["b", "d"], ["c", "a"]]


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_left_padding_does_not_change_greedy_output(tiny_model_dir, tiny_tok):
    from sdft.models.loading import load_model

    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    prompts = {"long": tiny_tok("a much longer prompt here")["input_ids"], "short": tiny_tok("hi")["input_ids"]}
    s = SamplingConfig(max_new_tokens=6, do_sample=False)
    together = generate_all(model, tiny_tok, prompts, s, batch_size=2, seed=0)
    alone = generate_all(model, tiny_tok, {"short": prompts["short"]}, s, batch_size=2, seed=0)
    assert together["short"] == alone["short"]


def test_skip_and_per_batch_seeds_make_resumed_sampling_identical(tiny_model_dir, tiny_tok):
    from sdft.models.loading import load_model

    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu"))
    prompts = {f"p{i}": tiny_tok("x" * (i + 1))["input_ids"] for i in range(6)}
    s = SamplingConfig(max_new_tokens=5, do_sample=True)
    full = generate_all(model, tiny_tok, prompts, s, batch_size=2, seed=3)
    first = next(iter(plan_batches(prompts, 2)))
    rest = {k: v for b in generate_batches(model, tiny_tok, prompts, s, batch_size=2, seed=3, skip=set(first))
            for k, v in b.items()}
    assert set(rest) == set(prompts) - set(first)
    assert all(rest[k] == full[k] for k in rest)
    other = generate_all(model, tiny_tok, prompts, s, batch_size=2, seed=4)
    assert other != full  # the seed matters
