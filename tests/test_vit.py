"""Vision Transformers: feature sizes at 32 and 224 px, the patch size rule, other input sizes
(multi-crop), the errors for indivisible sizes and --pretrained, and a short run of main.py."""

import math

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
