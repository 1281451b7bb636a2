"""Backbone registry (DESIGN §7): `build_backbone(name, image_size, pretrained)` -> (net, dim).

A backbone file registers a builder `fn(image_size, pretrained) -> (nn.Module, int)` with
`@register("name")`; adding a family means one new file plus one import line below.
"""

import os
import warnings
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from utils.misc import UserError

BACKBONES: dict[str, Callable[[int, bool], tuple[nn.Module, int]]] = {}

# Below this size the ImageNet stem (7x7 stride-2 conv + max-pool) would shrink a 32x32 input to
# 8x8 before the first block; the small-image variants keep the resolution instead.
SMALL_IMAGE_SIZE = 64


def register(name: str):
    def decorator(fn):
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        BACKBONES[name] = fn
        return fn

    return decorator


def build_backbone(name: str, image_size: int, pretrained: bool = False) -> tuple[nn.Module, int]:
    """The backbone `name` without its classifier, and the size of the features it returns."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name](image_size, pretrained)


def load_pretrained(model: nn.Module, name: str) -> None:
    """Load torchvision's ImageNet weights for `name` from the local torch cache only."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise UserError(
            f"--pretrained: ImageNet weights for {name} not found at {path}; "
            f"download {weights.url} there on a machine with internet, or drop --pretrained"
        )
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def warn_reinitialised_stem(name: str) -> None:
    warnings.warn(
        f"--pretrained with a small-image {name}: the adapted stem is re-initialised, "
        "the rest keeps its ImageNet weights",
        stacklevel=3,
    )


from networks import resnet  # noqa: E402,F401  (fills BACKBONES)
