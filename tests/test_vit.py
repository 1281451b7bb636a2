"""Vision Transformers: feature sizes at 32 and 224 px, the patch size rule, other input sizes
(multi-crop), the errors for indivisible sizes and --pretrained, and a short run of main.py."""

import math
import os
from dataclasses import replace

import pytest
import torch

import main
from networks import BACKBONES, build_backbone
from networks.vit import patch_size_for
from utils.misc import UserError


def test_vit_tiny_at_32_px_trains_with_4_px_patches():
    torch.manual_seed(0)
    model, feat_dim = build_backbone("vit_tiny", 32)
    assert feat_dim == 192 and model.patch_size == 4 and model.seq_length == 8 * 8 + 1
    assert model.encoder.pos_embedding.shape == (1, 65, 192)
    assert isinstance(model.heads, torch.nn.Identity)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 192) and out.isfinite().all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_vit_small_at_32_px_on_the_meta_device():
    # the same code as vit_tiny, four times the compute: shapes only
    with torch.device("meta"):
        model, feat_dim = build_backbone("vit_small", 32)
        out = model.train()(torch.empty(2, 3, 32, 32))
    assert feat_dim == 384 and out.shape == (2, 384) and model.seq_length == 65


def test_features_at_224_px_use_16_px_patches():
    model, feat_dim = build_backbone("vit_tiny", 224)
    assert feat_dim == 192 and model.patch_size == 16 and model.seq_length == 14 * 14 + 1
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 192)
    # vit_small at 224 takes seconds on a CPU: its shapes on the meta device
    with torch.device("meta"):
        model, feat_dim = build_backbone("vit_small", 224)
        assert model(torch.empty(1, 3, 224, 224)).shape == (1, 384)
    assert feat_dim == 384 and model.patch_size == 16 and model.seq_length == 197


def test_parameter_counts_match_deit():
    # DeiT-Ti / DeiT-S at 224 px: 5.7 M / 22.1 M with their 1000-way classifier
    for name, with_head in (("vit_tiny", 5_717_416), ("vit_small", 22_050_664)):
        with torch.device("meta"):
            model, dim = build_backbone(name, 224)
        assert sum(p.numel() for p in model.parameters()) == with_head - (dim * 1000 + 1000)


