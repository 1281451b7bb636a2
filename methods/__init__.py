"""Method registry: `--model_name` -> an nn.Module class that wires backbone, heads and a loss.

A method class takes `(backbone, feat_dim, **hyper_parameters)`, and its
`forward(views, labels=None)` returns a dict with at least "loss". Adding a method means one new
file with `@register("name")` on its class plus one import line below.
"""

import inspect

from torch import nn

from utils.misc import UserError

METHODS: dict[str, type[nn.Module]] = {}


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
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "backbone", "feat_dim"}
    kwargs = {k: v for k, v in kwargs.items() if k in accepted and v is not None}
    return cls(backbone, feat_dim, **kwargs)


from methods import barlowtwins, simclr, simsiam, supcon, vicreg  # noqa: E402,F401  (fills METHODS)
