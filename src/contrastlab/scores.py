"""Positive and negative pair scores: per-step statistics (and, below, their recording)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ScoreStats:
    """Scores of one batch of queries in one embedding space at one stage ("raw" or "effective").

    ``pos[i]`` is query i's score with its positive; ``neg_mean[i]`` and ``neg_var[i]`` are the mean
    and (population) variance of its scores with all of its negatives. The histograms count every
    positive and every negative score of the batch in ``bins`` equal bins over ``[low, high]``;
    scores outside the range are counted in the end bins.
    """

    pos: Tensor  # [B]
    neg_mean: Tensor  # [B]
    neg_var: Tensor  # [B]
    pos_hist: Tensor  # [bins], float32 counts
    neg_hist: Tensor  # [bins]


@torch.no_grad()
def score_stats(pos: Tensor, neg: Tensor, bins: int = 200, low: float = -1.0, high: float = 1.0) -> ScoreStats:
    """Summarize scores (not logits: no temperature) of B queries: ``pos`` [B], ``neg`` [B, N].

    Runs on the scores' device without a host synchronization, so it can be called every step.
    """
    pos = pos.detach().float()
    neg = neg.detach().float()
    neg_var, neg_mean = torch.var_mean(neg, dim=1, correction=0)
    return ScoreStats(
        pos=pos,
        neg_mean=neg_mean,
        neg_var=neg_var,
        pos_hist=torch.histc(pos.clamp(low, high), bins=bins, min=low, max=high),
        neg_hist=torch.histc(neg.clamp(low, high), bins=bins, min=low, max=high),
    )
