"""The architecture around the losses, as the official implementations build it (docs/fidelity.md):
BatchNorm per view or over all crops, heads' layer layouts and widths, zero-initialised residual
BatchNorm, Barlow Twins' parameter groups, loss scales, view defaults, refused flags."""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main
from methods import METHODS, build_method
from methods.simclr import nt_xent_loss
from methods.supcon import supcon_loss
from networks import build_backbone, zero_init_residual
from networks.heads import ScaleOnlyBatchNorm1d, build_mlp, init_linears
from optimizers import Optimization, build_optimizer
from optimizers.cosine_decay_warmup import adjust_learning_rate
from transformations import eval_transform, linear_train_transform
from utils.misc import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_VIEW = ["simsiam", "byol", "barlowtwins", "vicreg", "mocov2", "mocov3", "nnclr"]
SMALL = dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32, queue_size=64)


def tiny(name: str, backbone: str = "small_cnn", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_method(name, *build_backbone(backbone, 16), **{**SMALL, **kwargs}).train()


def views(n=8, seed=1, size=16, count=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=g) for _ in range(count)]


class Calls:
    """Records the inputs and outputs of every call of some modules."""

    def __init__(self, *modules: nn.Module) -> None:
        self.calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        self.handles = [m.register_forward_hook(self.hook) for m in modules]

    def hook(self, module, inputs, output):
        self.calls.append((module, inputs[0].detach().clone(), output.detach().clone()))

    def of(self, module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x, y) for m, x, y in self.calls if m is module]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def features_of_view1(model, backbone_name, x1, x2):
    """The output of each backbone's call on view 1 alone (train mode), for the views (x1, x2)."""
    backbones = [getattr(model, n) for n in ("backbone", "target_backbone") if hasattr(model, n)]
    calls = Calls(*backbones)
    with torch.no_grad():
        model([x1, x2])
    calls.close()
    out = []
    for b in backbones:
        matching = [y for x, y in calls.of(b) if x.shape == x1.shape and torch.equal(x, x1)]
        assert matching, f"{backbone_name}: no call of {type(b).__name__} on view 1 alone"
        out.append(matching[0])
    return out


@pytest.mark.parametrize("name", PER_VIEW)
def test_per_view_methods_normalise_each_view_with_its_own_batch_statistics(name):
    """In train mode (BatchNorm on batch statistics) the features of view 1, in the online and
    the target network, do not depend on view 2, as with the official one call per view."""
    # MoCo v2: both encoders see both views; its key batch shuffled (Shuffle-BN) would hide the
    # call on view 1 alone (tests/test_moco.py checks the shuffle)
    both = {"symmetric": True, "shuffle_bn": False} if name == "mocov2" else {}
    model = tiny(name, **both)
    x1, x2 = views()
    before = features_of_view1(model, name, x1, x2)
    after = features_of_view1(model, name, x1, x2 * 3 + 1)  # other statistics for view 2
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    # the old behaviour, one batch of 2N: view 2 changes view 1's normalisation
    joint = tiny(name, concat_views=True, **both)
    calls = Calls(joint.backbone)
    with torch.no_grad():
        joint([x1, x2])
        joint([x1, x2 * 3 + 1])
    (x_a, y_a), (x_b, y_b) = calls.of(joint.backbone)[:1] + calls.of(joint.backbone)[-1:]
    assert x_a.shape[0] == 16 and not torch.allclose(y_a[:8], y_b[:8])


@pytest.mark.parametrize("name", ["simclr", "supcon"])
def test_simclr_and_supcon_forward_both_views_as_one_batch(name):
    model = tiny(name)
    calls = Calls(model.backbone, model.projector)
    model(views(), labels=torch.arange(8))
    assert [x.shape[0] for _, x, _ in calls.calls] == [16, 16]


def test_swav_runs_the_backbone_per_resolution_and_the_projector_once():
    model = tiny("swav", num_prototypes=10)
    crops = views(count=2) + views(seed=2, size=8, count=3)
    calls = Calls(model.backbone, model.projector, model.prototypes)
    model(crops)
    assert [x.shape[0] for x, _ in calls.of(model.backbone)] == [16, 24]  # 2 high, 3 low crops
    assert [x.shape[0] for x, _ in calls.of(model.projector)] == [40]  # all crops at once
    assert [x.shape[0] for x, _ in calls.of(model.prototypes)] == [40]


