"""DINO: the loss on hand-computed numbers and its invariants, the teacher temperature schedule,
centering, the frozen last layer, the EMA teacher, checkpointed buffers, the views, and a short
run through main.py."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T

import main
from methods import METHODS, build_method
from methods.dino import clip_gradients, dino_loss, teacher_temperature
from methods.momentum import cosine_momentum
from networks import build_backbone
from transformations import PRETRAIN_TRANSFORMS, dino_transform
from utils.checkpoint import load_checkpoint
from utils.data import DATASETS

# ---------------------------------------------------------------- the loss


def softmax(row: list[float], temp: float) -> list[float]:
    exps = [math.exp(x / temp) for x in row]
    return [e / sum(exps) for e in exps]


def cross_entropy(p: list[float], q: list[float]) -> float:
    return -sum(a * math.log(b) for a, b in zip(p, q, strict=True))


def loop_dino_loss(student, teacher, center, t_s, t_t) -> float:
    """The definition with Python floats: mean over pairs (i, j != i) of the batch-mean H."""
    terms = []
    for i, t_crop in enumerate(teacher):
        for j, s_crop in enumerate(student):
            if i == j:
                continue
            h = [
                cross_entropy(
                    softmax([a - c for a, c in zip(t_row, center, strict=True)], t_t),
                    softmax(s_row, t_s),
                )
                for t_row, s_row in zip(t_crop, s_crop, strict=True)
            ]
            terms.append(sum(h) / len(h))
    return sum(terms) / len(terms)


def test_dino_loss_hand_computed_two_crops():
    # one image, K = 2, two global crops: pairs (teacher 0, student 1), (teacher 1, student 0)
    t_s, t_t = 0.25, 0.5
    center = torch.tensor([0.1, -0.1])
    teacher = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    student = [torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 0.2]])]
    # teacher 0: (1 - 0.1, 0 + 0.1) / 0.5 = (1.8, 0.2); teacher 1: (-0.2, 2.2)
    p0 = [
        math.exp(1.8) / (math.exp(1.8) + math.exp(0.2)),
        math.exp(0.2) / (math.exp(1.8) + math.exp(0.2)),
    ]
    p1 = [
        math.exp(-0.2) / (math.exp(-0.2) + math.exp(2.2)),
        math.exp(2.2) / (math.exp(-0.2) + math.exp(2.2)),
    ]
    # student 0: (0.5, 0) / 0.25 = (2, 0); student 1: (0, 0.8)
    log_q0 = [2 - math.log(math.exp(2) + 1), -math.log(math.exp(2) + 1)]
    log_q1 = [-math.log(1 + math.exp(0.8)), 0.8 - math.log(1 + math.exp(0.8))]
    h01 = -(p0[0] * log_q1[0] + p0[1] * log_q1[1])
    h10 = -(p1[0] * log_q0[0] + p1[1] * log_q0[1])
    loss = dino_loss(student, teacher, center, student_temp=t_s, teacher_temp=t_t)
    assert loss.item() == pytest.approx((h01 + h10) / 2, rel=1e-6)


def test_dino_loss_matches_a_loop_with_local_crops():
    torch.manual_seed(0)
    student = [torch.randn(3, 5) for _ in range(4)]  # 2 global + 2 local crops
    teacher = [torch.randn(3, 5) for _ in range(2)]
    center = torch.randn(5)
    loss = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    expected = loop_dino_loss(
        [s.tolist() for s in student], [t.tolist() for t in teacher], center.tolist(), 0.1, 0.04
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def entropy(logits: torch.Tensor, temp: float) -> torch.Tensor:
    log_p = F.log_softmax(logits / temp, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def test_equal_distributions_give_the_entropy_and_any_student_gives_more():
    torch.manual_seed(0)
    t = torch.randn(6, 8)
    zero = torch.zeros(8)
    # every crop the same and student = teacher (same temperature): H(p, p) = H(p)
    same = dino_loss([t, t.clone(), t.clone()], [t, t.clone()], zero, 0.1, 0.1)
    assert same.item() == pytest.approx(entropy(t, 0.1).item(), rel=1e-5)
    # Gibbs: H(p, q) >= H(p), so no student goes below the mean entropy of the targets
    teacher = [torch.randn(6, 8), torch.randn(6, 8)]
    target_entropy = sum(entropy(x, 0.04) for x in teacher) / 2
    for _ in range(5):
        student = [torch.randn(6, 8) * 5 for _ in range(4)]
        assert dino_loss(student, teacher, zero, 0.1, 0.04) >= target_entropy - 1e-5


def test_uniform_logits_give_log_k():
    k = 7
    crops = [torch.zeros(4, k) for _ in range(3)]
    assert dino_loss(crops, crops[:2], torch.zeros(k)).item() == pytest.approx(math.log(k))


def test_loss_is_invariant_to_shifts_that_softmax_ignores():
    torch.manual_seed(0)
    student = [torch.randn(4, 6) for _ in range(3)]
    teacher = [torch.randn(4, 6) for _ in range(2)]
    center = torch.randn(6)
    base = dino_loss(student, teacher, center, 0.1, 0.5)
    shift = torch.randn(4, 1)  # a constant per row
    assert torch.isclose(dino_loss([s + shift for s in student], teacher, center, 0.1, 0.5), base)
    assert torch.isclose(dino_loss(student, [t + shift for t in teacher], center, 0.1, 0.5), base)
    v = torch.randn(6)  # the same vector added to the teacher and to the center
    assert torch.isclose(
        dino_loss(student, [t + v for t in teacher], center + v, 0.1, 0.5), base, atol=1e-6
    )
    # but the center itself matters
    assert not torch.isclose(dino_loss(student, teacher, center + v, 0.1, 0.5), base)


def test_gradient_reaches_every_student_crop_and_no_teacher():
    torch.manual_seed(0)
    student = [torch.randn(4, 6, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(4, 6, requires_grad=True) for _ in range(2)]
    dino_loss(student, teacher, torch.zeros(6)).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_a_single_crop_is_an_error():
    with pytest.raises(ValueError):
        dino_loss([torch.zeros(2, 3)], [torch.zeros(2, 3)], torch.zeros(3))


# ---------------------------------------------------------------- the teacher temperature


def test_teacher_temperature_warms_up_linearly_like_np_linspace_then_stays():
    expected = np.concatenate([np.linspace(0.04, 0.07, 30), np.full(20, 0.07)])
    got = [teacher_temperature(e, 0.07, 0.04, 30) for e in range(50)]
    assert np.allclose(got, expected)
    assert got[0] == 0.04 and got[29] == pytest.approx(0.07) and got[30] == 0.07
    assert got[10] == pytest.approx(0.04 + 0.03 * 10 / 29)
    assert teacher_temperature(0, 0.07, 0.04, 0) == 0.07  # no warmup
    assert teacher_temperature(0, 0.07, 0.04, 1) == 0.04  # linspace of one value
    assert teacher_temperature(1, 0.07, 0.04, 1) == 0.07


def tiny_dino(**kwargs):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("small_cnn", 16)
    dims = dict(proj_hidden_dim=32, proj_dim=16, out_dim=10)
    return build_method("dino", backbone, feat_dim, **{**dims, **kwargs})


def test_set_epoch_drives_the_teacher_temperature_and_official_defaults():
    model = tiny_dino()
    # main_dino.py's defaults: a constant 0.04 (its help text's "Default: 30" is not the code's 0)
    assert (model.temperature, model.teacher_temp, model.warmup_teacher_temp) == (0.1, 0.04, 0.04)
    assert (model.teacher_temp_warmup_epochs, model.center_momentum) == (0, 0.9)
    assert (model.ema_momentum, model.freeze_prototypes_epochs) == (0.996, 1)
    assert model.current_teacher_temp == 0.04
    # the README's ViT-S recipe: --teacher_temp 0.07 --warmup_teacher_temp_epochs 30
    model = tiny_dino(teacher_temp=0.07, teacher_temp_warmup_epochs=30)
    assert model.current_teacher_temp == 0.04
    model.set_epoch(15)
    assert model.current_teacher_temp == pytest.approx(0.04 + 0.03 * 15 / 29)
    model.set_epoch(100)
    assert model.current_teacher_temp == 0.07


# ---------------------------------------------------------------- the module


def multicrop_batch(n=8, local=2):
    return [torch.randn(n, 3, 16, 16) for _ in range(2)] + [
        torch.randn(n, 3, 8, 8) for _ in range(local)
    ]


def train_step(model, optimizer, epoch, step, views=None, total_steps=100):
    model.set_epoch(epoch)
    loss = model(views if views is not None else multicrop_batch())["loss"]
    optimizer.zero_grad()
    loss.backward()
    model.before_optimizer_step()
    optimizer.step()
    model.after_optimizer_step(step, total_steps)
    return loss


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def test_head_shape_and_unit_norm_last_layer():
    model = tiny_dino()
    out = model(multicrop_batch(n=4, local=3))
    assert out["z1"].shape == (4, 10) and out["z2"].shape == (4, 10)
    last = model.head.last_layer
    gain = last.parametrizations.weight.original0
    assert not gain.requires_grad and torch.all(gain == 1)
    assert torch.allclose(last.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    # norm_last_layer=False trains the gain (the official option for ViT-S)
    free = tiny_dino(norm_last_layer=False).head.last_layer.parametrizations.weight.original0
    assert free.requires_grad


def test_use_bn_in_head_normalises_each_hidden_layer_over_the_batch():
    head = tiny_dino(use_bn_in_head=True).head
    kinds = [type(m).__name__ for m in head.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU"] * 2 + ["Linear"]
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in tiny_dino().head.mlp)
    # in training mode the pre-activations have zero mean and unit variance over the batch
    # even when every input shares a large common component, as ReLU features do
    x = 5.0 + torch.randn(32, head.mlp[0].in_features)
    hidden = head.mlp[1](head.mlp[0](x))
    assert torch.allclose(hidden.mean(0), torch.zeros(hidden.shape[1]), atol=1e-4)
    assert torch.allclose(hidden.var(0, unbiased=False), torch.ones(hidden.shape[1]), atol=1e-2)


def test_teacher_starts_as_the_student_and_is_never_trained():
    model = tiny_dino()
    for t, s in zip(model.teacher_backbone.parameters(), model.backbone.parameters(), strict=True):
        assert torch.equal(t, s) and not t.requires_grad
    for t, s in zip(model.teacher_head.parameters(), model.head.parameters(), strict=True):
        assert torch.equal(t, s) and not t.requires_grad


def test_centering_uses_the_old_center_and_updates_after_the_step():
    model = tiny_dino(center_momentum=0.8)
    optimizer = torch.optim.SGD(trainable(model), lr=0.1)
    for step in range(2):
        views = multicrop_batch()
        with torch.no_grad():  # the teacher's logits of the global crops (BatchNorm: batch stats)
            teacher = model.teacher_head(model.teacher_backbone(torch.cat(views[:2])))
        old = model.center.clone()
        model.set_epoch(0)
        loss = model(views)["loss"]
        assert torch.equal(model.center, old)  # the forward pass leaves it alone
        optimizer.zero_grad()
        loss.backward()
        model.before_optimizer_step()
        optimizer.step()
        model.after_optimizer_step(step, 100)
        expected = 0.8 * old + 0.2 * teacher.mean(dim=0)  # over both crops and the batch
        assert torch.allclose(model.center, expected, atol=1e-6)
    assert model.center.abs().sum() > 0


def test_last_layer_frozen_in_epoch_0_and_trained_in_epoch_1():
    model = tiny_dino(freeze_prototypes_epochs=1, norm_last_layer=False)
    optimizer = torch.optim.SGD(trainable(model), lr=1.0)
    weights = model.head.last_layer.parametrizations.weight
    before = [p.detach().clone() for p in weights.parameters()]
    mlp_before = model.head.mlp[0].weight.detach().clone()

    train_step(model, optimizer, epoch=0, step=0)
    assert all(torch.equal(p, b) for p, b in zip(weights.parameters(), before, strict=True))
    assert not torch.equal(model.head.mlp[0].weight, mlp_before)  # the rest is trained

    train_step(model, optimizer, epoch=1, step=1)
    assert all(not torch.equal(p, b) for p, b in zip(weights.parameters(), before, strict=True))


def test_clip_gradients_scales_each_parameter_on_its_own():
    """main_dino.py's clip_gradients: g * min(1, clip / (||g|| + 1e-6)) per parameter, unlike
    clip_grad_norm_'s one factor of the global norm."""
    big, small, none = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    big.grad, small.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])  # norms 5, 0.5
    clip_gradients([big, small, none], 2.5)
    scale = 2.5 / (5 + 1e-6)
    assert torch.allclose(big.grad, torch.tensor([3.0 * scale, 4.0 * scale]))
    assert torch.equal(small.grad, torch.tensor([0.3, 0.4]))  # below the norm: untouched
    assert none.grad is None
    # torch's global clipping would have shrunk the small one too
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    torch.nn.utils.clip_grad_norm_([a, b], 2.5)
    assert b.grad.norm() < 0.5 - 1e-3


