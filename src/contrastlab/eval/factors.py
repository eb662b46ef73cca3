"""Factor probes on the synthetic dataset: how much of each generating factor the features keep.

The synthetic images are drawn from known factors (shape, colour, texture). One linear probe per
factor, trained on the training split's frozen features and tested on the test split, says which
factors a feature space keeps: contrastive invariance to colour jitter, for instance, should
lower colour accuracy in MoCo's space but not in LooC's colour head. Rotation is probed with the
4-way rotation task (see :mod:`contrastlab.eval.rotation`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from contrastlab.eval.linear import linear_fast

FACTORS = ("shape", "color", "texture", "rotation")


def factor_probes(
    train_feats: Tensor,
    train_factors: Mapping[str, Tensor],
    test_feats: Tensor,
    test_factors: Mapping[str, Tensor],
    names: Sequence[str],
    seed: int = 0,
) -> dict:
    """Top-1 accuracy (percent) of a fast linear probe per factor, with the chance level."""
    out = {}
    for name in names:
        y_tr, y_te = train_factors[name], test_factors[name]
        num = int(max(int(y_tr.max()), int(y_te.max())) + 1)
        res = linear_fast(train_feats, y_tr, test_feats, y_te, num_classes=num, seed=seed)
        counts = y_te.bincount(minlength=num)
        out[name] = {
            "top1": res["top1"],
            "C": res["C"],
            "num_classes": num,
            "chance": 100.0 * int(counts.max()) / int(counts.sum()),
            "num_train_images": int(len(y_tr)),
            "num_test_images": int(len(y_te)),
        }
    return out
