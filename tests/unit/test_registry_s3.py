"""The registry on object storage (moto's real S3 server over HTTP): versions appear by one small
object, promotions are compare-and-swap on the pointer, checksums are checked at load, and
`tunestack models` works on s3:// as on a folder."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import save_file

from pipeline.cli import main
from pipeline.registry import Registry, RegistryError
from pipeline.registry.registry import RegistryConflict
from pipeline.storage import S3_CAS, resolve


def _checkpoint(d, seed):
    d.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file({"w": torch.randn(4, 4)}, str(d / "model.safetensors"))
    (d / "meta.json").write_text(json.dumps({"seed": seed}))
    return d


@pytest.fixture
def reg(s3_prefix, tmp_path) -> Registry:
    r = Registry(f"{s3_prefix}/registry")
    r.register("router", _checkpoint(tmp_path / "a", 1), config={"h": 8}, metrics={"acc": 0.9}, promote=True)
    r.register("router", _checkpoint(tmp_path / "b", 2), config={"h": 16}, metrics={"acc": 0.95})
    return r


def test_register_promote_rollback_verify_on_s3(reg, s3_server):
    assert reg.conditional_writes == S3_CAS
    assert reg.versions("router") == ["v0001", "v0002"] and reg.families() == ["router"]
    assert reg.get("router")["version"] == "v0001"
    rec = reg.get("router", "v0002")
    assert rec["stage"] == "candidate" and rec["checkpoint"].startswith("s3://tunestack-test/")
    record, files = reg.read_files("router", "v0002")
    assert set(files) == {"model.safetensors", "meta.json"} and json.loads(files["meta.json"]) == {"seed": 2}
    reg.promote("router", "v0002")
    assert reg.pointer("router") == {"version": "v0002", "history": ["v0001", "v0002"]}
    assert reg.rollback("router")["version"] == "v0001"
    assert reg.verify() == []
    # nothing but the layout's objects: no staging, temporary or probe objects left behind
    keys = [
        o["Key"].split("/registry/", 1)[1]
        for o in s3_server.client().list_objects_v2(
            Bucket=s3_server.bucket, Prefix=reg.loc.path.split("/", 1)[1]
        )["Contents"]
    ]
    assert sorted(keys) == [
        "router/production.json",
        "router/v0001/checkpoint/meta.json",
        "router/v0001/checkpoint/model.safetensors",
        "router/v0001/version.json",
        "router/v0002/checkpoint/meta.json",
        "router/v0002/checkpoint/model.safetensors",
        "router/v0002/version.json",
    ]


def test_a_damaged_object_is_refused_at_promotion_and_load(reg):
    loc = reg.loc
    weights = "router/v0002/checkpoint/model.safetensors"
    loc.write_bytes_atomic(weights, loc.read_bytes(weights)[:-3] + b"xyz")
    with pytest.raises(RegistryError, match="fails its sha256"):
        reg.promote("router", "v0002")
    with pytest.raises(RegistryError, match="fails its sha256"):
        reg.read_files("router", "v0002")
    assert reg.get("router")["version"] == "v0001"
    assert reg.verify() == ["router v0002: checkpoint/model.safetensors fails its sha256"]


def test_two_concurrent_promotions_exactly_one_wins(reg, tmp_path, monkeypatch):
    """Both read the same production pointer, both check their version, both write: one swap goes
    through, the other is refused with a conflict and changes nothing."""
    reg.register("router", _checkpoint(tmp_path / "c", 3), config={}, metrics={})
    both_read = threading.Barrier(2)
    one_put_at_a_time = threading.Lock()  # moto checks a condition and stores in two steps (S3 itself
    # decides atomically), so the two PUTs are sent one after the other — both with the tag read before
    check_files, write_if = Registry._check_files, type(reg.loc).write_if

    def checked_after_both_read(self, family, version):
        both_read.wait(timeout=30)
        return check_files(self, family, version)

    def serial_write_if(self, rel, data, tag):
        with one_put_at_a_time:
            return write_if(self, rel, data, tag)

    monkeypatch.setattr(Registry, "_check_files", checked_after_both_read)
    monkeypatch.setattr(type(reg.loc), "write_if", serial_write_if)
    outcome = {}

    def promote(version):
        try:
            Registry(reg.root).promote("router", version)
            outcome[version] = "won"
        except RegistryConflict as e:
            outcome[version] = str(e)

    threads = [threading.Thread(target=promote, args=(v,)) for v in ("v0002", "v0003")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [v for v, o in outcome.items() if o == "won"]
    assert len(winners) == 1, outcome
    loser = next(v for v in outcome if v not in winners)
    assert "conflict" in outcome[loser] and "nothing was changed" in outcome[loser], outcome
    assert reg.pointer("router") == {"version": winners[0], "history": ["v0001", winners[0]]}


def test_failure_between_version_and_pointer_leaves_the_previous_version_live(reg, tmp_path, monkeypatch):
    """register(promote=True) dies writing the production pointer: v0001 stays production and no
    half-registered version is left (registered and promoted, or nothing)."""
    write_if = type(reg.loc).write_if

    def pointer_write_fails(self, rel, data, tag):
        if rel.endswith("production.json"):
            raise OSError("injected fault: connection reset writing the pointer")
        return write_if(self, rel, data, tag)

    with monkeypatch.context() as m:
        m.setattr(type(reg.loc), "write_if", pointer_write_fails)
        with pytest.raises(OSError, match="injected fault"):
            reg.register("router", _checkpoint(tmp_path / "c", 3), config={}, metrics={}, promote=True)
    assert reg.get("router")["version"] == "v0001" and reg.versions("router") == ["v0001", "v0002"]
    assert reg.verify() == []


def test_an_unfinished_registration_is_not_a_version(reg):
    """A writer killed after claiming v0003 leaves its placeholder: readers skip it, verify names it,
    and the next registration takes v0004."""
    reg.loc.write_if("router/v0003/version.json", b'{"version": "v0003", "registering": "x"}', None)
    assert reg.versions("router") == ["v0001", "v0002"]
    with pytest.raises(RegistryError, match="not registered"):
        reg.get("router", "v0003")
    assert [p for p in reg.verify() if "v0003" in p and "never finished" in p]


def test_models_commands_on_s3(reg, s3_prefix, monkeypatch, capsys):
    monkeypatch.setenv("TUNESTACK_STORAGE", s3_prefix)
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "v0001" in out and "production" in out and "no conditional writes" not in out
    assert main(["models", "promote", "router", "v0002"]) == 0
    assert main(["models", "verify"]) == 0
    assert "every file matches its sha256" in capsys.readouterr().out
    reg.loc.write_bytes_atomic("router/v0001/checkpoint/meta.json", b'{"seed": 666}')
    assert main(["models", "verify"]) == 1
    assert "router v0001: checkpoint/meta.json fails its sha256" in capsys.readouterr().out


def test_models_list_says_when_storage_has_no_conditional_writes(reg, s3_prefix, monkeypatch, capsys):
    monkeypatch.setenv("TUNESTACK_STORAGE", s3_prefix)
    monkeypatch.setattr(Registry, "conditional_writes", property(lambda self: None))
    assert main(["models", "list"]) == 0
    assert "no conditional writes" in capsys.readouterr().out


def test_a_replica_host_serves_and_follows_production_on_s3(reg, tmp_path):
    """Serve's ModelHost reads, checks and loads the production version through the storage layer,
    and follows the pointer when another process promotes."""
    from pipeline.models import build_model
    from pipeline.train.checkpoint import save_checkpoint
    from serve.models import ModelHost

    meta = {"config": {"model": {"arch": "sequence_classifier", "input_size": 5, "hidden_size": 8}}}
    versions = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        ckpt = save_checkpoint(str(tmp_path / f"ck{seed}"), build_model(**meta["config"]["model"]), meta)
        versions.append(reg.register("served", ckpt, config=meta["config"], metrics={})["version"])
    reg.promote("served", versions[0])
    host = ModelHost("served", "route", registry_root=reg.root)
    assert host.sync() and host.predictor.version == versions[0]
    out = host.predict([{"features": [0.9, 0.5, 3, 0.95, 1]}])[0]
    assert out["model_version"] == versions[0] and 0.0 <= out["probability"] <= 1.0
    Registry(reg.root).promote("served", versions[1])  # "another process"
    assert (
        host.sync()
        and host.predict([{"features": [0.9, 0.5, 3, 0.95, 1]}])[0]["model_version"] == versions[1]
    )
    assert resolve(reg.get("served")["checkpoint"]).is_file("model.safetensors")