def test_official_clipping_of_the_student_before_the_last_layer_is_cancelled():
    model = tiny_dino()
    assert model.clip_grad == 3.0  # main_dino.py --clip_grad
    model(multicrop_batch())["loss"].backward()
    for p in trainable(model):
        p.grad = torch.full_like(p, 10.0)
    model.before_optimizer_step()  # epoch 0: the last layer's gradient is dropped after clipping
    assert all(p.grad is None for p in model.head.last_layer.parameters())
    student = [*model.backbone.parameters(), *model.head.mlp.parameters()]
    assert all(p.grad.norm() <= 3.0 + 1e-4 for p in student)
    assert max(p.grad.norm() for p in student) > 3.0 - 1e-3
    off = tiny_dino(clip_grad=0.0)
    off(multicrop_batch())["loss"].backward()
    for p in trainable(off):
        p.grad = torch.full_like(p, 10.0)
    off.before_optimizer_step()
    assert all(torch.all(p.grad == 10.0) for p in off.backbone.parameters())


def test_a_vit_student_has_official_stochastic_depth_and_the_teacher_none():
    """main_dino.py: the student ViT with drop_path_rate 0.1 (timm's linspace over the blocks),
    the teacher built without it; CNN students have none."""
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("vit_tiny", 32)
    model = build_method("dino", backbone, feat_dim, proj_hidden_dim=32, proj_dim=16, out_dim=10)
    rates = [layer.drop_path.p for layer in model.backbone.encoder.layers]
    assert rates == pytest.approx(np.linspace(0, 0.1, len(rates)).tolist())
    assert all(layer.drop_path.p == 0 for layer in model.teacher_backbone.encoder.layers)
    model = build_method("dino", *build_backbone("vit_tiny", 32), out_dim=10, drop_path_rate=0.0)
    assert all(layer.drop_path.p == 0 for layer in model.backbone.encoder.layers)


