"""timm's plain ViTs with the interface of networks/vit.MaskableViT (networks/timm_vit.py): built
through --backbone timm:..., initialised as MAE's and I-JEPA's official code on timm's names,
fine-tuned with MAE's protocol (layer-wise lr decay, drop path, fc_norm), and run end to end.
The behaviour both kinds of ViT share (masked encoding, MAE's and I-JEPA's learning) is tested
on both in tests/test_masked.py."""

import copy
import csv
import json
import math
import os
import pickle

import pytest
import torch

import main
import main_linear
import probe
from methods import build_method
from networks import build_backbone
from networks.heads import LinearClassifier
from networks.timm_vit import add_interface
from networks.vit import (
    MaskableViT,
    set_avgpool_patchtokens,
    set_last_blocks,
    sincos_position_embedding,
)
from optimizers import Optimization, build_optimizer
from tests.test_masked import finetune_args, tiny_vit

timm = pytest.importorskip("timm")

NAME = "timm:vit_tiny_patch16_224"


def test_plain_timm_vits_get_the_interface_and_keep_their_keys_and_forward():
    torch.manual_seed(0)
    vit, dim = build_backbone(NAME, 32)
    assert isinstance(vit, MaskableViT) and isinstance(vit, timm.models.VisionTransformer)
    assert (vit.image_size, vit.patch_size, vit.depth, vit.num_heads, dim) == (32, 4, 12, 3, 192)
    plain = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=0, dynamic_img_size=True
    )
    assert list(vit.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    plain.load_state_dict(vit.state_dict())
    x = torch.randn(2, 3, 32, 32)
    vit.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(vit(x), plain(x))  # timm's own forward, untouched
        assert torch.allclose(vit.forward_tokens(x), plain.forward_features(x), atol=1e-5)
    twin = copy.deepcopy(vit)  # EMA targets and teachers are deep copies
    assert type(twin) is type(vit) and isinstance(twin, MaskableViT)
    # a whole pickled module finds its class again by name (networks.timm_vit.__getattr__)
    assert type(vit).__name__ == "MaskableVisionTransformer"
    loaded = pickle.loads(pickle.dumps(vit)).eval()
    assert type(loaded) is type(vit) and torch.equal(loaded(x), vit(x))


def test_masked_encoding_equals_timms_own_embedding_gathered_then_its_blocks():
    """forward_tokens(x, keep) against timm's path by hand: its `_pos_embed` (class token and
    its position first), the kept patches gathered from that, the blocks and the final norm;
    without the class token (I-JEPA's context), the kept patches alone."""
    torch.manual_seed(0)
    vit = tiny_vit(depth=2, kind="timm").eval()
    x = torch.randn(3, 3, 16, 16)
    keep = torch.stack([torch.randperm(16)[:5] for _ in range(3)])  # 5 of 16 patches, any order
    with torch.no_grad():
        full = vit._pos_embed(vit.patch_embed(x))  # [3, 1 + 16, 32]
        kept = torch.gather(full[:, 1:], 1, keep.unsqueeze(-1).expand(-1, -1, 32))
        with_cls = vit.norm(vit.blocks(vit.norm_pre(torch.cat([full[:, :1], kept], dim=1))))
        without = vit.norm(vit.blocks(vit.norm_pre(kept)))
        assert vit.forward_tokens(x, keep).shape == (3, 1 + 5, 32)
        assert torch.allclose(vit.forward_tokens(x, keep), with_cls, atol=1e-5)
        assert torch.allclose(vit.forward_tokens(x, keep, cls=False), without, atol=1e-5)


def test_other_timm_vits_stay_as_built_and_masked_methods_refuse_them():
    small = dict(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2, num_classes=0)
    for options, reason in (
        ({"reg_tokens": 2}, "no register or distillation tokens"),
        ({"no_embed_class": True}, "position embedding for the class token"),
        ({"class_token": False, "global_pool": "avg"}, "one class token"),
    ):
        vit = timm.create_model("vit_tiny_patch16_224", **small, **options)
        kind = type(vit)
        assert not add_interface(vit) and type(vit) is kind, options
        for method in ("mae", "ijepa"):
            with pytest.raises(ValueError, match="timm ViT with one class token") as error:
                build_method(method, vit, 32)
            assert reason in str(error.value) and "\n" not in str(error.value)


def test_mae_initialises_a_timm_vit_as_models_mae():
    """initialize_weights: fixed sin-cos positions, class token N(0, 0.02), Xavier-uniform
    Linear layers (qkv as one [3D, D] matrix) and patch projection, zero biases."""
    torch.manual_seed(0)
    vit, dim = build_backbone(NAME, 32)
    model = build_method("mae", vit, dim, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    pos = vit.pos_embed
    assert not pos.requires_grad and torch.allclose(pos[0], sincos_position_embedding(dim, 8))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.pos_embed" not in trained and "backbone.cls_token" in trained
    assert 0.015 < vit.cls_token.std() < 0.025
    qkv = vit.blocks[0].attn.qkv.weight  # [3D, D]
    bound = math.sqrt(6 / (dim + 3 * dim))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    assert torch.all(vit.blocks[0].attn.qkv.bias == 0) and torch.all(vit.patch_embed.proj.bias == 0)
    proj = vit.patch_embed.proj.weight  # Xavier over the flattened kernel [D, 3 * 4 * 4]
    assert proj.abs().max() <= math.sqrt(6 / (dim + 48))
    out = model([torch.randn(2, 3, 32, 32)])
    assert out["pred"].shape == (2, 64, 48) and out["loss"].isfinite()


def test_ijepa_initialises_a_timm_vit_as_its_official_code():
    """init_model (src/helper.py): every Linear drawn at truncated N(0, 0.02) after the modules'
    own fix_init_weight, whose division of block i's attn.proj and mlp.fc2 by sqrt(2 i) it
    undoes (--rescale_init keeps it); the class token is not trained."""
    torch.manual_seed(0)
    vit, dim = build_backbone(NAME, 32)
    model = build_method("ijepa", vit, dim, pred_depth=1)
    assert not vit.pos_embed.requires_grad and not vit.cls_token.requires_grad
    assert torch.allclose(vit.pos_embed[0], sincos_position_embedding(dim, 8))
    for block in vit.blocks:
        for weight in (block.attn.proj.weight, block.mlp.fc2.weight, block.attn.qkv.weight):
            assert weight.std().item() == pytest.approx(0.02, rel=0.12)
    rescaled, _ = build_backbone(NAME, 32)
    build_method("ijepa", rescaled, dim, pred_depth=1, rescale_init=True)
    for i, block in enumerate(rescaled.blocks, start=1):
        for weight in (block.attn.proj.weight, block.mlp.fc2.weight):
            assert weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * i), rel=0.12)
    assert model.predictor.blocks[0].num_heads == 3  # the encoder's heads
    assert model([torch.randn(2, 3, 32, 32)])["loss"].isfinite()


