"""Stage-1 autoencoder for financial-fact triplets (concept, unit, value), as in narrative_stack.

One input row = semantic embedding of the (concept, unit) pair ‖ the value scaled per pair, so
the LAST column is the value and the rest is the embedding. The model compresses the row into a
latent vector and reconstructs both parts; the latent feeds downstream models and the
reconstruction error is an anomaly score for the reported value.

With `linear_path`, encoder and decoder are each a linear map plus the MLP (z = A·x + MLP(x),
x̂ = B·z + MLP(z)): everything still passes through the latent_dim-wide bottleneck, and the model
contains PCA of that width as the special case MLP = 0. `init="pca"` asks the trainer to start
the linear maps at the PCA of the training rows (pipeline.train.pca_init) with the decoder MLP's
output zeroed, so training starts from the baseline and only has to improve on it. The value
term's loss can differ from the embedding's (`value_loss`): L1 on the value keeps most values
exact, which is what the median relative error of the raw value measures.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("l1", "mse")
INITS = ("random", "pca")


@dataclass
class AutoencoderConfig:
    input_dim: int = 65  # 64-d pair embedding ‖ 1 scaled value
    hidden: list[int] = field(default_factory=lambda: [256, 128])  # encoder widths; decoder mirrors
    latent_dim: int = 64
    dropout: float = 0.1
    loss: str = "mse"  # "l1" | "mse"
    alpha_embed: float = 1.0  # weight of the embedding reconstruction term
    alpha_value: float = 1.0  # weight of the value reconstruction term
    value_loss: str | None = None  # "l1" | "mse" for the value term; None = as `loss`
    linear_path: bool = False  # a linear map beside each MLP (encoder and decoder)
    init: str = "random"  # "random" | "pca": linear maps start at the training rows' PCA

    def __post_init__(self):
        for name, low in (("input_dim", 2), ("latent_dim", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.hidden, (list, tuple)) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden
        ):
            raise ValueError(f"hidden must be a list of positive integers, got {self.hidden!r}")
        self.hidden = list(self.hidden)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.value_loss is not None and self.value_loss not in LOSSES:
            raise ValueError(f"value_loss must be one of {LOSSES} or null, got {self.value_loss!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "pca" and not self.linear_path:
            raise ValueError("init='pca' needs linear_path=true (PCA initialises the linear maps)")
        if self.init == "pca" and self.latent_dim > self.input_dim:
            raise ValueError(
                f"init='pca' needs latent_dim <= input_dim ({self.input_dim}), got {self.latent_dim}"
            )
        for name in ("alpha_embed", "alpha_value"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.alpha_embed == 0 and self.alpha_value == 0:
            raise ValueError("alpha_embed and alpha_value cannot both be 0")


def _mlp(sizes, dropout):
    """Linear → ReLU → Dropout between consecutive sizes; the last layer is linear only."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """Fully connected encoder [B, input_dim] -> [B, latent_dim] and a mirrored decoder."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config
        self.encoder = _mlp([c.input_dim, *c.hidden, c.latent_dim], c.dropout)
        self.decoder = _mlp([c.latent_dim, *reversed(c.hidden), c.input_dim], c.dropout)
        if c.linear_path:
            self.encoder_linear = nn.Linear(c.input_dim, c.latent_dim)
            self.decoder_linear = nn.Linear(c.latent_dim, c.input_dim)

    def encode(self, x):
        """Latent vectors [B, latent_dim]."""
        latent = self.encoder(x)
        return latent + self.encoder_linear(x) if self.config.linear_path else latent

    def decode(self, latent):
        """Reconstructions [B, input_dim] of latent vectors."""
        recon = self.decoder(latent)
        return recon + self.decoder_linear(latent) if self.config.linear_path else recon

    def forward(self, x):
        """x [B, input_dim] -> (reconstruction [B, input_dim], latent [B, latent_dim])."""
        latent = self.encode(x)
        return self.decode(latent), latent

    @torch.no_grad()
    def init_linear_from_pca(self, mean, components):
        """Start the linear maps at PCA: z = C·(x − mean), x̂ = Cᵀ·z + mean, with `components`
        C [latent_dim, input_dim] (orthonormal rows). The last layers of both MLPs are zeroed
        (as residual branches often start), so the model's first output is the PCA
        reconstruction; their gradients are not zero, so training moves them at once."""
        if not self.config.linear_path:
            raise ValueError("init_linear_from_pca needs a model with linear_path=true")
        mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        comps = torch.as_tensor(np.asarray(components), dtype=torch.float32)
        if mean.shape != (self.config.input_dim,) or comps.shape != (
            self.config.latent_dim,
            self.config.input_dim,
        ):
            raise ValueError(
                f"PCA shapes {tuple(mean.shape)}, {tuple(comps.shape)} do not fit input_dim="
                f"{self.config.input_dim}, latent_dim={self.config.latent_dim}"
            )
        self.encoder_linear.weight.copy_(comps)
        self.encoder_linear.bias.copy_(-comps @ mean)
        self.decoder_linear.weight.copy_(comps.T)
        self.decoder_linear.bias.copy_(mean)
        for mlp in (self.encoder, self.decoder):
            mlp[-1].weight.zero_()
            mlp[-1].bias.zero_()

    def _elementwise(self, x, recon):
        """Elementwise loss [B, input_dim]: `loss` on the embedding columns, `value_loss` on the last."""
        fn = F.l1_loss if self.config.loss == "l1" else F.mse_loss
        err = fn(recon, x, reduction="none")
        value_loss = self.config.value_loss or self.config.loss
        if value_loss != self.config.loss:
            value_fn = F.l1_loss if value_loss == "l1" else F.mse_loss
            err = torch.cat([err[:, :-1], value_fn(recon[:, -1:], x[:, -1:], reduction="none")], dim=1)
        return err

    def reconstruction_loss(self, x, recon):
        """(total, embed_part, value_part): each part is the mean elementwise loss over its
        columns (embedding = all but the last column, value = the last); total =
        alpha_embed·embed_part + alpha_value·value_part."""
        err = self._elementwise(x, recon)
        embed_part, value_part = err[:, :-1].mean(), err[:, -1].mean()
        total = self.config.alpha_embed * embed_part + self.config.alpha_value * value_part
        return total, embed_part, value_part

    def per_sample_error(self, x, recon):
        """Anomaly score per row [B]: the same weighted loss as `reconstruction_loss`, per sample."""
        err = self._elementwise(x, recon)
        return self.config.alpha_embed * err[:, :-1].mean(dim=1) + self.config.alpha_value * err[:, -1]


