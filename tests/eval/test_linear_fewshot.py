import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from contrastlab.eval.fewshot import allway_kshot, episodes, mean_ci95
from contrastlab.eval.linear import LogisticProbe, linear_fast, linear_sgd


def test_linear_fast_separable_and_random(blobs):
    f, y = blobs(80, 4, 16, sep=5.0)
    res = linear_fast(f[:240], y[:240], f[240:], y[240:], 4, Cs=(0.01, 1.0))
    assert res["top1"] > 98.0 and res["top5"] == 100.0
    by_c = res["val_top1_by_C"]
    assert set(by_c) == {"0.01", "1.0"}
    assert res["C"] == min(float(c) for c, v in by_c.items() if v == max(by_c.values()))
    f, y = blobs(200, 4, 8, sep=0.0, seed=3)
    res = linear_fast(f[:400], y[:400], f[400:], y[400:], 4, C=1.0)
    assert 15.0 < res["top1"] < 35.0


def test_probe_scores_cover_classes_missing_from_training(blobs):
    f, y = blobs(20, 3, 4, sep=5.0)
    probe = LogisticProbe(C=1.0).fit(f, y, num_classes=5)
    s = probe.scores(f)
    assert s.shape == (60, 5) and torch.isinf(s[:, 3:]).all()


def _with_a_unit_dead_in_training(f: torch.Tensor, seed: int) -> tuple:
    """Training features whose first unit is nearly constant (spread 1e-6), and test features
    where that unit varies as much as the others: a ReLU unit that rarely fires on the training
    images but does on the test images."""
    gen = torch.Generator().manual_seed(seed)
    train, test = f.clone(), f.clone()
    train[:, 0] = 1e-6 * torch.randn(len(f), generator=gen)
    test[:, 0] = 3.0 * torch.randn(len(f), generator=gen)
    return train, test


def test_a_unit_dead_in_training_does_not_decide_the_test_predictions(blobs):
    """The probe's accuracy with such a unit stays that of the probe without it (old: the unit,
    divided by its 1e-6 spread, decided every prediction: about chance)."""
    f, y = blobs(60, 4, 8, sep=3.0)
    train, test = _with_a_unit_dead_in_training(f, seed=1)
    without = LogisticProbe(C=1.0).fit(f[:, 1:], y).accuracy(f[:, 1:], y)
    assert without > 90.0
    assert LogisticProbe(C=1.0).fit(train, y).accuracy(test, y) >= without - 5.0


@pytest.mark.parametrize("num_classes", [2, 6])
def test_probe_scores_stay_finite_and_rank_as_the_probabilities(blobs, num_classes):
    """Where the other classes' probabilities underflow to 0, scores stay finite (no log(0)
    warnings, no ties at -inf), the top-1 class is the classifier's prediction, and the runner-up
    is the second most probable class, as a float64 softmax ranks it."""
    import warnings

    f, y = blobs(30, num_classes, 8, sep=3.0)
    probe = LogisticProbe(C=1.0).fit(f, y, num_classes=num_classes)
    far = f * 1e4  # far outside the training range: probabilities of 1 and 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = probe.scores(far)
    assert torch.isfinite(s).all()
    x = probe.scaler.transform(far.double().numpy())
    assert (s.argmax(1).numpy() == probe.clf.predict(x)).all()
    logits = probe.clf.decision_function(x)
    if logits.ndim == 1:
        logits = np.stack([np.zeros_like(logits), logits], axis=1)
    second = np.argsort(-logits, axis=1, kind="stable")[:, 1]  # softmax keeps the logits' order
    assert (s.topk(2, dim=1).indices[:, 1].numpy() == second).all()


class Linear(torch.nn.Module):
    feature_spaces = ("backbone",)

    def features(self, x, space="backbone"):
        return x  # "images" are already feature vectors


def test_linear_sgd_moco_protocol_learns_and_steps_lr(blobs):
    f, y = blobs(64, 3, 10, sep=4.0)
    model = Linear()
    res = linear_sgd(
        model,
        TensorDataset(f[:150], y[:150]),
        TensorDataset(f[150:], y[150:]),
        3,
        epochs=10,
        lr=0.5,
        batch_size=32,
        progress=False,
    )
    assert res["top1"] > 95.0
    assert res["milestones"] == [6, 8]
    lrs = [h["lr"] for h in res["history"]]
    assert (
        lrs[0] == pytest.approx(0.5)
        and lrs[6] == pytest.approx(0.05)
        and lrs[8] == pytest.approx(0.005)
    )


def test_mean_ci95_matches_student_t(blobs):
    values = [70.0, 72.0, 68.0, 71.0, 69.0]
    mean, half = mean_ci95(values)
    s = np.std(values, ddof=1)
    assert mean == pytest.approx(70.0)
    assert half == pytest.approx(2.7764451 * s / math.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert math.isnan(mean_ci95([3.0])[1])
    # many episodes: the t interval tends to 1.96 s / sqrt(n)
    x = np.random.default_rng(0).normal(size=600)
    assert mean_ci95(x)[1] == pytest.approx(1.9640 * x.std(ddof=1) / math.sqrt(600), rel=1e-3)


def test_allway_kshot_separable_vs_random(blobs):
    f, y = blobs(40, 6, 16, sep=6.0)
    res = allway_kshot(f[:150], y[:150], f[150:], y[150:], shots=(5,), trials=3)
    r = res["shots"]["5"]
    assert r["mean"] > 95.0 and len(r["trials"]) == 3
    assert (r["mean"], r["ci95"]) == pytest.approx(mean_ci95(r["trials"]), nan_ok=True)
    f, y = blobs(100, 4, 16, sep=0.0, seed=2)
    r = allway_kshot(f[:100], y[:100], f[100:], y[100:], shots=(5,), trials=5)["shots"]["5"]
    assert 15.0 < r["mean"] < 35.0


@pytest.mark.parametrize("classifier", ["centroid", "logistic"])
def test_episodes(classifier, blobs):
    f, y = blobs(30, 8, 16, sep=6.0)
    n = 10 if classifier == "logistic" else 200
    res = episodes(f, y, n_way=5, shots=(1, 5), queries=10, num_episodes=n, classifier=classifier)
    assert res["shots"]["5"]["mean"] > 95.0
    if classifier == "logistic":
        return  # fitting is slow; chance level is checked with the centroid classifier
    f, y = blobs(30, 8, 16, sep=0.0, seed=4)
    res = episodes(f, y, n_way=5, shots=(5,), queries=10, num_episodes=n, classifier=classifier)
    mean, ci = res["shots"]["5"]["mean"], res["shots"]["5"]["ci95"]
    assert 14.0 < mean < 26.0 and 0 < ci < 5  # chance is 20 %


def test_episodes_need_enough_classes(blobs):
    from contrastlab.errors import UserError

    f, y = blobs(10, 3, 4, sep=1.0)
    with pytest.raises(UserError, match="need 5 classes"):
        episodes(f, y, n_way=5, shots=(1,), queries=5, num_episodes=2)
