"""DataLoader workers: never more than the CPUs this process may use, said in one line."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.utils.data import TensorDataset

from contrastlab import workers
from contrastlab.eval.features import extract_features


class _Flat(nn.Module):
    feature_spaces = ("backbone",)

    def features(self, x, space):
        return x.flatten(1)


def test_more_workers_than_cpus_are_capped_with_one_line_of_ours(monkeypatch, capsys):
    """`train ... data.num_workers=4` on 2 CPUs printed torch's multi-line UserWarning from the
    kNN monitor's DataLoader."""
    monkeypatch.setattr(workers, "available_cpus", lambda: 1)
    monkeypatch.setattr(workers, "_said", set())
    data = TensorDataset(torch.randn(4, 3, 2, 2), torch.arange(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            feats, _ = extract_features(_Flat(), data, "backbone", 2, "cpu", 8, progress=False)
            assert feats.shape == (4, 12)
    assert not [w for w in caught if "worker" in str(w.message)], [str(w.message) for w in caught]
    err = capsys.readouterr().err
    assert err.count("warning: 8 DataLoader workers asked for") == 1, err
    assert "may use 1 CPU: starting 1" in err


def test_the_training_loader_is_capped_too(tiny_config, monkeypatch, capsys):
    from contrastlab.data.datasets import build_dataset
    from contrastlab.views.pipeline import build_training_views

    monkeypatch.setattr(workers, "available_cpus", lambda: 1)
    monkeypatch.setattr(workers, "_said", set())
    cfg = tiny_config("data.views=per_image", "data.num_workers=3")
    views = build_training_views(cfg, build_dataset(cfg.data, "train"), 2, 2, "cpu", False)
    assert views.loader.num_workers == 1
    assert "3 DataLoader workers asked for" in capsys.readouterr().err
