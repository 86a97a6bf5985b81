"""Packing: the assignment, and the proof that packed examples do not see each other."""

import copy
import random

import pytest
import torch

from sdft.data.tokenize import causal_lm_loss_sum, collate, tokenize_rows
from sdft.models.loading import attention_mask_for, load_model
from sdft.train.batching import step_token_slots
from sdft.train.packing import best_fit_decreasing, pack, plan_packed_step
from tests.conftest import math_rows
from tests.numerics import assert_close_scaled, assert_scalar_close, budget


def test_best_fit_decreasing_fills_rows_and_is_deterministic():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(200)]
    rows = best_fit_decreasing(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(200))  # every example exactly once
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) <= -(-sum(lengths) // 64) * 1.1 + 1  # near the lower bound
    assert rows == best_fit_decreasing(lengths, 64)
    assert best_fit_decreasing([5, 3, 3, 2], 8) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="example 1 is 9 tokens, longer than the pack length 8"):
        best_fit_decreasing([3, 9], 8)


def test_pack_layout():
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    labels = [[-100, 2, 3], [-100, 5], [-100, -100, 8, 9]]
    b = pack(ids, labels, [[2, 1], [0]], pad_id=0)
    assert b["input_ids"].tolist() == [[6, 7, 8, 9, 4, 5], [1, 2, 3, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5]]
    assert b["labels"].tolist() == [[-100, -100, 8, 9, -100, 5], [-100, 2, 3, -100, -100, -100]]
    assert b["cu_seqlens"].tolist() == [0, 4, 6, 9] and b["n_tokens"] == 9
    m = b["attention_mask"][0, 0].int().tolist()
    assert m[4] == [0, 0, 0, 0, 1, 0] and m[5] == [0, 0, 0, 0, 1, 1] and m[3] == [1, 1, 1, 1, 0, 0]


def test_packed_loss_and_gradients_equal_one_by_one(tiny_model_dir, tiny_tok):
    """The summed loss and every gradient of a packed fp32 batch equal those of the examples run alone
    through a float64 copy of the model (``tests.numerics`` budgets)."""
    torch.manual_seed(0)
    model = load_model(str(tiny_model_dir), "float32", torch.device("cpu")).train()
    for m in model.modules():  # dropout off, so both runs compute the same function
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ref = copy.deepcopy(model).double()
    rows = [{"id": r["id"], "instruction": r["question"], "response": r["answer"]} for r in math_rows(7)]
    data = tokenize_rows(rows, tiny_tok, "math")
    capacity = max(map(len, data.input_ids)) * 2
    bins = best_fit_decreasing([len(x) for x in data.input_ids], capacity)
    assert len(bins) < len(data)  # something is packed

    def grads(m):
        return {n: p.grad.clone() for n, p in m.named_parameters()}

    alone = 0.0
    for i in range(len(data)):
        b = collate(data, [i], tiny_tok.pad_token_id)
        loss, _ = causal_lm_loss_sum(ref(input_ids=b["input_ids"]).logits, b["labels"])
        loss.backward()
        alone += loss.item()
    g_alone = grads(ref)
    b = pack(data.input_ids, data.labels, bins, tiny_tok.pad_token_id)
    mask = attention_mask_for(model, b["attention_mask"])  # as the objective hands it to the model's attention
    logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], attention_mask=mask).logits
    loss, _ = causal_lm_loss_sum(logits, b["labels"])
    loss.backward()
    assert_scalar_close(loss.item(), alone)
    for n, g in grads(model).items():
        assert_close_scaled(g, g_alone[n], msg=n)
    # The control: restarting positions without the block mask let examples see each other, which moves
    # the loss by more than rounding can (two float32 budgets).
    with torch.no_grad():
        leaky, _ = causal_lm_loss_sum(model(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits, b["labels"])
    assert abs(leaky.item() - alone) > 2 * budget(torch.float32, alone)


def test_plan_deals_every_example_once_and_balances_tokens():
    rng = random.Random(0)
    lengths = [rng.randint(10, 300) for _ in range(500)]
    batch = rng.sample(range(500), 64)
    plan = plan_packed_step(lengths, batch, 8, 512)
    assert len(plan) == 8 and plan == plan_packed_step(lengths, batch, 8, 512)
    placed = [i for rows in plan for row in rows for i in row]
    assert sorted(placed) == sorted(batch)
    assert all(sum(lengths[i] for i in row) <= 512 for rows in plan for row in rows)
    tokens = [sum(lengths[i] for row in rows for i in row) for rows in plan]
    assert max(tokens) - min(tokens) <= 512  # greedy: within one row of each other
    slots = step_token_slots(lengths, batch, 8, 8, plan)
    assert slots.real == sum(lengths[i] for i in batch) and slots.real <= slots.run < slots.padded
    assert slots.real / slots.run > 0.9
    few = plan_packed_step([5, 5, 5], [0, 1, 2], 4, 100)
    assert few == [[[0, 1, 2]], [], [], []]