def test_dino_runs_its_head_once_over_every_crop():
    model = tiny("dino", num_prototypes=10, use_bn_in_head=True)
    crops = views(count=2) + views(seed=2, size=8, count=2)
    calls = Calls(model.backbone, model.head, model.teacher_backbone, model.teacher_head)
    model(crops)
    assert [x.shape[0] for x, _ in calls.of(model.backbone)] == [16, 16]
    assert [x.shape[0] for x, _ in calls.of(model.head)] == [32]  # the head's BN sees all crops
    assert [x.shape[0] for x, _ in calls.of(model.teacher_head)] == [16]  # the global crops


def layout(mlp: nn.Sequential) -> list[str]:
    """Layer kinds, with the Linear's bias and size: 'Linear(256->256,bias)'."""
    names = []
    for m in mlp:
        if isinstance(m, nn.Linear):
            bias = ",bias" if m.bias is not None else ""
            names.append(f"Linear({m.in_features}->{m.out_features}{bias})")
        elif isinstance(m, nn.BatchNorm1d):
            names.append("BN" if m.affine else "BN(no affine)")
        else:
            names.append(type(m).__name__)
    return names


def test_heads_have_the_official_layer_layout_and_widths():
    backbone, d = build_backbone("resnet18", 16)  # 512-d features: the official widths follow d
    assert d == 512
    # SimCLR model_util.py: hidden = feature size, BN everywhere, the last BN scale-only
    simclr = build_method("simclr", backbone, d).projector
    assert layout(simclr) == [
        "Linear(512->512)", "BN", "ReLU", "Linear(512->128)", "ScaleOnlyBatchNorm1d",
    ]  # fmt: skip
    last = simclr[-1]
    assert isinstance(last, ScaleOnlyBatchNorm1d) and not last.bn.affine
    assert last.weight.shape == (128,)  # a learnt scale, no shift
    # SupCon resnet_big.py: Linear(dim_in, dim_in)-ReLU-Linear(dim_in, 128), no BatchNorm
    supcon = build_method("supcon", *build_backbone("resnet18", 16)).projector
    assert layout(supcon) == ["Linear(512->512,bias)", "ReLU", "Linear(512->128,bias)"]
    # SimSiam builder.py: prev_dim (the feature size) wide, BN on the output without affine
    simsiam = build_method("simsiam", *build_backbone("resnet18", 16))
    assert layout(simsiam.projector) == [
        "Linear(512->512)", "BN", "ReLU", "Linear(512->512)", "BN", "ReLU",
        "Linear(512->2048)", "BN(no affine)",
    ]  # fmt: skip
    assert layout(simsiam.predictor) == [
        "Linear(2048->512)", "BN", "ReLU", "Linear(512->2048,bias)",
    ]  # fmt: skip
    # MoCo v2 builder.py: fc(dim_mlp, dim_mlp)-ReLU-fc, dim_mlp the feature size, no BN
    mocov2 = build_method("mocov2", *build_backbone("resnet18", 16), queue_size=8).projector
    assert layout(mocov2) == ["Linear(512->512,bias)", "ReLU", "Linear(512->128,bias)"]
    # BYOL networks.py: the last Linear of projector and predictor has no bias
    byol = build_method("byol", *build_backbone("small_cnn", 16))
    assert layout(byol.projector) == ["Linear(256->4096)", "BN", "ReLU", "Linear(4096->256)"]
    assert layout(byol.predictor) == ["Linear(256->4096)", "BN", "ReLU", "Linear(4096->256)"]
    # Barlow Twins main.py, VICReg main_vicreg.py: 8192-8192-8192, bias-free last layer, no BN
    # after it
    for name in ("barlowtwins", "vicreg"):
        head = build_method(name, *build_backbone("small_cnn", 16)).projector
        assert layout(head) == [
            "Linear(256->8192)", "BN", "ReLU", "Linear(8192->8192)", "BN", "ReLU",
            "Linear(8192->8192)",
        ]  # fmt: skip
    # DINO main_dino.py: --out_dim 65536
    dino = build_method("dino", *build_backbone("small_cnn", 16))
    assert dino.head.last_layer.out_features == 65536
    # a width given on the command line wins over the feature size
    assert (
        build_method("simclr", *build_backbone("small_cnn", 16), proj_hidden_dim=64)
        .projector[0]
        .out_features
        == 64
    )


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def test_simclr_and_byol_heads_start_as_their_official_codes():
    backbone, d = build_backbone("resnet18", 16)
    # SimCLR model_util.py linear_layer: kernel_initializer=random_normal(stddev=.01), no biases
    for layer in linears(build_method("simclr", backbone, d).projector):
        assert layer.bias is None
        assert abs(float(layer.weight.detach().std()) - 0.01) < 0.0005
        assert float(layer.weight.detach().abs().max()) > 0.04  # a normal, not cut at 2 sd
    # BYOL: hk.Linear's default, N(0, 1/fan_in) cut at ±2 sd without rescaling: sd 0.8796/sqrt(n)
    byol = build_method("byol", *build_backbone("small_cnn", 16))
    for layer in linears(byol.projector) + linears(byol.predictor):
        s = layer.in_features**-0.5
        assert abs(float(layer.weight.detach().std()) / s - 0.8796) < 0.01
        assert float(layer.weight.detach().abs().max()) <= 2 * s
    # the target starts as the online projector (copied after the initialisation)
    target, online = byol.target_projector.state_dict(), byol.projector.state_dict()
    assert all(torch.equal(target[k], online[k]) for k in online)
    # --head_init pytorch: nn.Linear's uniform within ±1/sqrt(fan_in), the toolkit's earlier init
    torch.manual_seed(0)
    old = build_method("simclr", *build_backbone("small_cnn", 16), head_init="pytorch").projector
    for layer in linears(old):
        bound = layer.in_features**-0.5
        assert float(layer.weight.detach().abs().max()) <= bound
        assert abs(float(layer.weight.detach().std()) - bound / math.sqrt(3)) < 0.05 * bound


