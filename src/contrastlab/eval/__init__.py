"""Evaluation of frozen features: kNN, linear, few-shot, rotation, corruption, factors, transfer.

The protocol functions work on feature tensors (see each module); :mod:`.context` and
:mod:`.protocols` connect them to checkpoints and datasets, :mod:`.commands` to the command line.
"""

from contrastlab.eval.features import extract_features
from contrastlab.eval.knn import knn_accuracy, knn_predict

__all__ = ["extract_features", "knn_accuracy", "knn_predict"]
