"""DINOv2: its losses against hand computations, its masks' statistics, its schedules and the
training behaviour of the official step (last layer frozen, clipping per part, lr per layer,
centring), on a tiny ViT."""

import math
import random

import pytest
import torch
import torch.nn.functional as F

from methods import build_method
from methods.dinov2 import (
    batch_masks,
    block_mask,
    ibot_patch_loss,
    koleo_loss,
    teacher_temperature,
)
from methods.swav import sinkhorn
from networks import build_backbone


def test_koleo_loss_by_hand():
    # unit vectors: 0 -> 2 (cos 0.6), 1 -> 2 (cos 0.8), 2 -> 1 (cos 0.8) are the nearest
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    expected = -(math.log(math.sqrt(0.8)) + 2 * math.log(math.sqrt(0.4))) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, abs=1e-7)
    # scale-free (normalised first); spreading the points lowers it
    assert koleo_loss(3 * x).item() == pytest.approx(expected, abs=1e-7)
    spread = torch.tensor([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]], dtype=torch.float64)
    assert koleo_loss(spread) < koleo_loss(x)


def test_ibot_patch_loss_by_hand():
    """Each image's mean over its masked patches, then the mean over all images (the one
    without a mask counting 0)."""
    masks = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=torch.bool)
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], dtype=torch.float64)
    t = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    log_p = F.log_softmax(s / 0.1, dim=-1)
    ce = [-(t[m] * log_p[m]).sum().item() for m in range(3)]
    expected = (0.5 * ce[0] + 0.5 * ce[1] + ce[2]) / 3
    assert ibot_patch_loss(s, t, masks, 0.1).item() == pytest.approx(expected, rel=1e-12)
    # the grid form of the masks is the same
    assert ibot_patch_loss(s, t, masks.view(3, 1, 3), 0.1).item() == pytest.approx(expected)


def test_sinkhorn_codes_of_unequal_counts():
    """`samples` is the count over all processes: with it equal to the rows, the default; every
    code sums to 1 and the prototypes' shares of the mass more even than a softmax's."""
    torch.manual_seed(0)
    scores = 0.3 * torch.randn(12, 5, dtype=torch.float64)  # cosine-like
    codes = sinkhorn(scores, 0.07, 3, torch.tensor(12.0, dtype=torch.float64))
    assert torch.allclose(codes, sinkhorn(scores, 0.07, 3))
    assert torch.allclose(codes.sum(dim=1), torch.ones(12, dtype=torch.float64))
    plain = F.softmax(scores / 0.07, dim=1)  # DINO without a centre: far less balanced
    assert codes.sum(dim=0).std() < 0.6 * plain.sum(dim=0).std()


def test_block_mask_counts_and_rectangles():
    rng = random.Random(0)
    for count in (0, 5, 20, 32):
        before = rng.getstate()
        mask = block_mask(8, 8, count, 32, rng=rng)
        if count == 0:  # nothing drawn, nothing masked
            assert not mask.any() and rng.getstate() == before
            continue
        # up to the target (a rectangle never overshoots what is left); most of it reached
        assert count * 0.5 <= mask.sum() <= count
    # blocks, not scattered patches: nearly every masked patch has a masked neighbour
    mask = block_mask(14, 14, 60, 98, rng=random.Random(3)).float()
    neighbours = F.conv2d(mask[None, None], torch.tensor([[[[0.0, 1, 0], [1, 0, 1], [0, 1, 0]]]]),
                          padding=1)[0, 0]  # fmt: skip
    assert ((neighbours > 0) & (mask > 0)).sum() >= 0.95 * mask.sum()


def test_batch_masks_share_stratification_and_seeded_order():
    """int(n x p) masks, their shares stratified over [0.1, 0.5], the rest empty, shuffled; the
    same random state gives the same masks."""
    random.seed(1)
    masks = batch_masks(20, 8, (0.1, 0.5), 0.5)
    random.seed(1)
    assert torch.equal(masks, batch_masks(20, 8, (0.1, 0.5), 0.5))
    counts = masks.flatten(1).sum(dim=1)
    assert masks.shape == (20, 8, 8) and (counts > 0).sum() == 10
    bounds = torch.linspace(0.1, 0.5, 11)
    for i, c in enumerate(sorted(counts[counts > 0].tolist())):  # the i-th stratum's at most
        assert c <= int(64 * bounds[i + 1])
    assert not torch.equal(counts[:10] > 0, torch.ones(10, dtype=torch.bool))  # shuffled
    ratios = torch.cat([batch_masks(40, 14, (0.1, 0.5), 0.5).flatten(1).sum(1) for _ in range(5)])
    masked = ratios[ratios > 0].double() / 196
    assert 0.25 < masked.mean() < 0.31  # the strata's mean 0.3, less what rectangles miss


def test_teacher_temperature_rises_per_step():
    assert teacher_temperature(0, 10, 0.04, 0.07) == 0.04
    assert teacher_temperature(9, 10, 0.04, 0.07) == pytest.approx(0.07)  # np.linspace's end
    assert teacher_temperature(3, 10, 0.04, 0.07) == pytest.approx(0.04 + 0.03 * 3 / 9)
    assert teacher_temperature(10, 10, 0.04, 0.07) == 0.07
    assert teacher_temperature(5, 0, 0.04, 0.07) == 0.07