def test_init_linears_zeroes_biases_and_leaves_other_layers():
    torch.manual_seed(0)
    mlp = build_mlp(2, 64, 128, 32, batch_norm=False)  # Linear(bias)-ReLU-Linear(bias)
    built = {k: v.clone() for k, v in mlp.state_dict().items()}
    init_linears(mlp, "pytorch")
    assert all(torch.equal(built[k], v) for k, v in mlp.state_dict().items())
    for scheme in ("normal", "truncated_normal"):
        init_linears(mlp, scheme)
        assert all(float(layer.bias.detach().abs().max()) == 0 for layer in linears(mlp))
    with pytest.raises(ValueError, match="truncated_normal"):
        init_linears(mlp, "xavier")


def test_head_init_flag_is_checked_and_refused_where_the_method_does_not_take_it():
    parse = main.get_args_parser().parse_args
    assert parse(["--model_name", "simclr", "--head_init", "pytorch"]).head_init == "pytorch"
    with pytest.raises(SystemExit) as exit_info:
        parse(["--model_name", "simclr", "--head_init", "xavier"])
    assert exit_info.value.code == 2
    with pytest.raises(UserError, match="--head_init"):
        main.check_method_flags(parse(["--model_name", "simsiam", "--head_init", "normal"]))


def residual_scales(model: nn.Module) -> list[float]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    return [
        float((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight.detach().abs().sum())
        for m in model.modules()
        if isinstance(m, BasicBlock | Bottleneck)
    ]


@pytest.mark.parametrize(
    "name, zeroed",
    [
        ("simclr", True), ("simsiam", True), ("barlowtwins", True), ("vicreg", True),
        ("mocov3", True), ("byol", False), ("supcon", False), ("mocov2", False),
        ("swav", False), ("dino", False), ("nnclr", False),
    ],
)  # fmt: skip
def test_zero_initialised_residual_batchnorm_is_the_official_default(name, zeroed):
    model = tiny(name, backbone="resnet18", num_prototypes=10)
    scales = residual_scales(model.backbone)
    assert len(scales) == 8 and all((s == 0) == zeroed for s in scales)
    for target in ("target_backbone", "teacher_backbone"):  # EMA copies start as the online net
        if hasattr(model, target):
            assert residual_scales(getattr(model, target)) == scales


def test_zero_init_residual_flag_byol_bottlenecks_and_other_families():
    # the flag overrides the method's default either way; --pretrained weights are never zeroed
    assert all(
        s > 0
        for s in residual_scales(tiny("simclr", "resnet18", zero_init_residual=False).backbone)
    )
    assert all(
        s == 0
        for s in residual_scales(tiny("mocov2", "resnet18", zero_init_residual=True).backbone)
    )
    assert all(s > 0 for s in residual_scales(tiny("simclr", "resnet18", pretrained=True).backbone))
    # BYOL (haiku's BlockV1): Bottleneck blocks only
    byol50 = build_method(
        "byol", *build_backbone("resnet50", 16), proj_hidden_dim=8, pred_hidden_dim=8
    )
    assert len(residual_scales(byol50.backbone)) == 16
    assert all(s == 0 for s in residual_scales(byol50.backbone))
    # a zeroed BasicBlock starts as the identity (plus the ReLU)
    resnet, _ = build_backbone("resnet18", 16)
    zero_init_residual(resnet)
    block = resnet.layer1[0].eval()
    x = torch.randn(2, 64, 8, 8)
    assert torch.allclose(block(x), F.relu(x))
    # EfficientNet: the BatchNorm closing every MBConv with a skip connection; VGG: nothing
    effnet, _ = build_backbone("efficientnet_b0", 32)
    assert zero_init_residual(effnet) == 9
    assert zero_init_residual(build_backbone("vgg11_bn", 32)[0]) == 0


def test_barlow_twins_biases_and_batchnorm_get_their_own_lr():
    model = tiny("barlowtwins")
    for optimizer in ("lars", "sgd", "adam"):
        args = Optimization(optimizer, base_lr=0.2, num_epochs=1, weight_decay=5e-4)
        opt = build_optimizer(args, model, 0.2)
        adjust_learning_rate(opt, 0.2)  # the weights' lr, as main.py sets it every step
        lrs = {}
        for group in opt.param_groups:
            for p in group["params"]:
                lrs[p.ndim == 1] = lrs.get(p.ndim == 1, set()) | {round(group["lr"], 10)}
        assert lrs == {False: {0.2}, True: {0.0048}}  # official learning_rate_biases 0.0048
    ones = build_optimizer(args, tiny("barlowtwins", bias_lr_scale=1.0), 0.2)
    adjust_learning_rate(ones, 0.2)
    assert {g["lr"] for g in ones.param_groups} == {0.2}


def test_supcon_official_scale_against_a_hand_computed_value():
    """Two images, two identical views each, orthogonal: each anchor sees its positive at
    similarity 1 and two negatives at 0, so the paper's loss is log(1 + 2 e^(-1/T)); the
    official code multiplies it by T / 0.07."""
    e1, e2 = torch.eye(2)
    z = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])  # [N=2, V=2, D=2]
    labels = torch.tensor([0, 1])
    paper = math.log(1 + 2 * math.exp(-2))  # T = 0.5
    assert supcon_loss(z, labels, 0.5).item() == pytest.approx(paper, rel=1e-5)
    official = supcon_loss(z, labels, 0.5, base_temperature=0.07).item()
    assert official == pytest.approx(paper * 0.5 / 0.07, rel=1e-5)
    # the module passes the official base temperature
    model = tiny("supcon")
    calls = Calls(model.projector)
    loss = model(views(), labels=torch.arange(8))["loss"]
    z1, z2 = calls.of(model.projector)[0][1].chunk(2)
    expected = supcon_loss(torch.stack([z1, z2], 1), torch.arange(8), 0.1) / 0.7
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_simclr_loss_is_the_official_sum_of_both_directions():
    model = tiny("simclr")
    out = model(views())
    assert out["loss"].item() == pytest.approx(2 * nt_xent_loss(out["z1"], out["z2"], 0.5).item())
    mean = tiny("simclr", nt_xent_scale=1.0)(views())
    assert mean["loss"].item() == pytest.approx(nt_xent_loss(mean["z1"], mean["z2"], 0.5).item())


