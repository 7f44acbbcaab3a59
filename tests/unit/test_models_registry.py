"""The model-family registry, and the rule that models never import Ray."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.models import MODEL_CONFIGS, build_model, make_config
from pipeline.models.autoencoder import Autoencoder, AutoencoderConfig
from pipeline.models.classifier import SequenceClassifier, SequenceClassifierConfig


def test_registry_maps_arch_to_config_and_model():
    # the built-in families; one named by module path (tests.families.pooled_mlp) joins the view
    # once a test has used it, whatever ran before this test
    assert {
        "sequence_classifier": SequenceClassifierConfig,
        "autoencoder": AutoencoderConfig,
    } == {arch: config for arch, config in MODEL_CONFIGS.items() if "." not in arch}
    model = build_model("sequence_classifier", hidden_size=4)
    assert isinstance(model, SequenceClassifier) and model.config.hidden_size == 4
    assert isinstance(build_model("autoencoder", hidden=[8], latent_dim=2), Autoencoder)
    assert make_config("autoencoder", loss="l1") == AutoencoderConfig(loss="l1")


def test_unknown_arch_and_unknown_key_are_named():
    with pytest.raises(ValueError, match="transformer"):
        build_model("transformer")
    with pytest.raises(TypeError, match="hiden_size"):
        build_model("sequence_classifier", hiden_size=8)
    with pytest.raises(ValueError, match="hidden_size"):
        build_model("sequence_classifier", hidden_size=-1)


def test_same_seed_builds_the_same_weights():
    torch.manual_seed(3)
    a = build_model("sequence_classifier", w_rank=2)
    torch.manual_seed(3)
    b = build_model("sequence_classifier", w_rank=2)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_models_do_not_import_ray():
    code = (
        "import sys, pipeline.models, pipeline.models.fastgrnn, pipeline.models.distill; "
        "print('ray' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"
