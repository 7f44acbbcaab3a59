import json
import threading

import pytest
import torch
from safetensors.torch import save_file

from pipeline.registry import Registry, RegistryError


def _checkpoint(d, seed):
    d.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file({"w": torch.randn(4, 4)}, str(d / "model.safetensors"))
    (d / "meta.json").write_text(json.dumps({"seed": seed}))
    return d


def test_register_promote_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    a = reg.register("router", _checkpoint(tmp_path / "a", 1), config={"hidden": 8}, metrics={"acc": 0.9})
    b = reg.register(
        "router", _checkpoint(tmp_path / "b", 2), config={"hidden": 16}, metrics={"acc": 0.95}, promote=True
    )
    assert (a["version"], a["stage"], b["version"]) == ("v0001", "candidate", "v0002")
    assert reg.get("router")["version"] == "v0002" and reg.get("router")["stage"] == "production"
    assert set(b["files"]) == {"checkpoint/model.safetensors", "checkpoint/meta.json"} and all(
        len(h) == 64 for h in b["files"].values()
    )
    reg.promote("router", "v0001")
    assert reg.get("router")["version"] == "v0001"
    assert reg.rollback("router")["version"] == "v0002"
    assert [r["version"] for r in reg.list("router")] == ["v0001", "v0002"]
    assert reg.verify() == []


def test_promotion_refuses_corrupted_version_and_changes_nothing(tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.register("router", _checkpoint(tmp_path / "a", 1), config={}, metrics={}, promote=True)
    reg.register("router", _checkpoint(tmp_path / "b", 2), config={}, metrics={})
    weights = tmp_path / "reg" / "router" / "v0002" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3] + b"xyz")
    before = (tmp_path / "reg" / "router" / "production.json").read_bytes()
    with pytest.raises(RegistryError, match="fails its sha256"):
        reg.promote("router", "v0002")
    assert (tmp_path / "reg" / "router" / "production.json").read_bytes() == before
    assert reg.verify() == ["router v0002: checkpoint/model.safetensors fails its sha256"]


def test_register_refuses_pickles(tmp_path):
    d = _checkpoint(tmp_path / "a", 1)
    (d / "model.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(RegistryError, match="model.pt"):
        Registry(tmp_path / "reg").register("router", d, config={}, metrics={})
    assert Registry(tmp_path / "reg").versions("router") == []


def test_unknown_version_and_empty_rollback(tmp_path):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="not registered"):
        reg.promote("router", "v0009")
    with pytest.raises(RegistryError, match="no production version"):
        reg.get("router")
    reg.register("router", _checkpoint(tmp_path / "a", 1), config={}, metrics={}, promote=True)
    with pytest.raises(RegistryError, match="no earlier production"):
        reg.rollback("router")
    with pytest.raises(RegistryError, match="bad version"):
        reg.promote("router", "../../etc")


def test_concurrent_promote_and_rollback_end_consistent(tmp_path):
    reg = Registry(tmp_path / "reg")
    for i in range(3):
        reg.register("router", _checkpoint(tmp_path / f"c{i}", i), config={}, metrics={}, promote=True)
    errors = []

    def work(i):
        try:
            Registry(tmp_path / "reg").promote("router", f"v000{i % 3 + 1}") if i % 2 else Registry(
                tmp_path / "reg"
            ).rollback("router")
        except RegistryError as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    ptr = reg.pointer("router")
    assert ptr["version"] == ptr["history"][-1] and ptr["version"] in reg.versions("router")
    assert reg.verify() == []
