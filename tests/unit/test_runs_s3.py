"""Runs and checkpoints on object storage (moto's real S3 server), without Ray: what `--from`,
`--resume` and Tune's bookkeeping read from a run folder on s3:// resolves and loads as it does
from a local folder, on a machine whose own TUNESTACK_HOME is empty."""

from __future__ import annotations

import json

import pyarrow.fs as pafs
import pytest
import torch

from pipeline.home import runs_dir
from pipeline.models import build_model
from pipeline.storage import join_uri, resolve
from pipeline.train.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from pipeline.train.run import RUN_FILE, SNAPSHOT_FILE, drop_partial_checkpoints, parent_of, ray_storage

MODEL = {"arch": "sequence_classifier", "input_size": 3, "hidden_size": 8}


@pytest.fixture
def s3_run(s3_prefix, tmp_path, monkeypatch):
    """A finished run `r1` under $TUNESTACK_STORAGE/runs on s3, with two checkpoints and run.json."""
    monkeypatch.setenv("TUNESTACK_STORAGE", s3_prefix)
    run = resolve(join_uri(runs_dir(), "r1"))
    torch.manual_seed(0)
    model = build_model(**MODEL)
    for epoch in (0, 1):
        local = save_checkpoint(
            str(tmp_path / f"c{epoch}"), model, {"config": {"model": MODEL}, "epoch": epoch}
        )
        run.upload(local, f"checkpoint_epoch{epoch:04d}")
    run.write_bytes_atomic(
        RUN_FILE, json.dumps({"best_checkpoint": run.uri_of("checkpoint_epoch0001")}).encode()
    )
    return run


def test_a_run_name_resolves_to_its_best_checkpoint_on_s3(s3_run, tmp_path):
    assert resolve_checkpoint("r1") == s3_run.uri_of("checkpoint_epoch0001")
    ckpt = load_checkpoint("r1")  # what `tunestack train --from r1` and `evaluate --model r1` load
    assert ckpt.meta["epoch"] == 1 and ckpt.path.startswith("s3://")
    assert set(ckpt.weights) == set(build_model(**MODEL).state_dict())
    assert load_checkpoint(s3_run.uri_of("checkpoint_epoch0000")).meta["epoch"] == 0
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        resolve_checkpoint("r2")


def test_a_checkpoint_on_s3_holding_a_pickle_is_refused(s3_run):
    s3_run.write_bytes_atomic("checkpoint_epoch0000/model.pt", b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="unexpected file"):
        load_checkpoint(s3_run.uri_of("checkpoint_epoch0000"))


def test_resume_drops_a_cut_short_upload_on_s3(s3_run):
    s3_run.write_bytes_atomic(
        SNAPSHOT_FILE,
        json.dumps({"checkpoint_results": [{"checkpoint_dir_name": "checkpoint_epoch0000"}]}).encode(),
    )
    s3_run.write_bytes_atomic("checkpoint_epoch0002/model.safetensors", b"\x10\x00")  # an upload cut short
    assert drop_partial_checkpoints(s3_run.uri) == ["checkpoint_epoch0002"]
    assert not s3_run.exists("checkpoint_epoch0002") and s3_run.exists("checkpoint_epoch0001")


def test_tune_reads_trial_folders_on_s3(s3_run):
    from pipeline.tune.run import _checkpoint_dirs, _epochs_trained

    assert _checkpoint_dirs(s3_run.uri) == ["checkpoint_epoch0000", "checkpoint_epoch0001"]
    assert _epochs_trained(s3_run.uri) == 2 and _epochs_trained(s3_run.uri_of("nothing-here")) == 0


def test_ray_gets_the_filesystem_of_a_uri_and_a_plain_path_for_a_folder(s3_prefix, tmp_path):
    args = ray_storage(join_uri(s3_prefix, "runs"))
    assert isinstance(args["storage_filesystem"], pafs.S3FileSystem)
    assert args["storage_path"] == resolve(s3_prefix).path + "/runs"
    assert ray_storage(str(tmp_path / "runs")) == {"storage_path": str(tmp_path / "runs")}
    assert parent_of("s3://b/p/runs/r1?region=x") == "s3://b/p/runs?region=x"
    assert parent_of(str(tmp_path / "runs" / "r1")) == str(tmp_path / "runs")