def test_layer_decay_drop_path_and_fc_norm_on_timm_names():
    """MAE's get_layer_id_for_vit on timm's names; timm's DropPath rising with depth; fc_norm
    on the mean of the unnormed patch tokens."""
    torch.manual_seed(0)
    vit = tiny_vit(depth=3, kind="timm")
    scales = probe.layer_scales(vit, 0.5)
    for name in ("patch_embed.proj.weight", "cls_token", "pos_embed"):
        assert scales[name] == 0.5**4
    for i in range(3):
        assert scales[f"blocks.{i}.mlp.fc1.weight"] == 0.5 ** (3 - i)
    assert scales["norm.weight"] == 1.0
    args = Optimization.of(finetune_args(layer_decay=0.5))
    optimizer = build_optimizer(args, LinearClassifier(32, 10), lr=1.0)
    probe.add_backbone_groups(
        optimizer, vit, probe.HeadTraining.of(finetune_args(layer_decay=0.5)), lr=1.0
    )
    scale_of = {id(p): g.get("lr_scale", 1.0) for g in optimizer.param_groups for p in g["params"]}
    named = dict(vit.named_parameters())
    assert scale_of[id(named["pos_embed"])] == 0.5**4
    assert scale_of[id(named["blocks.2.attn.qkv.weight"])] == 0.5
    assert scale_of[id(named["norm.bias"])] == 1.0

    vit.set_drop_path(0.2)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    assert rates == pytest.approx([0, 0.1, 0.2])
    assert [getattr(b.drop_path2, "drop_prob", 0.0) for b in vit.blocks] == rates
    x = torch.randn(4, 3, 16, 16)
    vit.train()
    assert not torch.allclose(vit(x), vit(x))
    vit.set_drop_path(0.0)

    vit.eval()
    with torch.no_grad():
        patches, cls_pos = vit.patch_tokens(x)
        tokens = torch.cat([(vit.cls_token + cls_pos).expand(4, -1, -1), patches], dim=1)
        mean = vit.blocks(tokens)[:, 1:].mean(dim=1)
        expected = torch.nn.functional.layer_norm(mean, (32,), eps=1e-6)
        with pytest.raises(ValueError, match="pool 'mean'"):
            vit.set_fc_norm()
        vit.global_pool = "avg"  # --pool mean
        vit.set_fc_norm()
        assert torch.allclose(vit(x), expected, atol=1e-5)


