"""The exported-model format: one small safetensors file + one JSON file, read and written with
NumPy only (no torch), so an embedded user or a Serve replica can load it without PyTorch.

    EXPORT/
      weights.safetensors   # at most four flat tensors, one per storage type (a tiny header):
                            #   "int8"    quantized values (INT8 exports)
                            #   "float32" scales, and the values of float32 exports and of ζ, ν
                            #   "float16" bias vectors of INT8 exports
                            #   "bitmap"  one bit per entry of each sparse matrix: 1 = stored
      export.json           # format, precision, the model's config, normalization, trained
                            # sequence lengths, metrics, where it came from, the layout below
      features.safetensors  # only for a family with a feature transform (the autoencoder): the
                            # checkpoint's own (pipeline.data.features), copied unchanged

`tensors` in export.json lists every weight of the model's state_dict in order: its shape, how it
is stored ("dense", "bitmap": only the entries whose bit is set, or "zero": not stored at all,
e.g. the recurrent matrix of a model trained on single steps), its storage dtype, where its
values start in that dtype's tensor, and the index of its scale in "float32" (INT8 only).

INT8 (per tensor, symmetric): q = round(w / s) in [-127, 127], s = max|w| / 127, w ≈ q·s. Weight
matrices are stored that way; bias vectors as float16 (a handful of values, where 8 bits would cost
accuracy for nothing); scalars (ζ, ν) as float32. A matrix is stored sparse when that is smaller:
a bitmap (n/8 bytes) plus its non-zero values, else dense. The size a user sees (`size.file_bytes`)
is the file on disk: values, bitmaps, scales and safetensors' own header.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from pipeline.errors import UserError

FORMAT = "tunestack-export-v1"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "export.json"
FEATURES_FILE = "features.safetensors"  # = pipeline.data.features.FEATURES_FILE
FILES = (WEIGHTS_FILE, META_FILE, FEATURES_FILE)
PRECISIONS = ("float32", "int8")
# The documented INT8 tolerance: an INT8 export's class probabilities stay within this of the float
# model's on the model's own inputs. Rounding every matrix to 1/254 of its range moves a digits
# FastGRNN's probabilities by up to ~0.07 after 8 recurrent steps (accuracy unchanged; BENCHMARKS.md)
# and a one-step router's by far less.
INT8_PROBABILITY_TOLERANCE = 0.1
_STORE = {"int8": np.int8, "float16": np.float16, "float32": np.float32}


class ArtifactError(UserError, ValueError):
    """A folder that is not a readable tunestack export."""


def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


# ---------------------------------------------------------------------------------------------
# Encoding


def _storage(name: str, array: np.ndarray, precision: str) -> str:
    if precision == "float32" or array.ndim == 0 or array.size == 1:
        return "float32"
    return "int8" if array.ndim >= 2 else "float16"


def encode(state: dict, precision: str, zero: tuple[str, ...] = ()) -> tuple[dict, list[dict], dict]:
    """(tensors for safetensors, the layout for export.json, byte counts) of a float state dict
    {name: ndarray}. Names in `zero` are recorded by shape only (they are all zeros in use)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    parts: dict[str, list[np.ndarray]] = {"int8": [], "float16": [], "float32": [], "bitmap": []}
    used = {k: 0 for k in parts}
    layout, counts = [], {"values": 0, "indices": 0, "scales": 0}

    def put(kind: str, values: np.ndarray) -> int:
        offset = used[kind]
        parts[kind].append(values.ravel())
        used[kind] += values.size
        return offset

    for name, array in state.items():
        array = np.asarray(array)
        entry = {"name": name, "shape": list(array.shape)}
        if name in zero:
            layout.append({**entry, "encoding": "zero"})
            continue
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{name}: only floating-point weights can be exported, got {array.dtype}")
        kind = _storage(name, array, precision)
        values = array.astype(np.float32)
        if kind == "int8":
            scale = np.float32(max(float(np.abs(values).max()), 1e-12) / 127.0)
            values = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
            entry["scale_index"] = put("float32", np.asarray([scale], np.float32))
            counts["scales"] += 4
        else:
            values = values.astype(_STORE[kind])
        itemsize = values.dtype.itemsize
        nonzero = values != 0
        sparse_bytes = int(nonzero.sum()) * itemsize + (values.size + 7) // 8
        if array.ndim >= 2 and sparse_bytes < values.size * itemsize:
            entry["encoding"] = "bitmap"
            entry["bitmap_offset"] = used["bitmap"]
            bits = np.packbits(nonzero.ravel(), bitorder="little")
            put("bitmap", bits)
            counts["indices"] += bits.size
            values = values[nonzero]
        else:
            entry["encoding"] = "dense"
        entry.update(dtype=kind, offset=put(kind, values), count=int(values.size))
        counts["values"] += values.size * itemsize
        layout.append(entry)
    tensors = {
        kind: np.concatenate(chunks).astype(_STORE.get(kind, np.uint8))
        for kind, chunks in parts.items()
        if chunks
    }
    return tensors, layout, counts


