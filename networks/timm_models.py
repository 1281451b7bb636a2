"""Any model of the timm package as a backbone: `--backbone timm:<name>` (e.g. timm:convnext_tiny,
timm:resnet50d, timm:vit_small_patch16_224), built without its classifier (`num_classes=0`); the
features are what timm's pooled forward returns, of size `model.num_features`.

Small images (<= 64 px) get the adaptations of this toolkit's own backbones, per family:

    ResNet (timm's `ResNet` class: resnet*, resnet*d, resnext*, seresnet*, res2net*, resnest*,
        ...): the first conv at stride 1 (a plain 7x7 stride-2 conv becomes a 3x3 stride-1 one,
        as networks/resnet.py; a deep stem of three 3x3 convs keeps them, the first at stride 1)
        and no max-pool, so that a 32 px input reaches the last stage at 4x4 instead of 1x1.
    ConvNeXt (v1 and v2): the 4x4 stride-4 patchify stem becomes a 3x3 stride-1 conv, padding 1
        (the overlapping stems: their stride-2 convs at stride 1), so that 32 px also reaches the
        last stage at 4x4, like the CIFAR ResNets. A 2x2 stride-2 patchify would keep ConvNeXt's
        non-overlapping stem but end at 2x2, too coarse for the 7x7 depthwise convs.
    Vision Transformers (timm's `VisionTransformer` of vision_transformer.py and deit.py: vit_*,
        deit_*): 4 px patches, as networks/vit.patch_size_for, so that 32 px gives 8x8 tokens.
    Other families (EfficientNet, Swin, RegNet, ...): no adaptation; a line says that the model
        runs its ImageNet stem on small images (main.py's check_input_sizes refuses, in one line,
        an input too small for it).

Vision Transformers are built for `img_size=image_size` at every size, with
`dynamic_img_size=True`: other inputs (multi-crop's local crops) go through with the position
embeddings interpolated, as networks/vit.py does. The plain ones (one class token, learnt
absolute positions) also get the interface MAE and I-JEPA mask patches through, and MAE's
fine-tuning protocol uses (networks/timm_vit.py).

Zero-init is the method's decision (methods.build_method, networks.zero_init_residual), as for
the torchvision backbones: timm's ResNets zero the last BatchNorm of each block by default
(`zero_init_last=True`), so models are created with `zero_init_last=False` where they take it.

timm is optional: only these backbones import it. Its pretrained weights come from the Hugging
Face hub, which this offline toolkit does not download from, so `pretrained` is refused.
"""

import difflib
from types import ModuleType

from torch import nn

from networks import SMALL_IMAGE_SIZE
from networks.timm_vit import add_interface
from networks.vit import patch_size_for
from utils.misc import UserError

# the timm modules whose models are plain-patch Vision Transformers (hybrids embed through a CNN)
VIT_MODULES = ("vision_transformer", "deit")


def import_timm(name: str) -> ModuleType:
    """The timm package, or a one-line error naming the flag that needs it."""
    try:
        import timm
    except ImportError:
        raise UserError(
            f"--backbone timm:{name} needs the timm package: pip install timm"
        ) from None
    return timm


def check_timm_name(name: str) -> None:
    """A one-line error for a name timm does not know, with up to 8 close ones."""
    timm = import_timm(name)
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
    hint = f"close: {', '.join(close)}" if close else "none is close"
    raise UserError(
        f"unknown timm model {name!r} ({hint}); list them with "
        "python -c \"import timm; print(timm.list_models('*pattern*'))\""
    )


def build_timm_backbone(name: str, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    """timm's `name` without its classifier, adapted to small images (module docstring), and the
    size of its features."""
    timm = import_timm(name)
    check_timm_name(name)
    if pretrained:
        raise UserError(
            f"--pretrained with --backbone timm:{name}: timm would download the weights from the "
            "Hugging Face hub, which this toolkit does not do; drop --pretrained"
        )
    small = image_size <= SMALL_IMAGE_SIZE
    kwargs = {}
    vit = timm.models.is_model_in_modules(name, VIT_MODULES)
    if vit:
        kwargs = {"img_size": image_size, "dynamic_img_size": True}
        if small:
            kwargs["patch_size"] = patch_size_for(image_size)
    try:
        model = timm.create_model(
            name, pretrained=False, num_classes=0, zero_init_last=False, **kwargs
        )
    except TypeError:  # a model without the option (ViT, ConvNeXt, EfficientNet, ...)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if vit:
        _check_patches(name, image_size, model.patch_embed.patch_size[0])
        add_interface(model)  # MAE, I-JEPA, MAE's fine-tuning: plain ViTs (networks/timm_vit.py)
    elif small and isinstance(model, timm.models.resnet.ResNet):
        _small_resnet_stem(model)
    elif small and isinstance(model, timm.models.convnext.ConvNeXt):
        _small_convnext_stem(model)
    elif small:
        print(
            f"timm:{name}: no small-image adaptation for its family ({type(model).__name__}); "
            f"it runs its ImageNet stem on {image_size} px images"
        )
    # the pooled features: after the pre-logits layer where there is one (MobileNetV3)
    return model, getattr(model, "head_hidden_size", None) or model.num_features


def _check_patches(name: str, image_size: int, patch: int) -> None:
    if image_size % patch:
        raise UserError(
            f"--image_size {image_size}: timm:{name} needs a multiple of its patch size {patch}"
        )


def _small_resnet_stem(model: nn.Module) -> None:
    """Stride-1 first conv and no max-pool (or its anti-aliased or conv replacement)."""
    if isinstance(model.conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(
            model.conv1.in_channels, model.conv1.out_channels, 3, stride=1, padding=1, bias=False
        )
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    else:  # deep stem (resnet*d, resnet*t): three 3x3 convs, padding 1
        first = next(m for m in model.conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()


def _small_convnext_stem(model: nn.Module) -> None:
    """The patchify conv becomes 3x3 stride 1 (timm's ConvNeXt init: truncated normal, std
    0.02, zero bias); the overlapping stems' 3x3 stride-2 convs keep their weights at stride 1."""
    for i, conv in enumerate(model.stem):
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.kernel_size == conv.stride:  # patchify: 4x4 stride 4
            new = nn.Conv2d(
                conv.in_channels, conv.out_channels, 3, padding=1, bias=conv.bias is not None
            )
            nn.init.trunc_normal_(new.weight, std=0.02)
            if new.bias is not None:
                nn.init.zeros_(new.bias)
            model.stem[i] = new
        else:
            conv.stride = (1, 1)
