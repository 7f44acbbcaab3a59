"""FastGRNN (Kusupati et al., NeurIPS 2018) and the compression tools the paper trains it with.

The cell, with W and U SHARED between the gate and the candidate (that sharing is the paper's
whole point: one matrix pair instead of GRU's three):

    z  = σ(W x + U h + b_z)
    h̃  = tanh(W x + U h + b_h)
    h' = (σ(ζ)(1 − z) + σ(ν)) ⊙ h̃ + z ⊙ h

ζ and ν are trained scalars. W = W1·W2 and U = U1·U2 when a rank is given.

Compression, as in the paper's three training phases (see `SparsitySchedule`):
  1. "dense"  – ordinary training;
  2. "iht"    – after every optimizer step keep only the largest-|w| fraction of each W/U matrix
                (iterative hard thresholding); low-rank cells threshold each factor;
  3. "fixed"  – the support found by IHT is frozen and re-applied after every step, so pruned
                entries stay exactly zero while the kept ones are retrained.
Then `quantize_int8` exports the weights as int8 + one float32 scale per matrix.
"""

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

# Suffix of the float32 scale stored next to each int8 tensor in a quantized dict. A ':' never
# appears in a PyTorch state_dict key, so it cannot collide with a parameter name.
SCALE_SUFFIX = ":scale"


class FastGRNNCell(nn.Module):
    """One FastGRNN step. Weights follow nn.Linear's layout: W is [hidden, input], U is [hidden, hidden]."""

    def __init__(
        self,
        input_size,
        hidden_size,
        w_rank=None,
        u_rank=None,
        w_sparsity=1.0,
        u_sparsity=1.0,
        zeta_init=1.0,
        nu_init=-4.0,
    ):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.w_rank, self.u_rank = w_rank, u_rank
        # fraction of entries KEPT in each W/U matrix (or factor) by the sparse phases
        self.w_sparsity, self.u_sparsity = w_sparsity, u_sparsity
        # Init so that W x and U h have unit-order variance whether or not the matrix is
        # factored: a product of factors with std 1/sqrt(r) and 1/sqrt(fan_in) has the same
        # variance as a dense matrix with std 1/sqrt(fan_in).
        if w_rank is None:
            self.W = nn.Parameter(torch.randn(hidden_size, input_size) / math.sqrt(input_size))
        else:
            self.W1 = nn.Parameter(torch.randn(hidden_size, w_rank) / math.sqrt(w_rank))
            self.W2 = nn.Parameter(torch.randn(w_rank, input_size) / math.sqrt(input_size))
        if u_rank is None:
            self.U = nn.Parameter(torch.randn(hidden_size, hidden_size) / math.sqrt(hidden_size))
        else:
            self.U1 = nn.Parameter(torch.randn(hidden_size, u_rank) / math.sqrt(u_rank))
            self.U2 = nn.Parameter(torch.randn(u_rank, hidden_size) / math.sqrt(hidden_size))
        # b_z = 1 starts the gate leaning towards "keep the old state" (the forget-gate-bias
        # trick), which helps gradients flow through time early in training.
        self.bias_gate = nn.Parameter(torch.ones(hidden_size))
        self.bias_update = nn.Parameter(torch.zeros(hidden_size))
        self.zeta = nn.Parameter(torch.tensor([float(zeta_init)]))
        self.nu = nn.Parameter(torch.tensor([float(nu_init)]))

    def w_matrix(self):
        """The full input matrix W ([hidden, input]); W1 @ W2 for a low-rank cell."""
        return self.W if self.w_rank is None else self.W1 @ self.W2

    def u_matrix(self):
        """The full recurrent matrix U ([hidden, hidden]); U1 @ U2 for a low-rank cell."""
        return self.U if self.u_rank is None else self.U1 @ self.U2

    def input_projection(self, x):
        """W x for x [..., input]; factored as (x W2ᵀ) W1ᵀ so a low-rank W is never materialised."""
        if self.w_rank is None:
            return x @ self.W.t()
        return (x @ self.W2.t()) @ self.W1.t()

    def recurrent_projection(self, h):
        """U h for h [..., hidden]."""
        if self.u_rank is None:
            return h @ self.U.t()
        return (h @ self.U2.t()) @ self.U1.t()

    def step(self, wx, h):
        """Advance one step given the precomputed input projection wx = W x ([B, hidden])."""
        pre = wx + self.recurrent_projection(h)
        z = torch.sigmoid(pre + self.bias_gate)
        h_tilde = torch.tanh(pre + self.bias_update)
        return (torch.sigmoid(self.zeta) * (1 - z) + torch.sigmoid(self.nu)) * h_tilde + z * h

    def forward(self, x, h):
        """x [B, input], h [B, hidden] -> next hidden state [B, hidden]."""
        return self.step(self.input_projection(x), h)

    def sparse_targets(self):
        """(parameter name, fraction kept) for every matrix the sparse phases threshold."""
        w_names = ["W"] if self.w_rank is None else ["W1", "W2"]
        u_names = ["U"] if self.u_rank is None else ["U1", "U2"]
        return [(n, self.w_sparsity) for n in w_names] + [(n, self.u_sparsity) for n in u_names]


