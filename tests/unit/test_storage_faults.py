"""Drills: a write that fails midway (a filesystem that raises after N bytes) during ingest,
checkpointing, or registry registration/promotion/rollback leaves the store, the run folder and the
registry readable and byte-identical to before, and `store verify` / `models verify` report clean.

N is taken as fractions of what the operation writes when nothing fails (measured first, on a copy),
down to "all but the last byte", so each phase of each writer gets a failure somewhere.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.registry import Registry
from pipeline.registry import registry as registry_module
from pipeline.store import layout
from pipeline.store.integrity import verify_store
from pipeline.train import checkpoint as checkpoint_module
from pipeline.train.checkpoint import load_checkpoint, save_checkpoint
from tests.support import tree_digest
from tests.support.faults import (
    ByteBudget,
    failing_filesystem,
    failing_open,
    failing_resolve,
    pruned_meanwhile_resolve,
)
from tests.support.store_docs import make_docs, quick_ingest

FRACTIONS = [0.0, 0.01, 0.1, 0.35, 0.6, 0.9, "last"]


def _budget(total: int, frac) -> ByteBudget:
    return ByteBudget(total - 1 if frac == "last" else int(total * frac))


def _use_fs(monkeypatch, budget: ByteBudget):
    monkeypatch.setattr(layout, "resolve", failing_resolve(budget))


# ---- (a) ingest ---------------------------------------------------------------------------------


@pytest.mark.chaos
@pytest.mark.parametrize("frac", FRACTIONS)
def test_ingest_failing_midway_leaves_store_byte_identical(tmp_path, monkeypatch, frac):
    store = tmp_path / "store"
    quick_ingest(make_docs(tmp_path / "a", 1, 4), str(store))
    new = make_docs(tmp_path / "b", 100, 4)
    probe = tmp_path / "probe"
    shutil.copytree(store, probe)
    counter = ByteBudget(float("inf"))
    with monkeypatch.context() as m:
        _use_fs(m, counter)
        quick_ingest(new, str(probe))
    assert counter.written > 10_000 and verify_store(str(probe)).ok

    before = tree_digest(store)
    budget = _budget(counter.written, frac)
    with monkeypatch.context() as m:
        _use_fs(m, budget)
        with pytest.raises(OSError, match="injected fault"):
            quick_ingest(new, str(store))
    assert budget.tripped
    assert tree_digest(store) == before, f"store changed after a fault at byte {budget.written}"
    check = verify_store(str(store))
    assert check.ok and not check.notes, check.lines()
    assert (
        quick_ingest(new, str(store)).rows_after == 8 * 27
    )  # the same ingest, without the fault, goes through


@pytest.mark.chaos
@pytest.mark.parametrize("frac", [0.0, 0.5, "last"])
def test_first_ingest_failing_midway_leaves_no_store(tmp_path, monkeypatch, frac):
    docs = make_docs(tmp_path / "a", 1, 3)
    counter = ByteBudget(float("inf"))
    with monkeypatch.context() as m:
        _use_fs(m, counter)
        quick_ingest(docs, str(tmp_path / "probe"))
    budget = _budget(counter.written, frac)
    with monkeypatch.context() as m:
        _use_fs(m, budget)
        with pytest.raises(OSError, match="injected fault"):
            quick_ingest(docs, str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


# ---- (b) checkpointing --------------------------------------------------------------------------


def _model_and_optimizer():
    from pipeline.models import build_model

    torch.manual_seed(0)
    model = build_model("sequence_classifier", input_size=3, hidden_size=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 2, 3)).sum().backward()
    opt.step()
    return model, opt


@pytest.mark.chaos
@pytest.mark.parametrize("frac", FRACTIONS)
def test_checkpoint_write_failing_midway_leaves_run_folder_byte_identical(tmp_path, monkeypatch, frac):
    model, opt = _model_and_optimizer()
    meta = {
        "config": {"model": {"arch": "sequence_classifier", "input_size": 3, "hidden_size": 8}},
        "epoch": 0,
    }
    run = tmp_path / "run"
    save_checkpoint(str(run / "checkpoint_epoch0000"), model, meta, opt)
    (run / "run_config.json").write_text("{}")
    counter = ByteBudget(float("inf"))
    with monkeypatch.context() as m:
        m.setattr(checkpoint_module, "open", failing_open(counter), raising=False)
        save_checkpoint(str(tmp_path / "probe" / "c"), model, {**meta, "epoch": 1}, opt)
    assert counter.written > 1000

    before = tree_digest(run)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # what a failed overwrite must not leave behind
    for target in ("checkpoint_epoch0001", "checkpoint_epoch0000"):  # a new checkpoint, and an overwrite
        budget = _budget(counter.written, frac)
        with monkeypatch.context() as m:
            m.setattr(checkpoint_module, "open", failing_open(budget), raising=False)
            with pytest.raises(OSError, match="injected fault"):
                save_checkpoint(str(run / target), model, {**meta, "epoch": 1}, opt)
        assert budget.tripped
        assert tree_digest(run) == before, (
            f"{target}: run folder changed after a fault at byte {budget.written}"
        )
    loaded = load_checkpoint(str(run / "checkpoint_epoch0000"))
    assert loaded.meta["epoch"] == 0 and loaded.optimizer_state() is not None
    # without the fault the overwrite goes through, and nothing is left beside it
    save_checkpoint(str(run / "checkpoint_epoch0000"), model, {**meta, "epoch": 1}, opt)
    assert load_checkpoint(str(run / "checkpoint_epoch0000")).meta["epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_epoch0000", "run_config.json"]


# ---- (c) registry -------------------------------------------------------------------------------


def _ckpt(folder, seed):
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file({"w": torch.randn(64, 64)}, str(folder / "model.safetensors"))
    (folder / "checkpoint.json").write_text(json.dumps({"seed": seed}))
    return folder


def _registry_bytes(tmp_path, root, op) -> int:
    probe = tmp_path / f"probe-{len(list(tmp_path.glob('probe-*')))}"
    shutil.copytree(root, probe)
    counter = ByteBudget(float("inf"))
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(registry_module, "resolve", failing_resolve(counter))
        op(Registry(probe))
    finally:
        mp.undo()
    return counter.written


@pytest.mark.chaos
@pytest.mark.parametrize("frac", FRACTIONS)
def test_registry_writes_failing_midway_leave_registry_byte_identical(tmp_path, monkeypatch, frac):
    root = tmp_path / "reg"
    reg = Registry(root)
    reg.register("router", _ckpt(tmp_path / "c1", 1), config={}, metrics={"acc": 0.9}, promote=True)
    reg.register("router", _ckpt(tmp_path / "c2", 2), config={}, metrics={"acc": 0.95}, promote=True)
    new = _ckpt(tmp_path / "c3", 3)
    ops = {
        "register": lambda r: r.register("router", new, config={}, metrics={}),
        "register+promote": lambda r: r.register("router", new, config={}, metrics={}, promote=True),
        "promote": lambda r: r.promote("router", "v0001"),
        "rollback": lambda r: r.rollback("router"),
    }
    before = tree_digest(root)
    for name, op in ops.items():
        total = _registry_bytes(tmp_path, root, op)
        assert total > 0, name
        budget = _budget(total, frac)
        with monkeypatch.context() as m:
            m.setattr(registry_module, "resolve", failing_resolve(budget))
            with pytest.raises(OSError, match="injected fault"):
                op(Registry(root))
        assert budget.tripped, name
        assert tree_digest(root) == before, f"{name}: registry changed after a fault at byte {budget.written}"
        assert reg.verify() == [] and reg.get("router")["version"] == "v0002", name


@pytest.mark.chaos
@pytest.mark.parametrize("frac", FRACTIONS)
def test_checkpoint_upload_cut_short_is_dropped_on_resume(tmp_path, frac):
    """Ray Train uploads a checkpoint into the run folder with pyarrow.fs.copy_files; the same call
    with a destination that fails midway leaves a partial folder, which `resume` removes before
    Ray restores the run: the run folder is byte-identical to before the upload."""
    import pyarrow.fs as pafs

    from pipeline.train.run import SNAPSHOT_FILE, drop_partial_checkpoints

    model, opt = _model_and_optimizer()
    meta = {
        "config": {"model": {"arch": "sequence_classifier", "input_size": 3, "hidden_size": 8}},
        "epoch": 0,
    }
    run = tmp_path / "run"
    save_checkpoint(str(run / "checkpoint_epoch0000"), model, meta, opt)
    (run / SNAPSHOT_FILE).write_text(
        json.dumps(
            {
                "checkpoint_results": [
                    {"checkpoint_dir_name": "checkpoint_epoch0000", "metrics": {"epoch": 0}}
                ],
                "latest_checkpoint_result": {
                    "checkpoint_dir_name": "checkpoint_epoch0000",
                    "metrics": {"epoch": 0},
                },
            }
        )
    )
    local = save_checkpoint(str(tmp_path / "local" / "ckpt"), model, {**meta, "epoch": 1}, opt)
    total = sum(p.stat().st_size for p in (tmp_path / "local" / "ckpt").iterdir())
    before = tree_digest(run)

    budget = _budget(total, frac)
    dest = failing_filesystem(budget)
    dest.create_dir(str(run / "checkpoint_epoch0001"))  # as Ray Train's persist_current_checkpoint does
    with pytest.raises(OSError, match="injected fault"):
        pafs.copy_files(
            local,
            str(run / "checkpoint_epoch0001"),
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=dest,
        )
    assert (run / "checkpoint_epoch0001").is_dir()  # what a cut-short upload leaves
    assert drop_partial_checkpoints(str(run)) == ["checkpoint_epoch0001"]
    assert tree_digest(run) == before
    assert load_checkpoint(str(run / "checkpoint_epoch0000")).meta["epoch"] == 0
    # a complete upload the snapshot does not list yet is kept (the resumed run rewrites it)
    (run / "checkpoint_epoch0001").mkdir()
    pafs.copy_files(local, str(run / "checkpoint_epoch0001"))
    assert drop_partial_checkpoints(str(run)) == [] and (run / "checkpoint_epoch0001").is_dir()


@pytest.mark.chaos
def test_resume_tolerates_a_folder_pruned_while_it_looks(tmp_path, monkeypatch):
    """A SIGKILLed driver's Ray actors outlive it for a moment: its controller may still prune a
    checkpoint folder (num_to_keep) while `resume` looks at the run. Whether the folder goes before
    the load or between the look and the removal, resume carries on and reports nothing dropped."""
    from pipeline.train import run as run_module
    from pipeline.train.run import SNAPSHOT_FILE, drop_partial_checkpoints

    model, opt = _model_and_optimizer()
    run = tmp_path / "run"
    save_checkpoint(str(run / "checkpoint_epoch0000"), model, {"epoch": 0}, opt)
    committed = {"checkpoint_dir_name": "checkpoint_epoch0000", "metrics": {"epoch": 0}}
    (run / SNAPSHOT_FILE).write_text(
        json.dumps({"checkpoint_results": [committed], "latest_checkpoint_result": committed})
    )

    (run / "checkpoint_epoch0001").mkdir()  # an upload under way: no files yet
    monkeypatch.setattr(run_module, "resolve", pruned_meanwhile_resolve())
    assert drop_partial_checkpoints(str(run)) == []
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_epoch0000", SNAPSHOT_FILE]

    monkeypatch.undo()
    (run / "checkpoint_epoch0001").mkdir()  # gone before the load looks: nothing to remove either
    monkeypatch.setattr(run_module, "load_checkpoint", lambda p: (shutil.rmtree(p), load_checkpoint(p)))
    assert drop_partial_checkpoints(str(run)) == []
    assert load_checkpoint(str(run / "checkpoint_epoch0000")).meta["epoch"] == 0


@pytest.mark.chaos
def test_ingest_command_reports_a_failed_write(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    store = tmp_path / "store"
    quick_ingest(make_docs(tmp_path / "a", 1, 2), str(store))
    before = tree_digest(store)
    _use_fs(monkeypatch, ByteBudget(5000))
    capsys.readouterr()
    assert (
        main(["ingest", *make_docs(tmp_path / "b", 50, 2), "--store", str(store), "--embedder", "hashed"])
        == 2
    )
    err = capsys.readouterr().err
    assert "injected fault" in err and "nothing was written; the store is as it was" in err, err
    assert tree_digest(store) == before
