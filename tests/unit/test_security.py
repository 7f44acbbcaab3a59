"""Security pieces that need no Ray: the pickle scanner itself, and a registry version whose
weights were swapped for a code-running pickle (sha256 re-recorded, as an attacker with write
access to the registry would) is refused without running it."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.pickle_scan import pickle_reason, pickles_under


class _RunsCode:
    """Unpickling this runs Path(marker).touch(): the thing a pickle can do and safetensors cannot."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_scanner_finds_every_kind_of_pickle(tmp_path):
    for proto in (2, 3, 4, 5):
        (tmp_path / f"p{proto}.bin").write_bytes(pickle.dumps({"x": 1}, protocol=proto))
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")  # a zip with data.pkl, any name
    (tmp_path / "named.pkl").write_bytes(b"not even a pickle")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "floats.npy", np.zeros(3))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    (tmp_path / "plain.zip").write_bytes(buf.getvalue())
    (tmp_path / "ok.json").write_text(json.dumps({"a": 1}))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "real.safetensors"))
    found = pickles_under(tmp_path)
    assert set(found) == {
        "p2.bin",
        "p3.bin",
        "p4.bin",
        "p5.bin",
        "weights.safetensors",
        "named.pkl",
        "objects.npy",
    }
    assert "zip archive" in found["weights.safetensors"] and "protocol 5" in found["p5.bin"]
    assert pickle_reason(tmp_path / "real.safetensors") is None


def test_registry_version_with_a_pickle_for_weights_is_refused_unrun(tmp_path):
    from pipeline.registry.registry import Registry, sha256_file
    from serve.models import LoadError, ModelHost
    from tests.support.serve_world import register, train_router

    reg = Registry(tmp_path / "registry")
    register(reg, "router", train_router(tmp_path / "r1", steps=20), promote=True)
    version = register(reg, "router", train_router(tmp_path / "r2", seed=1, steps=20))
    rec = reg.get("router", version)
    weights = Path(rec["checkpoint"]) / "model.safetensors"
    marker = tmp_path / "code-ran"
    weights.write_bytes(pickle.dumps(_RunsCode(str(marker))))
    meta = json.loads((Path(rec["path"]) / "version.json").read_text())
    meta["files"]["checkpoint/model.safetensors"] = sha256_file(weights)  # the checksum says all is well
    (Path(rec["path"]) / "version.json").write_text(json.dumps(meta))

    host = ModelHost("router", "route", str(reg.root))
    host.sync()
    staged = host.stage(version)
    assert not staged["ok"] and "cannot load" in staged["error"], staged
    with pytest.raises(LoadError):
        host.load(version)
    reg.promote("router", version)  # even if production points at it, replicas refuse to serve it
    assert not host.sync() and host.predictor.version == "v0001" and version in host.error
    assert not marker.exists()  # nothing ever unpickled it