def view_of(method: str, *flags: str, size: str = "32"):
    args = main.get_args_parser().parse_args(
        ["--model_name", method, "--dataset_name", "synthetic", "--image_size", size, *flags]
    )
    return main.training_set(args)[1].view_transforms


@pytest.mark.parametrize(
    "method, scale",
    [("supcon", 0.2), ("simsiam", 0.2), ("mocov2", 0.2), ("simclr", 0.08), ("byol", 0.08)],
)
def test_crop_scales_are_each_official_codes(method, scale):
    assert {v.options["crop_scale"] for v in view_of(method)} == {(scale, 1.0)}
    assert {v.options["crop_scale"] for v in view_of(method, "--crop_min_scale", "0.5")} == {
        (0.5, 1.0)
    }  # the flag wins


# the official codes' crop resampling (torchvision's default is bilinear): SimCLR tf2/data_util.py,
# BYOL byol/utils/dataset.py, Barlow Twins main.py, VICReg augmentations.py, DINO main_dino.py,
# MAE main_pretrain.py, NNCLR solo-learn's pretrain_dataloader.py, DINOv2 data/augmentations.py:
# bicubic; the others bilinear
BICUBIC_VIEWS = {"simclr", "dcl", "dclw", "byol", "barlowtwins", "vicreg", "dino", "mae", "nnclr"}
BICUBIC_VIEWS |= {"dinov2"}
# their evaluation: SimCLR, BYOL (as their crops), DINO eval_linear.py, MAE main_linprobe.py,
# DINOv2 data/transforms.py make_classification_eval_transform
BICUBIC_EVAL = {"simclr", "dcl", "dclw", "byol", "dino", "mae", "dinov2"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_crop_and_evaluation_resampling_are_each_official_codes(method):
    official = "bicubic" if method in BICUBIC_VIEWS else "bilinear"
    assert {v.options["interpolation"] for v in view_of(method)} == {official}
    other = "bilinear" if official == "bicubic" else "bicubic"
    flagged = view_of(method, "--interpolation", other)  # the flag wins
    assert {v.options["interpolation"] for v in flagged} == {other}
    assert METHODS[method].eval_interpolation == (
        "bicubic" if method in BICUBIC_EVAL else "bilinear"
    )


def test_evaluation_transforms_resample_as_asked():
    mean, std = (0.5,) * 3, (0.25,) * 3
    for mode in ("bilinear", "bicubic"):
        plain = eval_transform(
            image_size=224, native_size=0, mean=mean, std=std, interpolation=mode
        )
        assert plain.transforms[0].size == 256 and plain.transforms[0].interpolation.value == mode
        train = linear_train_transform(
            image_size=224, mean=mean, std=std, randaugment=9, interpolation=mode
        )
        crop, _, augment = train.transforms[:3]
        assert crop.interpolation.value == augment.interpolation.value == mode


def test_swav_and_dino_colour_and_blur_are_the_official_ones():
    swav = view_of("swav", size="224")
    assert {v.options["jitter"] for v in swav} == {(0.8, 0.8, 0.8, 0.2)}  # s = 1.0
    assert {v.options["blur_kernel"] for v in swav} == {13}  # PIL radius blur, 3 sigma at 2
    assert {v.options["image_size"] for v in swav} == {224, 96}
    assert {v.options["blur_kernel"] for v in view_of("dino", size="224")} == {13}
    assert {v.options["blur_kernel"] for v in view_of("simclr", size="224")} == {23}  # 10 %


@pytest.mark.full  # a subprocess
def test_a_flag_the_method_does_not_take_is_refused_before_anything_is_written(tmp_path):
    argv = ["--model_name", "barlowtwins", "--temperature", "0.3", "--dataset_name", "synthetic"]
    argv += ["--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpts")]
    with pytest.raises(UserError) as err:
        main.main(main.get_args_parser().parse_args(argv))
    message = str(err.value)
    assert "--temperature" in message and "barlowtwins" in message and "--lambd" in message
    assert not os.path.exists(tmp_path / "logs") and not os.path.exists(tmp_path / "ckpts")
    out = subprocess.run(
        [sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    # each method's own flags pass, and every method declares the ones its table row may set
    for method in METHODS:
        main.check_method_flags(main.get_args_parser().parse_args(["--model_name", method]))
    with pytest.raises(UserError, match="--num_crops"):
        main.check_method_flags(
            main.get_args_parser().parse_args(["--model_name", "simclr", "--num_crops", "4"])
        )


@pytest.mark.parametrize("method, zeroed", [("simsiam", True), ("mocov2", False)])
def test_the_random_init_baseline_starts_as_the_method_does(method, zeroed):
    import main_linear

    args = main_linear.get_args_parser().parse_args(
        ["--model_name", method, "--backbone", "resnet18", "--random_init"]
    )
    backbone, _ = main_linear.evaluated_backbone(main_linear.Evaluated.of(args), None)
    assert all((s == 0) == zeroed for s in residual_scales(backbone))


def test_supcon_views_are_never_blurred_as_its_official_loader():
    """main_supcon.py set_loader: crop, flip, jitter, grayscale, no blur at any size; SimCLR's
    and SimSiam's views blur with p 0.5 above 64 px."""
    from transformations import pretrain_transform

    mean, std = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
    for name, blur in (("supcon", 0.0), ("simclr", 0.5), ("simsiam", 0.5)):
        cls = METHODS[name]
        views = pretrain_transform(cls.augmentation, image_size=224, mean=mean, std=std,
                                   **cls.view_options).view_transforms  # fmt: skip
        assert [v.options["blur_prob"] for v in views] == [blur, blur], name
