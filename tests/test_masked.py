"""MAE and I-JEPA (methods/mae.py, methods/ijepa.py) and the fine-tuning protocol they are
judged by (probe.py: layer-wise lr decay, drop path, label smoothing, mixup/cutmix)."""

import math
from argparse import Namespace

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T

import probe
from methods import build_method
from methods.ijepa import IJEPA, block_size, ijepa_loss, multiblock_masks, place_block
from methods.mae import MAE, mae_loss, patchify, random_masking, unpatchify
from networks.heads import LinearClassifier
from networks.timm_vit import add_interface
from networks.vit import MaskableViT, ViTBackbone, sincos_position_embedding
from optimizers import Optimization, build_optimizer
from utils.accel import Speed
from utils.synthetic import SyntheticShapes


def tiny_vit(image_size: int = 16, depth: int = 2, dim: int = 32, kind: str = "vit") -> MaskableViT:
    """A small ViT of this toolkit ("vit") or of timm ("timm", as networks/timm_models.py builds
    them, with the interface of networks/timm_vit.py), 4 px patches, 2 heads, 2x MLPs."""
    if kind == "timm":
        timm = pytest.importorskip("timm")
        vit = timm.create_model(
            "vit_tiny_patch16_224", img_size=image_size, patch_size=4, depth=depth,
            embed_dim=dim, num_heads=2, mlp_ratio=2.0, num_classes=0, dynamic_img_size=True,
        )  # fmt: skip
        assert add_interface(vit)
        return vit
    vit = ViTBackbone(
        image_size=image_size, patch_size=4, num_layers=depth, num_heads=2, hidden_dim=dim,
        mlp_dim=2 * dim,
    )  # fmt: skip
    vit.heads = torch.nn.Identity()
    return vit


KINDS = pytest.mark.parametrize("kind", ["vit", "timm"])  # this toolkit's ViTs and timm's


def tiny_mae(image_size: int = 16, kind: str = "vit", **kwargs) -> MAE:
    options = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2) | kwargs
    return build_method("mae", tiny_vit(image_size, kind=kind), 32, **options)


# ---------------- MAE ----------------


def test_random_masking_hides_the_same_number_of_different_patches_per_image():
    torch.manual_seed(0)
    keep, mask = random_masking(6, 16, 0.75)
    assert keep.shape == (6, 4) and mask.shape == (6, 16)
    assert (mask.sum(dim=1) == 16 - int(16 * 0.25)).all()  # official: int(L (1 - ratio)) kept
    for k, m in zip(keep, mask, strict=True):
        assert (m[k] == 0).all() and m.sum() == 12  # the kept ones are the visible ones
    assert len({tuple(sorted(k.tolist())) for k in keep}) > 1  # a new draw per image
    _, mask = random_masking(2, 196, 0.75)
    assert (mask.sum(dim=1) == 147).all()


def test_patchify_round_trip_and_layout():
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 48)
    # patch 1 is the second in the first row; its values run over (row, column, channel)
    assert torch.equal(patches[0, 1].view(4, 4, 3), images[0, :, :4, 4:8].permute(1, 2, 0))
    square = torch.randn(2, 3, 12, 12)
    assert torch.equal(unpatchify(patchify(square, 4), 4, 3), square)


@KINDS
def test_the_encoder_sees_only_the_visible_patches(kind):
    """Changing the hidden patches' pixels leaves the encoded tokens unchanged; the visible
    ones' do not."""
    torch.manual_seed(0)
    vit = tiny_vit(kind=kind).eval()
    images = torch.randn(2, 3, 16, 16)
    keep, mask = random_masking(2, 16, 0.75)
    tokens = vit.forward_tokens(images, keep)
    assert tokens.shape == (2, 1 + 4, 32)
    hidden = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48), 4, 4).bool()
    changed = images + 5.0 * hidden
    assert torch.allclose(vit.forward_tokens(changed, keep), tokens, atol=1e-6)
    assert not torch.allclose(vit.forward_tokens(images + 5.0 * ~hidden, keep), tokens)
    # all patches, in order: the library's own forward
    assert torch.allclose(vit.forward_tokens(images)[:, 0], vit(images), atol=1e-5)
    if kind == "timm":  # every token as timm's forward_features
        assert torch.allclose(vit.forward_tokens(images), vit.forward_features(images), atol=1e-5)


