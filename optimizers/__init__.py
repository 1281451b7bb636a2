"""Optimizer registry and factory: `--optimizer` -> a torch.optim.Optimizer over a model.

Policy (which parameters get weight decay), following each optimizer's usual recipe:
    sgd, sgd_nesterov  momentum SGD, weight decay on every parameter (SimSiam, SupCon papers)
    adam               Adam, weight decay as L2 on every parameter
    adamw              AdamW, biases and norm weights excluded from decay (DINO's param groups)
    lars, lars_simclr  1-D parameters (biases, norms) excluded from decay and adaptation inside
                       the optimizer (SimCLR, BYOL, Barlow Twins)
    larc               LARC wrapping momentum SGD (apex defaults; SwAV: --larc_trust_coefficient
                       0.001 --larc_clip false)
A method may give parameters options of their own (`Method.param_group`): an `lr_scale` times
the scheduled lr (Barlow Twins' biases and BatchNorm: 0.0048 / 0.2) or a fixed lr (SimSiam's
predictor, `--fix_pred_lr`); parameters with the same options share a group.
"""

import math
from argparse import Namespace
from collections.abc import Callable
from typing import TYPE_CHECKING, Union

import torch
from torch import nn

from utils.misc import registrar

if TYPE_CHECKING:
    from optimizers.larc import LARC

# LARC wraps an optimizer rather than being one, but offers the same interface
AnyOptimizer = Union[torch.optim.Optimizer, "LARC"]

OPTIMIZERS: dict[str, Callable[[list[dict], float, Namespace], AnyOptimizer]] = {}


register = registrar(OPTIMIZERS, "optimizer")  # @register("name") on a new one


def scale_lr(lr: float, batch_size: int, rule: str = "linear") -> float:
    """lr for a global batch of `batch_size`, given the lr for 256 (Goyal et al. 2017)."""
    if rule == "linear":
        return lr * batch_size / 256
    if rule == "sqrt":
        return lr * math.sqrt(batch_size / 256)
    if rule == "none":
        return lr
    raise ValueError(f"unknown lr scaling {rule!r}; choose from ['linear', 'none', 'sqrt']")


def param_groups(
    model: nn.Module,
    exclude_bias_and_norm_from_wd: bool = False,
    options_of: Callable[[str, nn.Parameter], dict] | None = None,
) -> list[dict]:
    """Trainable parameters split into named groups by their options: decayed or not (1-D, when
    excluded), and whatever `options_of(name, param)` asks for (default: the method's own
    `model.param_group`: `lr_scale`, `fix_lr`; fine-tuning's layer scales)."""
    groups: dict[str, dict] = {}
    own_options = options_of or getattr(model, "param_group", None)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        options = own_options(name, param) if own_options is not None else {}
        no_decay = exclude_bias_and_norm_from_wd and param.ndim <= 1
        if no_decay:
            options = {**options, "weight_decay": 0.0}
        key = "_".join(f"{k}={v}" for k, v in sorted(options.items())) or "params"
        groups.setdefault(key, {"name": key, "params": [], **options})["params"].append(param)
    return list(groups.values())


def build_optimizer(args: Namespace, model: nn.Module, lr: float) -> AnyOptimizer:
    """The optimizer `args.optimizer` over `model`'s trainable parameters, at lr `lr` (the
    scaled peak lr; times a group's `lr_scale`: the lr that a `fix_lr` group keeps), with the
    momentum, weight decay and trust coefficients of `args`."""
    if args.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {args.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
    groups = param_groups(model, exclude_bias_and_norm_from_wd=args.optimizer == "adamw")
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = lr * group["lr_scale"]
    return OPTIMIZERS[args.optimizer](groups, lr, args)


@register("sgd")
def _sgd(groups, lr, args):
    return torch.optim.SGD(groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)


@register("sgd_nesterov")
def _sgd_nesterov(groups, lr, args):
    return torch.optim.SGD(
        groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=True
    )


@register("adam")
def _adam(groups, lr, args):
    betas = tuple(getattr(args, "betas", (0.9, 0.999)))
    return torch.optim.Adam(groups, lr=lr, betas=betas, weight_decay=args.weight_decay)


@register("adamw")
def _adamw(groups, lr, args):
    betas = tuple(getattr(args, "betas", (0.9, 0.999)))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=args.weight_decay)


@register("lars")
def _lars(groups, lr, args):
    from optimizers.lars import LARS

    return LARS(
        groups,
        lr=lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        eta=getattr(args, "lars_eta", 0.001),
    )


@register("lars_simclr")
def _lars_simclr(groups, lr, args):
    from optimizers.lars_simclr import LARSSimCLR

    return LARSSimCLR(
        groups,
        lr=lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        eta=getattr(args, "lars_eta", 0.001),
    )


@register("larc")
def _larc(groups, lr, args):
    from optimizers.larc import LARC

    inner = torch.optim.SGD(groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return LARC(
        inner,
        trust_coefficient=getattr(args, "larc_trust_coefficient", 0.02),
        clip=getattr(args, "larc_clip", True),
    )
