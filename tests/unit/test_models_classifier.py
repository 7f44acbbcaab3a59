"""SequenceClassifier: config validation, shapes, baselines, and router behaviour."""

import pytest
import torch

from pipeline.models import build_model
from pipeline.models.classifier import SequenceClassifierConfig, route_probability


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"cell": "rnn"}, "cell"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"input_size": 2.5}, "input_size"),
        ({"num_classes": 1}, "num_classes"),
        ({"w_rank": 6}, "w_rank"),  # > min(input_size=5, hidden_size=16)
        ({"u_rank": 0}, "u_rank"),
        ({"w_sparsity": 0.0}, "w_sparsity"),
        ({"u_sparsity": 1.5}, "u_sparsity"),
        ({"dropout": 1.0}, "dropout"),
        ({"cell": "gru", "u_rank": 4}, "u_rank"),
        ({"cell": "lstm", "w_sparsity": 0.5}, "w_sparsity"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SequenceClassifierConfig(**kwargs)


@pytest.mark.parametrize("cell", ["fastgrnn", "gru", "lstm"])
def test_sequence_and_single_vector_inputs(cell):
    torch.manual_seed(0)
    model = build_model("sequence_classifier", cell=cell, input_size=5, hidden_size=8, num_classes=3).eval()
    assert model(torch.randn(4, 7, 5)).shape == (4, 3)
    x = torch.randn(4, 5)
    # a single feature vector is a length-1 sequence
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(4, 7, 6))


def test_route_probability_is_softmax_of_class_one():
    logits = torch.tensor([[0.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    p = route_probability(logits)
    torch.testing.assert_close(p, torch.softmax(logits, -1)[:, 1])
    assert p[0] == pytest.approx(0.5) and p[1] > 0.5 > p[2]
    with pytest.raises(ValueError, match="2 classes"):
        route_probability(torch.zeros(2, 3))


def _routing_data(n=512, seed=0):
    """Toy routing rule: the lightweight model suffices when the request is similar to a cached
    one and that route has mostly succeeded. Features: similarity, recency, frequency,
    success_rate, metadata_match, all in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 5, generator=g)
    score = 2.0 * x[:, 0] + x[:, 3] + 0.5 * x[:, 4] - 0.2 * x[:, 1]
    return x, (score > 1.75).long()


def test_router_learns_a_rule_and_is_monotone_in_similarity():
    torch.manual_seed(0)
    model = build_model("sequence_classifier", input_size=5, hidden_size=8)
    x, y = _routing_data()
    head_before = model.head.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert not torch.equal(model.head.weight, head_before), "the head must be trained"

    x_test, y_test = _routing_data(seed=1)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        assert accuracy > 0.9

        # directional behaviour: raising similarity (all else fixed) raises P(lightweight)
        base = torch.rand(64, 5, generator=torch.Generator().manual_seed(2))
        grid = torch.linspace(0, 1, 11)
        probs = []
        for s in grid:
            xs = base.clone()
            xs[:, 0] = s
            probs.append(route_probability(model(xs)))
        probs = torch.stack(probs, dim=1)  # [64, 11]
    assert (probs.diff(dim=1) >= -1e-3).all(), "P(lightweight) fell while similarity rose"
    assert (probs[:, -1] - probs[:, 0]).mean() > 0.5
