"""MoCo v2 and v3: both losses against hand-computed values and independent loops, the queue
(wrap-around, pointer, enqueue after the step, checkpoint and resume), the EMA key encoder after
a real optimizer step, both losses (and NNCLR's) under two gloo processes, and main.py end to
end."""

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

from methods import METHODS, build_method
from methods.moco import (
    SplitBatchNorm2d,
    enqueue,
    moco_loss,
    mocov3_loss,
    shuffled_forward,
    split_batchnorm_layers,
)
from methods.momentum import cosine_momentum, ema_update
from methods.nnclr import nnclr_loss
from networks import build_backbone
from utils.checkpoint import load_checkpoint
from utils.distributed import gather, gather_with_grad
from utils.processes import run_processes

# ---------------------------------------------------------------- MoCo v2 loss


def test_moco_loss_hand_computed():
    # cosines: positive 1, negatives 0 and -1; T = 0.5 -> logits 2, 0, -2
    q = torch.tensor([[3.0, 0.0]])  # normalised inside
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert moco_loss(q, k, queue, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_moco_loss_matches_a_loop():
    torch.manual_seed(0)
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    queue = F.normalize(torch.randn(7, 8), dim=1)
    t = 0.2
    total = 0.0
    for i in range(5):
        qi, ki = q[i] / q[i].norm(), k[i] / k[i].norm()
        pos = math.exp(float(qi @ ki) / t)
        neg = sum(math.exp(float(qi @ queue[j]) / t) for j in range(7))
        total += -math.log(pos / (pos + neg))
    assert moco_loss(q, k, queue, t).item() == pytest.approx(total / 5, rel=1e-5)


def test_moco_loss_is_log_k_plus_one_when_all_similarities_are_equal():
    # q orthogonal to its key and to all K negatives: K + 1 equal logits
    num_neg = 6
    eye = torch.eye(num_neg + 2)
    q, k, queue = eye[:1], eye[1:2], eye[2:]
    loss = moco_loss(q, k, queue, temperature=0.07)
    assert loss.item() == pytest.approx(math.log(num_neg + 1), rel=1e-6)


def test_moco_loss_sends_gradient_to_queries_only():
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    queue = torch.randn(5, 8, requires_grad=True)
    moco_loss(q, k, queue).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


# ---------------------------------------------------------------- the queue


def test_enqueue_wraps_around_and_moves_the_pointer():
    queue, ptr = torch.zeros(1, 5, 2), torch.zeros((), dtype=torch.long)
    keys = torch.arange(1.0, 8.0)[:, None].repeat(1, 2)  # rows (1,1), (2,2), ... (7,7)

    enqueue(queue, ptr, keys[None, :3])
    assert queue[0, :, 0].tolist() == [1, 2, 3, 0, 0] and ptr.item() == 3
    enqueue(queue, ptr, keys[None, 3:6])  # 4, 5 at the end, 6 wraps to the front
    assert queue[0, :, 0].tolist() == [6, 2, 3, 4, 5] and ptr.item() == 1
    assert torch.equal(queue[0, :, 0], queue[0, :, 1])


def test_enqueue_of_more_keys_than_the_queue_keeps_the_newest():
    queue, ptr = torch.zeros(4, 1), torch.tensor(1)
    enqueue(queue, ptr, torch.arange(1.0, 7.0)[:, None])  # 6 keys, room for 4: 3, 4, 5, 6
    assert queue[:, 0].tolist() == [6, 3, 4, 5] and ptr.item() == 1


def tiny(name: str, **kwargs):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("small_cnn", 16)
    if name == "mocov2":
        dims = dict(proj_hidden_dim=32, proj_dim=16, queue_size=12)
    else:
        dims = dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32)
    return build_method(name, backbone, feat_dim, **{**dims, **kwargs})


def two_views(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)]


def train_step(model, optimizer, views, step=0, total=100):
    loss = model(views)["loss"]
    optimizer.zero_grad()
    loss.backward()
    model.before_optimizer_step()
    optimizer.step()
    model.after_optimizer_step(step, total)
    return loss