@pytest.mark.parametrize(
    "size, patch", [(8, 4), (16, 4), (32, 4), (64, 4), (96, 16), (128, 16), (224, 16)]
)
def test_patch_size_rule(size, patch):
    assert patch_size_for(size) == patch
    with torch.device("meta"):
        model, _ = build_backbone("vit_tiny", size)
    assert model.patch_size == patch and model.seq_length == (size // patch) ** 2 + 1


@pytest.mark.parametrize("size, patch", [(30, 4), (100, 16), (72, 16)])
def test_indivisible_image_size_is_a_clear_error(size, patch):
    with pytest.raises(UserError, match=rf"--image_size {size}: vit_tiny .* patch size {patch}"):
        build_backbone("vit_tiny", size)


@pytest.mark.parametrize("name", ["vit_tiny", "vit_small"])
def test_pretrained_is_refused_because_torchvision_has_no_weights(name):
    with pytest.raises(UserError, match=f"no ImageNet weights for {name}"):
        build_backbone(name, 224, pretrained=True)


def test_other_input_sizes_interpolate_the_position_embeddings():
    torch.manual_seed(0)
    model, _ = build_backbone("vit_tiny", 32)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        # at the native size the general path is torchvision's forward
        assert torch.allclose(model(x), model.forward_any_size(x), atol=1e-5)
        assert model.position_embedding((8, 8)) is model.encoder.pos_embedding
        assert model.position_embedding((4, 3)).shape == (1, 1 + 12, 192)
        # multi-crop's local crops; 14 px keeps 3x3 patches (12 px), as DINO's patch conv does
        for size in (14, 48):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 192)
        with pytest.raises(ValueError, match="smaller than one 4 px patch"):
            model(torch.randn(1, 3, 3, 3))


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py `interpolate_pos_encoding`, its steps for
    a grid of rows x cols patches: bicubic `interpolate` with scale_factor (g + 0.1) / sqrt(N)."""
    n = pos_embed.shape[1] - 1
    side, dim = int(math.sqrt(n)), pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    scale = ((rows + 0.1) / math.sqrt(n), (cols + 0.1) / math.sqrt(n))
    grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="bicubic")
    assert grid.shape[-2:] == (rows, cols)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, 0].unsqueeze(0), grid), dim=1)


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 4), (3, 5), (12, 12)])
def test_local_crops_position_embeddings_are_dinos(grid):
    """The position embeddings of a grid other than the native 8x8 (DINO's local crops) equal
    the official computation's (its scale factors, not the sizes' ratio, which differ by tens
    of percent at 2x2)."""
    torch.manual_seed(0)
    model, _ = build_backbone("vit_tiny", 32)
    pos = model.position_parameter.detach()
    got = model.position_embedding(grid).detach()
    expected = dino_interpolate_pos_encoding(pos, *grid)
    assert torch.allclose(got, expected, atol=1e-6)


def test_last_blocks_concatenate_the_normed_tokens_of_each_block_as_dinos_probe():
    """DINO's eval_linear.py on a ViT: `get_intermediate_layers(x, n)` (each of the last n blocks'
    output through the final norm), their class tokens concatenated."""
    torch.manual_seed(0)
    model, _ = build_backbone("vit_tiny", 32)
    model.eval()
    outputs = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: outputs.append(o)) for b in model.encoder.layers
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = model(x)  # one block: torchvision's forward, the class token after the norm
        for hook in hooks:
            hook.remove()
        normed = [model.encoder.ln(o) for o in outputs[-4:]]  # 12 blocks, the last 4
        model.last_blocks = 4
        assert torch.allclose(model(x), torch.cat([t[:, 0] for t in normed], dim=1), atol=1e-5)
        assert torch.allclose(model(x)[:, -192:], last, atol=1e-5)
        model.pool = "mean"
        means = torch.cat([t[:, 1:].mean(dim=1) for t in normed], dim=1)
        assert torch.allclose(model(x), means, atol=1e-5)
        assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4 * 192)  # any input size
        with pytest.raises(ValueError, match="last 13 of 12"):
            model.block_outputs(x, last=13)
        # --avgpool_patchtokens (DINO's ViT-B probe, n = 1): the class token, then the mean of
        # the last block's normed patch tokens
        model.pool, model.last_blocks, model.avgpool_patchtokens = "token", 1, True
        both = model(x)
        assert both.shape == (2, 2 * 192) and torch.allclose(both[:, :192], last, atol=1e-5)
        assert torch.allclose(both[:, 192:], normed[-1][:, 1:].mean(dim=1), atol=1e-5)


def test_registered():
    assert {"vit_tiny", "vit_small"} <= set(BACKBONES)


def test_dino_pretrains_a_vit_through_main(run_dirs):
    """One step of DINO on vit_tiny at 32 px with one 16 px local crop, through main.py."""
    args = main.get_args_parser().parse_args(
        ["--dataset_name", "synthetic", "--backbone", "vit_tiny", "--image_size", "32"]
        + ["--device", "cpu", "--num_workers", "0", "--limit", "8", "--batch_size", "8"]
        + ["--model_name", "dino", "--num_epochs", "1", "--warmup_epochs", "0", *run_dirs]
        + ["--optimizer", "adamw", "--base_lr", "5e-4", "--weight_decay", "0.04"]
        + ["--num_crops", "1", "--small_crop_size", "16", "--num_prototypes", "64"]
        + ["--proj_hidden_dim", "64", "--run_name", "vit"]
        + ["--online_probe", "false", "--rankme_images", "0"]  # test-set passes: minutes on a CPU
    )
    out = main.main(args)
    assert math.isfinite(out["loss"])


def test_vit_heads_split_the_same_weights_as_a_vit_built_with_them():
    """--vit_heads (MoCo v3's ViT-Small: vits.py num_heads=12): set on a built ViT, the blocks
    compute what a ViT constructed with that many heads computes from the same weights."""
    from networks.vit import ViTBackbone, set_heads

    torch.manual_seed(0)
    six, _ = build_backbone("vit_small", 32)
    twelve = ViTBackbone(image_size=32, patch_size=4, num_layers=12, num_heads=12, hidden_dim=384,
                         mlp_dim=1536)  # fmt: skip
    twelve.heads = torch.nn.Identity()
    twelve.load_state_dict(six.state_dict())
    x = torch.randn(2, 3, 32, 32)
    six.eval(), twelve.eval()
    assert not torch.allclose(six(x), twelve(x))
    set_heads(six, 12, "vit_small")
    assert six.num_heads == 12 and torch.equal(six(x), twelve(x))
    with pytest.raises(UserError, match="not a multiple"):
        set_heads(six, 7, "vit_small")
    with pytest.raises(UserError, match="not one of this toolkit's ViTs"):
        set_heads(build_backbone("small_cnn", 32)[0], 12, "small_cnn")


def test_mocov3_vit_small_has_the_official_12_heads_and_evaluation_keeps_them(tmp_path):
    """Unset, --vit_heads is the method's (MoCo v3's vit_small: 12; DINO's: the backbone's 6);
    a run's checkpoint records them, and load_backbone builds the backbone with them (a
    checkpoint without the record keeps the backbone's own)."""
    from config import with_recipe
    from pretrained import load_backbone
    from utils.checkpoint import save_checkpoint

    parser = main.get_args_parser()
    resolve = lambda *argv: with_recipe(parser.parse_args(argv), {"sources": {}})[0]  # noqa: E731
    assert resolve("--model_name", "mocov3", "--backbone", "vit_small").vit_heads == 12
    assert resolve("--model_name", "mocov3", "--backbone", "vit_tiny").vit_heads is None
    assert resolve("--model_name", "dino", "--backbone", "vit_small").vit_heads is None
    args = resolve("--model_name", "mocov3", "--backbone", "vit_small", "--vit_heads", "6")
    assert args.vit_heads == 6
    backbone, _ = build_backbone("vit_small", 32)
    state = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    args = {"model_name": "mocov3", "backbone": "vit_small", "image_size": 32,
            "dataset_name": "synthetic"}  # fmt: skip
    for record, heads in (({"model": {"vit_heads": {"value": 12}}}, 12), ({"model": {}}, 6)):
        path = str(tmp_path / f"{heads}.pt")
        save_checkpoint({"kind": "pretrain", "args": args, "epoch": 1, "model": state,
                         "config": record}, path)  # fmt: skip
        loaded, info = load_backbone(path, momentum=False)
        assert loaded.num_heads == heads and info.vit_heads == (12 if heads == 12 else None)