def test_a_vit_starts_as_dinos_vision_transformer():
    """vision_transformer.py: trunc_normal_(std=.02) on Linear weights (qkv included), position
    embeddings and class token; zero biases; nn.Conv2d's own patch projection."""
    torch.manual_seed(0)
    model = build_method("dino", *build_backbone("vit_tiny", 32), proj_hidden_dim=32, out_dim=10)
    vit = model.backbone
    layer = vit.encoder.layers[0]
    for weight in (layer.mlp[0].weight, layer.self_attention.in_proj_weight):
        assert float(weight.detach().std()) == pytest.approx(0.02, rel=0.03)
    assert not layer.mlp[0].bias.detach().any() and not layer.self_attention.in_proj_bias.any()
    for token in (vit.class_token, vit.encoder.pos_embedding):
        assert float(token.detach().std()) == pytest.approx(0.02, rel=0.15)
    conv = vit.conv_proj.weight.detach()  # kaiming_uniform(a=sqrt(5)): within 1/sqrt(fan_in)
    bound = (3 * 4 * 4) ** -0.5
    assert conv.abs().max() <= bound and float(conv.std()) == pytest.approx(bound / 3**0.5, 0.1)
    teacher = model.teacher_backbone.state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in vit.state_dict().items())


def test_teacher_follows_the_student_by_ema_after_a_real_step():
    model = tiny_dino(ema_momentum=0.9)
    optimizer = torch.optim.SGD(trainable(model), lr=0.5)
    before = [p.detach().clone() for p in model.teacher_backbone.parameters()]
    train_step(model, optimizer, epoch=1, step=3, total_steps=10)
    m = cosine_momentum(3, 10, 0.9)
    assert model.current_momentum == m
    moved = False
    for t, s, b in zip(
        model.teacher_backbone.parameters(), model.backbone.parameters(), before, strict=True
    ):
        assert torch.allclose(t, m * b + (1 - m) * s, atol=1e-6)
        moved |= not torch.equal(t, b)
    assert moved


