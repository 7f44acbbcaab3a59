"""The triplet store: a versioned Parquet dataset of (concept, unit, value) facts plus a pairs table."""

from pipeline.store.layout import StoreError, TripletStore
from pipeline.store.scaler import PairScaler, fit_scaler

__all__ = ["TripletStore", "StoreError", "PairScaler", "fit_scaler"]