# ---- DINOv2's ViT options: register tokens, LayerScale, uniform drop path ----


def blocks_and_norm(vit) -> tuple[list, torch.nn.Module]:
    """The blocks and the final norm of this toolkit's ViT or of a timm one."""
    from networks.vit import ViTBackbone

    if isinstance(vit, ViTBackbone):
        return list(vit.encoder.layers), vit.encoder.ln
    return list(vit.blocks), vit.norm


def embedded(vit, x: torch.Tensor) -> torch.Tensor:
    """The class token and the patches, each with its position embedding: the blocks' input."""
    patches, cls_pos = vit.patch_tokens(x)
    return torch.cat([(vit.class_token + cls_pos).expand(x.shape[0], -1, -1), patches], dim=1)


def by_hand_with_registers(vit, x: torch.Tensor, cls: bool = True) -> torch.Tensor:
    """DINOv2's prepare_tokens_with_masks and forward_features by hand: the class token and the
    patches with their position embeddings, the registers put in after the class token (first
    without one), every block, the final norm, the registers taken out again."""
    tokens = embedded(vit, x) if cls else vit.patch_tokens(x)[0]
    k, n = int(cls), vit.register_tokens.shape[1]
    registers = vit.register_tokens.expand(x.shape[0], -1, -1)
    tokens = torch.cat([tokens[:, :k], registers, tokens[:, k:]], dim=1)
    blocks, norm = blocks_and_norm(vit)
    for block in blocks:
        tokens = block(tokens)
    out = norm(tokens)
    return torch.cat([out[:, :k], out[:, k + n :]], dim=1)


