"""`tunestack store verify` and `tunestack models verify`: each kind of damage is found and named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from pipeline.cli import main
from pipeline.registry import Registry
from pipeline.store.integrity import verify_store
from tests.support.store_docs import make_docs, quick_ingest


@pytest.fixture
def store(tmp_path):
    uri = tmp_path / "store"
    quick_ingest(make_docs(tmp_path / "docs", 1, 6), str(uri))
    return uri


def _verify(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["store", "verify", *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _triplet_file(store):
    m = json.loads((store / "manifest.json").read_text())
    return store / m["triplet_files"][0], m  # named relative to the store


def test_clean_store_verifies(store, capsys):
    rc, out = _verify(capsys, "--store", str(store))
    m = json.loads((store / "manifest.json").read_text())
    assert rc == 0 and "match the manifest" in out, out
    assert set(m["files"]) == set(m["triplet_files"]) | {f"{m['data_dir']}/pairs.parquet"}
    assert all(len(r["sha256"]) == 64 and r["size"] > 0 and r["rows"] > 0 for r in m["files"].values())
    assert sum(m["files"][f]["rows"] for f in m["triplet_files"]) == m["counts"]["triplets"]


@pytest.mark.chaos
def test_flipped_byte_is_reported(store, capsys):
    path, m = _triplet_file(store)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rc, out = _verify(capsys, "--store", str(store))
    assert rc == 1
    assert f"DAMAGE {m['triplet_files'][0]}: sha256 does not match the manifest" in out, out


@pytest.mark.chaos
def test_deleted_file_is_reported(store, capsys):
    m = json.loads((store / "manifest.json").read_text())
    (store / m["data_dir"] / "pairs.parquet").unlink()
    rc, out = _verify(capsys, "--store", str(store))
    assert rc == 1 and f"DAMAGE {m['data_dir']}/pairs.parquet: missing" in out, out


@pytest.mark.chaos
def test_truncated_parquet_is_reported(store, capsys):
    path, m = _triplet_file(store)
    path.write_bytes(path.read_bytes()[:-100])
    rc, out = _verify(capsys, "--store", str(store))
    name = m["triplet_files"][0]
    assert rc == 1 and f"DAMAGE {name}: {path.stat().st_size} bytes, the manifest recorded" in out, out
    assert f"DAMAGE {name}: not readable Parquet" in out, out


@pytest.mark.chaos
def test_unlisted_file_and_wrong_counts_are_reported(store):
    path, m = _triplet_file(store)
    (path.parent / "stray.parquet").write_bytes(path.read_bytes())
    m["counts"]["triplets"] += 1
    (store / "manifest.json").write_text(json.dumps(m))
    check = verify_store(str(store))
    assert (f"{m['data_dir']}/triplets/stray.parquet", "file not in the manifest") in check.damage
    assert any(f == "manifest.json" and "counts.triplets" in what for f, what in check.damage), check.damage


@pytest.mark.chaos
@pytest.mark.parametrize("content", [b"{not json", b"[]", json.dumps({"schema_version": 1}).encode()])
def test_broken_manifest_is_reported(store, capsys, content):
    (store / "manifest.json").write_bytes(content)
    rc, out = _verify(capsys, "--store", str(store))
    assert rc == 1 and "DAMAGE manifest.json:" in out, out


def test_manifest_without_checksums_is_still_read(store, capsys):
    """Stores written before manifests recorded files: checked by decoding every Parquet page."""
    path, m = _triplet_file(store)
    del m["files"]
    (store / "manifest.json").write_text(json.dumps(m))
    rc, out = _verify(capsys, "--store", str(store))
    assert rc == 0 and "predates per-file checksums" in out, out
    path.write_bytes(path.read_bytes()[:-100])
    rc, out = _verify(capsys, "--store", str(store))
    assert rc == 1 and "not readable Parquet" in out, out


def test_leftovers_are_notes_not_damage(store, capsys):
    (store / ".staging-abc").mkdir()
    rc, out = _verify(capsys, "--store", str(store))
    assert rc == 0 and "note: .staging-abc: left by an interrupted writer" in out, out


def test_no_store_exits_2(tmp_path, capsys):
    rc, out = _verify(capsys, "--store", str(tmp_path / "nothing"))
    assert rc == 2 and "no triplet store" in out


# ---- models verify ------------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path, monkeypatch):
    root = tmp_path / "home" / "registry"  # TUNESTACK_HOME is tmp_path/home (tests/conftest.py)
    reg = Registry(root)
    for seed in (1, 2):
        ckpt = tmp_path / f"c{seed}"
        ckpt.mkdir()
        torch.manual_seed(seed)
        save_file({"w": torch.randn(8, 8)}, str(ckpt / "model.safetensors"))
        (ckpt / "checkpoint.json").write_text("{}")
        reg.register("router", ckpt, config={}, metrics={}, promote=True)
    return reg


def _models_verify(capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["models", "verify"])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_models_verify_clean(registry, capsys):
    rc, out = _models_verify(capsys)
    assert rc == 0 and "every file matches its sha256" in out


@pytest.mark.chaos
def test_models_verify_reports_missing_corrupt_and_unexpected_files(registry, capsys):
    v1 = registry.root / "router" / "v0001"
    (v1 / "checkpoint" / "checkpoint.json").unlink()
    w = registry.root / "router" / "v0002" / "checkpoint" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\x00")
    (v1 / "checkpoint" / "model.pt").write_bytes(b"\x80\x04pickle")
    rc, out = _models_verify(capsys)
    assert rc == 1
    assert "router v0001: checkpoint/checkpoint.json is missing" in out, out
    assert "router v0001: unexpected file checkpoint/model.pt" in out, out
    assert "router v0002: checkpoint/model.safetensors fails its sha256" in out, out
    assert "router: production version v0002 is damaged" in out, out


@pytest.mark.chaos
@pytest.mark.parametrize(
    "pointer, expect",
    [
        (
            b'{"version": "v0009", "history": ["v0001", "v0009"]}',
            "production points at missing version v0009",
        ),
        (b'{"version": "v0002", "hist', "production pointer unreadable"),
        (b'{"version": "v0002"}', "lacks 'version' and a 'history' list"),
    ],
)
def test_models_verify_reports_a_broken_production_pointer(registry, capsys, pointer, expect):
    (registry.root / "router" / "production.json").write_bytes(pointer)
    rc, out = _models_verify(capsys)
    assert rc == 1 and expect in out, out
    capsys.readouterr()
    assert main(["models", "show", "router"]) in (
        0,
        2,
    )  # a broken pointer is an error message, not a traceback


@pytest.mark.chaos
def test_models_promote_reports_a_failed_write(registry, capsys, monkeypatch):
    from pipeline.registry import registry as registry_module
    from tests.support import tree_digest
    from tests.support.faults import ByteBudget, failing_resolve

    before = tree_digest(registry.root)
    monkeypatch.setattr(registry_module, "resolve", failing_resolve(ByteBudget(10)))
    capsys.readouterr()
    assert main(["models", "promote", "router", "v0001"]) == 2
    assert "injected fault" in capsys.readouterr().err
    assert tree_digest(registry.root) == before