def test_finetuning_leaves_a_distilled_deits_tokens_undecayed_as_timm_lists_them():
    """A timm ViT without the interface (a distillation token) fine-tunes with timm's own
    no_weight_decay() (MAE's main_finetune.py:284): cls_token, dist_token, pos_embed undecayed."""
    vit = timm.create_model(
        "deit_tiny_distilled_patch16_224", img_size=16, patch_size=4, depth=1, embed_dim=32,
        num_heads=2, num_classes=0,
    )  # fmt: skip
    assert not add_interface(vit)
    args = finetune_args()
    optimizer = build_optimizer(Optimization.of(args), LinearClassifier(32, 10), lr=1.0)
    probe.add_backbone_groups(optimizer, vit, probe.HeadTraining.of(args), lr=1.0)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(vit.named_parameters())
    for name in ("cls_token", "dist_token", "pos_embed"):
        assert decay_of[id(named[name])] == 0.0, name
    assert decay_of[id(named["blocks.0.attn.qkv.weight"])] == 0.05


TINY_RUN = ["--backbone", NAME, "--image_size", "32", "--dataset_name", "synthetic"]
TINY_RUN += ["--device", "cpu", "--num_workers", "0", "--limit", "32", "--batch_size", "8"]
TINY_RUN += ["--num_epochs", "1", "--warmup_epochs", "0"]


def step_losses(log_dir: str) -> list[float]:
    with open(os.path.join(log_dir, "metrics.csv")) as f:
        return [float(row["loss"]) for row in csv.DictReader(f) if row["kind"] == "step"]


@pytest.mark.usefixtures("small_test_set")  # files and formats, not accuracy
@pytest.mark.parametrize(
    "method, pretrain, evaluation",
    [
        # pretrained, then fine-tuned with MAE's protocol (recipes/cifar10/finetune_vit.args)
        (
            "mae",
            ["--decoder_depth", "1"],
            ["--finetune", "--optimizer", "adamw", "--base_lr", "1e-3", "--layer_decay", "0.75"]
            + ["--drop_path", "0.1", "--pool", "mean", "--fc_norm"],
        ),
        # pretrained, then the linear probe of its target encoder's mean patch token
        ("ijepa", ["--pred_depth", "1"], ["--probe_bn"]),
    ],
)
def test_a_timm_vit_pretrains_and_evaluates_end_to_end(method, pretrain, evaluation, run_dirs):
    """main.py on the whole vit_tiny_patch16_224 (4 steps of 8 images): every step's loss
    finite, the last clearly below the first (MAE 3.1 -> 1.7, I-JEPA 0.50 -> 0.12); then
    main_linear.py on its checkpoint."""
    flags = [*TINY_RUN, *run_dirs, "--model_name", method, "--optimizer", "adamw"]
    flags += ["--base_lr", "1e-3", "--lr_scaling", "none", "--print_freq", "1"]
    flags += ["--online_probe", "false", "--rankme_images", "0", *pretrain]
    out = main.main(main.get_args_parser().parse_args([*flags, "--run_name", "pre"]))
    losses = step_losses(out["log_dir"])
    assert len(losses) == 4 and all(map(math.isfinite, losses)), losses
    assert losses[-1] < 0.7 * losses[0], losses
    ckpt = os.path.join(out["ckpt_dir"], "last.pt")
    flags = [*TINY_RUN, *run_dirs, "--model_name", method, "--ckpt", ckpt, *evaluation]
    result = main_linear.main(
        main_linear.get_args_parser().parse_args([*flags, "--run_name", "ev"])
    )
    with open(os.path.join(run_dirs[1], "ev", "results.json")) as f:
        assert json.load(f)["acc1"] == pytest.approx(result["acc1"])
    assert 0 <= result["acc1"] <= 100


