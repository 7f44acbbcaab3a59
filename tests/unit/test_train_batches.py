"""The in-memory batching the Ray Train loop uses for shards of sources read whole on the driver."""

import torch

from pipeline.train.loop import tensor_batches


def test_tensor_batches_cover_every_row_once_in_a_seeded_order():
    rows = {"x": torch.arange(10, dtype=torch.float32).unsqueeze(1).repeat(1, 3), "y": torch.arange(10)}
    batches = list(tensor_batches(rows, 4, seed=7))
    assert [len(b["y"]) for b in batches] == [4, 4, 2]
    order = torch.cat([b["y"] for b in batches])
    assert sorted(order.tolist()) == list(range(10))
    for b in batches:  # columns stay aligned row by row
        assert torch.equal(b["x"][:, 0].long(), b["y"])
    assert torch.equal(order, torch.cat([b["y"] for b in tensor_batches(rows, 4, seed=7)]))
    assert not torch.equal(order, torch.cat([b["y"] for b in tensor_batches(rows, 4, seed=8)]))
    in_order = torch.cat([b["y"] for b in tensor_batches(rows, 3)])  # no seed: validation, in order
    assert in_order.tolist() == list(range(10))


def test_tensor_batches_of_an_empty_shard_yield_nothing():
    assert list(tensor_batches({}, 4, seed=0)) == []
