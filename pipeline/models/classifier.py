"""Sequence classifier: a recurrent encoder (FastGRNN, or GRU/LSTM baselines) + a trained linear head.

Used for the router (input = 5 routing features, 2 classes; class 1 = "lightweight model
suffices") and for any other sequence task (e.g. digits read row by row). Unlike the EdgeML
reference, whose classifier layer is never trained, the head here is an ordinary trained layer.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn

from pipeline.models.family import Family
from pipeline.models.fastgrnn import FastGRNN

CELLS = ("fastgrnn", "gru", "lstm")
POWERFUL, LIGHTWEIGHT = 0, 1  # router class indices


@dataclass
class SequenceClassifierConfig:
    cell: str = "fastgrnn"  # "fastgrnn" | "gru" | "lstm"
    input_size: int = 5  # features per step
    hidden_size: int = 16
    num_classes: int = 2
    w_rank: int | None = None  # FastGRNN only: W = W1·W2 with this rank (None = full)
    u_rank: int | None = None  # FastGRNN only: U = U1·U2 with this rank (None = full)
    w_sparsity: float = 1.0  # FastGRNN only: fraction of W entries kept by the sparse phases
    u_sparsity: float = 1.0  # FastGRNN only: fraction of U entries kept
    zeta_init: float = 1.0  # FastGRNN ζ init (paper: 1)
    nu_init: float = -4.0  # FastGRNN ν init (paper: −4)
    dropout: float = 0.0  # on the last hidden state, before the head

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {self.cell!r}")
        for name in ("input_size", "hidden_size"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("num_classes", self.num_classes, low=2)
        for name, limit in (("w_rank", min(self.input_size, self.hidden_size)), ("u_rank", self.hidden_size)):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=1, high=limit)
        for name in ("w_sparsity", "u_sparsity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a number in (0, 1] (fraction kept), got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.cell != "fastgrnn":
            for name, dense in (("w_rank", None), ("u_rank", None), ("w_sparsity", 1.0), ("u_sparsity", 1.0)):
                if getattr(self, name) != dense:
                    raise ValueError(f"{name} is a FastGRNN option; cell={self.cell!r} needs {name}={dense}")


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")


class SequenceClassifier(nn.Module):
    """[B, T, input_size] (or one step [B, input_size]) -> logits [B, num_classes]."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        if c.cell == "fastgrnn":
            self.rnn = FastGRNN(
                c.input_size,
                c.hidden_size,
                w_rank=c.w_rank,
                u_rank=c.u_rank,
                w_sparsity=c.w_sparsity,
                u_sparsity=c.u_sparsity,
                zeta_init=c.zeta_init,
                nu_init=c.nu_init,
            )
        else:
            rnn_class = nn.GRU if c.cell == "gru" else nn.LSTM
            self.rnn = rnn_class(c.input_size, c.hidden_size, batch_first=True)
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.num_classes)

    def forward(self, x):
        """Logits from the last hidden state; a 2-D input is a length-1 sequence."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.size(-1) != self.config.input_size:
            raise ValueError(
                f"expected input [B, T, {self.config.input_size}] or "
                f"[B, {self.config.input_size}], got {tuple(x.shape)}"
            )
        if self.config.cell == "fastgrnn":
            _, h = self.rnn(x)
        else:
            h = self.rnn(x)[0][:, -1]
        return self.head(self.dropout(h))


def route_probability(logits):
    """P(class 1 = lightweight model suffices) from router logits [..., 2]."""
    if logits.size(-1) != 2:
        raise ValueError(f"router logits need 2 classes, got {logits.size(-1)}")
    return torch.softmax(logits, dim=-1)[..., LIGHTWEIGHT]


def unused_weights(model_config: dict, sequence_lengths) -> list[str]:
    """A FastGRNN trained only on single steps starts from h₀ = 0, so U h₀ = 0: U (or its factors)
    never received a gradient and never contributes. An export leaves it out (and the model then
    answers single steps only)."""
    if model_config.get("cell", "fastgrnn") != "fastgrnn" or list(sequence_lengths or []) != [1]:
        return []
    low_rank = model_config.get("u_rank") is not None
    return ["rnn.cell.U1", "rnn.cell.U2"] if low_rank else ["rnn.cell.U"]


FAMILY = Family(
    arch="sequence_classifier",
    config=SequenceClassifierConfig,
    model=SequenceClassifier,
    sources=("routing", "sequences"),
    task="pipeline.train.tasks:ClassificationTask",
    monitor=("val_accuracy", "max"),
    endpoint="route",
    predictor="serve.models:RoutePredictor",
    distillable=True,
    unused_weights="pipeline.models.classifier:unused_weights",
    description="FastGRNN (or GRU/LSTM) over a sequence + a linear head: the router, digits",
)