def decode(tensors: dict, layout: list[dict]) -> dict:
    """The float32 state dict {name: ndarray} of stored tensors and their layout (inverse of encode,
    up to the precision's rounding; "zero" entries come back as zeros)."""
    state = {}
    for entry in layout:
        shape, encoding = tuple(entry["shape"]), entry["encoding"]
        if encoding == "zero":
            state[entry["name"]] = np.zeros(shape, np.float32)
            continue
        store = tensors[entry["dtype"]]
        values = store[entry["offset"] : entry["offset"] + entry["count"]].astype(np.float32)
        if "scale_index" in entry:
            values = values * tensors["float32"][entry["scale_index"]]
        if encoding == "bitmap":
            n = int(np.prod(shape))
            start = entry["bitmap_offset"]
            bits = tensors["bitmap"][start : start + (n + 7) // 8]
            mask = np.unpackbits(bits, bitorder="little")[:n].astype(bool)
            if int(mask.sum()) != values.size:
                raise ArtifactError(
                    f"{entry['name']}: bitmap marks {int(mask.sum())} entries, {values.size} stored"
                )
            full = np.zeros(n, np.float32)
            full[mask] = values
            values = full
        elif encoding != "dense":
            raise ArtifactError(f"{entry['name']}: unknown encoding {encoding!r}")
        state[entry["name"]] = values.reshape(shape)
    return state


# ---------------------------------------------------------------------------------------------
# Files


def write_export(directory: str, tensors: dict, meta: dict, features: bytes | None = None) -> dict:
    """Write weights.safetensors + export.json (+ features.safetensors: `features`, the model's
    feature transform file) into `directory` (created; an existing export there is replaced file
    by file). `meta` gains `size` and `weights_sha256`. Returns it."""
    from safetensors.numpy import save

    os.makedirs(directory, exist_ok=True)
    blob = save(tensors)  # no header metadata: export.json says what it is (every byte counts here)
    header = 8 + int.from_bytes(blob[:8], "little")
    meta = {**meta, "weights_sha256": hashlib.sha256(blob).hexdigest()}
    if features is not None:
        meta["features_sha256"] = hashlib.sha256(features).hexdigest()
    meta["size"] = {**meta.get("size", {}), "file_bytes": len(blob), "header": header}
    files = [(WEIGHTS_FILE, blob)] + ([(FEATURES_FILE, features)] if features is not None else [])
    stale = os.path.join(directory, FEATURES_FILE)
    if features is None and os.path.exists(stale):
        os.remove(stale)  # an earlier export of another model into this folder
    for name, data in files + [(META_FILE, json.dumps(meta, indent=2).encode())]:
        tmp = os.path.join(directory, f".{name}.partial")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, name))
    return meta


def read_export(directory: str) -> tuple[dict, dict]:
    """(export.json, the float32 state dict) of a local export folder (see `export_from_files`)."""
    names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    files = {}
    for n in names:
        if n in FILES:
            with open(os.path.join(directory, n), "rb") as f:
                files[n] = f.read()
        else:
            files[n] = b""  # refused below, by name
    meta, state, _features = export_from_files(directory, files)
    return meta, state


def export_from_files(directory: str, files: dict[str, bytes]) -> tuple[dict, dict, bytes | None]:
    """(export.json, the float32 state dict, the feature transform file or None) of an export's
    files {name: bytes}: only its own files are accepted, and the weights (and features) must match
    the sha256 recorded beside them."""
    from safetensors.numpy import load

    names = sorted(files)
    extra = [n for n in names if n not in FILES]
    if extra or WEIGHTS_FILE not in names or META_FILE not in names:
        raise ArtifactError(
            f"{directory}: an export holds {[WEIGHTS_FILE, META_FILE]} (+ {FEATURES_FILE}); found {names}"
        )
    try:
        meta = json.loads(files[META_FILE])
    except ValueError as e:
        raise ArtifactError(f"{directory}/{META_FILE}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ArtifactError(f"{directory}: format {got!r}, expected {FORMAT!r}")
    blob = files[WEIGHTS_FILE]
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise ArtifactError(f"{directory}/{WEIGHTS_FILE}: does not match the sha256 in {META_FILE}")
    if len(blob) < 9 or blob[8:9] != b"{":
        raise ArtifactError(f"{directory}/{WEIGHTS_FILE}: not a safetensors file")
    features = files.get(FEATURES_FILE)
    if features is not None and hashlib.sha256(features).hexdigest() != meta.get("features_sha256"):
        raise ArtifactError(f"{directory}/{FEATURES_FILE}: does not match the sha256 in {META_FILE}")
    try:
        return meta, decode(load(blob), meta["tensors"]), features
    except (KeyError, ValueError, IndexError) as e:
        raise ArtifactError(f"{directory}: weights do not match their layout ({e})") from e