def test_mocov2_enqueues_the_normalised_keys_of_the_step_after_it():
    # a fixed key encoder: keys are reproducible
    model = tiny("mocov2", ema_momentum=1.0, symmetric=True, shuffle_bn=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    initial = model.queue.clone()
    assert model.queue.shape == (2, 12, 16)  # symmetric: one queue per direction
    assert torch.allclose(initial.norm(dim=2), torch.ones(2, 12))

    views = two_views()
    with torch.no_grad():
        model.eval()
        model(views)  # evaluation forwards leave the queue alone
        model.train()
        # the keys as the key encoder sees them in training: one call per view (BatchNorm
        # statistics per view, as the official encoder_k(im_k))
        key = lambda x: F.normalize(model.target_projector(model.target_backbone(x)))
        k = torch.cat([key(views[1]), key(views[0])])
    loss = model(views)["loss"]
    assert torch.equal(model.queue, initial)  # not before the optimizer step
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.after_optimizer_step(0, 100)
    # direction 0 (queries of view 1) keeps keys of view 2; direction 1 those of view 1
    assert torch.allclose(model.queue[0, :8], k[:8], atol=1e-5)
    assert torch.allclose(model.queue[1, :8], k[8:], atol=1e-5)
    assert torch.equal(model.queue[:, 8:], initial[:, 8:]) and model.queue_ptr.item() == 8

    train_step(model, optimizer, views, step=1)  # 8 more: 4 at the end, 4 wrap to the front
    assert model.queue_ptr.item() == 4
    keys = k.view(2, 8, 16)  # the same keys again: fixed key encoder, same views
    assert torch.allclose(model.queue[:, 8:], keys[:, :4], atol=1e-5)
    assert torch.allclose(model.queue[:, :4], keys[:, 4:], atol=1e-5)
    assert torch.allclose(model.queue[:, 4:8], keys[:, 4:], atol=1e-5)  # from the first step


def test_mocov2_queue_is_in_the_checkpoint_and_resumes():
    model = tiny("mocov2")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        train_step(model, optimizer, two_views(seed=step), step)
    state = model.state_dict()
    assert {"queue", "queue_ptr"} <= set(state) and state["queue_ptr"].item() == 16 % 12

    restored = tiny("mocov2")
    assert not torch.equal(restored.queue, model.queue)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, model.queue) and restored.queue_ptr.item() == 4
    model.eval()
    restored.eval()
    views = two_views(seed=5)
    with torch.no_grad():
        assert torch.equal(model(views)["loss"], restored(views)["loss"])


def test_mocov2_default_is_the_paper_one_direction_one_queue_loss():
    model = tiny("mocov2", ema_momentum=1.0)
    assert model.queue.shape == (1, 12, 16)
    views = two_views()
    model.eval()
    with torch.no_grad():
        q = model.projector(model.backbone(views[0]))
        k = model.target_projector(model.target_backbone(views[1]))
        expected = moco_loss(q, k, model.queue[0], 0.2)
        out = model(views)
        assert torch.allclose(out["loss"], expected)
        # the monitors' pair: the query and its positive key
        assert torch.allclose(out["z2"], F.normalize(k), atol=1e-6)
        symmetric = tiny("mocov2", ema_momentum=1.0, symmetric=True).eval()
        q2 = symmetric.projector(symmetric.backbone(views[1]))
        k1 = symmetric.target_projector(symmetric.target_backbone(views[0]))
        both = (expected + moco_loss(q2, k1, symmetric.queue[1], 0.2)) / 2
        assert torch.allclose(symmetric(views)["loss"], both)


def test_mocov2_head_has_no_batchnorm_and_paper_defaults():
    backbone, feat_dim = build_backbone("small_cnn", 16)
    model = build_method("mocov2", backbone, feat_dim)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in model.projector.modules())
    assert model.projector[-1].out_features == 128 and model.queue.shape == (1, 65536, 128)
    assert (model.temperature, model.ema_momentum) == (0.2, 0.999)
    assert not model.symmetric and not model.ema_cosine  # moco/builder.py
    assert METHODS["mocov2"].augmentation == "simclr"
    with pytest.raises(ValueError, match="queue_size"):
        build_method("mocov2", backbone, feat_dim, queue_size=0)