def test_mae_loss_counts_the_hidden_patches_only_and_matches_hand_computed_values():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]])
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0], [1.0, 1.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    # plain: patch 0: ((0)^2 + (1)^2)/2 = 0.5, patch 2: (4 + 0)/2 = 2; mean over hidden 1.25
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(1.25)
    visible_changed = pred.clone()
    visible_changed[0, 1] = 100.0
    assert mae_loss(visible_changed, target, mask, norm_pix=False).item() == pytest.approx(1.25)
    # per-patch normalised: [1, 3] -> mean 2, unbiased var 2 -> [-1, 1] / sqrt(2 + 1e-6)
    s = math.sqrt(2 + 1e-6)
    t0 = [-1 / s, 1 / s]
    expected_0 = ((1 - t0[0]) ** 2 + (2 - t0[1]) ** 2) / 2
    expected_2 = ((3 - 0) ** 2 + (1 - 0) ** 2) / 2  # a constant patch normalises to 0
    assert mae_loss(pred, target, mask).item() == pytest.approx((expected_0 + expected_2) / 2)


def test_sincos_position_embeddings_as_mae():
    pos = sincos_position_embedding(8, 3)
    assert pos.shape == (10, 8) and torch.equal(pos[0], torch.zeros(8))
    # patch (row 1, column 2) = index 1 + 1 * 3 + 2: column in the first half, row in the second
    omega = 1.0 / 10000 ** (torch.arange(2) / 2)
    col = torch.cat([(2 * omega).sin(), (2 * omega).cos()])
    row = torch.cat([(1 * omega).sin(), (1 * omega).cos()])
    assert torch.allclose(pos[1 + 5], torch.cat([col, row]))


def test_mae_module_fixes_its_position_embeddings_and_reconstructs():
    torch.manual_seed(0)
    model = tiny_mae()
    pos = model.backbone.encoder.pos_embedding
    assert not pos.requires_grad
    assert torch.allclose(pos[0], sincos_position_embedding(32, 4))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.encoder.pos_embedding" not in names and "mask_token" in names
    out = model([torch.randn(3, 3, 16, 16)])
    assert out["pred"].shape == (3, 16, 48) and out["loss"].isfinite()
    masked, mixed = model.reconstruct(torch.randn(3, 3, 16, 16))
    assert masked.shape == mixed.shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="vit_tiny, vit_small or a timm ViT"):
        build_method("mae", torch.nn.Conv2d(3, 8, 3), 8)


def synthetic_batches(size: int, count: int, batch: int):
    data = SyntheticShapes(train=True, transform=T.ToTensor(), seed=0)
    images = torch.stack([data[i][0] for i in range(count)])
    images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
    images = (images - 0.5) / 0.25
    return [images[i : i + batch] for i in range(0, count, batch)]


@pytest.mark.full
@KINDS
def test_mae_learns_to_reconstruct_below_the_patch_mean(kind):
    """After a short training, the loss on held-out images is clearly below 1 - 1/P, what
    predicting each hidden patch's own mean scores against normalised targets (P = 48 values
    per patch)."""
    torch.manual_seed(0)
    model = tiny_mae(decoder_depth=2, kind=kind)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    batches = synthetic_batches(16, 1024, 64)
    held_out, train = batches[-1], batches[:-1]
    for _ in range(6):
        for images in train:
            loss = model([images])["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        final = model([held_out])["loss"].item()
    assert final < 0.75 * (1 - 1 / 48), final


# ---------------- I-JEPA ----------------


def test_block_sizes_follow_the_stated_scale_and_aspect_ranges():
    torch.manual_seed(0)
    side = 14
    for _ in range(200):
        h, w = block_size(side, (0.15, 0.2), (0.75, 1.5))
        assert 0.1 * side * side <= h * w <= 0.26 * side * side  # rounding of h and w
        assert 0.5 <= h / w <= 2.0
        h, w = block_size(side, (0.85, 1.0), (1.0, 1.0))
        assert h == w and h <= side - 1  # never the whole side, as the official code


def test_targets_never_overlap_the_context():
    torch.manual_seed(1)
    for side in (8, 14):
        context, targets = multiblock_masks(5, side)
        assert targets.shape[:2] == (4, 5) and context.shape[0] == 5
        for i in range(5):
            hidden = set(targets[:, i].flatten().tolist())
            assert not hidden & set(context[i].tolist())
            assert len(set(context[i].tolist())) == context.shape[1] > 4  # more than min_keep
        # a target block is a rectangle (before the batch's common cut)
        indices, _ = place_block(side, (3, 2), [], 4)
        rows, cols = indices // side, indices % side
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (3, 2)
    with pytest.raises(ValueError, match="too few"):
        multiblock_masks(2, 4)


@KINDS
def test_ijepa_target_gets_no_gradient_and_follows_the_ema(kind):
    torch.manual_seed(0)
    model = build_method("ijepa", tiny_vit(32, kind=kind), 32, pred_depth=1, pred_emb_dim=32)
    assert isinstance(model, IJEPA) and not model.backbone.class_token.requires_grad
    out = model([torch.randn(4, 3, 32, 32)])
    out["loss"].backward()
    assert all(p.grad is None for p in model.target_backbone.parameters())
    assert any(p.grad is not None for p in model.predictor.parameters())
    online = dict(model.backbone.named_parameters())
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in model.target_backbone.named_parameters()}
    model.after_optimizer_step(step=25, total_steps=100)
    m = 0.996 + (1 - 0.996) * 0.25  # linear, not cosine
    assert model.current_momentum == pytest.approx(m)
    for name, p in model.target_backbone.named_parameters():
        assert torch.allclose(p, m * before[name] + (1 - m) * online[name])


