"""Data sources for training: Ray Data pipelines over the triplet store (and, for the router and
sequence tasks, routing logs and .npz/Parquet sequence files)."""

from pipeline.data.triplets import split_folds, triplet_dataset

__all__ = ["triplet_dataset", "split_folds"]
