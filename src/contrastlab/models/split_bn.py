"""Split batch norm: MoCo's single-device stand-in for shuffle BN.

With one device there is no other process to shuffle keys with. Normalizing each of ``num_splits``
sub-batches with its own statistics (and shuffling the key batch before the key encoder) keeps a
query and its key in different sub-batches, so the statistics cannot leak which key is the positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are per sub-batch (MoCo's ``SplitBatchNorm``).

    Input ``[N, C, H, W]`` with ``N`` divisible by ``S = num_splits``; output of the same shape and
    memory format. Which samples form a sub-batch follows the memory layout, so that no layer has
    to copy its input:

    * NCHW (contiguous): sub-batch ``s`` holds samples ``s, s + S, s + 2S, ...``; viewing the batch
      as ``[N / S, S * C, H, W]`` makes each sub-batch a block of channels, normalized by one call
      of the fused batch-norm kernel.
    * channels_last (NHWC): sub-batch ``s`` holds samples ``s * N / S, ..., (s + 1) * N / S - 1``;
      each is a contiguous NHWC block, normalized by its own call of the kernel.

    Either way each sub-batch is a fixed ``1 / S`` of the batch; the key shuffle before the key
    encoder (``methods/moco.py``) is what makes its members random. Evaluation uses the running
    statistics, which are the mean over sub-batches.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        s = self.num_splits
        if n % s:
            raise ValueError(f"split batch norm: batch of {n} does not split into {s} equal parts")
        running_mean = self.running_mean.repeat(s)
        running_var = self.running_var.repeat(s)
        if _is_channels_last(x):
            y = self._contiguous_sub_batches(x, running_mean.view(s, c), running_var.view(s, c))
        else:
            y = F.batch_norm(
                x.reshape(n // s, c * s, h, w),
                running_mean,
                running_var,
                self.weight.repeat(s),
                self.bias.repeat(s),
                True,
                self.momentum,
                self.eps,
            )
            # Back to [N, C, H, W] as a tensor of its own rather than a view: torchvision follows
            # BN with an in-place ReLU, and an in-place op on a view makes autograd rebuild the
            # whole base tensor in the backward pass (CopySlices: two extra full copies per
            # layer, ~8% of a ResNet-18 step on CPU). ``_unsafe_view`` shares the storage all the
            # same and its gradient is a plain reshape.
            y = torch.ops.aten._unsafe_view(y, (n, c, h, w))
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(s, c).mean(0))
            self.running_var.copy_(running_var.view(s, c).mean(0))
            self.num_batches_tracked += 1
        return y

    def _contiguous_sub_batches(
        self, x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor
    ) -> torch.Tensor:
        """channels_last: the kernel once per contiguous block of ``N / S`` samples, then one
        concatenation (the only copy; the NCHW view trick would transpose every layer)."""
        parts = [
            F.batch_norm(
                chunk,
                running_mean[i],  # rows of [S, C]: the kernel updates them in place
                running_var[i],
                self.weight,
                self.bias,
                True,
                self.momentum,
                self.eps,
            )
            for i, chunk in enumerate(x.chunk(self.num_splits))
        ]
        return torch.cat(parts)


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def split_bn_layer(num_splits: int):
    """A ``norm_layer`` factory for torchvision's ResNet."""
    if num_splits == 1:
        return nn.BatchNorm2d
    return lambda channels: SplitBatchNorm2d(channels, num_splits)
