"""BYOL: the loss's values, the cosine momentum schedule, the EMA update after a real optimizer
step, and the target's place in checkpoints."""

import math

import pytest
import torch

from methods import build_method
from methods.byol import byol_loss
from methods.momentum import cosine_momentum, ema_update
from networks import build_backbone


def test_byol_loss_hand_computed():
    p = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])  # cos 1, 0, -1 -> 0, 2, 4
    assert byol_loss(p, z).item() == pytest.approx(2.0)


def test_byol_loss_sends_no_gradient_to_the_target():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_cosine_momentum_rises_from_base_to_one():
    base, total = 0.996, 1000
    assert cosine_momentum(0, total, base) == pytest.approx(base)
    assert cosine_momentum(total // 2, total, base) == pytest.approx((1 + base) / 2)
    assert cosine_momentum(total, total, base) == pytest.approx(1.0)
    values = [cosine_momentum(k, total, base) for k in range(total + 1)]
    assert all(a <= b for a, b in zip(values[:-1], values[1:], strict=True))
    # the paper's formula at a quarter: 1 - (1 - base)(cos(pi/4) + 1)/2
    expected = 1 - (1 - base) * (math.cos(math.pi / 4) + 1) / 2
    assert cosine_momentum(250, total, base) == pytest.approx(expected)


def test_ema_update_formula():
    target, online = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = target.weight.detach().clone()
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight.detach())


def tiny_byol(**kwargs):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("small_cnn", 16)
    dims = dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)
    return build_method("byol", backbone, feat_dim, **dims, **kwargs)


def test_target_follows_the_online_network_by_ema_after_a_step():
    model = tiny_byol(ema_momentum=0.9)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(n.startswith("target_") for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    target_before = [p.detach().clone() for p in model.target_backbone.parameters()]
    assert all(
        torch.equal(t, o) for t, o in zip(target_before, model.backbone.parameters(), strict=True)
    )

    model(views)["loss"].backward()
    assert next(model.backbone.parameters()).grad.abs().sum() > 0  # the loss reaches the backbone
    assert all(p.grad is None for p in model.target_backbone.parameters())
    optimizer.step()
    model.after_optimizer_step(0, 100)  # step 0: momentum = base

    for t, t0, o in zip(
        model.target_backbone.parameters(), target_before, model.backbone.parameters(), strict=True
    ):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * o.detach(), atol=1e-6)
    assert not torch.equal(next(model.target_backbone.parameters()), target_before[0])


def test_target_is_in_the_checkpoint_but_not_the_backbone_keys():
    model = tiny_byol()
    keys = model.state_dict().keys()
    assert any(k.startswith("target_backbone.") for k in keys)
    assert any(k.startswith("target_projector.") for k in keys)
    # main_linear takes the "backbone." keys: the online backbone, never the target
    backbone_keys = [k for k in keys if k.startswith("backbone.")]
    assert len(backbone_keys) == len(model.backbone.state_dict())


def test_symmetric_loss_bounds():
    model = tiny_byol()
    loss = model([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])["loss"].item()
    assert 0.0 <= loss <= 8.0