def check_registers(vit) -> None:
    """set_registers on a ViT of 16 px images (4x4 patches): the parameter, its keys and layer,
    the outputs' shapes, and the tokens of DINOv2's order computed by hand."""
    import copy

    torch.manual_seed(0)
    vit.eval()
    x, dim = torch.randn(2, 3, 16, 16), vit.class_token.shape[-1]
    keys = list(vit.state_dict())
    with torch.no_grad():
        plain = vit.forward_tokens(x)
        vit.set_registers(0)  # none: nothing changes
        assert list(vit.state_dict()) == keys and vit.num_registers == 0
        assert torch.equal(vit.forward_tokens(x), plain)
        vit.set_registers(3)
        tokens = vit.register_tokens
        assert tokens.shape == (1, 3, dim) and vit.num_registers == 3 and tokens.requires_grad
        assert 0 < tokens.abs().max() < 1e-4  # N(0, 1e-6), DINOv2's init_weights
        assert sorted(vit.state_dict()) == sorted([*keys, "register_tokens"])
        assert vit.layer_id("register_tokens") == 0  # with the class token
        with pytest.raises(ValueError, match="already"):
            vit.set_registers(2)
        tokens.normal_()  # registers that matter
        out = vit.forward_tokens(x)
        assert out.shape == plain.shape == (2, 1 + 16, dim)  # the class token, then the patches
        assert not torch.allclose(out, plain, atol=1e-3)
        assert torch.equal(out, by_hand_with_registers(vit, x))
        no_cls = vit.forward_tokens(x, cls=False)  # I-JEPA's encoder: the registers first
        assert no_cls.shape == (2, 16, dim)
        assert torch.equal(no_cls, by_hand_with_registers(vit, x, cls=False))
        keep = torch.tensor([[0, 5, 9], [2, 3, 15]])
        assert vit.forward_tokens(x, keep).shape == (2, 1 + 3, dim)  # MAE's visible patches
        outputs = vit.block_outputs(x, last=2)
        assert [o.shape for o in outputs] == [out.shape] * 2 and torch.equal(outputs[-1], out)
        assert torch.allclose(vit(x), out[:, 0], atol=1e-6)  # the features: its class token
        vit.last_blocks = 2  # DINO's probe on the last blocks' class tokens
        assert torch.allclose(vit(x), torch.cat([o[:, 0] for o in outputs], 1), atol=1e-6)
        vit.last_blocks = 1
        teacher = copy.deepcopy(vit)  # EMA teachers are deep copies
        assert torch.equal(teacher.register_tokens, tokens) and torch.equal(teacher(x), vit(x))
    vit.forward_tokens(x).square().mean().backward()
    assert vit.register_tokens.grad is not None and vit.register_tokens.grad.abs().sum() > 0


def check_layerscale(vit) -> None:
    """set_layerscale: gammas of the width filled with the initial value, 1-D (undecayed with
    exclude_bias_and_norm), in their block's layer; gamma 1 gives the plain blocks, gamma 0
    makes every block the identity."""
    import re

    from optimizers import param_groups

    torch.manual_seed(0)
    vit.eval()
    x, dim = torch.randn(2, 3, 16, 16), vit.class_token.shape[-1]
    keys = list(vit.state_dict())
    with torch.no_grad():
        plain = vit.forward_tokens(x)
        vit.set_layerscale(0.0)  # none: nothing changes
        assert list(vit.state_dict()) == keys and vit.layerscale == 0
        vit.set_layerscale(1e-5)
        assert vit.layerscale == 1e-5
        named = vit.named_parameters()
        gammas = {n: p for n, p in named if n.endswith((".ls1.gamma", ".ls2.gamma"))}
        assert len(gammas) == 2 * vit.depth
        assert sorted(vit.state_dict()) == sorted([*keys, *gammas])
        for name, gamma in gammas.items():
            assert gamma.shape == (dim,) and gamma.requires_grad and torch.all(gamma == 1e-5)
            block = int(re.search(r"(\d+)\.ls[12]\.gamma$", name).group(1))
            assert vit.layer_id(name) == block + 1  # its block's layer for lr decay
        assert not torch.allclose(vit.forward_tokens(x), plain, atol=1e-3)
        for gamma in gammas.values():
            gamma.fill_(1.0)
        assert torch.equal(vit.forward_tokens(x), plain)  # x + 1 * branch: the plain block
        for gamma in gammas.values():
            gamma.zero_()
        _, norm = blocks_and_norm(vit)
        assert torch.equal(vit.forward_tokens(x), norm(embedded(vit, x)))  # every block: x
    with pytest.raises(ValueError, match="already"):
        vit.set_layerscale(1e-4)
    undecayed = [g for g in param_groups(vit, True) if g.get("weight_decay") == 0.0]
    assert {id(p) for p in gammas.values()} <= {id(p) for g in undecayed for p in g["params"]}


