"""Optimizer registry and factory: `--optimizer` -> a torch.optim.Optimizer over a model.

    sgd, sgd_nesterov  momentum SGD
    adam, adamw        Adam (weight decay as L2), AdamW (decoupled weight decay)
    lars, lars_simclr  LARS: BYOL's, Barlow Twins' and MoCo v3's form; SimCLR's
    larc               LARC wrapping momentum SGD (apex; SwAV: --larc_trust_coefficient 0.001
                       --larc_clip false; solo-learn's LARS: 0.02, clipped)
Which parameters get weight decay is the method's, not the optimizer's (`exclude_bias_and_norm`
of its recipe, methods/recipe.py): with it, biases and norm parameters (every parameter of at
most one dimension) get none, and lars and larc leave them unadapted.
A method may give parameters options of their own (`Method.param_group`): an `lr_scale` times
the scheduled lr (Barlow Twins' biases and BatchNorm: 0.0048 / 0.2) or a fixed lr (SimSiam's
predictor, `--fix_pred_lr`); parameters with the same options share a group.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import torch
from torch import nn

from utils.misc import registrar, settings_of

if TYPE_CHECKING:
    from optimizers.larc import LARC

# LARC wraps an optimizer rather than being one, but offers the same interface
AnyOptimizer = Union[torch.optim.Optimizer, "LARC"]


@dataclass(frozen=True)
class Optimization:
    """The optimizer and its schedules, resolved once at the top of main() (flags, recipe files,
    the method's recipe, a resumed checkpoint) and passed to what builds them: lrs are for a
    batch of 256 and scaled by `lr_scaling` (scale_lr); a `final_weight_decay` of None (or equal
    to `weight_decay`) keeps the decay constant."""

    optimizer: str
    base_lr: float
    num_epochs: int
    weight_decay: float
    lr_scaling: str = "linear"
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    final_lr: float = 0.0
    final_weight_decay: float | None = None
    exclude_bias_and_norm: bool = False
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.001
    larc_trust_coefficient: float = 0.02
    larc_clip: bool = True

    @classmethod
    def of(cls, args) -> "Optimization":
        """The part of the parsed flags `args` (an argparse.Namespace) it holds; a flag absent
        or None takes the field's default (but final_weight_decay, whose None is constant)."""
        return settings_of(cls, args)

    @property
    def warmup_used(self) -> int:
        """--warmup_epochs, less where it would leave no epoch of the cosine."""
        return min(self.warmup_epochs, max(self.num_epochs - 1, 0))


OPTIMIZERS: dict[str, Callable[[list[dict], float, Optimization], AnyOptimizer]] = {}


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
    exclude_bias_and_norm: bool = False,
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
        no_decay = exclude_bias_and_norm and param.ndim <= 1
        if no_decay:
            options = {**options, "weight_decay": 0.0}
        key = "_".join(f"{k}={v}" for k, v in sorted(options.items())) or "params"
        groups.setdefault(key, {"name": key, "params": [], **options})["params"].append(param)
    return list(groups.values())


def build_optimizer(opt: Optimization, model: nn.Module, lr: float) -> AnyOptimizer:
    """The optimizer `opt.optimizer` over `model`'s trainable parameters, at lr `lr` (the
    scaled peak lr; times a group's `lr_scale`: the lr that a `fix_lr` group keeps), with the
    momentum, weight decay, trust coefficients and exclusion of biases and norms of `opt`."""
    if opt.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {opt.optimizer!r}; choose from {sorted(OPTIMIZERS)}")
    groups = param_groups(model, opt.exclude_bias_and_norm)
    for group in groups:
        if "lr_scale" in group:
            group["lr"] = lr * group["lr_scale"]
    return OPTIMIZERS[opt.optimizer](groups, lr, opt)


@register("sgd")
def _sgd(groups, lr, opt):
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)


@register("sgd_nesterov")
def _sgd_nesterov(groups, lr, opt):
    return torch.optim.SGD(
        groups, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay, nesterov=True
    )


@register("adam")
def _adam(groups, lr, opt):
    return torch.optim.Adam(groups, lr=lr, betas=opt.betas, weight_decay=opt.weight_decay)


@register("adamw")
def _adamw(groups, lr, opt):
    return torch.optim.AdamW(groups, lr=lr, betas=opt.betas, weight_decay=opt.weight_decay)


@register("lars")
def _lars(groups, lr, opt):
    from optimizers.lars import LARS

    return LARS(
        groups,
        lr=lr,
        momentum=opt.momentum,
        weight_decay=opt.weight_decay,
        eta=opt.lars_eta,
        exclude_bias_and_norm=opt.exclude_bias_and_norm,
    )


@register("lars_simclr")
def _lars_simclr(groups, lr, opt):
    from optimizers.lars_simclr import LARSSimCLR

    return LARSSimCLR(
        groups,
        lr=lr,
        momentum=opt.momentum,
        weight_decay=opt.weight_decay,
        eta=opt.lars_eta,
        exclude_bias_and_norm=opt.exclude_bias_and_norm,
    )


@register("larc")
def _larc(groups, lr, opt):
    from optimizers.larc import LARC

    inner = torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    return LARC(
        inner,
        trust_coefficient=opt.larc_trust_coefficient,
        clip=opt.larc_clip,
        exclude_bias_and_norm=opt.exclude_bias_and_norm,
    )
