"""Find pickles among files: what the "artifacts are never pickle" tests scan with.

A file is a pickle when it starts with the pickle protocol 2-5 opcode (0x80 then 0x02..0x05), has
a pickle-ish name (.pkl, .pickle, .pt, .pth, .ckpt, .joblib), is a zip archive holding one (what
`torch.save` writes since torch 1.6: data.pkl inside a zip), or is a .npy/.npz holding Python
objects (loading them needs allow_pickle).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

PICKLE_MAGIC = tuple(bytes([0x80, v]) for v in range(2, 6))
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")


def pickle_reason(path: str | Path) -> str | None:
    """Why `path` is (or holds) a pickle, or None."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return f"named {p.suffix}"
    with open(p, "rb") as f:
        head = f.read(16)
    if head[:2] in PICKLE_MAGIC:
        return f"pickle protocol {head[1]} at offset 0"
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            inner = [
                n for n in z.namelist() if n.lower().endswith(PICKLE_SUFFIXES) or n.endswith("/data.pkl")
            ]
        if inner:
            return f"zip archive holding {inner[0]}"
    if head.startswith(b"\x93NUMPY") and b"'|O'" in Path(p).read_bytes()[:256]:
        return "numpy array of Python objects"
    return None


def pickles_under(root: str | Path) -> dict[str, str]:
    """{path relative to root: reason} for every pickle under root."""
    root = Path(root)
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            why = pickle_reason(p)
            if why:
                found[str(p.relative_to(root))] = why
    return found


# Ray Tune's own experiment bookkeeping, pickled by Ray (Tuner.restore reads it), never a model and
# never read by Serve or the registry: <experiment>/tuner.pkl, the search state
# <experiment>/basic-variant-state-<time>.json (a pickle despite its name) and each of Ray's trial
# folders' params.pkl (<experiment>/trial_<id>/; tunestack's own Train runs live in <experiment>/trials/).
RAY_TUNE_BOOKKEEPING = (("tuner.pkl",), ("basic-variant-state-*.json",), ("trial_*", "params.pkl"))


def ray_tune_bookkeeping(path: Path, tune_root: Path) -> bool:
    """Whether `path` is one of Ray Tune's own bookkeeping pickles under the tune root."""
    from fnmatch import fnmatch

    try:
        parts = path.relative_to(tune_root).parts[1:]  # below <tune root>/<experiment>/
    except ValueError:
        return False
    return any(
        len(parts) == len(p) and all(fnmatch(a, b) for a, b in zip(parts, p)) for p in RAY_TUNE_BOOKKEEPING
    )