def check_uniform_drop_path(vit, rates) -> None:
    """set_drop_path(rate, uniform=True): DINOv2's drop_path_uniform, the same rate in every
    block; by default the linear rise from 0."""
    vit.set_drop_path(0.3, uniform=True)
    assert rates(vit) == [0.3] * vit.depth
    vit.set_drop_path(0.3)
    assert rates(vit) == pytest.approx([0.3 * i / (vit.depth - 1) for i in range(vit.depth)])
    assert rates(vit)[0] == 0.0 and rates(vit)[-1] == pytest.approx(0.3)


def test_registers_go_through_every_block_and_leave_the_outputs():
    from tests.test_masked import tiny_vit

    check_registers(tiny_vit(depth=2))


def test_layerscale_scales_both_residual_branches_of_every_block():
    from tests.test_masked import tiny_vit

    vit = tiny_vit(depth=2)
    assert all(isinstance(b.ls1, torch.nn.Identity) for b in vit.encoder.layers)  # off: none
    check_layerscale(vit)


def test_uniform_drop_path_gives_every_block_the_rate():
    from tests.test_masked import tiny_vit

    check_uniform_drop_path(tiny_vit(depth=3), lambda v: [b.drop_path.p for b in v.encoder.layers])


def test_registers_and_layerscale_are_refused_on_other_backbones():
    from networks.vit import set_vit_layerscale, set_vit_registers

    cnn, _ = build_backbone("small_cnn", 16)
    set_vit_registers(cnn, 0, "small_cnn")  # 0 and None: nothing to add
    set_vit_layerscale(cnn, None, "small_cnn")
    with pytest.raises(UserError, match="--vit_registers 4: small_cnn is not a Vision Trans"):
        set_vit_registers(cnn, 4, "small_cnn")
    with pytest.raises(UserError, match="--vit_layerscale 1e-05: small_cnn is not a Vision Tr"):
        set_vit_layerscale(cnn, 1e-5, "small_cnn")


def vit_checkpoint(path: str, record: bool = True) -> torch.nn.Module:
    """A forged main.py checkpoint of a DINO vit_tiny at 16 px with 2 registers and LayerScale
    (random values, so that a backbone without them or with fresh ones would differ); its
    backbone, in eval mode. `record`: the run's config.json in it (else the args alone)."""
    from networks.vit import set_vit_layerscale, set_vit_registers
    from utils.checkpoint import save_checkpoint

    torch.manual_seed(0)
    backbone, _ = build_backbone("vit_tiny", 16)
    set_vit_registers(backbone, 2, "vit_tiny")
    set_vit_layerscale(backbone, 1e-5, "vit_tiny")
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "register" in name or "gamma" in name:
                p.normal_()
    state = {f"{prefix}.{k}": v for k, v in backbone.state_dict().items()
             for prefix in ("backbone", "teacher_backbone")}  # fmt: skip
    args = {"model_name": "dino", "backbone": "vit_tiny", "image_size": 16,
            "dataset_name": "synthetic", "vit_registers": 2, "vit_layerscale": 1e-5}  # fmt: skip
    model = {"vit_registers": {"value": 2}, "vit_layerscale": {"value": 1e-5}} if record else {}
    save_checkpoint({"kind": "pretrain", "args": args, "epoch": 1, "model": state,
                     "config": {"model": model}}, path)  # fmt: skip
    return backbone.eval()


