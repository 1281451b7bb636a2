"""SwAV: Sinkhorn's marginals and hand-computed codes, the swapped-prediction loss, prototype
normalisation and freezing, the queue, and multi-crop through the module."""

import math

import pytest
import torch
import torch.nn.functional as F

from methods import build_method
from methods.swav import sinkhorn, swav_loss
from networks import build_backbone


def test_sinkhorn_marginals():
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(12, 16), dim=1) @ F.normalize(torch.randn(4, 16), dim=1).T
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (12, 4)
    # the last round normalises samples: each row is a distribution
    assert torch.allclose(codes.sum(dim=1), torch.ones(12), atol=1e-5)
    # many rounds converge to equipartition: each prototype receives B/K samples
    codes = sinkhorn(scores, epsilon=0.05, iterations=200)
    assert torch.allclose(codes.sum(dim=0), torch.full((4,), 3.0), atol=1e-3)


def test_sinkhorn_hand_computed_two_by_two():
    # sample 0 prefers prototype 0, sample 1 prototype 1: Q stays symmetric, q = (e, 1)/(e + 1)
    c, eps = 0.5, 0.25
    codes = sinkhorn(torch.tensor([[c, 0.0], [0.0, c]]), epsilon=eps, iterations=3)
    e = math.exp(c / eps)
    expected = torch.tensor([[e, 1.0], [1.0, e]]) / (e + 1)
    assert torch.allclose(codes, expected, atol=1e-6)


def test_sinkhorn_equipartition_overrides_a_shared_preference():
    # both samples prefer prototype 0; equal partition forces each to split evenly
    codes = sinkhorn(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), epsilon=0.05, iterations=3)
    assert torch.allclose(codes, torch.full((2, 2), 0.5), atol=1e-6)


def test_swav_loss_hand_computed_two_crops():
    c, eps, temp = 0.5, 0.25, 0.5
    s = torch.tensor([[c, 0.0], [0.0, c]])
    loss = swav_loss([s, s.clone()], [], temperature=temp, sinkhorn_iterations=3, epsilon=eps)
    # codes as in the 2x2 Sinkhorn case; prediction softmax(s / T) of the same scores
    e = math.exp(c / eps)
    q = [e / (e + 1), 1 / (e + 1)]
    log_p = [c / temp - math.log(math.exp(c / temp) + 1), -math.log(math.exp(c / temp) + 1)]
    expected = -(q[0] * log_p[0] + q[1] * log_p[1])  # the same for both samples and both crops
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_swav_loss_matches_a_loop_over_crops_and_sends_no_gradient_through_codes():
    torch.manual_seed(0)
    crops = [torch.randn(6, 5, requires_grad=True) for _ in range(4)]
    loss = swav_loss(crops[:2], crops[2:], temperature=0.1)
    expected = 0.0
    for i in range(2):
        q = sinkhorn(crops[i].detach())
        others = [v for v in range(4) if v != i]
        for v in others:
            expected += -(q * F.log_softmax(crops[v] / 0.1, dim=1)).sum(1).mean() / 3
    assert loss.item() == pytest.approx(expected.item() / 2, rel=1e-5)
    loss.backward()
    assert all(c.grad is not None for c in crops)  # each crop also predicts the other's code


def test_uniform_scores_give_log_k():
    k = 7
    loss = swav_loss([torch.zeros(4, k), torch.zeros(4, k)], [torch.zeros(4, k)])
    assert loss.item() == pytest.approx(math.log(k), rel=1e-6)


def tiny_swav(**kwargs):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("small_cnn", 16)
    dims = dict(proj_hidden_dim=32, proj_dim=16, num_prototypes=10)
    return build_method("swav", backbone, feat_dim, **dims, **kwargs)


def multicrop_batch(n=8, low=2):
    return [torch.randn(n, 3, 16, 16), torch.randn(n, 3, 16, 16)] + [
        torch.randn(n, 3, 8, 8) for _ in range(low)
    ]


def train_step(model, optimizer, epoch, step):
    model.set_epoch(epoch)
    loss = model(multicrop_batch())["loss"]
    optimizer.zero_grad()
    loss.backward()
    model.before_optimizer_step()
    optimizer.step()
    model.after_optimizer_step(step, 100)
    return loss


def test_prototypes_frozen_in_the_first_epoch_then_trained_and_kept_unit_norm():
    model = tiny_swav(freeze_prototypes_epochs=1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    norms = model.prototypes.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    before = model.prototypes.weight.detach().clone()
    backbone_before = next(model.backbone.parameters()).detach().clone()

    train_step(model, optimizer, epoch=0, step=0)
    assert torch.allclose(model.prototypes.weight, before, atol=1e-6)  # renormalised only
    assert not torch.equal(next(model.backbone.parameters()), backbone_before)

    train_step(model, optimizer, epoch=1, step=1)
    assert not torch.allclose(model.prototypes.weight, before, atol=1e-3)
    norms = model.prototypes.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)


def test_queue_fills_from_its_epoch_and_joins_sinkhorn_when_full():
    model = tiny_swav(queue_size=16, epoch_queue_starts=1)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_step(model, optimizer, epoch=0, step=0)
    assert model.queue_filled.item() == 0 and model.queue.abs().sum() == 0

    model.set_epoch(1)
    views = multicrop_batch()
    model(views)
    assert model.queue_filled.item() == 8
    # newest first: the front of the queue holds this batch's high-resolution embeddings
    with torch.no_grad():
        # the projector runs once over every crop, so its BatchNorm sees all of them
        features = model.features_by_resolution(model.backbone, views)
        z = F.normalize(model.projector(features), dim=1)[:16].chunk(2)
    assert torch.allclose(model.queue[0, :8], z[0], atol=1e-5)
    assert torch.allclose(model.queue[1, :8], z[1], atol=1e-5)

    model(views)  # queue full now (16): the next forward uses it, and its loss changes
    assert model.queue_filled.item() == 16
    model.eval()  # same BatchNorm output in both calls below
    with torch.no_grad():
        with_queue = model(views)["loss"]
        model.queue_filled.zero_()
        without_queue = model(views)["loss"]
    assert not torch.isclose(with_queue, without_queue)


def test_queue_and_prototypes_are_saved():
    keys = tiny_swav(queue_size=16).state_dict().keys()
    assert {"queue", "queue_filled", "prototypes.weight"} <= set(keys)
