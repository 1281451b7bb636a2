"""Method registry: `--model_name` -> an nn.Module class that wires backbone, heads and a loss.

A method class subclasses `Method`, takes `(backbone, feat_dim, **hyper_parameters)`, and its
`forward(views, labels=None)` returns a dict with at least "loss". Adding a method means one new
file with `@register("name")` on its class plus one import line below.
"""

from torch import nn

from utils.misc import UserError, given_kwargs


class Method(nn.Module):
    """What the training loop (main.py) expects of a method besides `forward`.

    `augmentation` names its pretraining views in `transformations.PRETRAIN_TRANSFORMS`. The
    hooks run once per step or epoch; methods with state outside autograd override them (BYOL's
    EMA target, SwAV's prototypes and queue).
    """

    augmentation = "simclr"
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based)."""
        self.epoch = epoch

    def before_optimizer_step(self) -> None:
        """Called after backward, before the optimizer step: gradients may be changed here."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step `step` (0-based) of `total_steps` in the whole run."""


METHODS: dict[str, type[Method]] = {}


def register(name: str):
    def decorator(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = cls
        return cls

    return decorator


def build_method(name: str, backbone: nn.Module, feat_dim: int, /, **kwargs) -> nn.Module:
    """Build method `name`; keyword arguments it does not take, or that are None, are dropped,
    so the caller can pass every flag and a method keeps its paper's defaults for unset ones."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(backbone, feat_dim, **given_kwargs(cls, kwargs, exclude=("backbone", "feat_dim")))


from methods import barlowtwins, byol, simclr, simsiam, supcon, swav, vicreg  # noqa: E402,F401  (fills METHODS)

# isort: split
from methods import dino  # noqa: E402,F401

# isort: split
from methods import moco, nnclr  # noqa: E402,F401