def test_dino_gives_a_timm_vit_student_its_drop_path_and_the_teacher_none():
    """main_dino.py: drop_path_rate 0.1 for its ViT students (the teacher is built without)."""
    model = build_method("dino", tiny_vit(depth=3, kind="timm"), 32, out_dim=10)
    assert [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.backbone.blocks] == (
        pytest.approx([0, 0.05, 0.1])
    )
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in model.teacher_backbone.blocks)


def test_mocov3_builds_a_timm_vit_as_vits_py():
    """VisionTransformerMoCo (a subclass of timm's): q, k, v each Xavier-uniform as a [D, D]
    matrix (bound sqrt(6 / 2D), above the whole [3D, D] matrix's sqrt(6 / 4D)), class token
    N(0, 1e-6), fixed sin-cos positions with the row's half first, frozen patch projection."""
    torch.manual_seed(0)
    vit, dim = build_backbone(NAME, 32)
    model = build_method("mocov3", vit, dim, proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64)
    qkv = vit.blocks[0].attn.qkv.weight
    assert math.sqrt(6 / (4 * dim)) < qkv.abs().max() <= math.sqrt(6 / (2 * dim))
    assert vit.cls_token.abs().max() < 1e-5
    rows_first = sincos_position_embedding(dim, 8, rows_first=True)
    assert torch.allclose(vit.pos_embed[0], rows_first) and not vit.pos_embed.requires_grad
    assert not vit.patch_embed.proj.weight.requires_grad
    assert model.target_backbone.blocks[0].attn.qkv.weight.equal(qkv)


def test_dino_initialises_a_timm_vit_as_its_own_vit():
    torch.manual_seed(0)
    vit, dim = build_backbone(NAME, 32)
    build_method("dino", vit, dim, out_dim=10)
    assert vit.cls_token.std().item() == pytest.approx(0.02, rel=0.2)  # timm's: N(0, 1e-6)
    assert (
        vit.pos_embed.std().item() == pytest.approx(0.02, rel=0.1) and vit.pos_embed.requires_grad
    )


def test_dinos_probe_reads_a_timm_vits_last_blocks_class_tokens():
    """eval_linear.py --n_last_blocks / --avgpool_patchtokens on timm's blocks: each block's
    tokens through the final norm, as timm's own forward_features computes the last one."""
    torch.manual_seed(0)
    vit = tiny_vit(depth=3, kind="timm").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, outs = vit.norm_pre(vit._pos_embed(vit.patch_embed(x))), []
        for block in vit.blocks:
            tokens = block(tokens)
            outs.append(vit.norm(tokens))
        assert torch.allclose(outs[-1], vit.forward_features(x))
        assert set_last_blocks(vit, 2, "timm") == 2
        assert torch.allclose(vit(x), torch.cat([outs[1][:, 0], outs[2][:, 0]], -1), atol=1e-5)
        assert set_avgpool_patchtokens(vit, True, "timm") == 1
        both = torch.cat([outs[1][:, 0], outs[2][:, 0], outs[2][:, 1:].mean(1)], -1)
        assert torch.allclose(vit(x), both, atol=1e-5)


