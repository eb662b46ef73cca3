"""Images in, views out: datasets by name, the synthetic dataset, and the MoCo view transforms."""

from contrastlab.data.augment import MultiView, build_eval_transform, build_train_transform
from contrastlab.data.datasets import build_dataset, dataset_stats
from contrastlab.data.synthetic import FACTOR_CLASSES, SyntheticData, make_synthetic

__all__ = [
    "FACTOR_CLASSES",
    "MultiView",
    "SyntheticData",
    "build_dataset",
    "build_eval_transform",
    "build_train_transform",
    "dataset_stats",
    "make_synthetic",
]
