"""barlow_twins_loss against hand-computed cases and its invariants; the BarlowTwins module."""

import math

import torch

from methods import build_method
from methods.barlowtwins import barlow_twins_loss
from networks import build_backbone

EPS = 1e-5  # BatchNorm1d's


def reference_barlow_twins(z1, z2, lambd):
    """The paper's formula with Python loops; z1, z2 nested lists [N][D]."""
    n, d = len(z1), len(z1[0])

    def standardise(z):
        out = [[0.0] * d for _ in range(n)]
        for j in range(d):
            col = [z[i][j] for i in range(n)]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n  # biased, as BatchNorm
            for i in range(n):
                out[i][j] = (col[i] - mean) / math.sqrt(var + EPS)
        return out

    a, b = standardise(z1), standardise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def test_barlow_twins_hand_computed_numbers():
    # z1 = z2 = [[1, 1], [-1, -1]]: mean 0, biased var 1, so every C_ij = 1 / (1 + eps)
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    c = 1 / (1 + EPS)
    expected = 2 * (1 - c) ** 2 + 0.1 * 2 * c**2
    assert abs(barlow_twins_loss(z, z.clone(), lambd=0.1).item() - expected) < 1e-6
    # opposite views: C_ii = -c -> on-diagonal 2 (1 + c)² ≈ 8
    expected = 2 * (1 + c) ** 2 + 0.1 * 2 * c**2
    assert abs(barlow_twins_loss(z, -z, lambd=0.1).item() - expected) < 1e-5


def test_barlow_twins_random_matches_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    for lambd in (5e-3, 0.5):
        expected = reference_barlow_twins(z1.tolist(), z2.tolist(), lambd)
        assert abs(barlow_twins_loss(z1, z2, lambd).item() - expected) < 1e-4


def test_barlow_twins_identical_decorrelated_inputs_give_zero():
    # two orthogonal ±1 columns: standardised already, uncorrelated -> C = I / (1 + eps)
    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z.clone()).item() < 1e-9
    # correlated dimensions are penalised by the off-diagonal term only
    corr = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert abs(barlow_twins_loss(corr, corr.clone(), lambd=1.0).item() - 2.0) < 1e-4


def test_barlow_twins_invariant_to_per_dimension_scale_and_shift():
    torch.manual_seed(1)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    loss = barlow_twins_loss(z1, z2)
    scale = torch.tensor([0.5, 2.0, 3.0, 10.0, 1.5])
    assert torch.allclose(barlow_twins_loss(z1 * scale, z2), loss, rtol=1e-4)
    assert torch.allclose(barlow_twins_loss(z1, z2 * scale + 4.0), loss, rtol=1e-4)
    # but not to a permutation of the batch in one view only
    assert not torch.allclose(barlow_twins_loss(z1, z2[torch.randperm(8)]), loss, rtol=1e-4)


def test_barlow_twins_gradients_reach_both_inputs():
    torch.manual_seed(2)
    z1 = torch.randn(8, 6, requires_grad=True)
    z2 = torch.randn(8, 6, requires_grad=True)
    barlow_twins_loss(z1, z2).backward()
    for g in (z1.grad, z2.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_barlowtwins_build_method_filters_kwargs():
    backbone, _ = build_backbone("small_cnn", 16)
    kwargs = {"temperature": None, "unrelated_flag": 3, "lambd": None}
    model = build_method("barlowtwins", backbone, 256, **kwargs)
    assert model.lambd == 0.0051  # official main.py's --lambd
    assert (
        model.projector[0].in_features == 256 and model.projector[-1].out_features == 8192
    )  # main.py
    model = build_method("barlowtwins", backbone, 256, lambd=0.01, proj_hidden_dim=16, proj_dim=8)
    assert model.lambd == 0.01 and model.projector[-1].out_features == 8
