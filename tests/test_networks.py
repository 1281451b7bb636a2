"""Backbones: small-image stem, feature sizes, known parameter count, pretrained offline error."""

import pytest
import torch

from networks import BACKBONES, build_backbone
from networks.heads import LinearClassifier, build_mlp
from utils.misc import UserError


def test_small_image_resnet18_has_the_known_parameter_count():
    model, feat_dim = build_backbone("resnet18", 32)
    # CIFAR ResNet-18 is 11,173,962 parameters with its 10-way fc (512*10 + 10 = 5,130)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962 - 5_130
    assert feat_dim == 512
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)


@pytest.mark.parametrize(
    "name, feat_dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)]
)
def test_resnet_feature_sizes_at_32_and_96(name, feat_dim):
    for size in (32, 96):
        model, dim = build_backbone(name, size)
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, size, size))
        assert dim == feat_dim and out.shape == (2, feat_dim)


def test_large_images_keep_the_imagenet_stem():
    model, _ = build_backbone("resnet18", 96)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(UserError, match="unknown backbone 'resnet19'.*resnet18"):
        build_backbone("resnet19", 32)


def test_pretrained_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match=r"ImageNet weights for resnet18 not found at .*resnet18-"):
        build_backbone("resnet18", 224, pretrained=True)


def test_registry_holds_the_resnet_family():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(BACKBONES)


def test_mlp_shapes_and_batch_norm_placement():
    mlp = build_mlp(3, 16, 32, 8, last_bn=True)
    assert mlp(torch.randn(4, 16)).shape == (4, 8)
    kinds = [type(m).__name__ for m in mlp]
    assert kinds == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    plain = build_mlp(2, 16, 32, 8, batch_norm=False)
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear"]
    assert LinearClassifier(16, 5)(torch.randn(3, 16)).shape == (3, 5)
