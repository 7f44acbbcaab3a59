"""The autoencoder's own feature transform: what turns a (concept, unit, value) into its input row.

A model learns on `[embedding of the (concept, unit) pair ‖ value scaled by the pair's scaler]`.
Both halves come from the triplet store at training time, and the store moves on (new pairs, a
`tunestack store refit`), so the model keeps its own copy, saved in every checkpoint:

  - the store's feature space: the embedder that was used (name, raw width) and the projection of
    its output to the model's embedding width (pipeline.store.features.FeatureSpace);
  - for every pair seen in training: its key (concept, unit), the store pair id it had, its
    embedding and its scaler (the knots, as plain numbers);
  - a fallback scaler per unit (and one over every unit), for pairs the model never saw: fitted at
    training time on a pseudo-sample drawn from the unit's pair scalers, as many points per pair as
    it had rows (up to pipeline.data.packed_scalers.FALLBACK_POINTS);
  - the entities (companies) the training store held;
  - the per-pair reconstruction-error baseline (count, mean, std of the model's error over its
    training rows), added once at the end of training (pipeline.train.baseline).

Files: the arrays in `features.safetensors` inside the checkpoint folder, the rest in
`checkpoint.json` under "features" (see pipeline.train.checkpoint).

`StoreView` applies a transform to one store version: arrays indexed by that store's pair id
(pair ids are stable forever), so a batch of store rows becomes model input with one gather. A pair
the model knows keeps the model's embedding and scaler, whatever the store holds for it now; a pair
it does not know is embedded from its text with the recorded embedder through the model's
projection and scaled with its unit's fallback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline.data.error_baseline import MIN_PAIR_ROWS, ErrorBaseline
from pipeline.data.packed_scalers import (
    GLOBAL_FALLBACK,
    PackedScalers,
    bound_values,
    concat_scalers,
    fit_fallbacks,
    store_scalers,
)
from pipeline.errors import UserError

FORMAT = "tunestack-features-v1"
FEATURES_FILE = "features.safetensors"
FEATURES_JSON = "features.json"  # beside FEATURES_FILE in a run folder (in a checkpoint: checkpoint.json)


class FeatureError(UserError, ValueError):
    """A transform that cannot be built, read or applied as asked."""


# ---------------------------------------------------------------------------------------------
# The transform


@dataclass(frozen=True, eq=False)
class FeatureTransform:
    space: object  # pipeline.store.features.FeatureSpace: embedder + projection
    keys: list[tuple[str, str]]  # (concept, unit) of model pair row k
    store_ids: np.ndarray  # int64 [K]: the store pair id of row k when the model was trained
    embeddings: np.ndarray  # float32 [K, embed_dim]
    scalers: PackedScalers  # [K] the pairs' scalers, then one per `fallback_units`
    fallback_units: list[str]  # unit of scaler K + i (the last: GLOBAL_FALLBACK)
    entities: list[str]  # entity ids of the training store
    source: dict  # {"uri", "version", "feature_version"} of the store it was built from
    baseline: ErrorBaseline | None = None

    def __post_init__(self):
        object.__setattr__(self, "_index", {k: i for i, k in enumerate(self.keys)})

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def from_store(cls, store) -> FeatureTransform:
        """The transform of a TripletStore's live version: its feature space, and every pair of
        its pairs table (key, store id, embedding, scaler), plus the unit fallbacks."""
        manifest = store.require()
        pairs = store.read_pairs()
        space = store.feature_space()
        cols = pairs.select(["concept", "unit", "count"]).to_pydict()
        ids, pair_scalers = store_scalers(pairs)
        units, fallbacks = fit_fallbacks(cols["unit"], pair_scalers, np.asarray(cols["count"], np.int64))
        return cls(
            space=space,
            keys=list(zip(cols["concept"], cols["unit"])),
            store_ids=ids,
            embeddings=store_embeddings(pairs),
            scalers=concat_scalers(pair_scalers, fallbacks),
            fallback_units=units,
            entities=_store_entities(store),
            source={"uri": store.uri, "version": manifest["version"], "feature_version": space.version},
        )

    def extend(self, store) -> FeatureTransform:
        """This transform (a parent model's, for fine-tuning) over a store's live version: pairs
        it knows keep their embedding and scaler (under the store's id for them; -1 when the store
        lacks them); pairs it does not know are added, embedded from their text with the recorded
        embedder through this projection, with the store's scaler. No error baseline (the new
        model's is fitted when it has trained)."""
        from pipeline.store.embed import pair_text

        manifest = store.require()
        pairs = store.read_pairs()
        cols = pairs.select(["concept", "unit", "label", "description"]).to_pydict()
        ids, scalers = store_scalers(pairs)
        by_key = {k: int(i) for k, i in zip(zip(cols["concept"], cols["unit"]), ids)}
        new = [i for i, k in enumerate(zip(cols["concept"], cols["unit"])) if k not in self._index]
        texts = [
            pair_text(cols["concept"][i], cols["unit"][i], cols["label"][i], cols["description"][i])
            for i in new
        ]
        new_emb = self.embed_texts(texts) if new else np.zeros((0, self.embed_dim), np.float32)
        k = len(self.keys)
        fallbacks = self.scalers.take(np.arange(k, len(self.scalers)))
        return FeatureTransform(
            space=self.space,
            keys=self.keys + [(cols["concept"][i], cols["unit"][i]) for i in new],
            store_ids=np.concatenate([[by_key.get(key, -1) for key in self.keys], ids[new]]).astype(np.int64),
            embeddings=np.concatenate([self.embeddings, new_emb]).astype(np.float32),
            scalers=concat_scalers(
                concat_scalers(self.scalers.take(np.arange(k)), scalers.take(np.asarray(new, np.int64))),
                fallbacks,
            ),
            fallback_units=list(self.fallback_units),
            entities=sorted(set(self.entities) | set(_store_entities(store))),
            source={"uri": store.uri, "version": manifest["version"], "feature_version": self.space.version},
        )

    def store_scaling_matches(self, store) -> bool:
        """Whether the store's `scaled_value` column is what this transform computes for every
        pair of the store it knows (then training may read it instead of scaling raw values)."""
        ids, scalers = store_scalers(store.read_pairs())
        return self.view().scalers_match(scalers, ids)

    def with_baseline(self, baseline: ErrorBaseline) -> FeatureTransform:
        if len(baseline.count) != len(self.keys):
            raise FeatureError(f"baseline has {len(baseline.count)} pairs, the transform {len(self.keys)}")
        return dataclasses.replace(self, baseline=baseline)

    # -- looking up -----------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.keys)

    def row_of(self, concept: str, unit: str) -> int:
        """The model pair row of (concept, unit), or -1 when the model never saw it."""
        return self._index.get((concept, unit), -1)

    def fallback_of(self, unit: str) -> tuple[int, str]:
        """(scaler row, name) of the fallback for a unit: "unit:USD", or "global" for a unit the
        training store never held."""
        k = len(self.keys)
        if unit != GLOBAL_FALLBACK and unit in self.fallback_units:
            return k + self.fallback_units.index(unit), f"unit:{unit}"
        return k + len(self.fallback_units) - 1, "global"

    def scale(self, scaler_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """float64: raw values scaled with scalers `scaler_rows` (pair rows or fallbacks), bounded
        to ±VALUE_BOUND — the value column the model is fed."""
        return bound_values(self.scalers.transform(scaler_rows, values))

    def embed_unseen(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        """float32 [n, embed_dim]: (concept, unit) pairs the model never saw, embedded from the text
        a request carries — the concept and unit, no label — with the recorded embedder through the
        model's projection. One definition for /v1/encode, `score` and `evaluate`, so an unseen
        pair gets the same input everywhere (EmbedderUnavailable when the embedder is missing)."""
        from pipeline.store.embed import pair_text

        if not pairs:
            return np.zeros((0, self.embed_dim), np.float32)
        return self.embed_texts([pair_text(c, u, None, None) for c, u in pairs])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """float32 [n, embed_dim]: texts embedded with the recorded embedder through the model's
        projection (EmbedderUnavailable when that embedder is not installed here)."""
        return np.asarray(self.space.embed(texts), dtype=np.float32)

    # -- applying to a store ---------------------------------------------------------------------
    def view(self, pairs=None) -> StoreView:
        """This transform over a store's pair ids. `pairs`: a store's pairs table (pyarrow; columns
        pair_id, concept, unit) — pairs the model does not know are embedded with `embed_unseen`,
        exactly as /v1/encode embeds them. None: the pairs the model was trained on, under their
        training-time ids (no store read)."""
        if pairs is None:
            rows = np.flatnonzero(self.store_ids >= 0).astype(np.int64)
            return StoreView.build(self, self.store_ids[rows], rows, {}, [])
        cols = pairs.select(["pair_id", "concept", "unit"]).to_pydict()
        ids = np.asarray(cols["pair_id"], np.int64)
        rows = np.asarray([self.row_of(c, u) for c, u in zip(cols["concept"], cols["unit"])], np.int64)
        unknown = np.flatnonzero(rows < 0)
        new_emb = self.embed_unseen([(cols["concept"][i], cols["unit"][i]) for i in unknown])
        units = [cols["unit"][i] for i in unknown]
        return StoreView.build(self, ids, rows, dict(zip(ids[unknown].tolist(), new_emb)), units)

    # -- persistence -----------------------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        out = {
            **{f"space.{k}": np.ascontiguousarray(v) for k, v in self.space.tensors().items()},
            "pairs.store_id": self.store_ids.astype(np.int64),
            "pairs.embedding": np.ascontiguousarray(self.embeddings, np.float32),
            **self.scalers.tensors("scalers"),
        }
        if self.baseline is not None:
            b = self.baseline
            out.update(
                {
                    "baseline.count": b.count,
                    "baseline.mean": b.mean,
                    "baseline.std": b.std,
                    "baseline.overall": b.overall,
                }
            )
        return out

    def meta(self) -> dict:
        return {
            "format": FORMAT,
            "space": self.space.meta(),
            "pairs": [list(k) for k in self.keys],
            "fallback_units": list(self.fallback_units),
            "entities": list(self.entities),
            "source": dict(self.source),
            "min_pair_rows": MIN_PAIR_ROWS,
        }

    @classmethod
    def from_parts(cls, tensors: dict, meta: dict) -> FeatureTransform:
        from pipeline.store.features import FeatureSpace

        if meta.get("format") != FORMAT:
            raise FeatureError(f"feature transform format {meta.get('format')!r}, expected {FORMAT!r}")
        space = FeatureSpace.from_parts(
            {k[len("space.") :]: v for k, v in tensors.items() if k.startswith("space.")}, meta["space"]
        )
        baseline = None
        if "baseline.count" in tensors:
            baseline = ErrorBaseline(
                *(np.asarray(tensors[f"baseline.{k}"]) for k in ("count", "mean", "std", "overall"))
            )
        return cls(
            space=space,
            keys=[tuple(k) for k in meta["pairs"]],
            store_ids=np.asarray(tensors["pairs.store_id"], np.int64),
            embeddings=np.asarray(tensors["pairs.embedding"], np.float32),
            scalers=PackedScalers.from_tensors(tensors, "scalers"),
            fallback_units=list(meta["fallback_units"]),
            entities=list(meta["entities"]),
            source=dict(meta["source"]),
            baseline=baseline,
        )

    def save(self, directory: str) -> None:
        """features.safetensors + features.json in `directory` (a run folder, local or at a storage
        URI: what the run's workers load), each written atomically."""
        import json

        from safetensors.numpy import save

        from pipeline.storage import resolve

        loc = resolve(directory)
        loc.write_bytes_atomic(FEATURES_FILE, save(self.tensors()))
        loc.write_bytes_atomic(FEATURES_JSON, json.dumps(self.meta()).encode())

    @classmethod
    def load(cls, directory: str) -> FeatureTransform:
        """The transform `save` wrote in `directory`."""
        import json

        from safetensors.numpy import load

        from pipeline.storage import resolve

        loc = resolve(directory)
        return cls.from_parts(load(loc.read_bytes(FEATURES_FILE)), json.loads(loc.read_bytes(FEATURES_JSON)))

    @classmethod
    def load_if_saved(cls, directory: str) -> FeatureTransform | None:
        """`load`, or None when nothing was saved in `directory`."""
        from pipeline.storage import resolve

        return cls.load(directory) if resolve(directory).exists(FEATURES_JSON) else None


def store_embeddings(pairs) -> np.ndarray:
    """float32 [n, dim]: the embedding column of a store's pairs table, in row order."""
    emb = np.asarray(pairs.column("embedding").combine_chunks().flatten().to_numpy(), np.float32)
    return np.ascontiguousarray(emb.reshape(pairs.num_rows, -1))


def _store_entities(store) -> list[str]:
    """Every entity id of the store's live version (one column read per file)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    seen: set[str] = set()
    for path in store.triplet_files():
        col = pq.read_table(path, columns=["entity_id"], filesystem=store.loc.fs).column("entity_id")
        seen.update(pc.unique(col).to_pylist())
    return sorted(seen)


# ---------------------------------------------------------------------------------------------
# A transform over one store's pair ids


@dataclass(frozen=True, eq=False)
class ValueScaler:
    """Raw values of store pair ids → the model's scaled values: `scaler(pair_id, values)`."""

    scaler_rows: np.ndarray  # int64 [P]: store pair id → row of `scalers`
    scalers: PackedScalers

    def __call__(self, pair_id: np.ndarray, values: np.ndarray) -> np.ndarray:
        return bound_values(self.scalers.transform(self.scaler_rows[pair_id], values))


@dataclass(frozen=True, eq=False)
class StoreView:
    """A FeatureTransform applied to store pair ids 0..P-1 (ids the store does not hold: unused rows).

    rows[p]: the model pair row (-1: the model does not know pair p); embeddings[p]: its input
    embedding; scaler_rows[p]: the row of `transform.scalers` that scales its values (own or
    fallback); fallback[p]: the fallback's name ("" for a known pair)."""

    transform: FeatureTransform
    rows: np.ndarray  # int64 [P]
    embeddings: np.ndarray  # float32 [P, embed_dim]
    scaler_rows: np.ndarray  # int64 [P]
    fallback: list[str]  # [P]

    @classmethod
    def build(
        cls,
        transform: FeatureTransform,
        ids: np.ndarray,
        rows: np.ndarray,
        new_emb: dict,
        new_units: list[str],
    ):
        size = int(ids.max()) + 1 if len(ids) else 0
        all_rows = np.full(size, -1, np.int64)
        all_rows[ids] = rows
        emb = np.zeros((size, transform.embed_dim), np.float32)
        known = ids[rows >= 0]
        emb[known] = transform.embeddings[rows[rows >= 0]]
        scaler_rows = np.full(size, transform.fallback_of(GLOBAL_FALLBACK)[0], np.int64)
        scaler_rows[known] = rows[rows >= 0]
        fallback = [""] * size
        for (pid, e), unit in zip(new_emb.items(), new_units):
            emb[pid] = e
            scaler_rows[pid], fallback[pid] = transform.fallback_of(unit)
        return cls(transform, all_rows, emb, scaler_rows, fallback)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def known(self) -> np.ndarray:
        return self.rows >= 0

    def scale(self, pair_id: np.ndarray, values: np.ndarray) -> np.ndarray:
        """float64: raw values of store pairs `pair_id`, scaled as the model's transform scales them."""
        return self.transform.scale(self.scaler_rows[pair_id], values)

    def value_scaler(self) -> ValueScaler:
        """`scale` as a small picklable object (what Ray Data read tasks carry)."""
        return ValueScaler(self.scaler_rows, self.transform.scalers)

    def unscale(self, pair_id: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        """float64: the inverse of `scale`."""
        return self.transform.scalers.inverse(self.scaler_rows[pair_id], scaled)

    def features(self, pair_id: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        """float32 [n, embed_dim + 1]: each row's embedding ‖ its (already scaled) value."""
        x = np.empty((len(pair_id), self.embeddings.shape[1] + 1), dtype=np.float32)
        x[:, :-1] = self.embeddings[pair_id]
        x[:, -1] = scaled
        return x

    def scalers_match(self, store_scalers: PackedScalers, store_ids: np.ndarray) -> bool:
        """Whether every known pair's scaler here equals the store's (then the store's own
        `scaled_value` column is what this transform would compute)."""
        where = {int(p): i for i, p in enumerate(store_ids)}
        for pid in np.flatnonzero(self.known):
            i = where.get(int(pid))
            if i is None or not self.transform.scalers.equal_rows(
                int(self.scaler_rows[pid]), store_scalers, i
            ):
                return False
        return True