def test_ijepa_loss_is_smooth_l1_on_the_normalised_target():
    pred, target = torch.tensor([[[0.5, 3.0]]]), torch.tensor([[[0.0, 0.0]]])
    # huber(0.5) = 0.125, huber(3) = 2.5: mean 1.3125
    assert ijepa_loss(pred, target).item() == pytest.approx(1.3125)


@pytest.mark.full
@KINDS
def test_ijepa_loss_falls_in_a_short_run(kind):
    torch.manual_seed(0)
    model = build_method("ijepa", tiny_vit(32, kind=kind), 32, pred_depth=1, pred_emb_dim=32)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.04
    )
    batches = synthetic_batches(32, 512, 64)
    losses = []
    for epoch in range(3):
        for step, images in enumerate(batches):
            loss = model([images])["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.after_optimizer_step(epoch * len(batches) + step, 3 * len(batches))
            losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)


# ---------------- fine-tuning protocol ----------------


def finetune_args(**kwargs) -> Namespace:
    values = dict(
        backbone_lr=1.0, base_lr=1.0, optimizer="adamw", layer_decay=None, mixup=0.0,
        cutmix=0.0, label_smoothing=0.0, channels_last=False, amp="none", weight_decay=0.05,
        momentum=0.9, betas=[0.9, 0.999], exclude_bias_and_norm=True, num_epochs=1,
        decay_tokens=False,
    )  # fmt: skip
    return Namespace(**(values | kwargs))


def test_layer_decay_gives_each_block_its_lr():
    vit = tiny_vit(depth=3)
    head = LinearClassifier(32, 10)
    args = finetune_args(layer_decay=0.5)
    optimizer = build_optimizer(Optimization.of(args), head, lr=1.0)
    probe.add_backbone_groups(optimizer, vit, probe.HeadTraining.of(args), lr=1.0)
    scale_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            scale_of[id(p)] = group.get("lr_scale", 1.0)
    named = dict(vit.named_parameters())
    d = 3
    assert scale_of[id(named["conv_proj.weight"])] == 0.5 ** (d + 1)
    assert scale_of[id(named["class_token"])] == 0.5 ** (d + 1)
    for i in range(d):
        weight = named[f"encoder.layers.encoder_layer_{i}.mlp.0.weight"]
        assert scale_of[id(weight)] == 0.5 ** (d - i)  # block i is layer i + 1
    assert scale_of[id(named["encoder.ln.weight"])] == 1.0
    assert all(scale_of[id(p)] == 1.0 for p in head.parameters())