def test_split_batchnorm_normalises_each_interleaved_part_as_a_batch_of_its_own():
    """The CIFAR demo's SplitBatchNorm: part s holds the images n with n mod S = s; running
    statistics move by the parts' mean; eval mode and the state dict are BatchNorm2d's."""
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
    split = copy.deepcopy(plain)
    split.__class__ = SplitBatchNorm2d
    split.num_splits = 4
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    out = split(x)
    w, b = plain.weight, plain.bias
    for s in range(4):
        part = F.batch_norm(x[s::4], None, None, w, b, training=True, eps=plain.eps)
        assert torch.allclose(out[s::4], part, atol=1e-5)
    parts = torch.stack([x[s::4] for s in range(4)])  # [S, N / S, C, H, W]
    mean = parts.mean(dim=(1, 3, 4)).mean(dim=0)
    var = parts.transpose(1, 2).reshape(4, 3, -1).var(dim=2).mean(dim=0)  # unbiased, per part
    assert torch.allclose(split.running_mean, 0.1 * mean, atol=1e-5)
    assert torch.allclose(split.running_var, 0.9 + 0.1 * var, atol=1e-5)
    assert split.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(split.state_dict())
    split.eval(), plain.eval()
    assert torch.allclose(split(x), plain(x))
    split.train()
    six = torch.randn(6, 3, 5, 5)  # 4 does not divide 6: gcd(6, 4) = 2 parts
    part = F.batch_norm(six[0::2], None, None, w, b, training=True, eps=plain.eps)
    assert torch.allclose(split(six)[0::2], part, atol=1e-5)


def test_shuffled_forward_encodes_a_permutation_and_puts_the_rows_back():
    torch.manual_seed(0)
    images, seen = torch.randn(16, 5), []

    def encode(x):
        seen.append(x)
        return 2 * x

    assert torch.equal(shuffled_forward(encode, images), 2 * images)
    assert not torch.equal(seen[0], images)  # shuffled ...
    assert torch.equal(seen[0].sort(dim=0).values, images.sort(dim=0).values)  # ... the same rows


