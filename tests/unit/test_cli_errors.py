"""User errors are one family: every command prints them as one line, exit 2, no traceback, and
checks its data and config before Ray starts (`--debug` shows the traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.errors import ConfigError, DataError, UserError
from pipeline.ingest import IngestError
from pipeline.registry import RegistryError
from pipeline.runtime import RayConnectError
from pipeline.store.layout import StoreError
from pipeline.train.checkpoint import CheckpointError
from pipeline.tune.space import SpaceError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tune_configs"


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything starts or joins Ray."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr(ray, "init", refuse)


def run(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "cls",
    [
        ConfigError,
        SpaceError,
        DataError,
        StoreError,
        IngestError,
        RegistryError,
        CheckpointError,
        RayConnectError,
    ],
)
def test_every_user_error_is_one_family(cls):
    assert issubclass(cls, UserError)


def test_train_without_a_store_is_one_line_exit_2(capsys, no_ray):
    code, err = run(capsys, "train", "--config", str(CONFIGS / "autoencoder.yaml"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tunestack train: no triplet store at "), err
    assert "tunestack ingest" in err  # what to do


def test_train_on_a_missing_npz_says_so_before_ray_starts(capsys, no_ray, tmp_path):
    missing = tmp_path / "nope.npz"
    code, err = run(
        capsys, "train", "--config", str(CONFIGS / "digits.yaml"), "--set", f"data.path={missing}"
    )
    assert code == 2 and err == f"tunestack train: no sequence data at {missing} " + (
        "(write some with `tunestack synth digits` or `synth routing`)\n"
    )


def test_tune_on_a_missing_npz_says_so_before_ray_starts(capsys, no_ray, tmp_path):
    missing = tmp_path / "nope.npz"
    code, err = run(capsys, "tune", "--config", str(CONFIGS / "digits.yaml"), "--set", f"data.path={missing}")
    assert code == 2 and "no sequence data at" in err and err.count("\n") == 1


def test_evaluate_and_models_errors_are_one_line(capsys, tmp_path):
    code, err = run(capsys, "evaluate", "--model", str(tmp_path / "missing"))
    assert code == 2 and err.startswith("tunestack evaluate: ") and err.count("\n") == 1
    code, err = run(capsys, "models", "show", "router", "v0001")
    assert code == 2 and err.startswith("tunestack models: ") and err.count("\n") == 1


def test_debug_shows_the_traceback(no_ray):
    with pytest.raises(StoreError, match="no triplet store"):
        main(["--debug", "train", "--config", str(CONFIGS / "autoencoder.yaml")])


def test_the_installed_command_prints_no_traceback(tmp_path):
    """The real process: exit status 2 and one line on stderr, nothing else."""
    env = {"TUNESTACK_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "train", "--config", str(CONFIGS / "autoencoder.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("tunestack train: no triplet store at ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_model_that_does_not_fit_the_data_is_named_before_ray_starts(capsys, no_ray, tmp_path):
    from pipeline.data.sequences import write_digits_npz

    npz = write_digits_npz(str(tmp_path / "digits.npz"))  # 8 features a step
    code, err = run(
        capsys,
        "train",
        "--config",
        str(CONFIGS / "digits.yaml"),
        "--set",
        f"data.path={npz}",
        "--set",
        "model.input_size=5",
    )
    assert code == 2 and err.count("\n") == 1, err
    assert f"data {npz}: model.input_size: the config says 5, the data has 8" in err


def test_building_the_command_line_imports_neither_torch_nor_ray():
    """`tunestack --help`, `models list` and every parse error answer without loading torch or Ray
    (about 0.3 s instead of 1.7 s here): each command imports what it runs when it runs."""
    code = (
        "import sys, pipeline.cli as c; c.build_parser(); print(sorted({'torch', 'ray'} & set(sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