@KINDS
@pytest.mark.parametrize("layer_decay", [None, 0.5])
@pytest.mark.parametrize("exclude", [True, False, "decay_tokens"])
def test_finetuning_leaves_the_class_token_and_positions_undecayed_as_mae(
    kind, layer_decay, exclude
):
    """MAE's param_groups_lrd (util/lr_decay.py:32) with timm's no_weight_decay()
    (main_finetune.py:284): no decay for the 1-D parameters, the class token and the position
    embeddings (3-D), under this toolkit's names and timm's; all decayed without the exclusion,
    the tokens alone with --decay_tokens."""
    vit = tiny_vit(depth=2, kind=kind)
    decay_tokens, exclude = exclude == "decay_tokens", bool(exclude)
    args = finetune_args(layer_decay=layer_decay, exclude_bias_and_norm=exclude,
                         decay_tokens=decay_tokens)  # fmt: skip
    optimizer = build_optimizer(Optimization.of(args), LinearClassifier(32, 10), lr=1.0)
    probe.add_backbone_groups(optimizer, vit, probe.HeadTraining.of(args), lr=1.0)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(vit.named_parameters())
    tokens = (
        ["class_token", "encoder.pos_embedding"] if kind == "vit" else ["cls_token", "pos_embed"]
    )
    patch = "conv_proj.weight" if kind == "vit" else "patch_embed.proj.weight"
    for name in tokens:
        assert named[name].ndim == 3
        assert decay_of[id(named[name])] == (0.0 if exclude and not decay_tokens else 0.05), name
    assert decay_of[id(named[patch])] == 0.05  # the other matrices stay decayed
    one_d = [p for p in named.values() if p.ndim <= 1]
    assert {decay_of[id(p)] for p in one_d} == {0.0 if exclude else 0.05}
    if layer_decay:  # the tokens keep the embeddings' layer scale
        scale_of = {id(p): g.get("lr_scale") for g in optimizer.param_groups for p in g["params"]}
        assert {scale_of[id(named[name])] for name in tokens} == {scale_of[id(named[patch])]}
    assert set(tokens) <= probe.no_weight_decay(vit)


def test_the_finetuning_head_starts_as_maes_and_the_probe_as_its_linprobe():
    """main_finetune.py:257: trunc_normal_(head.weight, std=2e-5), the bias zero (timm's ViT
    init); the probe's head std 0.01 as main_linprobe.py:218 (main_linear.py resolves --head_std
    to one or the other); --head_std 0.01 under --finetune draws the probe's head exactly."""
    import main_linear

    parse = main_linear.get_args_parser().parse_args
    for finetune, std in ((True, 2e-5), (False, 0.01)):
        args = parse(["--finetune"] if finetune else [])
        assert args.head_std is None  # resolved in main_linear.evaluate, as below
        torch.manual_seed(0)
        head = probe.build_classifier(probe.HeadTraining(head_std=std), 384, 500)
        assert head.fc.weight.std().item() == pytest.approx(std, rel=0.01)
        assert head.fc.weight.abs().max() < 6 * std
        assert torch.all(head.fc.bias == 0)
    torch.manual_seed(1)
    plain = LinearClassifier(384, 500)
    torch.manual_seed(1)
    pinned = probe.build_classifier(probe.HeadTraining(head_std=0.01, finetune=True), 384, 500)
    assert torch.equal(plain.fc.weight, pinned.fc.weight)


def test_probe_batch_norm_is_maes_with_its_eps():
    # main_linprobe.py: BatchNorm1d(affine=False, eps=1e-6) before the head; features this small
    # tell eps 1e-6 (unit variance) from BatchNorm's default 1e-5 (variance 1e-6 / 1.1e-5)
    head = LinearClassifier(4, 3, batch_norm=True).double().train()
    x = torch.randn(64, 4, dtype=torch.float64)
    x = 1e-3 * (x - x.mean(0)) / x.std(0, unbiased=False)
    assert torch.allclose(head.bn(x), x / math.sqrt(1e-6 + 1e-6), atol=1e-9)
    assert not list(head.bn.parameters())  # no affine


def test_fc_norm_normalises_the_mean_of_the_unnormed_patch_tokens():
    """MAE's global pooling for fine-tuning (models_vit.py): the blocks' output without the final
    norm, averaged over the patch tokens, then a fresh LayerNorm; at the head's lr."""
    torch.manual_seed(0)
    vit = tiny_vit(depth=2).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        patches, cls_pos = vit.patch_tokens(x)
        token = (vit.class_token + cls_pos).expand(3, -1, -1)
        unnormed = vit.encoder.layers(torch.cat([token, patches], dim=1))
        mean = unnormed[:, 1:].mean(dim=1)
        expected = (mean - mean.mean(1, keepdim=True)) / torch.sqrt(
            mean.var(1, unbiased=False, keepdim=True) + 1e-6
        )
        with pytest.raises(ValueError, match="pool 'mean'"):
            vit.set_fc_norm()  # the class token has no fc_norm in MAE
        vit.pool = "mean"
        vit.set_fc_norm()
        assert torch.allclose(vit(x), expected, atol=1e-5)
        assert isinstance(vit.encoder.ln, torch.nn.Identity)
    scales = probe.layer_scales(vit, 0.5)
    assert scales["fc_norm.weight"] == scales["fc_norm.bias"] == 1.0
    assert not any(name.startswith("encoder.ln") for name in scales)