def test_center_is_saved_and_restored():
    model = tiny_dino()
    optimizer = torch.optim.SGD(trainable(model), lr=0.1)
    train_step(model, optimizer, epoch=0, step=0)
    state = model.state_dict()
    assert {"center", "teacher_backbone.0.0.weight", "teacher_head.mlp.0.weight"} <= set(state)
    assert "batch_center" not in state  # scratch of one step
    assert "head.last_layer.parametrizations.weight.original1" in state
    other = tiny_dino()
    other.load_state_dict(state)
    assert torch.equal(other.center, model.center) and model.center.abs().sum() > 0


def test_invalid_momenta_are_refused():
    with pytest.raises(ValueError, match="center_momentum"):
        tiny_dino(center_momentum=1.5)
    with pytest.raises(ValueError, match="ema_momentum"):
        tiny_dino(ema_momentum=-0.1)


# ---------------------------------------------------------------- views and main.py


def test_dino_views_two_asymmetric_globals_then_locals():
    assert METHODS["dino"].augmentation == "dino" and PRETRAIN_TRANSFORMS["dino"] is dino_transform
    info = DATASETS["synthetic"]
    views = dino_transform(image_size=224, mean=info.mean, std=info.std).view_transforms
    assert len(views) == 2 + 8

    def probability(view, kind):
        for step in view.transform.transforms:
            if isinstance(step, T.RandomApply) and isinstance(step.transforms[0], kind):
                return step.p
            if isinstance(step, kind):
                return step.p
        return 0.0

    first, second, local = views[0], views[1], views[2]
    assert [probability(v, T.GaussianBlur) for v in (first, second, local)] == [1.0, 0.1, 0.5]
    assert [probability(v, T.RandomSolarize) for v in (first, second, local)] == [0.0, 0.2, 0.0]
    assert first.transform.transforms[0].scale == (0.4, 1.0)
    assert local.transform.transforms[0].scale == (0.05, 0.4)
    assert local.transform.transforms[0].size == (96, 96)


