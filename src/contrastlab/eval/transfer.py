"""Transfer to another labelled image collection: a pair of folders with class subfolders.

The encoder was pretrained elsewhere; the target's training folder trains the classifiers and its
test folder measures them. Images are resized to the checkpoint's training size and, by default,
normalized with the statistics the encoder was trained with (``--norm checkpoint``): that is the
input distribution the network expects. ``--norm target`` uses the target's training folder's
statistics instead, for its test folder too (ImageNet's for images larger than 32 px, CIFAR-10's
for smaller ones).
"""

from __future__ import annotations

from torch import Tensor

from contrastlab.eval.fewshot import allway_kshot, episodes
from contrastlab.eval.linear import linear_fast


def transfer_eval(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    shots=(5, 10),
    trials: int = 5,
    n_way: int = 5,
    episode_shots=(1, 5),
    queries: int = 15,
    num_episodes: int = 600,
    seed: int = 0,
) -> dict:
    """Linear (fast mode), all-way K-shot and, where enough classes exist, N-way episodes."""
    from contrastlab.errors import UserError

    out: dict = {
        "linear": linear_fast(
            train_feats, train_labels, test_feats, test_labels, num_classes, seed=seed
        )
    }
    out["fewshot"] = allway_kshot(
        train_feats, train_labels, test_feats, test_labels, shots, trials, seed=seed
    )
    try:
        out["episodes"] = episodes(
            test_feats, test_labels, n_way, episode_shots, queries, num_episodes, seed=seed
        )
    except UserError as e:  # too few classes or images for episodes: say so, keep the rest
        out["episodes"] = {"skipped": str(e)}
    return out
