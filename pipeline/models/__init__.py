"""Model families, pure PyTorch (no Ray): the registry maps an arch name to its config and model.

Adding a family = a new module with a config dataclass (validating itself in __post_init__) and
an nn.Module taking that config, plus one line in FAMILIES and one in DATA_SOURCES (the
`data.source` kinds it trains on). `register_family` does the same at run time (tests, notebooks);
Ray workers import this module afresh, so a family trained on Ray must be listed here.
"""

from dataclasses import fields

from pipeline.models.autoencoder import Autoencoder, AutoencoderConfig
from pipeline.models.classifier import SequenceClassifier, SequenceClassifierConfig

# arch name -> (config dataclass, model class built as ModelClass(config))
FAMILIES = {
    "sequence_classifier": (SequenceClassifierConfig, SequenceClassifier),
    "autoencoder": (AutoencoderConfig, Autoencoder),
}
MODEL_CONFIGS = {arch: config_cls for arch, (config_cls, _) in FAMILIES.items()}
# arch name -> the config's `data.source` kinds it can train on (pipeline.config checks it)
DATA_SOURCES = {"sequence_classifier": ("routing", "sequences"), "autoencoder": ("triplets",)}


def register_family(arch, config_cls, model_cls, sources=("sequences",)):
    """Add a model family: `config_cls` (a dataclass) and `model_cls(config)`, trained on `sources`."""
    if arch in FAMILIES and FAMILIES[arch] != (config_cls, model_cls):
        raise ValueError(f"model arch {arch!r} is already registered")
    FAMILIES[arch] = (config_cls, model_cls)
    MODEL_CONFIGS[arch] = config_cls
    DATA_SOURCES[arch] = tuple(sources)


def make_config(arch, **kwargs):
    """The validated config dataclass of `arch`; unknown keys raise TypeError naming them."""
    if arch not in FAMILIES:
        raise ValueError(f"unknown model arch {arch!r}; known: {sorted(FAMILIES)}")
    config_cls = FAMILIES[arch][0]
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for arch {arch!r}; valid: {sorted(known)}")
    return config_cls(**kwargs)


def build_model(arch, **kwargs):
    """Build the nn.Module of `arch` from config keyword arguments (see MODEL_CONFIGS[arch])."""
    config = make_config(arch, **kwargs)
    return FAMILIES[arch][1](config)