def test_mocov2_keys_are_the_demos_shuffled_split_batchnorm_keys():
    """Shuffle-BN by default (moco/builder.py; on one process the CIFAR demo's emulation): the
    keys are the key encoder's output on the shuffled batch with BatchNorm over 8 splits, put
    back in order; the splits hold only inside the training forward; --shuffle_bn false gives
    plain BatchNorm."""
    model = tiny("mocov2", ema_momentum=1.0)
    assert model.bn_splits == 8
    layers = [m for m in model.target_backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert layers and all(type(m) is SplitBatchNorm2d for m in layers)
    seen = []
    layers[0].register_forward_hook(lambda m, i, o: seen.append(m.num_splits))
    views = two_views(n=16)
    reference = copy.deepcopy(model)
    torch.manual_seed(3)
    model(views)
    assert seen == [8] and layers[0].num_splits == 1  # split inside the forward only
    torch.manual_seed(3)
    order = torch.randperm(16)
    with torch.no_grad(), reference.split_batchnorm():
        k = reference.target_projector(reference.target_backbone(views[1][order]))
    expected = F.normalize(k, dim=1)[torch.argsort(order)]
    assert torch.allclose(model._pending[0], expected, atol=1e-5)
    plain = tiny("mocov2", shuffle_bn=False)
    norms = [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(type(m) is torch.nn.BatchNorm2d for m in norms)
    with pytest.raises(ValueError, match="bn_splits"):
        tiny("mocov2", shuffle_bn=False, bn_splits=4)


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_key_encoder_follows_the_query_encoder_by_ema_after_a_step(name):
    model = tiny(name, ema_momentum=0.9, **({"ema_cosine": True} if name == "mocov2" else {}))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(n.startswith("target_") for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    online = list(model.backbone.parameters()) + list(model.projector.parameters())
    target = list(model.target_backbone.parameters()) + list(model.target_projector.parameters())
    before = [p.detach().clone() for p in target]
    assert all(torch.equal(t, o) for t, o in zip(before, online, strict=True))

    model(two_views())["loss"].backward()
    assert next(model.backbone.parameters()).grad.abs().sum() > 0
    assert all(p.grad is None for p in target)
    optimizer.step()
    model.after_optimizer_step(0, 100)  # MoCo v2: m(0) = 0.9; MoCo v3: m(1), the next step's
    m = 0.9 if name == "mocov2" else cosine_momentum(1, 100, 0.9)
    assert model.current_momentum == pytest.approx(m)
    for t, t0, o in zip(target, before, online, strict=True):
        assert torch.allclose(t, m * t0 + (1 - m) * o.detach(), atol=1e-6)
    assert not torch.equal(target[0], before[0])
    # the end of the cosine, momentum 1: the target stays (MoCo v3: the last step's update, 99,
    # uses m(100), the official loop's next step's)
    model.after_optimizer_step(100 if name == "mocov2" else 99, 100)
    assert model.current_momentum == pytest.approx(1.0)


def test_mocov3_updates_its_momentum_encoder_as_the_official_loop():
    """main_moco.py / builder.py: at the start of step k, the momentum encoder takes the online
    weights with momentum m(k), then gives the keys; ours updates after step k's optimizer step
    with m(k + 1). Three steps of each from the same weights: the same losses, and the same
    momentum encoder once the official loop has made step 3's update."""
    torch.manual_seed(0)
    ours = tiny("mocov3", ema_momentum=0.9)
    official = copy.deepcopy(ours)
    total, views = 10, two_views()
    losses = []
    for model, official_order in ((ours, False), (official, True)):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        run = []
        for step in range(3):
            if official_order:  # builder.py forward: self._update_momentum_encoder(m) first
                m = cosine_momentum(step, total, 0.9)  # adjust_moco_momentum(epoch + i/iters)
                ema_update(model.target_backbone, model.backbone, m)
                ema_update(model.target_projector, model.projector, m)
            loss = model(views)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if not official_order:
                model.after_optimizer_step(step, total)
            run.append(loss.item())
        losses.append(run)
    m = cosine_momentum(3, total, 0.9)  # the official step 3's update
    ema_update(official.target_backbone, official.backbone, m)
    ema_update(official.target_projector, official.projector, m)
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (name, a), b in zip(ours.state_dict().items(), official.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_mocov2_momentum_is_constant_by_default_as_the_paper():
    model = tiny("mocov2", ema_momentum=0.9)
    for step in (0, 50, 100):
        model.after_optimizer_step(step, 100)
        assert model.current_momentum == 0.9


# ---------------------------------------------------------------- MoCo v3 loss


def test_mocov3_loss_hand_computed():
    # q_i.k_j = 1 if i = j else 0, T = 0.5: per row CE = log(1 + e^-2); times 2T = 1
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    expected = math.log(1 + math.exp(-2))
    assert mocov3_loss(q, k, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_mocov3_loss_matches_a_loop_and_is_scaled_by_2t():
    torch.manual_seed(0)
    q, k = torch.randn(6, 8), torch.randn(6, 8)
    for t in (0.2, 1.0):
        ce = 0.0
        for i in range(6):
            qi = q[i] / q[i].norm()
            logits = [float(qi @ (k[j] / k[j].norm())) / t for j in range(6)]
            ce += -logits[i] + math.log(sum(math.exp(x) for x in logits))
        assert mocov3_loss(q, k, t).item() == pytest.approx(2 * t * ce / 6, rel=1e-5)


def test_mocov3_loss_is_2t_log_n_when_all_similarities_are_equal():
    n, t = 5, 0.2
    eye = torch.eye(2 * n)
    loss = mocov3_loss(eye[:n], eye[n:], temperature=t)  # every q orthogonal to every k
    assert loss.item() == pytest.approx(2 * t * math.log(n), rel=1e-6)


def test_mocov3_loss_sends_no_gradient_to_the_keys():
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    mocov3_loss(q, k).backward()
    assert q.grad is not None and k.grad is None


def test_mocov3_heads_and_defaults():
    backbone, feat_dim = build_backbone("small_cnn", 16)
    model = build_method("mocov3", backbone, feat_dim)
    # official MoCo_ResNet: a 2-layer projector ending in BatchNorm, a predictor without it,
    # no biases anywhere
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [4096, 256]
    assert isinstance(model.projector[-1], torch.nn.BatchNorm1d)  # BN on the output too
    assert not model.projector[-1].affine
    assert isinstance(model.predictor[-1], torch.nn.Linear)
    assert model.predictor[0].out_features == 4096
    heads = [*model.projector, *model.predictor]
    assert all(m.bias is None for m in heads if isinstance(m, torch.nn.Linear))
    # official MoCo_ViT: a 3-layer projector and a predictor ending in BatchNorm
    vit = build_method("mocov3", *build_backbone("vit_tiny", 16), proj_hidden_dim=64)
    linears = [m for m in vit.projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 64, 256]
    assert isinstance(vit.predictor[-1], torch.nn.BatchNorm1d)
    assert vit.temperature == 0.2  # CONFIG.md's ViT commands
    # --proj_layers gives the paper's 3-layer projector on a CNN too
    three = build_method("mocov3", *build_backbone("small_cnn", 16), proj_layers=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in three.projector) == 3
    assert (model.temperature, model.ema_momentum) == (1.0, 0.99)  # main_moco.py's --moco-t
    assert METHODS["mocov3"].augmentation == "byol"
    keys = model.state_dict().keys()
    assert any(k.startswith("target_projector.") for k in keys)
    assert not any(k.startswith("target_predictor") for k in keys)  # no momentum predictor


def test_mocov3_builds_a_vit_as_vits_py_with_a_random_patch_projection():
    """moco-v3 vits.py VisionTransformerMoCo with --stop-grad-conv1 (CONFIG.md's ViT commands)."""
    torch.manual_seed(0)
    heads = dict(proj_hidden_dim=32, pred_hidden_dim=32)
    model = build_method("mocov3", *build_backbone("vit_tiny", 32), **heads)
    vit, dim, patch = model.backbone, 192, 4
    # fixed 2-D sine-cosine positions, the row first: patch (row 2, column 5) of the 8x8 grid
    pos = vit.encoder.pos_embedding.detach()[0]
    omega = 1.0 / 10000 ** (torch.arange(dim // 4) / (dim // 4))
    for offset, p in ((0, 2.0), (dim // 2, 5.0)):  # [sin, cos] of the row, then of the column
        expected = torch.cat([torch.sin(p * omega), torch.cos(p * omega)])
        assert torch.allclose(pos[1 + 2 * 8 + 5, offset : offset + dim // 2], expected, atol=1e-5)
    assert not pos[0].any() and not vit.encoder.pos_embedding.requires_grad
    # Xavier-uniform bounds: q, k, v each a [D, D] matrix; the patch projection [D, 3 p^2]
    attention = vit.encoder.layers[0].self_attention
    in_proj = attention.in_proj_weight.detach()
    assert in_proj.abs().max() <= math.sqrt(6 / (2 * dim)) < in_proj.abs().max() * 1.01
    conv = vit.conv_proj.weight.detach()
    bound = math.sqrt(6 / (3 * patch * patch + dim))
    assert conv.abs().max() <= bound < conv.abs().max() * 1.01
    linears = [m for m in vit.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(not m.bias.detach().any() for m in linears)
    assert not attention.in_proj_bias.detach().any()
    assert vit.class_token.detach().std() < 1e-5  # N(0, 1e-6)
    # the patch projection gets no gradient; the momentum encoder starts as the online one
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    model(views)["loss"].backward()
    assert (
        vit.conv_proj.weight.grad is None and vit.encoder.layers[0].mlp[0].weight.grad is not None
    )
    assert torch.equal(model.target_backbone.conv_proj.weight, vit.conv_proj.weight)
    trained = build_method(
        "mocov3", *build_backbone("vit_tiny", 32), stop_grad_conv1=False, **heads
    )
    assert trained.backbone.conv_proj.weight.requires_grad
    with pytest.raises(ValueError, match="stop_grad_conv1"):
        build_method("mocov3", *build_backbone("small_cnn", 16), stop_grad_conv1=True, **heads)


def test_mocov3_module_loss_is_the_symmetric_sum():
    model = tiny("mocov3", ema_momentum=1.0)
    model.eval()
    views = two_views()
    with torch.no_grad():
        q1, q2 = (model.predictor(model.projector(model.backbone(v))) for v in views)
        k1, k2 = (model.target_projector(model.target_backbone(v)) for v in views)
        t = model.temperature
        expected = mocov3_loss(q1, k2, t) + mocov3_loss(q2, k1, t)
        assert torch.allclose(model(views)["loss"], expected, atol=1e-6)


# ---------------------------------------------------------------- two processes

WORLD, N, D = 2, 4, 6
torch.manual_seed(0)
Q, K = torch.randn(WORLD * N, D), torch.randn(WORLD * N, D)
QUEUE = F.normalize(torch.randn(5, D), dim=1)


def worker(rank: int, results: dict) -> None:
    part = slice(rank * N, (rank + 1) * N)
    out = {}
    for name, fn in (("mocov3", mocov3_loss), ("moco", lambda q, k: moco_loss(q, k, QUEUE))):
        q = Q[part].clone().requires_grad_()
        loss = fn(q, K[part])
        loss.backward()
        out[name] = (loss.detach(), q.grad)
    # NNCLR's loss as its module calls it: neighbours gathered, predictions with gradient
    p = Q[part].clone().requires_grad_()
    loss = nnclr_loss(gather(K[part]), gather_with_grad(p), 0.1)
    loss.backward()
    out["nnclr"] = (loss.detach(), p.grad)
    queue, ptr = torch.zeros(1, 3 * N, D), torch.zeros((), dtype=torch.long)
    enqueue(queue, ptr, gather(K[part])[None])  # as MoCoV2.forward / after_optimizer_step
    out["queue"] = queue
    seen = []  # Shuffle-BN across processes: each encodes N of everyone's keys, put back after
    out["shuffled"] = shuffled_forward(lambda x: seen.append(x) or 2 * x, K[part]), seen[0]
    results[rank] = out


def test_two_processes_equal_one_on_the_whole_batch():
    """MoCo's losses are per-sample means on each process: the processes' losses average to the
    loss of the whole batch, and each one's query gradients are WORLD times the whole batch's
    (DDP then averages). MoCo v3 must find each positive at index rank * N + i of the gathered
    keys. NNCLR's loss (tests/test_nnclr.py) is computed on the gathered batch, as NT-Xent."""
    results = run_processes(worker, WORLD)
    for name, fn in (("mocov3", mocov3_loss), ("moco", lambda q, k: moco_loss(q, k, QUEUE))):
        q = Q.clone().requires_grad_()
        single = fn(q, K)
        single.backward()
        mean = sum(results[r][name][0] for r in range(WORLD)) / WORLD
        assert torch.allclose(mean, single.detach(), atol=1e-6), name
        for r in range(WORLD):
            grad = results[r][name][1]
            assert torch.allclose(grad / WORLD, q.grad[r * N : (r + 1) * N], atol=1e-6), name
    # NNCLR: the global loss on every process, gradients WORLD times the whole batch's
    q = Q.clone().requires_grad_()
    single = nnclr_loss(K, q, 0.1)
    single.backward()
    for r in range(WORLD):
        loss, grad = results[r]["nnclr"]
        assert torch.allclose(loss, single.detach(), atol=1e-6)
        assert torch.allclose(grad / WORLD, q.grad[r * N : (r + 1) * N], atol=1e-6)
    for r in range(WORLD):  # every process queues the keys of both
        assert torch.equal(results[r]["queue"][0, : WORLD * N], K)
    encoded = torch.cat([results[r]["shuffled"][1] for r in range(WORLD)])
    assert not torch.equal(encoded, K)  # MoCo's _batch_shuffle_ddp: a permutation of all ...
    assert torch.equal(encoded.sort(dim=0).values, K.sort(dim=0).values)
    for r in range(WORLD):  # ... whose outputs come back to the process of their image
        assert torch.equal(results[r]["shuffled"][0], 2 * K[r * N : (r + 1) * N])


# ---------------------------------------------------------------- main.py


@pytest.mark.parametrize("name", ["mocov2", "mocov3"])
def test_main_pretrains_and_resumes_with_the_queue(name, run_dirs, capsys):
    """Two steps per epoch (64 images, batch 32); the queue of 100 (not a multiple of the
    batch) is checkpointed and continues where it stopped after --resume."""
    import main  # here, not at the top: the two-process test's workers import this file

    def run(*extra):
        argv = [
            *["--model_name", name, "--backbone", "small_cnn", "--dataset_name", "synthetic"],
            *["--image_size", "16", "--limit", "64", "--batch_size", "32", "--device", "cpu"],
            *["--num_workers", "0", "--warmup_epochs", "0", "--optimizer", "adam"],
            *["--base_lr", "0.01", "--proj_hidden_dim", "64", "--run_name", name, *run_dirs],
            *(["--queue_size", "100"] if name == "mocov2" else ["--pred_hidden_dim", "64"]),
            *extra,
        ]
        return main.main(main.get_args_parser().parse_args(argv))

    straight = run("--num_epochs", "2", "--save_freq", "1")
    assert math.isfinite(straight["loss"])
    epoch_1 = os.path.join(straight["ckpt_dir"], "epoch_0001.pt")
    state = load_checkpoint(epoch_1)["model"]
    if name == "mocov2":
        # the CIFAR-size recipe, solo-learn's MoCo v2+: a queue per direction, 256-d keys
        assert state["queue"].shape == (2, 100, 256) and state["queue_ptr"].item() == 64
    else:
        assert "queue" not in state and "target_projector.0.weight" in state
    # continued from epoch 1 in a new folder: the run never stopped's queue and weights
    out = run("--num_epochs", "2", "--resume", epoch_1, "--run_name", f"{name}-resumed")
    assert "resumed from" in capsys.readouterr().out
    state2 = load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))["model"]
    reference = load_checkpoint(os.path.join(straight["ckpt_dir"], "last.pt"))["model"]
    assert all(torch.equal(state2[k], reference[k]) for k in reference)
    if name == "mocov2":
        assert state2["queue_ptr"].item() == 128 % 100
        # rows 64..99 were written in epoch 2, after the resume; rows 0..27 overwritten
        assert torch.equal(state2["queue"][:, 28:64], state["queue"][:, 28:64])
        assert not torch.equal(state2["queue"][:, 64:], state["queue"][:, 64:])


def test_split_batchnorm_covers_timms_batchnorm_act_layers():
    """timm's BatchNormAct2d (EfficientNet, MobileNet, ...) splits too, then applies its own
    activation: each part as a BatchNormAct2d of its own in training mode."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = torch.nn.Sequential(timm.layers.BatchNormAct2d(3, act_layer=torch.nn.ReLU))
    reference = copy.deepcopy(net[0])
    split_batchnorm_layers(net)
    layer = net[0]
    assert isinstance(layer, SplitBatchNorm2d) and isinstance(layer, timm.layers.BatchNormAct2d)
    layer.num_splits = 2
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    out = net(x)
    for s in range(2):
        assert torch.allclose(out[s::2], copy.deepcopy(reference)(x[s::2]), atol=1e-5)
    assert (out >= 0).all()  # the activation was applied
    layer.num_splits = 1
    assert torch.allclose(net(x), reference(x), atol=1e-5)  # one split: the layer itself
