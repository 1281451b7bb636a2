"""Backbones: small-image stem, feature sizes, known parameter count, pretrained offline error."""

import os
import re
import warnings

import pytest
import torch
import torchvision

from networks import BACKBONES, build_backbone, convert_sync_batchnorm
from networks.heads import LinearClassifier, build_mlp
from utils.misc import UserError


def test_small_image_resnet18_has_the_known_parameter_count():
    model, feat_dim = build_backbone("resnet18", 32)
    # CIFAR ResNet-18 is 11,173,962 parameters with its 10-way fc (512*10 + 10 = 5,130)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962 - 5_130 == 11_168_832
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


def test_registry_holds_every_design_family():
    expected = {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    expected |= {f"densenet{d}" for d in (121, 161, 169, 201)}
    expected |= {f"efficientnet_b{i}" for i in range(8)} | {"alexnet"}
    assert expected <= set(BACKBONES)


# Every name, both stems, on the meta device: shapes without the arithmetic, which on 2 CPU cores
# would take minutes for the large members (efficientnet_b7, densenet201). The backward pass and
# the numbers are checked below, on one member per family.
@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_gives_its_feature_size(name, size):
    with torch.device("meta"), torch.no_grad():
        model, feat_dim = build_backbone(name, size)
        out = model.train()(torch.empty(2, 3, size, size))
    assert out.shape == (2, feat_dim)


# One member per family with real numbers: forward and backward in train mode, batch of 2; at 96
# only where the large-image model is not torchvision's own (classifier aside), to save time.
@pytest.mark.parametrize(
    "name, feat_dim, size",
    [
        ("resnet18", 512, 32),
        ("vgg11_bn", 512, 32),
        ("vgg11_bn", 512, 96),  # global pool in place of the 7x7 pool + classifier
        ("densenet121", 1024, 32),
        ("efficientnet_b0", 1280, 32),
        ("alexnet", 256, 32),
        ("alexnet", 256, 96),
    ],
)
def test_one_backbone_per_family_trains(name, feat_dim, size):
    torch.manual_seed(0)
    model, dim = build_backbone(name, size)
    out = model.train()(torch.randn(2, 3, size, size))
    assert dim == feat_dim and out.shape == (2, feat_dim) and out.isfinite().all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_trains(name, size):
    """Real forward and backward for every name at both stems (minutes: --runslow)."""
    torch.manual_seed(0)
    model, feat_dim = build_backbone(name, size)
    out = model.train()(torch.randn(2, 3, size, size))
    assert out.shape == (2, feat_dim) and out.isfinite().all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize(
    "name, stem_output",
    [
        ("densenet169", (4, 4)),  # four blocks, three transitions: 32 / 8
        ("efficientnet_b3", (2, 2)),  # total stride 16 once the first conv has stride 1
        ("vgg16_bn", (2, 2)),  # four max-pools left
        ("alexnet", (3, 3)),  # 32 -> 15 -> 7 -> 3 through the three 3x3 stride-2 max-pools
    ],
)
def test_small_images_keep_resolution_until_the_global_pool(name, stem_output):
    with torch.device("meta"):
        model, _ = build_backbone(name, 32)
        assert model.features(torch.empty(1, 3, 32, 32)).shape[-2:] == stem_output


def test_torchvision_alexnet_would_fail_at_32():
    with torch.device("meta"):
        with pytest.raises(RuntimeError):
            torchvision.models.alexnet(weights=None)(torch.empty(1, 3, 32, 32))
        model, _ = build_backbone("alexnet", 32)
    assert model.features[0].kernel_size == (3, 3) and model.features[0].stride == (1, 1)


def test_large_images_keep_the_imagenet_stems():
    with torch.device("meta"):
        densenet, _ = build_backbone("densenet121", 96)
        effnet, _ = build_backbone("efficientnet_b0", 96)
        vgg, _ = build_backbone("vgg11", 96)
    assert densenet.features.conv0.kernel_size == (7, 7)
    assert isinstance(densenet.features.pool0, torch.nn.MaxPool2d)
    assert effnet.features[0][0].stride == (2, 2)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in vgg.features) == 5


@pytest.mark.parametrize("name", sorted(set(BACKBONES) - {"small_cnn", "vit_tiny", "vit_small"}))
def test_pretrained_offline_names_the_file_for_every_backbone(name, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    expected = os.path.join(str(tmp_path), "checkpoints", os.path.basename(url))
    with torch.device("meta"), pytest.raises(UserError, match=re.escape(expected)):
        build_backbone(name, 224, pretrained=True)


def _old_densenet_keys(state_dict):
    """The key format of torchvision's DenseNet checkpoints (`norm.1` for `norm1`)."""
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    old = {pattern.sub(r"\1.\2.", k): v for k, v in state_dict.items()}
    # they also predate `num_batches_tracked`, which BatchNorm then fills in itself
    return {k: v for k, v in old.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize(
    "name, warns",
    [
        ("resnet18", True),
        ("vgg11", False),  # only a max-pool goes
        ("densenet121", True),
        ("efficientnet_b0", False),  # same conv weights, stride 1
        ("alexnet", True),
    ],
)
def test_pretrained_checkpoints_load_and_replaced_stems_warn(name, warns, tmp_path, monkeypatch):
    # A checkpoint of meta tensors has the real keys and shapes but no data: cheap to write.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    os.makedirs(tmp_path / "checkpoints")
    with torch.device("meta"):
        state_dict = getattr(torchvision.models, name)(weights=None).state_dict()
        if name.startswith("densenet"):
            state_dict = _old_densenet_keys(state_dict)
            assert any(".norm.1." in k for k in state_dict)
        torch.save(state_dict, tmp_path / "checkpoints" / os.path.basename(url))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build_backbone(name, 32, pretrained=True)  # load_state_dict is strict
    assert any("re-initialised" in str(w.message) for w in caught) == warns


def test_sync_batchnorm_is_the_identity_without_a_process_group():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert convert_sync_batchnorm(model) is model
    assert isinstance(model[1], torch.nn.BatchNorm2d)


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


def test_probe_batch_norm_makes_the_linear_probe_scale_free():
    from networks.heads import LinearClassifier

    torch.manual_seed(0)
    probe = LinearClassifier(8, 3, batch_norm=True)
    x = torch.randn(16, 8)
    assert torch.allclose(probe.train()(x), probe(x * 50.0), atol=1e-4)
    assert not any(p.requires_grad for p in probe.bn.parameters())  # no affine: still linear
    assert isinstance(LinearClassifier(8, 3).bn, torch.nn.Identity)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        ),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 29.80 GiB"),
    ],
)
def test_an_image_size_too_large_for_memory_is_said_so_not_too_small(error):
    """The size probe's out-of-memory error means too large (--image_size 10000): one line
    saying so, with no search for a larger size that would work."""
    from networks import check_input_sizes

    calls = []

    class Hungry(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[-1])
            raise error

    with pytest.raises(UserError, match="do not fit in the memory of cpu.*smaller --image_size"):
        check_input_sizes(Hungry(), "resnet18", {3000}, 3000, torch.device("cpu"))
    assert calls == [3000]