@pytest.mark.parametrize("record", [True, False])
def test_a_checkpoint_with_registers_and_layerscale_loads_with_them(tmp_path, record):
    """load_backbone (export.py's too) and main_linear.py's evaluated_backbone build the ViT
    with the run's registers and LayerScale, from its record (or, without one, its args), and
    give its features; --random_init takes the method's."""
    from pretrained import Evaluated, evaluated_backbone, load_backbone, read_backbone

    path = str(tmp_path / "last.pt")
    trained = vit_checkpoint(path, record)
    x = torch.randn(2, 3, 16, 16)
    loaded, info = load_backbone(path)
    assert (info.vit_registers, info.vit_layerscale) == (2, 1e-5)
    assert loaded.num_registers == 2 and loaded.layerscale == 1e-5
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
    weights, info = read_backbone(path)
    want = Evaluated("dino", "vit_tiny", 16, "synthetic")
    evaluated, _ = evaluated_backbone(want, weights, info, path)
    with torch.no_grad():
        assert torch.equal(evaluated.eval()(x), trained(x))
    untrained, _ = evaluated_backbone(replace(want, random_init=True), None)
    assert untrained.num_registers == 0 and untrained.layerscale == 0  # DINO's: none


def test_the_methods_registers_and_layerscale_unless_given_or_resumed(monkeypatch):
    """Unset, --vit_registers and --vit_layerscale are the method's (on ViTs); given, the flag's;
    resumed, the checkpoint's (none where it recorded none: an older run)."""
    from config import with_recipe
    from methods import METHODS

    parser = main.get_args_parser()

    def resolve(*argv, checkpoint=None):
        args = parser.parse_args(["--model_name", "dino", *argv])
        resolved = with_recipe(args, {"sources": (sources := {})}, checkpoint)[0]
        return resolved.vit_registers, resolved.vit_layerscale, sources.get("vit_registers")

    assert resolve("--backbone", "vit_tiny") == (None, None, None)  # DINO's: none
    monkeypatch.setattr(METHODS["dino"], "vit_registers", 4)
    monkeypatch.setattr(METHODS["dino"], "vit_layerscale", 1e-5)
    assert resolve("--backbone", "vit_tiny") == (4, 1e-5, "method")
    assert resolve("--backbone", "resnet18") == (None, None, None)  # a ViT's only
    given = resolve("--backbone", "vit_tiny", "--vit_registers", "0", "--vit_layerscale", "0")
    assert given[:2] == (0, 0.0)
    saved = {"args": {"vit_registers": 2, "vit_layerscale": 1e-6}}
    assert resolve("--backbone", "vit_tiny", checkpoint=saved) == (2, 1e-6, "checkpoint")
    assert resolve("--backbone", "vit_tiny", checkpoint={"args": {}})[:2] == (None, None)


TINY_DINO = [
    "--model_name", "dino", "--backbone", "vit_tiny", "--image_size", "16",
    "--dataset_name", "synthetic", "--device", "cpu", "--num_workers", "0", "--limit", "8",
    "--batch_size", "8", "--num_epochs", "1", "--warmup_epochs", "0", "--num_crops", "1",
    "--small_crop_size", "8", "--num_prototypes", "64", "--proj_hidden_dim", "64",
    "--online_probe", "false", "--rankme_images", "0", "--run_name", "reg",
]  # fmt: skip


def printed_config(argv: list[str], capsys) -> dict:
    """main.py --print_config's record (nothing trained, nothing written)."""
    import json

    from utils.misc import run_cli

    capsys.readouterr()
    run_cli(main.main, main.get_args_parser(), [*argv, "--print_config"])
    return json.loads(capsys.readouterr().out)