def pca_from_moments(count, sum_x, sum_xx, width):
    """(mean [D], components [width, D]) of rows given their count, sum and sum of outer
    products (float64): the top `width` eigenvectors of the covariance, sign fixed so each
    component's largest entry is positive (deterministic across runs and workers)."""
    count = float(count)
    if count < 2:
        raise ValueError(f"PCA needs at least 2 training rows, got {count:g}")
    sum_x, sum_xx = np.asarray(sum_x, dtype=np.float64), np.asarray(sum_xx, dtype=np.float64)
    mean = sum_x / count
    cov = (sum_xx - count * np.outer(mean, mean)) / (count - 1)
    eigvals, eigvecs = np.linalg.eigh((cov + cov.T) / 2)
    comps = eigvecs[:, np.argsort(eigvals)[::-1][:width]].T
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return mean, comps * np.where(signs == 0, 1.0, signs)[:, None]


# ---------------------------------------------------------------------------------------------
# Evaluation metrics (NumPy; pass tensors through .cpu().numpy() first)


def embedding_cosine_similarity(x, recon, eps=1e-8):
    """Cosine similarity per row [B] between the embedding parts (all but the last column)."""
    a = np.asarray(x, dtype=np.float64)[:, :-1]
    b = np.asarray(recon, dtype=np.float64)[:, :-1]
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), eps)
    return np.sum(a * b, axis=1) / norms
