"""Shuffle BN helpers in a single process."""

import torch

from contrastlab.distributed import gather_cat, shuffle_batch, unshuffle_batch


def test_shuffle_then_unshuffle_is_identity():
    x = torch.arange(24.0).view(12, 2)
    shuffled, undo = shuffle_batch(x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    torch.testing.assert_close(unshuffle_batch(shuffled, undo), x)


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 4)
    assert gather_cat(x) is x
