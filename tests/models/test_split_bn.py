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


def _naive_bn(chunk, weight, bias, eps):
    mean = chunk.mean(dim=(0, 2, 3), keepdim=True)
    var = chunk.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    return (chunk - mean) / torch.sqrt(var + eps) * weight[None, :, None, None] + bias[
        None, :, None, None
    ]


def test_channels_last_normalizes_contiguous_sub_batches_and_stays_channels_last():
    torch.manual_seed(1)
    splits, channels, n = 4, 3, 16
    split = SplitBatchNorm2d(channels, splits).double().train()
    with torch.no_grad():
        split.weight.uniform_(0.5, 2)
        split.bias.uniform_(-1, 1)
    x = (torch.randn(n, channels, 5, 5, dtype=torch.float64) * 3 + 1).contiguous(
        memory_format=torch.channels_last
    )
    x.requires_grad_(True)
    y = split(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.shape == x.shape

    # independent reference: plain formulas per block of n / S consecutive samples
    ref_x = x.detach().contiguous().requires_grad_(True)
    w, b = split.weight.detach().clone(), split.bias.detach().clone()
    size = n // splits
    ref = torch.cat(
        [_naive_bn(ref_x[i * size : (i + 1) * size], w, b, split.eps) for i in range(splits)]
    )
    torch.testing.assert_close(y, ref)
    upstream = torch.randn_like(ref)
    (y * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad)

    chunks = ref_x.detach().split(size)
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks])
    count = size * 25
    variances = torch.stack([c.var(dim=(0, 2, 3), unbiased=False) for c in chunks])
    torch.testing.assert_close(split.running_mean, (0.1 * means).mean(0))
    torch.testing.assert_close(
        split.running_var, (0.9 + 0.1 * variances * count / (count - 1)).mean(0)
    )


def test_both_layouts_agree_when_their_sub_batches_hold_the_same_samples():
    torch.manual_seed(2)
    splits, n = 4, 16
    x = torch.randn(n, 8, 6, 6, dtype=torch.float64)
    nchw = SplitBatchNorm2d(8, splits).double().train()
    nhwc = SplitBatchNorm2d(8, splits).double().train()
    # NCHW sub-batch s = samples s, s + S, ...; put them in block s for the NHWC layer
    order = torch.arange(n).view(n // splits, splits).t().reshape(-1)
    y_nchw = nchw(x)
    y_nhwc = nhwc(x[order].contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y_nhwc, y_nchw[order])
    torch.testing.assert_close(nhwc.running_mean, nchw.running_mean)
    torch.testing.assert_close(nhwc.running_var, nchw.running_var)
