"""vicreg_loss against hand-computed cases and its invariants; the VICReg module."""

import math

import pytest
import torch

from methods import METHODS, build_method
from methods.vicreg import vicreg_loss
from networks import build_backbone


def reference_vicreg(z1, z2, sim, std, cov, eps=1e-4):
    """The paper's formula with Python loops; z1, z2 nested lists [N][D]."""
    n, d = len(z1), len(z1[0])
    mse = sum((z1[i][j] - z2[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def var_and_cov(z):
        means = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        c = [
            [sum((z[k][i] - means[i]) * (z[k][j] - means[j]) for k in range(n)) / (n - 1)
             for j in range(d)]
            for i in range(d)
        ]  # fmt: skip
        v = sum(max(0.0, 1 - math.sqrt(c[j][j] + eps)) for j in range(d)) / d
        off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, off

    (v1, c1), (v2, c2) = var_and_cov(z1), var_and_cov(z2)
    return sim * mse + std * (v1 + v2) / 2 + cov * (c1 + c2)


def test_vicreg_hand_computed_numbers():
    # z1 = [[1, 2], [-1, -2]], z2 = 0: MSE 10/4; z1's stds √2, √8 > 1 (no hinge), z2's √eps;
    # z1's covariance off-diagonal 4 (twice) -> 2 * 16 / 2 = 16; z2's 0
    z1 = torch.tensor([[1.0, 2.0], [-1.0, -2.0]])
    z2 = torch.zeros(2, 2)
    expected = 25 * 2.5 + 25 * 0.5 * (1 - math.sqrt(1e-4)) + 16.0  # 90.875
    assert abs(vicreg_loss(z1, z2).item() - expected) < 1e-4


def test_vicreg_random_matches_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 4), 0.3 * torch.randn(6, 4)  # small z2: its variance hinge is active
    for coeffs in ((25.0, 25.0, 1.0), (1.0, 2.0, 3.0)):
        expected = reference_vicreg(z1.tolist(), z2.tolist(), *coeffs)
        assert abs(vicreg_loss(z1, z2, *coeffs).item() - expected) < 1e-4


def test_vicreg_identical_inputs_have_zero_invariance_term():
    torch.manual_seed(1)
    z = torch.randn(5, 3)
    assert vicreg_loss(z, z.clone(), sim_coeff=1.0, std_coeff=0.0, cov_coeff=0.0).item() == 0.0
    shifted = vicreg_loss(z, z + 1.0, sim_coeff=1.0, std_coeff=0.0, cov_coeff=0.0)
    assert abs(shifted.item() - 1.0) < 1e-6


def test_vicreg_constant_inputs_variance_term():
    # collapse: zero variance and covariance in every dimension -> std_coeff (1 - √eps)
    z = torch.full((4, 3), 0.7)
    for eps in (1e-4, 1e-2):
        expected = 25.0 * (1 - math.sqrt(eps))
        assert abs(vicreg_loss(z, z.clone(), eps=eps).item() - expected) < 1e-5


def test_vicreg_gradients_reach_both_inputs():
    torch.manual_seed(2)
    z1 = torch.randn(8, 6, requires_grad=True)
    z2 = (0.5 * torch.randn(8, 6)).requires_grad_()
    vicreg_loss(z1, z2).backward()
    for g in (z1.grad, z2.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_vicreg_build_method_filters_kwargs():
    backbone, _ = build_backbone("small_cnn", 16)
    kwargs = {"temperature": None, "unrelated_flag": 3, "sim_coeff": None, "cov_coeff": 2.0}
    model = build_method("vicreg", backbone, 256, **kwargs)
    assert (model.sim_coeff, model.std_coeff, model.cov_coeff) == (25.0, 25.0, 2.0)
    assert model.projector[0].in_features == 256 and model.projector[-1].out_features == 8192


@pytest.mark.parametrize("name", ["barlowtwins", "vicreg"])
def test_three_layer_projector_module_forward_backward(name):
    """Barlow Twins and VICReg wire a backbone to a 3-layer projector with no final BN."""
    assert name in METHODS
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("small_cnn", 16)
    model = build_method(name, backbone, feat_dim, proj_hidden_dim=64, proj_dim=32)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 and not isinstance(model.projector[-1], torch.nn.BatchNorm1d)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    out = model(views)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["z1"].shape == (8, 32) and out["z2"].shape == (8, 32)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
