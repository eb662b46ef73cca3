"""Split batch norm equals ordinary batch norm applied to each sub-batch."""

from __future__ import annotations

import torch
from torch import nn

from contrastlab.models.split_bn import SplitBatchNorm2d


def test_split_bn_equals_per_chunk_bn():
    torch.manual_seed(0)
    splits, channels = 4, 3
    x = torch.randn(16, channels, 5, 5, dtype=torch.float64) * 3 + 1
    split = SplitBatchNorm2d(channels, splits).double().train()
    with torch.no_grad():
        split.weight.uniform_(0.5, 2)
        split.bias.uniform_(-1, 1)
    y = split(x)
    running_means, running_vars = [], []
    for s in range(splits):
        chunk = x[s::splits]  # sub-batch s holds samples s, s + S, ...
        mean = chunk.mean(dim=(0, 2, 3))
        var = chunk.var(dim=(0, 2, 3), unbiased=False)
        expected = (chunk - mean[None, :, None, None]) / torch.sqrt(
            var[None, :, None, None] + split.eps
        )
        expected = expected * split.weight[None, :, None, None] + split.bias[None, :, None, None]
        torch.testing.assert_close(y[s::splits], expected)
        running_means.append(0.9 * 0 + 0.1 * mean)
        n = chunk.numel() / channels
        running_vars.append(0.9 * 1 + 0.1 * var * n / (n - 1))
    torch.testing.assert_close(split.running_mean, torch.stack(running_means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(running_vars).mean(0))


def test_split_bn_in_eval_mode_is_plain_bn():
    split = SplitBatchNorm2d(3, 4).eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())
    x = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(split(x), plain(x))
