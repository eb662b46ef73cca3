"""Few-shot evaluation on frozen features.

* :func:`allway_kshot` — LooC's Flowers-102 protocol: K labelled training images of *every* class
  (K = 5 and 10), a logistic-regression classifier on frozen features, accuracy on the whole test
  split; repeated over several random draws (trials) and reported as mean ± 95 % CI.
* :func:`episodes` — the N-way K-shot episodes of the meta-learning literature: N random classes,
  K support and Q query images each, a nearest-centroid (cosine) or logistic classifier fitted on
  the support set only; mean ± 95 % CI over many episodes (600 by default).

The 95 % interval is the Student-t half-width ``t(0.975, n-1) · s / sqrt(n)`` with ``s`` the
sample standard deviation (ddof 1). For 600 episodes t ≈ 1.964, i.e. the usual ``1.96 · s/√n``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastlab.errors import UserError, plural
from contrastlab.eval.linear import LogisticProbe
from contrastlab.eval.progress import Heartbeat


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % confidence half-width (Student t); the half-width is NaN for one value."""
    from scipy.stats import t

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan")
    half = float(t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, half


def _by_class(labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels) if c >= 0}


def class_counts(groups: dict[int, np.ndarray], split: str) -> str:
    """``the test split's 5 classes have 15 images each`` (or their counts, or their range)."""
    counts = sorted(len(idx) for idx in groups.values())
    n = f"{plural(len(counts), 'class')} {'has' if len(counts) == 1 else 'have'}"
    if not counts:
        return f"the {split} split has no labelled images"
    if counts[0] == counts[-1]:
        return f"the {split} split's {n} {plural(counts[0], 'image')}" + (
            " each" if len(counts) > 1 else ""
        )
    if len(counts) <= 10:
        return f"the {split} split's {n} {', '.join(map(str, counts))} images"
    return f"the {split} split's {n} {counts[0]} to {counts[-1]} images"


def check_allway_shots(labels: Tensor | dict, shots: Sequence[int]) -> None:
    """A ``UserError`` naming the smallest class unless every class of the training ``labels``
    (int64 [N], or their ``_by_class`` groups) has at least ``max(shots)`` images: a K-shot
    result needs K of every class. Cheap: checked before any features are extracted."""
    groups = labels if isinstance(labels, dict) else _by_class(labels.cpu().numpy())
    if len(groups) < 2:
        raise UserError("few-shot evaluation needs at least two labelled classes")
    smallest = min(len(idx) for idx in groups.values())
    if min(shots) < 1 or max(shots) > smallest:
        bad = min(shots) if min(shots) < 1 else max(shots)
        short = sum(len(idx) < bad for idx in groups.values())
        valid = "--shots 1" if smallest == 1 else f"--shots between 1 and {smallest}"
        raise UserError(
            f"{bad}-shot evaluation needs at least {plural(max(bad, 1), 'training image')} of "
            f"every class; {short} of {len(groups)} classes {'has' if short == 1 else 'have'} "
            f"fewer (the smallest has {smallest}); use "
            f"{valid}"
        )


def check_episode_sizes(
    labels: Tensor | dict, n_way: int, shots: Sequence[int], queries: int, split: str = "test"
) -> None:
    """A ``UserError`` unless ``labels`` (int64 [N], or their groups) hold ``n_way`` classes
    with at least K + ``queries`` images each, for every K of ``shots``: the classes an N-way
    K-shot episode is drawn from. Cheap: checked before any features are extracted."""
    groups = labels if isinstance(labels, dict) else _by_class(labels.cpu().numpy())
    for k in shots:
        eligible = [c for c, idx in groups.items() if len(idx) >= k + queries]
        if len(eligible) < n_way:
            raise UserError(
                f"{n_way}-way {k}-shot episodes with {queries} queries need {n_way} classes "
                f"with at least {k + queries} images each in the {split} split; "
                f"{class_counts(groups, split)}, so {len(eligible)} "
                f"{'has' if len(eligible) == 1 else 'have'} that many (lower --ways, --queries "
                "or --episode-shots)"
            )


