"""supcon_loss against hand-computed cases, its equality with NT-Xent and its invariants; the
SupCon module's outputs."""

import math

import pytest
import torch

from methods import METHODS, build_method
from methods.simclr import nt_xent_loss
from methods.supcon import supcon_loss
from networks import build_backbone


def reference_supcon(z, labels, t):
    """The paper's L_out written out with Python loops; z is a nested list [N][V][D]."""
    flat, flat_labels = [], []
    for n, views in enumerate(z):
        for v in views:
            flat.append([x / math.sqrt(sum(y * y for y in v)) for x in v])
            flat_labels.append(labels[n])
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))
    total = 0.0
    for i in range(len(flat)):
        others = [a for a in range(len(flat)) if a != i]
        log_denominator = math.log(sum(math.exp(dot(flat[i], flat[a]) / t) for a in others))
        positives = [p for p in others if flat_labels[p] == flat_labels[i]]
        total += -sum(dot(flat[i], flat[p]) / t - log_denominator for p in positives) / len(
            positives
        )
    return total / len(flat)


def test_supcon_hand_computed_numbers():
    # z = [[e1, e1], [e2, e2]], T = 0.5: each anchor sees e^2 once, e^0 twice among its 3 others
    z = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    # same label: all 3 others positive -> log(e^2 + 2) - (2 + 0 + 0) / 3
    same = supcon_loss(z, torch.tensor([0, 0]), temperature=0.5)
    assert abs(same.item() - (math.log(math.exp(2) + 2) - 2 / 3)) < 1e-6
    # distinct labels: the other view only -> log(e^2 + 2) - 2, NT-Xent's value
    distinct = supcon_loss(z, torch.tensor([0, 1]), temperature=0.5)
    assert abs(distinct.item() - (math.log(math.exp(2) + 2) - 2)) < 1e-6


@pytest.mark.parametrize("views", [2, 3])
def test_supcon_random_matches_reference(views):
    torch.manual_seed(0)
    z = torch.randn(5, views, 4)
    labels = [0, 1, 0, 2, 1]
    expected = reference_supcon(z.tolist(), labels, 0.2)
    got = supcon_loss(z, torch.tensor(labels), temperature=0.2)
    assert abs(got.item() - expected) < 1e-4


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_equals_nt_xent_for_two_views_and_distinct_labels(temperature):
    torch.manual_seed(1)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    got = supcon_loss(torch.stack([z1, z2], dim=1), torch.arange(6), temperature)
    assert torch.allclose(got, nt_xent_loss(z1, z2, temperature), atol=1e-6)
    # any distinct labels, not only arange
    relabelled = supcon_loss(
        torch.stack([z1, z2], dim=1), torch.tensor([9, 3, 7, 0, 5, 1]), temperature
    )
    assert torch.allclose(relabelled, got, atol=1e-6)


def test_supcon_invariant_to_batch_permutation_and_scale():
    torch.manual_seed(2)
    z = torch.randn(6, 2, 4)
    labels = torch.tensor([0, 1, 1, 2, 0, 0])
    loss = supcon_loss(z, labels)
    perm = torch.randperm(6)
    assert torch.allclose(supcon_loss(z[perm], labels[perm]), loss, atol=1e-6)
    assert torch.allclose(supcon_loss(3.0 * z, labels), loss, atol=1e-6)  # normalised inside
    # labels matter: merging two classes changes the loss
    assert not torch.allclose(supcon_loss(z, torch.tensor([0, 1, 1, 1, 0, 0])), loss)


def test_supcon_edge_cases_are_finite():
    torch.manual_seed(3)
    z = torch.randn(4, 2, 3)
    assert torch.isfinite(supcon_loss(z, torch.zeros(4, dtype=torch.long)))  # one class
    # one view and distinct labels: no anchor has a positive, each contributes 0
    assert supcon_loss(torch.randn(4, 1, 3), torch.arange(4)).item() == 0.0
    with pytest.raises(ValueError):
        supcon_loss(z, torch.arange(3))


def test_supcon_gradients_reach_both_views():
    torch.manual_seed(4)
    z1 = torch.randn(6, 8, requires_grad=True)
    z2 = torch.randn(6, 8, requires_grad=True)
    supcon_loss(torch.stack([z1, z2], dim=1), torch.tensor([0, 1, 0, 1, 2, 2])).backward()
    for g in (z1.grad, z2.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_supcon_module_forward_backward():
    assert "supcon" in METHODS
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("small_cnn", 16)
    model = build_method("supcon", backbone, feat_dim, proj_hidden_dim=64, proj_dim=32)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    out = model(views, labels)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["z1"].shape == (8, 32) and out["z2"].shape == (8, 32)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="labels"):
        model(views)


def test_supcon_build_method_filters_kwargs():
    backbone, _ = build_backbone("small_cnn", 16)
    model = build_method("supcon", backbone, 256, **{"temperature": None, "unrelated_flag": 3})
    assert model.temperature == 0.1  # None keeps the paper default; unknown kwargs are dropped
    model = build_method("supcon", backbone, 256, temperature=0.07, lambd=0.1)
    assert model.temperature == 0.07
