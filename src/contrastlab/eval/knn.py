"""Weighted k-nearest-neighbour classification, as in the official MoCo CIFAR-10 demo.

Features are L2-normalized, similarity is the cosine, each of the ``k`` nearest training samples
votes for its class with weight ``exp(sim / temperature)`` and the class with the largest summed
weight wins. The trainer calls :func:`knn_accuracy` as its monitor, so it works on whatever device
the features live on and bounds memory by processing the test queries in chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastlab.errors import plural


def check_class_labels(labels, num_classes: int | None, what: str) -> None:
    """Raise ``ValueError`` unless every label is a class index in ``[0, num_classes)``.

    Unlabelled images carry label -1 (STL-10's unlabelled split, flat image folders); they must be
    left out before a kNN bank, a probe or a metric is built (``labelled_indices`` in the trainer,
    ``EvalContext.indices`` in evaluation), never counted as a class or as a miss.
    """
    labels = torch.as_tensor(labels)
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bad = low if low < 0 else high
        valid = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise ValueError(
            f"{what} holds label {bad}, not a class index {valid}; leave unlabelled images "
            "(label -1) out before computing it"
        )


def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 512,
) -> Tensor:
    """Summed neighbour weights per class, ``[N_test, num_classes]`` (in the features' dtype)."""
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one training sample")
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be positive, got {temperature}")
    check_class_labels(train_labels, num_classes, "the kNN bank")
    k = max(1, min(int(k), train_feats.shape[0]))
    device = test_feats.device
    train = F.normalize(train_feats.to(device), dim=1)
    labels = train_labels.to(device).long()
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        query = F.normalize(test_feats[start : start + chunk], dim=1).to(train.dtype)
        sim = query @ train.T  # [c, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)  # sorted, largest first
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(query.shape[0], num_classes, dtype=weights.dtype, device=device)
        scores.scatter_add_(1, labels[top_idx], weights)
        out.append(scores)
    if not out:
        return torch.zeros(0, num_classes, dtype=train.dtype, device=device)
    return torch.cat(out)


@torch.no_grad()
def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 512,
) -> Tensor:
    """Predicted class of every test sample, ``LongTensor[N_test]`` on the test features' device."""
    scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature, chunk)
    return scores.argmax(dim=1)


@torch.no_grad()
def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 512,
    topk: int = 1,
) -> float:
    """Top-``topk`` accuracy in percent (top-1 by default, as the MoCo monitor reports)."""
    if test_feats.shape[0] == 0:
        return float("nan")
    scores = knn_scores(train_feats, train_labels, test_feats, num_classes, k, temperature, chunk)
    return topk_accuracy(scores, test_labels.to(scores.device), topk)


def k_covers_bank(k: int, bank: int, name: str = "k", what: str = "the kNN bank") -> str | None:
    """The warning (one line) for a ``k`` that reaches every image of the bank, None otherwise:
    every bank image then votes and the vote is the bank's class prior weighted by similarity,
    not a nearest-neighbour vote. ``name`` spells k as the command takes it."""
    if bank < 1 or k < bank:
        return None
    return (
        f"{name}={k} is at least the {plural(bank, 'image')} of {what}: every one of them "
        f"votes, so the vote is the bank's class prior weighted by similarity; set {name} "
        f"below {bank} for a nearest-neighbour vote"
    )


def trivial_top5(num_classes: int) -> bool:
    """Whether top-5 accuracy says nothing: with 5 classes or fewer it is 100% by construction.
    Protocols that report top-5 (knn, linear, transfer's linear probe) leave it out then."""
    return num_classes <= 5


def without_trivial_top5(res: dict, num_classes: int) -> dict:
    """``res`` without its ``top5`` where ``trivial_top5(num_classes)``."""
    if trivial_top5(num_classes):
        res.pop("top5", None)
    return res


def topk_accuracy(scores: Tensor, labels: Tensor, topk: int = 1) -> float:
    """Percentage of rows whose true label is among the ``topk`` highest scores."""
    check_class_labels(labels, scores.shape[1], "the labels of an accuracy")
    topk = min(topk, scores.shape[1])
    top = scores.topk(topk, dim=1).indices
    hit = (top == labels.view(-1, 1).long()).any(dim=1)
    return 100.0 * hit.sum().item() / hit.numel()  # exact: 11 of 100 is 11.0, not 10.99999994
