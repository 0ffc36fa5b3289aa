"""The tensor shuffle buffer the trainer's loader uses: every record once, mixed across blocks, reproducible."""

import torch

from dkdm.cache.shuffle import TensorShuffleBuffer


def blocks(n_blocks=10, size=7):
    for b in range(n_blocks):
        ids = torch.arange(b * size, (b + 1) * size)
        yield ids.float()[:, None] * 2, ids  # two fields that must stay paired row by row


def run(seed, capacity=20, batch=8):
    return list(TensorShuffleBuffer(capacity, batch, torch.Generator().manual_seed(seed)).batches(blocks()))


def test_every_record_once_paired_and_mixed():
    out = run(0)
    ids = torch.cat([b[1] for b in out])
    assert all(len(b[1]) == 8 for b in out)
    assert len(ids) == 64 and len(set(ids.tolist())) == 64  # 70 records, the last partial batch of 6 dropped
    for x, i in out:
        assert torch.equal(x[:, 0], i.float() * 2)
    first_block = [set((b[1] // 7).tolist()) for b in out[:3]]
    assert any(len(s) > 1 for s in first_block)  # batches draw from several blocks
    assert ids.tolist() != sorted(ids.tolist())


def test_same_seed_same_batches_other_seed_others():
    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(a, c))


def test_buffer_smaller_than_batch_and_blocks_larger_than_buffer():
    out = list(TensorShuffleBuffer(2, 5, torch.Generator().manual_seed(0)).batches(blocks(3, 11)))
    ids = torch.cat([b[1] for b in out])
    assert len(out) == 6 and len(set(ids.tolist())) == 30
