"""Which examples each step takes: a seeded per-epoch order, the same at every world size."""

from sdft.config.schema import TrainConfig
from sdft.train.batching import GlobalBatches, TokenSlots, global_batch_order


def test_epoch_order_is_a_seeded_permutation():
    a = global_batch_order(10, seed=1, epoch=0)
    assert sorted(a) == list(range(10))
    assert a == global_batch_order(10, seed=1, epoch=0) != global_batch_order(10, seed=1, epoch=1)


def test_global_batches_cover_each_epoch_once_whatever_the_world_size():
    t = TrainConfig(micro_batch_size=2, grad_accum=3, epochs=2.0, seed=5)
    one, three = GlobalBatches(t, 25, world=1), GlobalBatches(t, 25, world=3)
    assert (one.size, one.per_epoch, one.total_steps) == (6, 5, 10)
    assert (three.size, three.per_epoch, three.total_steps) == (18, 2, 4)
    for batches in (one, three):
        for epoch in range(2):
            steps = range(epoch * batches.per_epoch, (epoch + 1) * batches.per_epoch)
            seen = [i for s in steps for i in batches[s]]
            assert sorted(seen) == list(range(25))  # every example once per epoch, the last batch short
            assert seen == global_batch_order(25, 5, epoch)
    assert one[7] == one[7] and one.epoch(7) == 1.4
    assert GlobalBatches(TrainConfig(max_steps=3), 100, world=1).total_steps == 3


def test_token_slots_add_up():
    total = TokenSlots(10, 12, 16) + TokenSlots(5, 5, 8)
    assert total.summary() == {"real": 15, "run": 17, "padded": 24, "efficiency": round(15 / 17, 4),
                               "padded_efficiency": 0.625}
    assert TokenSlots().summary()["efficiency"] is None