class FastGRNN(nn.Module):
    """Runs a FastGRNNCell over a batch-first sequence [B, T, input]."""

    def __init__(self, input_size, hidden_size, **cell_kwargs):
        super().__init__()
        self.cell = FastGRNNCell(input_size, hidden_size, **cell_kwargs)

    def forward(self, x, h0=None):
        """x [B, T, input] -> (all hidden states [B, T, hidden], last hidden state [B, hidden])."""
        if not torch.is_grad_enabled():  # no_grad / inference_mode: nothing to backpropagate
            return self._forward_inference(x, h0)
        B, T, _ = x.shape
        h = x.new_zeros(B, self.cell.hidden_size) if h0 is None else h0
        # W is the same at every step, so project the whole sequence with one matmul.
        wx = self.cell.input_projection(x)
        outputs = []
        for t in range(T):
            h = self.cell.step(wx[:, t], h)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h

    def _forward_inference(self, x, h0=None):
        """The same recurrence with the per-step work cut down for inference, where a single sample
        pays for every operation: biases folded into the input projection for all steps at once,
        σ(ζ) and σ(ν) taken once, and the update rewritten with fewer operations:
        (σ(ζ)(1 − z) + σ(ν)) h̃ + z h  =  (σ(ζ) + σ(ν)) h̃ + z (h − σ(ζ) h̃)."""
        cell = self.cell
        B, T, _ = x.shape
        h = x.new_zeros(B, cell.hidden_size) if h0 is None else h0
        wx = cell.input_projection(x)
        wx_gate, wx_update = wx + cell.bias_gate, wx + cell.bias_update
        # a small batch multiplies by the full U (one matmul a step); a large one keeps U factored
        factored = cell.u_rank is not None and cell.hidden_size < B
        u_t = None if factored else cell.u_matrix().t()
        u1_t, u2_t = (cell.U1.t(), cell.U2.t()) if factored else (None, None)
        zeta, nu = torch.sigmoid(cell.zeta).item(), torch.sigmoid(cell.nu).item()
        outputs = []
        for t in range(T):
            uh = (h @ u2_t) @ u1_t if factored else h @ u_t
            z = torch.sigmoid(wx_gate[:, t] + uh)
            h_tilde = torch.tanh(wx_update[:, t] + uh)
            h = torch.add(z * torch.sub(h, h_tilde, alpha=zeta), h_tilde, alpha=zeta + nu)
            outputs.append(h)
        return torch.stack(outputs, dim=1), h


# ---------------------------------------------------------------------------------------------
# Sparsity: the paper's dense -> IHT -> fixed-support schedule, and plain magnitude pruning


@dataclass
class SparsitySchedule:
    """Splits `total_epochs` (0-indexed) into the dense, IHT and fixed-support phases."""

    total_epochs: int
    dense_frac: float = 1 / 3
    iht_frac: float = 1 / 3

    def __post_init__(self):
        if self.total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {self.total_epochs}")
        for name in ("dense_frac", "iht_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.dense_frac + self.iht_frac > 1.0 + 1e-9:
            raise ValueError("dense_frac + iht_frac must be <= 1")

    def phase(self, epoch):
        """ "dense", "iht" or "fixed" for this epoch."""
        dense_end = round(self.total_epochs * self.dense_frac)
        iht_end = round(self.total_epochs * (self.dense_frac + self.iht_frac))
        if epoch < dense_end:
            return "dense"
        return "iht" if epoch < iht_end else "fixed"


def num_kept(numel, fraction):
    """How many entries a matrix of `numel` entries keeps at `fraction` (at least one)."""
    return max(1, min(numel, math.floor(fraction * numel + 0.5)))


def top_fraction_mask(tensor, fraction):
    """Boolean mask of the num_kept(numel, fraction) entries of largest |value| (ties broken by topk)."""
    flat = tensor.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(num_kept(flat.numel(), fraction)).indices] = True
    return mask.view_as(tensor)


def _mask_store(module):
    # Masks live on the module that owns the parameter, keyed by the parameter's local name, so
    # they survive wrapping (e.g. DistributedDataParallel adds a "module." prefix) and do not
    # enter the state_dict (checkpoints stay plain weights; the support is just their zeros).
    return module.__dict__.setdefault("sparsity_masks", {})


def _stored_masks(model):
    for mod_name, module in model.named_modules():
        for pname, mask in module.__dict__.get("sparsity_masks", {}).items():
            yield f"{mod_name}.{pname}" if mod_name else pname, module, pname, mask


