"""Data sources for training: Ray Data pipelines over the triplet store (and, for the router and
sequence tasks, routing logs and .npz/Parquet sequence files)."""

__all__ = ["triplet_dataset", "iter_triplet_batches", "split_folds", "TripletCollate"]


def __getattr__(name: str):
    # Lazy: importing pipeline.data.sequences (Serve does) must not pull in Ray Data.
    if name in __all__:
        from pipeline.data import triplets

        return getattr(triplets, name)
    raise AttributeError(name)
