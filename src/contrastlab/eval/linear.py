"""Linear evaluation: the MoCo protocol on images, and a fast probe on cached features.

* :func:`linear_sgd` is MoCo's protocol: a linear layer trained by SGD (lr 30, momentum 0.9,
  weight decay 0, batch 256) on top of the frozen encoder, with learning-rate steps ×0.1 at 60 %
  and 80 % of the epochs and random crop + flip on the training images. lr 30 suits unnormalized
  ResNet features as MoCo uses them; it is the default, not a universal choice.
* :class:`LogisticProbe` is the fast mode: scikit-learn's multinomial logistic regression on
  standardized frozen features, its inverse regularization ``C`` chosen on a held-out part of the
  training split and then refitted on the whole split. Every other protocol reuses it.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from contrastlab.errors import UserError
from contrastlab.eval.knn import check_class_labels, topk_accuracy
from contrastlab.eval.progress import Heartbeat
from contrastlab.workers import usable_workers

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


# Below this many feature values (samples x dimensions) one BLAS thread is fastest.
_SMALL_PROBLEM = 4_000_000


def _blas_threads(x: np.ndarray):
    """One BLAS thread for small problems, torch's thread budget for large ones.

    lbfgs makes hundreds of small matrix products per fit; with more than one OpenBLAS thread each
    pays the threads' start-up and spin cost, which made small fits several times slower on an
    idle 2-core machine and far slower on a busy one.
    """
    from threadpoolctl import threadpool_limits

    threads = 1 if x.size < _SMALL_PROBLEM else torch.get_num_threads()
    return threadpool_limits(limits=threads, user_api="blas")


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


# The smallest feature spread the probe divides by, as a fraction of the median spread.
SCALE_FLOOR = 1e-2


class LogisticProbe:
    """Multinomial logistic regression on standardized features, ``C`` picked on a validation split.

    ``scores(feats)`` returns ``[N, num_classes]`` class scores (the logits, which rank classes as
    the log-probabilities do), with ``-inf`` for classes that never occur in the training labels,
    so top-k accuracies stay comparable.
    """

    def __init__(
        self,
        C: float | None = None,
        Cs: Sequence[float] = DEFAULT_CS,
        val_fraction: float = 0.2,
        max_iter: int = 1000,
        seed: int = 0,
    ):
        self.C, self.Cs, self.val_fraction = C, tuple(Cs), val_fraction
        self.max_iter, self.seed = max_iter, seed
        self.val_scores: dict[float, float] = {}

    def _model(self, C: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.max_iter, tol=1e-4)

    def _fit(self, C: float, x: np.ndarray, y: np.ndarray):
        return self._fit_model(self._model(C), x, y)

    @staticmethod
    def _fit_model(clf, x: np.ndarray, y: np.ndarray):
        with warnings.catch_warnings(), _blas_threads(x):
            warnings.simplefilter("ignore")  # lbfgs may stop at max_iter; the probe is still usable
            clf.fit(x, y)
        return clf

    def fit(
        self,
        feats: Tensor | np.ndarray,
        labels: Tensor | np.ndarray,
        num_classes: int | None = None,
    ) -> "LogisticProbe":
        from sklearn.preprocessing import StandardScaler

        x = _numpy(feats).astype(np.float64)
        y = _numpy(labels).astype(np.int64)
        check_class_labels(y, num_classes, "the training labels of a linear probe")
        if len(np.unique(y)) < 2:
            raise UserError("a linear probe needs at least two classes in the training labels")
        self.num_classes = int(num_classes if num_classes is not None else y.max() + 1)
        self.scaler = StandardScaler().fit(x)
        # A unit that is (nearly) constant on the training images, as ReLU units of a backbone can
        # be, would be divided by its tiny spread: where it varies on test images its standardized
        # value dwarfs every other feature and decides the prediction alone. Floor each spread at
        # a fraction of the typical one, so such units stay on the scale of the others.
        typical = float(np.median(self.scaler.scale_))
        self.scaler.scale_ = np.maximum(self.scaler.scale_, SCALE_FLOOR * typical)
        x = self.scaler.transform(x)
        if self.C is None:
            self.C = self._select_C(x, y)
        self.clf = self._fit(self.C, x, y)
        return self

    def _select_C(self, x: np.ndarray, y: np.ndarray) -> float:
        from sklearn.model_selection import train_test_split

        if len(self.Cs) == 1:
            return float(self.Cs[0])
        counts = np.bincount(y)
        stratify = y if counts[counts > 0].min() >= 2 else None
        min_val = len(np.unique(y)) if stratify is not None else 1  # one per class to stratify
        n_val = max(int(round(self.val_fraction * len(y))), min_val)
        if n_val >= len(y) - 1:
            return float(
                self.Cs[len(self.Cs) // 2]
            )  # too few samples to validate: middle of the grid
        x_tr, x_val, y_tr, y_val = train_test_split(
            x, y, test_size=n_val, random_state=self.seed, stratify=stratify
        )
        if len(np.unique(y_tr)) < 2:
            return float(self.Cs[len(self.Cs) // 2])
        # Along the grid from strong to weak regularization, each fit starts from the previous
        # solution (the problems are convex, so the optimum is the same): the weakly regularized
        # fits, which take lbfgs hundreds of iterations from zero, then need few.
        clf = self._model(min(self.Cs))
        clf.warm_start = True
        for C in sorted(self.Cs):
            clf.set_params(C=C)
            self._fit_model(clf, x_tr, y_tr)
            self.val_scores[float(C)] = 100.0 * float(clf.score(x_val, y_val))
        best = max(self.val_scores.values())
        # ties: the strongest regularization (smallest C) that reaches the best score
        return min(C for C, s in self.val_scores.items() if s == best)

    def scores(self, feats: Tensor | np.ndarray) -> Tensor:
        x = self.scaler.transform(_numpy(feats).astype(np.float64))
        # The logits, not predict_log_proba: on well-separated features the probabilities of the
        # other classes underflow to 0, their logs are -inf (with a "divide by zero" warning per
        # call), and top-k then ranks those classes by chance.
        with _blas_threads(x):
            logits = self.clf.decision_function(x)
        if logits.ndim == 1:  # two classes: sklearn gives log p1 - log p0
            logits = np.stack([-logits / 2, logits / 2], axis=1)
        out = np.full((x.shape[0], self.num_classes), -np.inf)
        out[:, self.clf.classes_] = logits
        return torch.from_numpy(out)

    def accuracy(
        self, feats: Tensor | np.ndarray, labels: Tensor | np.ndarray, topk: int = 1
    ) -> float:
        return topk_accuracy(self.scores(feats), torch.as_tensor(_numpy(labels)).long(), topk)


def linear_fast(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    C: float | None = None,
    Cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict:
    """Fit the fast probe on train features, report top-1/top-5 (percent) on test features."""
    probe = LogisticProbe(C=C, Cs=Cs, val_fraction=val_fraction, seed=seed)
    probe.fit(train_feats, train_labels, num_classes)
    return {
        "mode": "fast",
        "top1": probe.accuracy(test_feats, test_labels, 1),
        "top5": probe.accuracy(test_feats, test_labels, 5),
        "C": probe.C,
        "val_top1_by_C": {str(k): v for k, v in probe.val_scores.items()},
        "num_train": int(len(train_labels)),
        "num_test": int(len(test_labels)),
        "feature_dim": int(train_feats.shape[1]),
    }


def linear_sgd(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    num_classes: int,
    space: str = "backbone",
    epochs: int = 100,
    lr: float = 30.0,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    milestones: Sequence[float] = (0.6, 0.8),
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """MoCo's linear protocol: the encoder stays frozen (eval mode, no gradients), only a
    ``nn.Linear`` on its features is trained. ``train_set`` should carry the crop/flip transform."""
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    gen = torch.Generator().manual_seed(seed)
    model.eval().to(device)
    num_workers = usable_workers(num_workers)
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        drop_last=False,
        num_workers=num_workers,
        generator=gen,
    )
    test_loader = DataLoader(
        test_set, batch_size=batch_size, shuffle=False, num_workers=num_workers
    )

    head: nn.Linear | None = None
    optimizer = scheduler = None
    steps = sorted({max(1, math.floor(m * epochs)) for m in milestones if 0 < m < 1})
    history = []
    beat = Heartbeat("linear probe (SGD)", epochs * len(train_loader), progress)
    for epoch in tqdm(
        range(epochs), desc="linear", disable=None if progress else True, leave=False
    ):
        total, seen = 0.0, 0
        for batch, (images, labels) in enumerate(train_loader, 1):
            beat.update(
                epoch * len(train_loader) + batch - 1,
                f"epoch {epoch + 1}/{epochs}, batch {batch}/{len(train_loader)}",
            )
            with torch.no_grad():
                feats = model.features(images.to(device), space=space).float().flatten(1)
            if head is None:  # the feature dimension is known only now
                torch.manual_seed(seed)
                head = nn.Linear(feats.shape[1], num_classes).to(device)
                head.weight.data.normal_(0.0, 0.01)  # MoCo's initialization of the classifier
                head.bias.data.zero_()
                optimizer = torch.optim.SGD(
                    head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
                )
                scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=0.1)
            labels = torch.as_tensor(labels).long()
            check_class_labels(labels, num_classes, "the training labels of a linear probe")
            loss = nn.functional.cross_entropy(head(feats), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * feats.shape[0]
            seen += feats.shape[0]
        if head is None:
            raise UserError("the training split is empty")
        if not math.isfinite(total):
            raise UserError(
                f"the linear classifier diverged at epoch {epoch + 1} (loss is not "
                f"finite); lower --lr (now {lr})"
            )
        scheduler.step()
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total / max(seen, 1),
                "lr": optimizer.param_groups[0]["lr"],
            }
        )

    head.eval()
    scores, targets = [], []
    with torch.no_grad():
        for images, labels in test_loader:
            feats = model.features(images.to(device), space=space).float().flatten(1)
            scores.append(head(feats).cpu())
            targets.append(torch.as_tensor(labels).long())
    scores_t, targets_t = torch.cat(scores), torch.cat(targets)
    return {
        "mode": "moco",  # MoCo's SGD protocol, as --mode names it
        "top1": topk_accuracy(scores_t, targets_t, 1),
        "top5": topk_accuracy(scores_t, targets_t, 5),
        "epochs": epochs,
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "milestones": steps,
        "final_loss": history[-1]["loss"],
        "history": history,
        "num_train": len(train_set),
        "num_test": len(test_set),
    }