def allway_kshot(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    shots: Sequence[int] = (5, 10),
    trials: int = 5,
    C: float = 1.0,
    seed: int = 0,
) -> dict:
    """K examples per class from the training split, a logistic probe, accuracy on the test split.

    With so few labels there is nothing to validate ``C`` on, so it is fixed (default 1.0 on
    standardized features). Every class needs at least K training images: with fewer it would
    not be a K-shot result, so that is a ``UserError`` naming the smallest class.
    """
    y = train_labels.cpu().numpy()
    groups = _by_class(y)
    num_classes = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    rng = np.random.default_rng(seed)
    out: dict = {
        "protocol": "all-way K-shot",
        "classifier": "logistic",
        "C": C,
        "trials": trials,
        "num_classes": len(groups),
        "shots": {},
    }
    check_allway_shots(groups, shots)
    for k in shots:
        accs = []
        for _ in range(trials):
            pick = np.concatenate(
                [rng.choice(idx, size=k, replace=False) for idx in groups.values()]
            )
            probe = LogisticProbe(C=C).fit(train_feats[pick], train_labels[pick], num_classes)
            accs.append(probe.accuracy(test_feats, test_labels))
        mean, ci = mean_ci95(accs)
        out["shots"][str(k)] = {"mean": mean, "ci95": ci, "trials": accs}
    return out


def _centroid_predict(support: Tensor, support_y: Tensor, query: Tensor, n_way: int) -> Tensor:
    support = F.normalize(support, dim=1)
    centroids = torch.zeros(n_way, support.shape[1], dtype=support.dtype)
    centroids.index_add_(0, support_y, support)
    centroids = F.normalize(centroids, dim=1)
    return (F.normalize(query, dim=1) @ centroids.T).argmax(dim=1)


def episodes(
    feats: Tensor,
    labels: Tensor,
    n_way: int = 5,
    shots: Sequence[int] = (1, 5),
    queries: int = 15,
    num_episodes: int = 600,
    classifier: str = "centroid",
    C: float = 1.0,
    seed: int = 0,
    split: str = "test",
    progress: bool = True,
) -> dict:
    """N-way K-shot episodes drawn from one labelled feature set (usually the test split, which
    ``split`` names in errors).

    Only classes with at least ``K + queries`` images can be drawn. ``classifier`` is
    ``"centroid"`` (cosine similarity to the mean of the L2-normalized support features) or
    ``"logistic"`` (the logistic probe with fixed ``C``, fitted per episode).
    """
    if classifier not in ("centroid", "logistic"):
        raise UserError(f"unknown few-shot classifier '{classifier}'; valid: centroid, logistic")
    feats = feats.float().cpu()
    groups = _by_class(labels.cpu().numpy())
    rng = np.random.default_rng(seed)
    out: dict = {
        "protocol": "N-way K-shot episodes",
        "n_way": n_way,
        "queries": queries,
        "episodes": num_episodes,
        "classifier": classifier,
        **({"C": C} if classifier == "logistic" else {}),  # the centroid has no C
        "shots": {},
    }
    check_episode_sizes(groups, n_way, shots, queries, split)
    for k in shots:
        eligible = [c for c, idx in groups.items() if len(idx) >= k + queries]
        accs = []
        beat = Heartbeat(f"{n_way}-way {k}-shot episodes", num_episodes, progress)
        for e in range(num_episodes):
            beat.update(e, f"episode {e + 1}/{num_episodes}")
            classes = rng.choice(eligible, size=n_way, replace=False)
            s_idx, q_idx = [], []
            for c in classes:
                idx = rng.choice(groups[int(c)], size=k + queries, replace=False)
                s_idx.append(idx[:k])
                q_idx.append(idx[k:])
            s_y = torch.arange(n_way).repeat_interleave(k)
            q_y = torch.arange(n_way).repeat_interleave(queries)
            support, query = feats[np.concatenate(s_idx)], feats[np.concatenate(q_idx)]
            if classifier == "centroid":
                pred = _centroid_predict(support, s_y, query, n_way)
                accs.append(100.0 * (pred == q_y).sum().item() / q_y.numel())
            else:
                probe = LogisticProbe(C=C).fit(support, s_y, n_way)
                accs.append(probe.accuracy(query, q_y))
        mean, ci = mean_ci95(accs)
        out["shots"][str(k)] = {"mean": mean, "ci95": ci}
    return out