def test_the_run_records_its_registers_and_layerscale(tmp_path, capsys):
    dirs = ["--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpts")]
    plain = printed_config([*TINY_DINO, *dirs], capsys)["model"]
    assert plain["vit_registers"] == {"value": 0, "source": "method"}
    assert plain["vit_layerscale"] == {"value": 0.0, "source": "method"}
    given = ["--vit_registers", "4", "--vit_layerscale", "1e-5"]
    model = printed_config([*TINY_DINO, *dirs, *given], capsys)["model"]
    assert model["vit_registers"] == {"value": 4, "source": "command line"}
    assert model["vit_layerscale"] == {"value": 1e-5, "source": "command line"}
    # 4 registers and two gammas per block of vit_tiny, in DINO's student and its teacher
    added = 2 * (4 * 192 + 2 * 12 * 192)
    assert model["parameters"]["value"] == plain["parameters"]["value"] + added
    assert not os.path.exists(tmp_path / "logs") and not os.path.exists(tmp_path / "ckpts")


@pytest.mark.parametrize("flag", ["--vit_registers", "--vit_layerscale"])
def test_registers_and_layerscale_on_a_cnn_are_one_line_exit_2(flag, tmp_path, capsys):
    from utils.misc import run_cli

    argv = [*TINY_DINO, "--backbone", "small_cnn", flag, "1", "--logs_dir", str(tmp_path / "l")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(main.main, main.get_args_parser(), [*argv, "--ckpt_dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1, err
    assert f"{flag} 1: small_cnn is not a Vision Transformer" in err[0], err[0]
    assert not os.path.exists(tmp_path / "l") and not os.path.exists(tmp_path / "c")


def test_a_run_with_registers_and_layerscale_evaluates_exports_and_resumes_only_so(
    run_dirs, capsys
):
    """One DINO step on vit_tiny with 2 registers and LayerScale: its checkpoint loads with them
    (load_backbone, main_linear's --print_config, export.py's pt2); a resume with other values
    is refused; --init_backbone builds the new run's backbone with them."""
    import argparse

    import export
    from pretrained import load_backbone
    from utils.checkpoint import load_checkpoint

    given = ["--vit_registers", "2", "--vit_layerscale", "1e-5"]
    out = main.main(main.get_args_parser().parse_args([*TINY_DINO, *run_dirs, *given]))
    assert math.isfinite(out["loss"])
    ckpt = os.path.join(out["ckpt_dir"], "last.pt")
    state = load_checkpoint(ckpt)
    assert state["model"]["teacher_backbone.register_tokens"].shape == (1, 2, 192)
    backbone, info = load_backbone(ckpt)  # DINO's teacher
    assert backbone.num_registers == 2 and backbone.layerscale == 1e-5
    teacher = {k.removeprefix("teacher_backbone."): v for k, v in state["model"].items()
               if k.startswith("teacher_backbone.")}  # fmt: skip
    assert all(torch.equal(v, teacher[k]) for k, v in backbone.state_dict().items())
    exported = os.path.join(out["ckpt_dir"], "reg.pt2")
    args = argparse.Namespace(ckpt=ckpt, format="pt2", output=exported, momentum_backbone=None,
                              overwrite=False)  # fmt: skip
    export.main(args)  # checked against the backbone's features by export.py itself
    assert os.path.isfile(exported)
    with pytest.raises(UserError, match="e.g. register_tokens"):  # no place in torchvision's
        export.main(argparse.Namespace(**{**vars(args), "format": "torchvision",
                                          "output": exported + ".pth"}))  # fmt: skip
    again = [*TINY_DINO, *run_dirs, "--resume", ckpt, "--num_epochs", "2"]
    with pytest.raises(UserError, match="--vit_registers 2 there, 0 here"):
        main.main(main.get_args_parser().parse_args([*again, "--vit_registers", "0"]))
    dirs = [*run_dirs[:-2], "--ckpt_dir", run_dirs[-1] + "2", "--run_name", "init"]
    record = printed_config([*TINY_DINO, *dirs, "--init_backbone", ckpt], capsys)["model"]
    assert record["vit_registers"] == {"value": 2, "source": "checkpoint"}
    assert record["vit_layerscale"] == {"value": 1e-5, "source": "checkpoint"}
