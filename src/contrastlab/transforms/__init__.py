"""Transformations of embeddings between the encoders and the loss."""

from contrastlab.transforms.feature import FTOutput, feature_transform, transform_features

__all__ = ["FTOutput", "feature_transform", "transform_features"]