def test_finetune_augmentation_is_timms_randaugment_and_random_erasing():
    """--randaugment 9 on timm's 0-10 scale: torchvision's op space at 11 bins gives timm's
    m9 values (rotate 30 x 9/10 degrees, shear 0.3 x 9/10); random erasing changes one
    rectangle of the normalised image and nothing else."""
    from transformations import linear_train_transform

    image = T.ToPILImage()(torch.rand(3, 32, 32))
    kwargs = dict(image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    plain = linear_train_transform(**kwargs)
    tuned = linear_train_transform(**kwargs, randaugment=9, random_erasing=1.0)
    augment = [t for t in tuned.transforms if isinstance(t, T.RandAugment)]
    assert len(augment) == 1 and (augment[0].num_ops, augment[0].magnitude) == (2, 9)
    assert augment[0].fill == [128, 128, 128]  # the mean colour, as timm's img_mean
    space = augment[0]._augmentation_space(augment[0].num_magnitude_bins, (32, 32))
    assert space["Rotate"][0][9].item() == pytest.approx(27.0)
    assert space["ShearX"][0][9].item() == pytest.approx(0.27)
    erasing = linear_train_transform(**kwargs, random_erasing=1.0)
    torch.manual_seed(3)
    before = plain(image)
    torch.manual_seed(3)
    after = erasing(image)
    changed = (before != after).any(dim=0)
    rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
    assert changed.any()
    box = changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.float().mean() > 0.99  # one filled rectangle
    assert not any(isinstance(t, (T.RandAugment, T.RandomErasing)) for t in plain.transforms)


def test_drop_path_rises_with_depth_and_is_off_in_eval():
    torch.manual_seed(0)
    vit = tiny_vit(depth=3)
    vit.set_drop_path(0.2)
    assert [layer.drop_path.p for layer in vit.encoder.layers] == pytest.approx([0, 0.1, 0.2])
    x = torch.randn(4, 3, 16, 16)
    vit.eval()
    assert torch.equal(vit(x), vit(x))
    vit.train()
    vit.set_drop_path(0.9)
    assert not torch.allclose(vit(x), vit(x))


def test_mixup_cutmix_and_label_smoothing_in_the_step():
    """The step's loss is the cross-entropy on the mixed class probabilities, smoothed."""
    torch.manual_seed(0)
    head, body = LinearClassifier(32, 4), tiny_vit()
    args = finetune_args(mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    mix = probe.batch_mixing(args.mixup, args.cutmix, 4)
    images, labels = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    step = probe.classifier_step(
        head, body, torch.device("cpu"), Speed(), True, mix, label_smoothing=args.label_smoothing
    )
    torch.manual_seed(5)
    loss, count, sums = step(images, labels)
    torch.manual_seed(5)
    mixed, targets = mix(images, labels)
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(1), torch.ones(6))
    expected = F.cross_entropy(head(body(mixed)), targets, label_smoothing=0.1)
    assert count == 6 and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert probe.batch_mixing(0.0, 0.0, 4) is None


@pytest.mark.full
@pytest.mark.parametrize("method", ["mae", "ijepa"])
def test_a_stopped_and_resumed_run_equals_a_straight_one(method, run_dirs, monkeypatch):
    """The masks are drawn from the run's random state, which the checkpoint holds: stopped by
    SIGTERM at step 3 and resumed, the weights end as a straight run's."""
    import main
    from tests.test_reliability import assert_same_weights, stop_at_call, weights

    flags = ["--model_name", method, "--backbone", "vit_tiny", "--image_size", "32"]
    flags += ["--dataset_name", "synthetic", "--device", "cpu", "--num_workers", "0"]
    flags += ["--limit", "32", "--batch_size", "16", "--num_epochs", "2", "--warmup_epochs", "0"]
    flags += ["--optimizer", "adamw", "--base_lr", "0.001", "--online_probe", "false", *run_dirs]
    flags += ["--rankme_images", "0"]  # ViT forward passes of the monitor set: minutes on a CPU
    flags += {"mae": ["--decoder_depth", "1"], "ijepa": ["--pred_depth", "1"]}[method]

    def run(name, *extra):
        return main.main(main.get_args_parser().parse_args([*flags, "--run_name", name, *extra]))

    straight = weights(run("straight")["ckpt_dir"])
    stop_at_call(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run("stopped")
    monkeypatch.undo()
    assert_same_weights(weights(run("stopped", "--resume", "auto")["ckpt_dir"]), straight)
