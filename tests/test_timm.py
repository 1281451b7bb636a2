"""timm backbones (`--backbone timm:<name>`): small-image adaptations per family, feature sizes,
zero-init left to the method, MoCo v3's ViT defaults, one-line errors, short runs of main.py."""

import math
import os
import sys

import pytest
import torch

import main
from methods import build_method
from networks import build_backbone, check_input_sizes, is_vit, zero_init_residual
from utils.checkpoint import load_checkpoint
from utils.misc import UserError

WITHOUT_TIMM = {"test_missing_timm_is_one_line"}  # tests that hide timm: they run without it


@pytest.fixture(autouse=True)
def needs_timm(request):
    """The other tests need timm: skipped where it is not installed (it is optional)."""
    if request.node.originalname not in WITHOUT_TIMM:
        pytest.importorskip("timm")


def last_map(model, stage, size):
    """The spatial size of `stage`'s output for one eval-mode input of `size` px."""
    shapes = []
    handle = stage.register_forward_hook(lambda m, i, out: shapes.append(tuple(out.shape[-2:])))
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, size, size))
    handle.remove()
    return shapes[0], out


def test_resnet18_small_stem_reaches_the_last_stage_at_4x4():
    model, feat_dim = build_backbone("timm:resnet18", 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    shape, out = last_map(model, model.layer4, 32)
    assert shape == (4, 4) and feat_dim == 512 and out.shape == (2, 512)


def test_large_images_keep_timm_stems():
    with torch.device("meta"):
        resnet, _ = build_backbone("timm:resnet18", 224)
        deep, _ = build_backbone("timm:resnet50d", 224)
        convnext, _ = build_backbone("timm:convnext_atto", 224)
    assert resnet.conv1.kernel_size == (7, 7) and resnet.conv1.stride == (2, 2)
    assert isinstance(resnet.maxpool, torch.nn.MaxPool2d)
    assert deep.conv1[0].stride == (2, 2) and isinstance(deep.maxpool, torch.nn.MaxPool2d)
    assert convnext.stem[0].kernel_size == (4, 4) and convnext.stem[0].stride == (4, 4)


def test_resnet50d_deep_stem_at_32_px():
    model, feat_dim = build_backbone("timm:resnet50d", 32)
    assert model.conv1[0].stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    shape, out = last_map(model, model.layer4, 32)
    assert shape == (4, 4) and out.shape == (2, feat_dim) == (2, 2048)


def test_convnext_atto_small_stem():
    model, feat_dim = build_backbone("timm:convnext_atto", 32)
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    shape, out = last_map(model, model.stages[-1], 32)
    assert shape == (4, 4) and feat_dim == model.num_features == 320 and out.shape == (2, 320)


def test_vit_tiny_at_32_px_has_4_px_patches_and_takes_local_crops():
    model, feat_dim = build_backbone("timm:vit_tiny_patch16_224", 32)
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.grid_size == (8, 8)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, feat_dim) == (2, 192)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # position embeddings resized
    assert is_vit(model) and not is_vit(build_backbone("timm:resnet18", 32)[0])


def test_other_families_keep_their_stem_and_report_their_pooled_size(capsys):
    model, feat_dim = build_backbone("timm:mobilenetv3_small_100", 32)
    assert "no small-image adaptation for its family (MobileNetV3)" in capsys.readouterr().out
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, feat_dim) == (2, 1024)  # after its pre-logits conv, not num_features
    assert model.num_features == 576


def test_a_fixed_input_size_assert_is_a_one_line_size_error():
    class FixedSize(torch.nn.Module):  # as timm's Swin, BEiT, EVA: `assert` on the input size
        def forward(self, x):
            assert x.shape[-1] == 40, "Input height doesn't match model"
            return x.flatten(1)

    with pytest.raises(UserError, match="--image_size 32 is too small for swin: .* is 40"):
        check_input_sizes(FixedSize(), "swin", {32}, 32, torch.device("cpu"))


def test_zero_init_is_the_methods_decision():
    model, _ = build_backbone("timm:resnet18", 32)
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 8 and all((b.bn2.weight == 1).all() for b in blocks)  # not by timm
    assert zero_init_residual(model, bottleneck_only=True) == 0  # BYOL: basic blocks keep theirs
    assert zero_init_residual(model) == 8
    assert all((b.bn2.weight == 0).all() for b in blocks)
    with torch.device("meta"):
        resnet50, _ = build_backbone("timm:resnet50", 224)
        assert zero_init_residual(resnet50, bottleneck_only=True) == 16
        assert zero_init_residual(build_backbone("timm:convnext_atto", 32)[0]) == 0


def test_mocov3_gives_a_timm_vit_its_vit_heads():
    vit = build_method(
        "mocov3", *build_backbone("timm:vit_tiny_patch16_224", 16), proj_hidden_dim=64
    )
    linears = [m for m in vit.projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 64, 256]
    assert isinstance(vit.predictor[-1], torch.nn.BatchNorm1d) and vit.temperature == 0.2


def test_unknown_timm_name_is_one_line_from_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.get_args_parser().parse_args(["--backbone", "timm:convnext_tinyy"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    assert "unknown timm model 'convnext_tinyy'" in lines[0] and "convnext_tiny," in lines[0]
    with pytest.raises(SystemExit):
        main.get_args_parser().parse_args(["--backbone", "resnet19"])
    assert "invalid choice: 'resnet19'" in capsys.readouterr().err
    args = main.get_args_parser().parse_args(["--backbone", "timm:resnet18"])
    assert args.backbone == "timm:resnet18"


def test_pretrained_timm_is_refused():
    with pytest.raises(UserError, match="Hugging Face hub.*drop --pretrained"):
        build_backbone("timm:resnet18", 32, pretrained=True)


def test_missing_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` fails
    with pytest.raises(UserError, match=r"^--backbone timm:convnext_tiny needs the timm package"):
        build_backbone("timm:convnext_tiny", 32)
    assert not is_vit(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "backbone, method, extra",
    [
        ("timm:resnet18", "simclr", []),
        ("timm:convnext_atto", "byol", []),
        (
            "timm:vit_tiny_patch16_224",
            "dino",
            ["--num_crops", "2", "--small_crop_size", "16", "--num_prototypes", "1024"],
        ),
    ],
)
def test_timm_backbones_pretrain_through_main(backbone, method, extra, run_dirs):
    """One step of pretraining at 32 px on the CPU (32 images: seconds to half a minute on a
    busy core each): a finite loss and a checkpoint."""
    args = main.get_args_parser().parse_args(
        ["--dataset_name", "synthetic", "--image_size", "32", "--device", "cpu"]
        + ["--num_workers", "0", "--limit", "32", "--batch_size", "32", "--num_epochs", "1"]
        + ["--warmup_epochs", "0", "--optimizer", "sgd", "--base_lr", "0.05", *run_dirs]
        + ["--backbone", backbone, "--model_name", method, *extra]
        + ["--online_probe", "false", "--rankme_images", "0"]  # test-set passes: minutes on a CPU
    )
    out = main.main(args)
    assert math.isfinite(out["loss"])
    ckpt = load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))
    assert ckpt["args"]["backbone"] == backbone and ckpt["epoch"] == 1


def test_a_timm_backbone_gives_a_run_folder_name_without_a_colon(tmp_path):
    from utils.run import Run, default_run_name

    run = Run("byol", "timm:convnext_atto", "synthetic", str(tmp_path), str(tmp_path))
    assert default_run_name(run).startswith("byol_timm-convnext_atto_synthetic_")