@torch.no_grad()
def apply_sparsity(model, phase):
    """Enforce the sparsity of `phase` on every FastGRNN cell in `model`; call after optimizer.step().

    "dense": does nothing. "iht": recomputes each W/U matrix's (or low-rank factor's) mask as its
    top-|w| fraction (the cell's w_sparsity / u_sparsity; 1.0 = never thresholded) and zeroes the
    rest. "fixed": reuses the last masks (computing them once if there are none, e.g. after a
    resume) so the support no longer changes. Masks from `magnitude_prune` are re-applied in the
    "iht" and "fixed" phases too. Returns {parameter name: bool mask} of the masks applied.
    """
    if phase not in ("dense", "iht", "fixed"):
        raise ValueError(f"phase must be 'dense', 'iht' or 'fixed', got {phase!r}")
    if phase == "dense":
        return {}
    for module in model.modules():
        if isinstance(module, FastGRNNCell):
            store = _mask_store(module)
            for pname, keep in module.sparse_targets():
                if keep < 1.0 and (phase == "iht" or pname not in store):
                    store[pname] = top_fraction_mask(getattr(module, pname), keep)
    applied = {}
    for full_name, module, pname, mask in _stored_masks(model):
        getattr(module, pname).mul_(mask)
        applied[full_name] = mask
    return applied


@torch.no_grad()
def magnitude_prune(model, amount):
    """Zero the `amount` fraction of smallest-|w| entries of every weight matrix (every parameter
    with >= 2 dims: FastGRNN W/U or their factors, GRU/LSTM weights, the linear head).

    The masks are remembered, so `apply_sparsity(model, "fixed")` after each later optimizer step
    keeps the pruned entries at zero while fine-tuning. Returns {parameter name: bool mask}.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    masks = {}
    for mod_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() < 2:
                continue
            mask = top_fraction_mask(param, 1.0 - amount)
            store = _mask_store(module)
            if pname in store:  # pruning twice never revives an entry
                mask &= store[pname]
            store[pname] = mask
            param.mul_(mask)
            masks[f"{mod_name}.{pname}" if mod_name else pname] = mask
    return masks


# ---------------------------------------------------------------------------------------------
# INT8 export and size accounting


@torch.no_grad()
def quantize_int8(model):
    """Symmetric per-tensor int8 quantization of `model.state_dict()`, ready for safetensors.

    Every floating tensor with >= 2 dims (the weight matrices: W/U or their factors, the head,
    GRU/LSTM weights) becomes `name` -> int8 (round(w / scale) in [-127, 127]) plus
    `name + ":scale"` -> float32 [1] with scale = max|w| / 127; zeros stay exactly zero, so the
    sparsity survives. Vectors and scalars (biases, ζ, ν) are tiny and stay float32.
    """
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.is_floating_point() and tensor.dim() >= 2:
            scale = tensor.abs().max().float().clamp_min(1e-12) / 127.0
            out[name] = torch.round(tensor / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[name + SCALE_SUFFIX] = scale.reshape(1)
        else:
            # clone: state_dict tensors share storage with the live parameters
            out[name] = (tensor.float() if tensor.is_floating_point() else tensor).clone()
    return out


def dequantize_int8(qdict):
    """Inverse of `quantize_int8`: a float32 state_dict (int8 × scale for every quantized tensor)."""
    state = {}
    for name, tensor in qdict.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if tensor.dtype == torch.int8:
            state[name] = tensor.float() * qdict[name + SCALE_SUFFIX]
        else:
            state[name] = tensor
    return state


def load_int8(model, qdict):
    """Load an int8 dict (e.g. from safetensors.torch.load_file) into `model`, a freshly built
    model of the same config; weights are dequantized once here. Returns the model in eval mode."""
    model.load_state_dict(dequantize_int8(qdict))
    return model.eval()


@torch.no_grad()
def max_probability_diff(model, x, qdict=None):
    """Largest |softmax(float model) − softmax(int8 model)| over the batch `x` and all classes.

    The int8 model is a copy of `model` loaded from `qdict` (default: quantize_int8(model))."""
    qdict = quantize_int8(model) if qdict is None else qdict
    int8_model = load_int8(copy.deepcopy(model), qdict)
    was_training = model.training
    model.eval()
    p_float = torch.softmax(model(x), dim=-1)
    p_int8 = torch.softmax(int8_model(x), dim=-1)
    model.train(was_training)
    return (p_float - p_int8).abs().max().item()


def model_size_bytes(model, bytes_per_param=4):
    """Model size as the FastGRNN paper counts it: NON-ZERO entries × bytes per entry.

    For an nn.Module: every parameter (weights, biases, ζ, ν, the head) counts
    nnz × bytes_per_param. For a dict from `quantize_int8`: every tensor counts nnz × its element
    size, i.e. 1 byte per non-zero int8 weight, plus 4 bytes per float32 scale and per non-zero
    float32 bias / ζ / ν. Like the paper, the indices a sparse storage format would need are not
    counted; buffers (none in our models) are not counted for a module.
    """
    if isinstance(model, dict):
        return sum(int(torch.count_nonzero(t)) * t.element_size() for t in model.values())
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters()) * bytes_per_param