def tiny(**kwargs):
    net, width = build_backbone("vit_tiny", 32)
    settings = dict(out_dim=64, proj_hidden_dim=64, proj_dim=16, **kwargs)
    return build_method("dinov2", net, width, **settings)


def views(n=4, local=2):
    torch.manual_seed(0)
    return [torch.randn(n, 3, 32, 32) for _ in range(2)] + [
        torch.randn(n, 3, 16, 16) for _ in range(local)
    ]


def test_loss_is_dino_plus_koleo_plus_ibot():
    model = tiny(koleo_weight=0.3, ibot_weight=2.0)
    random.seed(0)
    out = model(views())
    expected = out["dino_loss"] + 0.3 * out["koleo_loss"] + 2.0 * out["ibot_loss"]
    assert torch.allclose(out["loss"], expected)
    assert out["ibot_loss"] > 0 and out["koleo_loss"].isfinite()
    # a teacher and a student of the same weights, no mask: the DINO term alone is the
    # cross-entropy of codes with themselves at two temperatures, not 0
    assert out["dino_loss"] > 0


def test_last_layer_frozen_in_the_first_epoch_and_parts_clipped():
    model = tiny(clip_grad=0.5, drop_path_rate=0.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    last = [p.detach().clone() for p in model.last_layers()]
    mlp = model.head.mlp[0].weight.detach().clone()
    for epoch in (0, 1):
        model.set_epoch(epoch)
        optimizer.zero_grad()
        random.seed(epoch)
        (model(views())["loss"] * 1e3).backward()  # large gradients: clipping at work
        model.before_optimizer_step()
        for params in ([*model.backbone.parameters(), model.mask_token], model.head.parameters()):
            grads = [p.grad for p in params if p.grad is not None]
            assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) <= 0.5 + 1e-4
        optimizer.step()
        model.after_optimizer_step(epoch, 10)
        same = all(torch.equal(a, b) for a, b in zip(model.last_layers(), last, strict=True))
        assert same == (epoch == 0)  # lr 0 for the last layers in epoch 0 only
        assert not torch.equal(model.head.mlp[0].weight, mlp)
        # the optimizer saw the frozen layer's gradients (its moments moved, as under lr 0)
        assert all(p in optimizer.state for p in model.last_layers())


def test_layer_wise_lr_decay_and_patch_embedding_scale():
    model = tiny(layerwise_decay=0.5, patch_embed_lr_scale=0.2)
    scales = {name: model.param_group(name, p).get("lr_scale", 1.0)
              for name, p in model.named_parameters() if p.requires_grad}  # fmt: skip
    depth = model.backbone.depth
    assert scales["backbone.conv_proj.weight"] == pytest.approx(0.5 ** (depth + 1) * 0.2)
    assert scales["mask_token"] == scales["backbone.class_token"] == 0.5 ** (depth + 1)
    first = "backbone.encoder.layers.encoder_layer_0.ln_1.weight"
    assert scales[first] == 0.5**depth
    assert scales["backbone.encoder.ln.weight"] == scales["head.mlp.0.weight"] == 1.0


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "centering"])
def test_centres_move_only_under_centering_and_the_teacher_follows(centering):
    model = tiny(centering=centering, ema_momentum=0.5)
    teacher = [p.detach().clone() for p in model.teacher_head.parameters()]
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1)
    random.seed(0)
    model(views())
    model.after_optimizer_step(0, 10)
    moved = model.center.abs().sum() > 0 and model.patch_center.abs().sum() > 0
    assert moved == (centering == "centering")
    assert not all(
        torch.equal(a, b) for a, b in zip(model.teacher_head.parameters(), teacher, strict=True)
    )


def test_refuses_convnets_and_bad_ratios():
    net, width = build_backbone("small_cnn", 16)
    with pytest.raises(ValueError, match="ViT"):
        build_method("dinov2", net, width)
    with pytest.raises(ValueError, match="mask_ratio_min"):
        tiny(mask_ratio_min=0.6, mask_ratio_max=0.5)


@pytest.mark.full
def test_dinov2_on_an_unlabelled_folder_resumes_after_sigterm_as_never_stopped(
    run_dirs, monkeypatch, tmp_path
):
    """main.py end to end on a folder of unlabelled photos, the masks drawn from Python's random
    state: stopped mid-epoch (in the frozen first epoch) and resumed, the weights and the metrics
    are those of a run never stopped."""
    from tests.test_folder import make_photos
    from tests.test_reliability import FLAGS, resumes_as_straight

    make_photos(tmp_path / "photos", count=48)
    flags = [*FLAGS, *run_dirs, "--model_name", "dinov2", "--backbone", "vit_tiny",
             "--dataset_name", "folder", "--data_dir", str(tmp_path / "photos"),
             "--image_size", "16", "--num_crops", "2", "--small_crop_size", "8",
             "--out_dim", "64", "--proj_hidden_dim", "64", "--batch_size", "12",
             "--rankme_images", "0", "--online_probe", "false", "--num_epochs", "1",
             "--warmup_epochs", "0"]  # fmt: skip
    state = resumes_as_straight(flags, monkeypatch)
    assert state["mask_token"].abs().sum() > 0  # trained
