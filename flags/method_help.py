"""The parts of flag help texts that list methods, made from the methods' declarations (the
`Method` class attributes and view recipes), so that a new method needs no edit here."""

import inspect
from collections.abc import Callable

from methods import METHODS
from transformations import view_builder

# the view flags: each recipe takes some of them (transformations.view_builder)
VIEW_FLAGS = ("crop_min_scale", "jitter_strength", "num_crops", "small_crop_size", "interpolation")


def view_defaults(method: str) -> dict:
    """The view options the method's recipe takes, with its defaults (the method's own first)."""
    cls = METHODS[method]
    params = inspect.signature(view_builder(cls.augmentation)).parameters
    found = {k: p.default for k, p in params.items() if k in VIEW_FLAGS}
    return {**found, **{k: v for k, v in cls.view_options.items() if k in found}}


def methods_where(test: Callable[[type], bool]) -> str:
    """The --model_name of every method whose class passes `test`, comma-separated."""
    return ", ".join(name for name, cls in sorted(METHODS.items()) if test(cls)) or "none"


def view_default_help(option: str) -> str:
    """Each default of view option `option` with the methods that have it: `0.08: byol, ...;
    0.2: mocov2, ...` (the methods whose recipe does not take it left out)."""
    by_value: dict[str, list[str]] = {}
    for name in sorted(METHODS):
        value = view_defaults(name).get(option, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and value is not None:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            by_value.setdefault(shown, []).append(name)
    return "; ".join(f"{value}: {', '.join(names)}" for value, names in by_value.items())


def interpolation_help() -> str:
    views = lambda mode: ", ".join(  # noqa: E731
        name for name in sorted(METHODS) if view_defaults(name).get("interpolation") == mode
    )
    return (
        "resampling of the views' random resized crops (default: the method's official code's: "
        f"bicubic for {views('bicubic')}; bilinear, torchvision's default, for "
        f"{views('bilinear')}); the evaluation's resize is --eval_interpolation"
    )


def eval_interpolation_help() -> str:
    evals = lambda mode: methods_where(lambda cls: cls.eval_interpolation == mode)  # noqa: E731
    return (
        "resampling of the evaluation's resize (and main_linear.py's training crops): main.py's "
        "kNN, online probe and RankMe, recorded in the checkpoint for main_linear.py, "
        "load_backbone and export.py (default: the pretraining run's, else its method's official "
        f"evaluation: bicubic for {evals('bicubic')}; bilinear for {evals('bilinear')})"
    )


def zero_init_help() -> str:
    return (
        "zero the last BatchNorm of each residual block at the start (ResNet, EfficientNet, timm "
        "blocks with a zero_init_last), as the official code of "
        f"{methods_where(lambda cls: cls.zero_init_residual is True)} does (of Bottleneck blocks "
        f"only: {methods_where(lambda cls: cls.zero_init_residual == 'bottleneck')}); never with "
        "--pretrained (default: the method's own)"
    )


def vit_heads_help() -> str:
    official = ", ".join(f"{name}'s {size} {heads}" for name, cls in sorted(METHODS.items())
                         for size, heads in cls.vit_heads.items())  # fmt: skip
    return (
        "attention heads of this toolkit's ViTs (vit_tiny 3, vit_small 6: DeiT's), with the same "
        f"weights (default: the method's official ones where they differ: {official or 'none'}; "
        "a resumed run keeps its own)"
    )


def vit_registers_help() -> str:
    official = ", ".join(f"{name} {cls.vit_registers}" for name, cls in sorted(METHODS.items())
                         if cls.vit_registers)  # fmt: skip
    return (
        "register tokens (Darcet et al. 2024, DINOv2's num_register_tokens) on a ViT (vit_*, "
        "plain timm ViTs): learnt tokens after the class token, through every block, left out "
        f"of the outputs; 0: none (default: the method's: {official or 'none'}; a resumed run "
        "keeps its own)"
    )


def vit_layerscale_help() -> str:
    official = ", ".join(f"{name} {cls.vit_layerscale:g}" for name, cls in sorted(METHODS.items())
                         if cls.vit_layerscale)  # fmt: skip
    return (
        "LayerScale (CaiT) on both residual branches of a ViT's blocks (vit_*, plain timm ViTs), "
        "its learnt per-channel scales starting at this value (DINOv2's layerscale 1e-5); 0: "
        f"none (default: the method's: {official or 'none'}; a resumed run keeps its own)"
    )


def pool_help() -> str:
    return (
        "a Vision Transformer's features: its class token, or the mean of its patch tokens "
        f"(default: the method's: the mean for {methods_where(lambda cls: cls.pool == 'mean')}, "
        "the class token for the others)"
    )


def momentum_backbone_help() -> str:
    keeping = methods_where(lambda cls: cls.momentum_backbone is not None)
    reading = methods_where(lambda cls: cls.eval_momentum_backbone)
    return (
        "evaluate the checkpoint's momentum (EMA) backbone instead of the trained one; methods "
        f"that keep one: {keeping} (default: the method's official evaluation's: the EMA copy "
        f"for {reading}, the trained backbone for the others)"
    )


def last_blocks_help() -> str:
    probes = ", ".join(
        f"{name} {cls.eval_last_blocks}"
        for name, cls in sorted(METHODS.items())
        if cls.eval_last_blocks != 1
    )
    return (
        "a ViT's features (vit_*, plain timm ViTs): those of its last N blocks (class token or "
        "--pool mean), each after the final norm, concatenated (DINO's eval_linear.py) (default: "
        f"the method's linear probe: {probes or 'none'}; 1 otherwise, and for kNN and --finetune)"
    )
