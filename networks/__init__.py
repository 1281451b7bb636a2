"""Backbone registry (docs/networks.md): `build_backbone(name, image_size, pretrained)` ->
(net, dim).

A backbone file registers a builder `fn(image_size, pretrained) -> (nn.Module, int)` with
`@register("name")`; adding a family means one new file plus one import line below. Names
`timm:<name>` are any model of the optional timm package (networks/timm_models.py).
"""

import os
import sys
import warnings
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from utils.misc import UserError, registrar

BACKBONES: dict[str, Callable[[int, bool], tuple[nn.Module, int]]] = {}

# Below this size the ImageNet stem (7x7 stride-2 conv + max-pool) would shrink a 32x32 input to
# 8x8 before the first block; the small-image variants keep the resolution instead.
SMALL_IMAGE_SIZE = 64

TIMM_PREFIX = "timm:"  # --backbone timm:<name>: a timm model, outside the registry


register = registrar(BACKBONES, "backbone")  # @register("name") on a new one


def build_backbone(name: str, image_size: int, pretrained: bool = False) -> tuple[nn.Module, int]:
    """The backbone `name` without its classifier, and the size of the features it returns."""
    if name.startswith(TIMM_PREFIX):
        return timm_models.build_timm_backbone(name[len(TIMM_PREFIX) :], image_size, pretrained)
    if name not in BACKBONES:
        raise UserError(
            f"unknown backbone {name!r}; choose from {sorted(BACKBONES)} or timm:<name>"
        )
    return BACKBONES[name](image_size, pretrained)


def is_vit(backbone: nn.Module) -> bool:
    """Whether `backbone` is a Vision Transformer (this toolkit's or timm's), for the methods
    whose official code sets other defaults for ViTs (MoCo v3's heads and temperature)."""
    if isinstance(backbone, torchvision.models.VisionTransformer):
        return True
    if sys.modules.get("timm") is None:  # no timm model can exist without the package loaded
        return False
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(backbone, VisionTransformer)


def is_vit_name(name: str) -> bool:
    """Whether --backbone `name` is a Vision Transformer, before it is built (the methods'
    training recipes differ for ViTs: methods/recipe.py): this toolkit's vit_* and timm's ViT
    families (vit, deit, eva, beit)."""
    return name.removeprefix(TIMM_PREFIX).startswith(("vit", "deit", "eva", "beit"))


def torchvision_model(name: str, pretrained: bool) -> nn.Module:
    """torchvision's `name` (with its classifier), with ImageNet weights when `pretrained`.

    The weights come from the local torch cache only: when the file is missing, a clear error
    says where to put it (torchvision would try to download it). Loading goes through torchvision
    itself, which also handles old checkpoint formats (DenseNet's `norm.1` keys).
    """
    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise UserError(
            f"--pretrained: ImageNet weights for {name} not found at {path}; "
            f"download {weights.url} there on a machine with internet, or drop --pretrained"
        )
    return torchvision.models.get_model(name, weights=weights)


def warn_reinitialised_stem(name: str) -> None:
    warnings.warn(
        f"--pretrained with a small-image {name}: the adapted stem is re-initialised, "
        "the rest keeps its ImageNet weights",
        stacklevel=3,
    )


def zero_init_residual(model: nn.Module, bottleneck_only: bool = False) -> int:
    """Zero the scale of the last BatchNorm of every residual branch, so that each residual block
    starts as the identity (Goyal et al. 2017); returns how many were zeroed.

    ResNet: `bn3` of each Bottleneck, `bn2` of each BasicBlock, as torchvision's
    `zero_init_residual=True` (which SimSiam, Barlow Twins, VICReg and MoCo v3 pass; SimCLR's ResNet
    does the same). EfficientNet: the BatchNorm after the projection conv of every
    MBConv block with a skip connection, as timm's `zero_init_last`. timm backbones: every block
    with a `zero_init_last` method (ResNet's BasicBlock and Bottleneck, Res2Net, ResNeSt, SKNet,
    RegNet, ResNetV2, CSPNet) is zeroed by it; timm models are created without it
    (networks/timm_models.py), so that the method decides here as for torchvision's. Backbones
    without BatchNorm-ended residual branches (VGG, AlexNet, DenseNet, small_cnn, ViT, ConvNeXt)
    are unchanged: 0. `bottleneck_only`: Bottleneck blocks only (ResNet-50 and deeper), as haiku's
    ResNet in BYOL's code, whose basic blocks (ResNet-18/34) keep the usual initialisation; in
    timm, the blocks whose class name says bottleneck (Bottleneck, Bottle2neck,
    ResNestBottleneck, ...).
    """
    from torchvision.models.efficientnet import MBConv
    from torchvision.models.resnet import BasicBlock, Bottleneck

    zeroed = 0
    for module in model.modules():
        if isinstance(module, Bottleneck):
            last = module.bn3
        elif isinstance(module, BasicBlock) and not bottleneck_only:
            last = module.bn2
        elif isinstance(module, MBConv) and module.use_res_connect and not bottleneck_only:
            last = module.block[-1][1]  # Conv2dNormActivation(conv, BatchNorm2d), no activation
        elif callable(getattr(module, "zero_init_last", None)):  # a timm block
            if not bottleneck_only or "bottle" in type(module).__name__.lower():
                module.zero_init_last()
                zeroed += 1
            continue
        else:
            continue
        nn.init.zeros_(last.weight)
        zeroed += 1
    return zeroed


@torch.no_grad()
def check_input_sizes(
    backbone: nn.Module, name: str, sizes: set[int], image_size: int, device: torch.device
) -> None:
    """One forward pass of two images of each size the run will feed (eval mode), so that a size
    too small for the backbone is one line naming the flag and the smallest size that works, at
    start-up, instead of a traceback once training has begun. `image_size` is --image_size; any
    other size is a multi-crop method's --small_crop_size."""
    training = backbone.training
    backbone.eval()
    try:
        for size in sorted(sizes):
            if _runs(backbone, size, device):
                continue
            flag = "--image_size" if size == image_size else "--small_crop_size"
            smallest = next(
                (s for s in range(size + 1, 4 * size + 65) if _runs(backbone, s, device)), None
            )
            hint = f"the smallest that works is {smallest}" if smallest else "use a larger one"
            raise UserError(f"{flag} {size} is too small for {name}: {hint}")
    finally:
        backbone.train(training)


def _runs(backbone: nn.Module, size: int, device: torch.device) -> bool:
    try:
        backbone(torch.zeros(2, 3, size, size, device=device))
    # pooling or convolution below one pixel, patches, timm's asserts of a fixed input size, ...
    except (RuntimeError, ValueError, AssertionError) as err:
        if out_of_memory(err):  # too large, not too small
            raise UserError(
                f"--image_size {size}: two images of {size} x {size} px do not fit in the "
                f"memory of {device} for this backbone: use a smaller --image_size"
            ) from None
        return False
    return True


def out_of_memory(err: BaseException) -> bool:
    """An allocation failure: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    text = str(err)
    cuda_oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return (
        isinstance(err, cuda_oom)
        or "can't allocate memory" in text
        or ("out of memory" in text.lower())
    )


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """`--sync_bn`: BatchNorm layers become SyncBatchNorm, so that batch statistics are taken over
    all processes; the model is returned unchanged unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


from networks import alexnet, densenet, efficientnet, resnet, small, vgg, vit  # noqa: E402,F401  (fill BACKBONES)

# isort: split
from networks import timm_models  # noqa: E402  (no registration: timm:<name>, imports timm lazily)
