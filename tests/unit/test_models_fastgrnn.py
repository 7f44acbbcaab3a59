"""FastGRNN cell, sparsity phases, int8 export and size accounting."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.models import build_model
from pipeline.models.fastgrnn import (
    FastGRNN,
    FastGRNNCell,
    SparsitySchedule,
    apply_sparsity,
    load_int8,
    magnitude_prune,
    max_probability_diff,
    model_size_bytes,
    quantize_int8,
)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _numpy_step(x, h, W, U, b_z, b_h, zeta, nu):
    """The paper's equations, written independently of the module."""
    pre = x @ W.T + h @ U.T
    z = _sigmoid(pre + b_z)
    h_tilde = np.tanh(pre + b_h)
    return (_sigmoid(zeta) * (1 - z) + _sigmoid(nu)) * h_tilde + z * h


def _numpy_params(cell):
    p = {k: v.detach().double().numpy() for k, v in cell.named_parameters()}
    W = p["W"] if "W" in p else p["W1"] @ p["W2"]
    U = p["U"] if "U" in p else p["U1"] @ p["U2"]
    return W, U, p["bias_gate"], p["bias_update"], p["zeta"][0], p["nu"][0]


def _randomize(module):
    # Move every parameter (ζ, ν and biases too) away from its init so the check covers them.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))


@pytest.mark.parametrize("w_rank,u_rank", [(None, None), (3, 4)])
def test_layer_matches_numpy_equations(w_rank, u_rank):
    torch.manual_seed(0)
    layer = FastGRNN(5, 7, w_rank=w_rank, u_rank=u_rank).double()
    _randomize(layer)
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    h0 = torch.randn(4, 7, dtype=torch.float64)
    outputs, h_last = layer(x, h0)

    params = _numpy_params(layer.cell)
    h = h0.numpy()
    for t in range(6):
        h = _numpy_step(x[:, t].numpy(), h, *params)
        np.testing.assert_allclose(outputs[:, t].detach().numpy(), h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_last.detach().numpy(), h, rtol=1e-10, atol=1e-12)
    # the single-step forward agrees with the layer
    step = layer.cell(x[:, 0], h0)
    np.testing.assert_allclose(step.detach().numpy(), outputs[:, 0].detach().numpy(), rtol=1e-12)


def test_paper_initialisation_of_zeta_nu():
    cell = FastGRNNCell(3, 4)
    assert cell.zeta.item() == 1.0 and cell.nu.item() == -4.0
    # W and U are shared by gate and candidate: exactly one input and one recurrent matrix
    assert sorted(n for n, p in cell.named_parameters() if p.dim() == 2) == ["U", "W"]


def _toy_sequences(n=128, T=5, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, D, generator=g)
    y = (x[:, :, 0].sum(dim=1) > 0).long()
    return x, y


def test_zeta_nu_and_head_are_trained():
    torch.manual_seed(0)
    model = build_model("sequence_classifier", input_size=3, hidden_size=8)
    x, y = _toy_sequences()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert model.rnn.cell.zeta.grad.abs().item() > 0
        assert model.rnn.cell.nu.grad.abs().item() > 0
        opt.step()
    for name in ("rnn.cell.zeta", "rnn.cell.nu", "head.weight", "head.bias"):
        assert not torch.equal(before[name], dict(model.named_parameters())[name]), name


def test_low_rank_matrices_are_products_of_factors():
    cell = FastGRNNCell(10, 12, w_rank=2, u_rank=3)
    torch.testing.assert_close(cell.w_matrix(), cell.W1 @ cell.W2)
    torch.testing.assert_close(cell.u_matrix(), cell.U1 @ cell.U2)
    assert cell.w_matrix().shape == (12, 10) and cell.u_matrix().shape == (12, 12)
    assert torch.linalg.matrix_rank(cell.w_matrix()).item() <= 2
    assert torch.linalg.matrix_rank(cell.u_matrix()).item() <= 3
    n_params = sum(p.numel() for p in cell.parameters())
    assert n_params == 12 * 2 + 2 * 10 + 12 * 3 + 3 * 12 + 12 + 12 + 2


def test_sparsity_schedule_splits_epochs_in_three():
    s = SparsitySchedule(9)
    assert [s.phase(e) for e in range(9)] == ["dense"] * 3 + ["iht"] * 3 + ["fixed"] * 3
    assert SparsitySchedule(10, dense_frac=0.0, iht_frac=0.5).phase(0) == "iht"
    with pytest.raises(ValueError, match="dense_frac"):
        SparsitySchedule(10, dense_frac=1.5)


def _matrices(model):
    cell = model.rnn.cell
    return {n: getattr(cell, n) for n, _ in cell.sparse_targets()}


@pytest.mark.parametrize(
    "ranks,expected_nnz",
    [
        # 16x5 W kept 0.25 -> 20; 16x16 U kept 0.5 -> 128
        ({}, {"W": 20, "U": 128}),
        # factors: W1 16x4 -> 16, W2 4x5 -> 5, U1 16x8 -> 64, U2 8x16 -> 64
        ({"w_rank": 4, "u_rank": 8}, {"W1": 16, "W2": 5, "U1": 64, "U2": 64}),
    ],
)
def test_iht_keeps_exact_fraction_of_largest_entries(ranks, expected_nnz):
    torch.manual_seed(0)
    model = build_model(
        "sequence_classifier", input_size=5, hidden_size=16, w_sparsity=0.25, u_sparsity=0.5, **ranks
    )
    dense = {n: p.detach().clone() for n, p in _matrices(model).items()}
    masks = apply_sparsity(model, "iht")
    assert len(masks) == len(expected_nnz)
    for name, param in _matrices(model).items():
        nnz = int(torch.count_nonzero(param))
        assert nnz == expected_nnz[name], name
        kept = dense[name].abs()[param != 0]
        dropped = dense[name].abs()[param == 0]
        assert kept.min() >= dropped.max(), f"{name}: a larger entry was dropped"


