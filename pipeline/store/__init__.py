"""The triplet store: a versioned Parquet dataset of (concept, unit, value) facts plus a pairs table,
and its versioned feature space (how a pair's text becomes the vector a model is fed)."""

from pipeline.store.errors import EmbedderUnavailable, StoreError
from pipeline.store.features import FeatureSpace
from pipeline.store.layout import TripletStore
from pipeline.store.scaler import PairScaler, fit_scaler

__all__ = ["TripletStore", "StoreError", "EmbedderUnavailable", "FeatureSpace", "PairScaler", "fit_scaler"]
