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