def test_vit_tiny_and_timms_vit_tiny_are_one_function():
    """With the same weights, this toolkit's vit_tiny (torchvision's blocks) and timm's
    vit_tiny_patch16_224 (the blocks of MAE's official encoder) encode the same visible patches
    to the same tokens: the two backbones differ in module names only."""
    torch.manual_seed(0)
    ours, _ = build_backbone("vit_tiny", 32)
    theirs, _ = build_backbone(NAME, 32)
    names = {
        "conv_proj": "patch_embed.proj", "class_token": "cls_token",
        "encoder.pos_embedding": "pos_embed", "encoder.ln": "norm", "ln_1": "norm1",
        "ln_2": "norm2", "self_attention.in_proj_weight": "attn.qkv.weight",
        "self_attention.in_proj_bias": "attn.qkv.bias", "self_attention.out_proj": "attn.proj",
        "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2",
    }  # fmt: skip
    state = {}
    for key, value in ours.state_dict().items():
        key = key.replace("encoder.layers.encoder_layer_", "blocks.")
        for a, b in names.items():
            key = key.replace(a, b)
        state[key] = value
    theirs.load_state_dict(state)  # strict: every weight has its counterpart
    ours.eval(), theirs.eval()
    x, keep = torch.randn(2, 3, 32, 32), torch.randperm(64)[:16].expand(2, -1)
    with torch.no_grad():
        assert torch.allclose(
            ours.forward_tokens(x, keep), theirs.forward_tokens(x, keep), atol=1e-5
        )
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_registers_and_layerscale_on_a_timm_vit():
    """DINOv2's options on a plain timm ViT, as on vit_tiny (tests/test_vit.py): registers after
    the class token through every block and out of the outputs, timm's LayerScale in the blocks'
    ls1/ls2; with registers timm's forward goes through them, its head and pooling kept."""
    from tests.test_masked import tiny_vit
    from tests.test_vit import check_layerscale, check_registers

    check_registers(tiny_vit(kind="timm"))
    vit = tiny_vit(kind="timm")
    assert all(isinstance(b.ls1, torch.nn.Identity) for b in vit.blocks)  # timm's without
    check_layerscale(vit)
    assert all(isinstance(b.ls2, timm.layers.LayerScale) for b in vit.blocks)
    torch.manual_seed(0)
    vit = tiny_vit(kind="timm").eval()
    vit.set_registers(2)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        vit.register_tokens.normal_()
        assert not torch.allclose(vit(x), timm.models.VisionTransformer.forward(vit, x))
        assert torch.allclose(vit(x), vit.forward_tokens(x)[:, 0], atol=1e-6)
        vit.global_pool = "avg"  # timm's mean of the patch tokens: the registers left out
        assert torch.allclose(vit(x), vit.forward_tokens(x)[:, 1:].mean(dim=1), atol=1e-6)
        assert vit(torch.randn(1, 3, 24, 24)).shape == (1, 32)  # other sizes (multi-crop)


def test_uniform_drop_path_on_a_timm_vit():
    from tests.test_masked import tiny_vit
    from tests.test_vit import check_uniform_drop_path

    def rates(vit):
        return [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]

    check_uniform_drop_path(tiny_vit(depth=3, kind="timm"), rates)


def test_timm_vits_with_their_own_registers_or_layerscale_refuse_ours():
    from networks.vit import set_vit_layerscale, set_vit_registers
    from utils.misc import UserError

    small = dict(img_size=16, patch_size=4, depth=1, embed_dim=32, num_heads=2, num_classes=0)
    registered = timm.create_model("vit_tiny_patch16_224", reg_tokens=2, **small)
    assert not add_interface(registered)  # timm's registers: no interface, as before
    with pytest.raises(UserError, match="--vit_registers 4: timm:x is not a Vision Transformer"):
        set_vit_registers(registered, 4, "timm:x")
    scaled = timm.create_model("vit_tiny_patch16_224", init_values=1e-6, **small)
    assert add_interface(scaled)
    with pytest.raises(UserError, match="has LayerScale already: drop --vit_layerscale"):
        set_vit_layerscale(scaled, 1e-5, "timm:x")


def test_a_timm_vits_layerscale_exports_for_timms_model_with_init_values():
    """export.py --format timm: a ViT's --vit_layerscale is timm's init_values, whose model takes
    every weight (the same names, blocks.i.ls1.gamma)."""
    from export import compare_keys, reference_model

    vit, _ = build_backbone(NAME, 224)
    vit.set_layerscale(1e-5)
    model, call = reference_model(NAME, 224, "timm", layerscale=1e-5)
    assert call == "timm.create_model('vit_tiny_patch16_224', num_classes=0, init_values=1e-05)"
    keys = compare_keys(vit.state_dict(), model, "timm", NAME)
    assert keys == {"absent_keys": [], "differing_shapes": {}}