TINY = ["--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16"]
TINY += ["--device", "cpu", "--num_workers", "0", "--limit", "64", "--batch_size", "32"]


def test_dino_runs_through_main_and_its_flags_reach_the_module(run_dirs):
    flags = ["--out_dim", "64", "--proj_hidden_dim", "64", "--num_crops", "2"]
    flags += ["--teacher_temp", "0.06", "--warmup_teacher_temp", "0.03"]
    flags += ["--teacher_temp_warmup_epochs", "3", "--center_momentum", "0.8"]
    flags += ["--use_bn_in_head", "--norm_last_layer", "false"]
    args = main.get_args_parser().parse_args(
        [*TINY, *run_dirs, "--model_name", "dino", "--num_epochs", "2", "--warmup_epochs", "0"]
        + ["--optimizer", "adam", "--base_lr", "0.004", "--weight_decay", "0"]
        + ["--run_name", "dino", *flags]
    )
    model = build_method("dino", *build_backbone("small_cnn", 16), **vars(args))
    assert (model.teacher_temp, model.warmup_teacher_temp) == (0.06, 0.03)
    assert (model.teacher_temp_warmup_epochs, model.center_momentum) == (3, 0.8)
    assert model.head.last_layer.weight.shape == (64, 256) and model.temperature == 0.1
    assert isinstance(model.head.mlp[1], torch.nn.BatchNorm1d)
    assert model.head.last_layer.parametrizations.weight.original0.requires_grad

    out = main.main(args)
    assert math.isfinite(out["loss"])
    ckpt = load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))
    assert ckpt["epoch"] == 2 and ckpt["model"]["center"].shape == (64,)
    assert ckpt["model"]["center"].abs().sum() > 0
