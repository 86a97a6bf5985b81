import pytest
import torch

from sdft.data.tokenize import causal_lm_loss_sum, collate, tokenize_rows
from sdft.errors import DataError
from tests.numerics import assert_scalar_close


def test_loss_sum_matches_float64_reference():
    torch.manual_seed(0)
    B, T, V = 3, 7, 11  # odd shapes
    logits = torch.randn(B, T, V)
    labels = torch.randint(0, V, (B, T))
    labels[0, :4] = -100       # a masked prompt
    labels[2, :] = -100        # a row with nothing to learn
    loss, n = causal_lm_loss_sum(logits, labels)
    lp = torch.log_softmax(logits.double(), -1)
    ref, count = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            y = int(labels[b, t + 1])
            if y != -100:
                ref -= float(lp[b, t, y])
                count += 1
    assert int(n) == count == (labels[:, 1:] != -100).sum()
    assert_scalar_close(loss.item(), ref)


def test_all_labels_ignored_gives_zero_not_nan():
    loss, n = causal_lm_loss_sum(torch.randn(2, 4, 5), torch.full((2, 4), -100))
    assert int(n) == 0 and loss.item() == 0.0


def test_tokenize_and_collate_mask_prompt_and_padding(tiny_tok):
    rows = [{"id": "a", "instruction": "Hi?", "response": "Yo."}, {"id": "b", "instruction": "Longer question?", "response": "Ok"}]
    data = tokenize_rows(rows, tiny_tok, "alpaca", cutoff_len=1000, overlength="skip")
    batch = collate(data, [0, 1], tiny_tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    for row, i in enumerate([0, 1]):
        n = len(data.input_ids[i])
        assert batch["attention_mask"][row].sum() == n
        assert (batch["labels"][row, n:] == -100).all()
        trained = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert tiny_tok.decode(trained) == rows[i]["response"] + tiny_tok.eos_token


def test_overlength_skip_counts_and_error_names_the_example(tiny_tok):
    rows = [{"id": "short", "instruction": "a", "response": "b"}, {"id": "long", "instruction": "a" * 300, "response": "b"}]
    data = tokenize_rows(rows, tiny_tok, "alpaca", cutoff_len=200, overlength="skip")
    assert data.ids == ["short"] and data.skipped_overlength == ["long"]
    with pytest.raises(DataError, match=r"example 'long' is \d+ tokens.*train\.cutoff_len=200"):
        tokenize_rows(rows, tiny_tok, "alpaca", cutoff_len=200, overlength="error")
    with pytest.raises(DataError, match=r"no training example left to train on \(train.cutoff_len=200, 1 too long"):
        tokenize_rows(rows[1:], tiny_tok, "alpaca", cutoff_len=200, overlength="skip")
    cut = tokenize_rows(rows, tiny_tok, "alpaca", cutoff_len=200)  # the default: cut and kept
    assert cut.ids == ["short", "long"] and cut.truncated == ["long"] and not cut.skipped_overlength
    # The authors' rule: the answer keeps max(int(200 * 2 / (prompt + 2)), 1) = 1 token ("b", its EOS cut),
    # the prompt its first 199.
    b = tiny_tok("b", add_special_tokens=False)["input_ids"]
    assert len(cut.input_ids[1]) == 200 and cut.labels[1] == [-100] * 199 + b
    everything = tokenize_rows(rows, tiny_tok, "alpaca")  # no cutoff: nothing is skipped (retention scoring)
    assert everything.ids == ["short", "long"] and not everything.skipped_overlength
    assert everything.response_tokens() == [sum(1 for y in lab[1:] if y != -100) for lab in everything.labels]
