"""nt_xent_loss against a hand-computed case and its invariants; the SimCLR module's outputs."""

import math

import torch

from methods import METHODS, build_method
from methods.simclr import nt_xent_loss
from networks import build_backbone


def reference_nt_xent(z1, z2, t):
    """The paper's formula written out with Python loops."""
    z = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in z1 + z2]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
        sims = {k: dot(z[i], z[k]) / t for k in range(2 * n) if k != i}
        total += -math.log(math.exp(sims[j]) / sum(math.exp(s) for s in sims.values()))
    return total / (2 * n)


def test_nt_xent_matches_hand_computed_case():
    z1 = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    z2 = [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    expected = reference_nt_xent(z1, z2, 0.5)
    got = nt_xent_loss(torch.tensor(z1), torch.tensor(z2), temperature=0.5)
    assert abs(got.item() - expected) < 1e-5


def test_nt_xent_two_orthogonal_pairs_exact_value():
    # z1 = z2 = e1, e2: positive similarity 1, negatives 0 and 0 -> -log(e^2 / (e^2 + 2)) at T=0.5
    e = torch.eye(2)
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert abs(nt_xent_loss(e, e.clone(), 0.5).item() - expected) < 1e-6


def test_nt_xent_random_matches_reference_and_is_scale_invariant():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    expected = reference_nt_xent(z1.tolist(), z2.tolist(), 0.2)
    assert abs(nt_xent_loss(z1, z2, 0.2).item() - expected) < 1e-4
    assert torch.allclose(nt_xent_loss(3 * z1, 0.5 * z2, 0.2), nt_xent_loss(z1, z2, 0.2))


def test_nt_xent_is_lower_for_aligned_views_and_has_gradients():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    aligned = nt_xent_loss(z, z + 0.01 * torch.randn_like(z))
    shuffled = nt_xent_loss(z, z[torch.randperm(8)])
    assert aligned < shuffled
    z1 = torch.randn(8, 16, requires_grad=True)
    nt_xent_loss(z1, torch.randn(8, 16)).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_simclr_module_forward_backward():
    assert "simclr" in METHODS
    backbone, feat_dim = build_backbone("resnet18", 32)
    model = build_method("simclr", backbone, feat_dim, proj_dim=64, temperature=None, lr=0.1)
    assert model.temperature == 0.5  # None keeps the paper default; unknown kwargs are dropped
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = model(views)
    assert out["z1"].shape == (4, 64) and out["z2"].shape == (4, 64)
    out["loss"].backward()
    assert model.backbone.conv1.weight.grad is not None