@pytest.mark.parametrize("ranks", [{}, {"w_rank": 3, "u_rank": 6}])
def test_fixed_phase_keeps_pruned_entries_at_zero(ranks):
    torch.manual_seed(0)
    model = build_model(
        "sequence_classifier", input_size=3, hidden_size=12, w_sparsity=0.5, u_sparsity=0.3, **ranks
    )
    x, y = _toy_sequences()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def train_step(phase):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        apply_sparsity(model, phase)

    for _ in range(3):
        train_step("iht")
    support = {n: (p != 0).clone() for n, p in _matrices(model).items()}
    values = {n: p.detach().clone() for n, p in _matrices(model).items()}
    for _ in range(10):
        train_step("fixed")
    for name, param in _matrices(model).items():
        assert torch.equal(param != 0, support[name]), f"{name}: support changed"
        assert not torch.equal(param.detach(), values[name]), f"{name}: kept entries not retrained"


def test_dense_phase_is_a_no_op_and_dense_cells_are_never_thresholded():
    model = build_model("sequence_classifier", input_size=3, hidden_size=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert apply_sparsity(model, "dense") == {}
    assert apply_sparsity(model, "iht") == {}  # sparsity 1.0 = dense
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    with pytest.raises(ValueError, match="phase"):
        apply_sparsity(model, "sparse")


@pytest.mark.parametrize("cell", ["fastgrnn", "gru"])
def test_magnitude_prune_zeroes_smallest_and_fixed_phase_keeps_them(cell):
    torch.manual_seed(0)
    model = build_model("sequence_classifier", cell=cell, input_size=3, hidden_size=8)
    masks = magnitude_prune(model, 0.75)
    assert "head.weight" in masks
    for name, param in model.named_parameters():
        if param.dim() >= 2:
            assert int(torch.count_nonzero(param)) == param.numel() // 4, name
    x, y = _toy_sequences()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        apply_sparsity(model, "fixed")
    for name, param in model.named_parameters():
        if name in masks:
            assert not param[~masks[name]].any(), name


def test_int8_export_roundtrips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        "sequence_classifier", input_size=5, hidden_size=16, w_rank=4, w_sparsity=0.5, u_sparsity=0.5
    ).eval()
    apply_sparsity(model, "iht")
    q = quantize_int8(model)
    assert q["rnn.cell.W1"].dtype == torch.int8 and q["rnn.cell.U"].dtype == torch.int8
    assert q["head.weight"].dtype == torch.int8
    for name in ("rnn.cell.zeta", "rnn.cell.nu", "rnn.cell.bias_gate", "head.bias", "rnn.cell.U:scale"):
        assert q[name].dtype == torch.float32, name
    # pruned entries are still exactly zero after quantization
    assert torch.equal(q["rnn.cell.U"] == 0, model.rnn.cell.U == 0)

    save_file(q, str(tmp_path / "model.safetensors"))
    loaded = load_file(str(tmp_path / "model.safetensors"))
    x = torch.randn(64, 7, 5)
    int8_model = load_int8(
        build_model(
            "sequence_classifier", input_size=5, hidden_size=16, w_rank=4, w_sparsity=0.5, u_sparsity=0.5
        ),
        loaded,
    )
    p_float = torch.softmax(model(x), -1)
    p_int8 = torch.softmax(int8_model(x), -1)
    diff = max_probability_diff(model, x, loaded)
    # max_probability_diff runs its own copies of the two models: the same arithmetic on other
    # tensors, which BLAS may sum in another order (Intel MKL's AVX-512 kernels pick theirs by
    # memory alignment). Probabilities lie in [0, 1], where a float32 ulp is at most 1.2e-7; a few
    # ulps of reordering over 7 steps of 16-term sums stays well inside 1e-6 absolute.
    assert diff == pytest.approx((p_float - p_int8).abs().max().item(), rel=0, abs=1e-6)
    assert 0 < diff < 0.02


def test_model_size_counts_nonzero_parameters():
    model = build_model("sequence_classifier", input_size=5, hidden_size=16)
    torch.manual_seed(0)
    with torch.no_grad():
        # |w| in [0.5, 1]: no entry is zero (b_h is initialised to zero) or rounds to int8 zero
        for p in model.parameters():
            p.copy_(torch.sign(torch.randn_like(p)) * (0.5 + 0.5 * torch.rand_like(p)))
    n_params = sum(p.numel() for p in model.parameters())
    assert model_size_bytes(model) == 4 * n_params
    assert model_size_bytes(model, bytes_per_param=1) == n_params
    q = quantize_int8(model)
    # 3 int8 matrices (W, U, head) at 1 byte + their 3 float32 scales + float32 vectors
    n_matrix = 16 * 5 + 16 * 16 + 2 * 16
    assert model_size_bytes(q) == n_matrix + 3 * 4 + 4 * (n_params - n_matrix)

    with torch.no_grad():
        model.rnn.cell.U[:4] = 0.0  # 64 entries
        model.head.bias.zero_()  # 2 entries
    assert model_size_bytes(model) == 4 * (n_params - 66)
    assert model_size_bytes(quantize_int8(model)) == model_size_bytes(q) - 64 - 2 * 4
