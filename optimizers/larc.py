"""LARC: layer-wise adaptive rate control (NVIDIA apex), the wrapper SwAV puts around momentum
SGD; after You, Gitman, Ginsburg 2017 (https://arxiv.org/abs/1708.03888).

Before each step of the wrapped optimizer, for every parameter p with gradient g in a group with
weight decay wd and lr:

    a = tc * ||p|| / (||g|| + wd * ||p|| + eps)   if ||p|| > 0 and ||g|| > 0, else a = 1
    clip:  a = min(a / lr, 1)     (the effective lr is min(lr, tc ||p|| / ...): lr is a ceiling)
    scale: a as is               (the effective lr is lr * a)
    g = (g + wd * p) * a

and the wrapped optimizer steps with its weight decay set to 0 (restored afterwards), since the
decay is already in g. With `exclude_bias_and_norm`, parameters of at most one dimension (biases,
norms) are left as they are (solo-learn's `exclude_bias_n_norm`; their groups carry no decay).
"""

import torch
from torch.optim import Optimizer


class LARC:
    """Wraps `optimizer` (any torch optimizer whose groups have "lr" and may have
    "weight_decay"); exposes the same interface, and its `param_groups` are the very dicts of the
    wrapped optimizer, so schedules that set group["lr"] (and `fix_lr` groups) work unchanged."""

    def __init__(
        self,
        optimizer: Optimizer,
        trust_coefficient: float = 0.02,
        clip: bool = True,
        eps: float = 1e-8,
        exclude_bias_and_norm: bool = False,
    ) -> None:
        self.optim = optimizer
        self.exclude_bias_and_norm = exclude_bias_and_norm
        self.trust_coefficient = trust_coefficient
        self.clip = clip
        self.eps = eps

    @property
    def param_groups(self) -> list[dict]:
        return self.optim.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict]) -> None:
        self.optim.param_groups = value

    @property
    def state(self):
        return self.optim.state

    @property
    def defaults(self) -> dict:
        return self.optim.defaults

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optim.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.optim.add_param_group(param_group)

    def __repr__(self) -> str:
        return (
            f"LARC(trust_coefficient={self.trust_coefficient}, clip={self.clip}, eps={self.eps}, "
            f"exclude_bias_and_norm={self.exclude_bias_and_norm}, "
            f"optimizer={self.optim!r})"
        )

    @torch.no_grad()
    def _adapt_gradients(self) -> None:
        for group in self.param_groups:
            wd, lr = group.get("weight_decay", 0.0), group["lr"]
            for p in group["params"]:
                if p.grad is None or (self.exclude_bias_and_norm and p.ndim <= 1):
                    continue
                p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                a = self.trust_coefficient * p_norm / (g_norm + wd * p_norm + self.eps)
                if self.clip:
                    a = torch.clamp(a / lr, max=1.0) if lr > 0 else torch.ones_like(a)
                # a = 1 when a norm is zero: g still gets wd * p, so decay is never dropped
                a = torch.where((p_norm > 0) & (g_norm > 0), a, 1.0)
                p.grad.add_(p, alpha=wd).mul_(a)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._adapt_gradients()
        weight_decays = [group.get("weight_decay") for group in self.param_groups]
        try:
            for group in self.param_groups:
                if "weight_decay" in group:
                    group["weight_decay"] = 0.0
            self.optim.step()
        finally:
            for group, wd in zip(self.param_groups, weight_decays, strict=True):
                if wd is not None:
                    group["weight_decay"] = wd
        return loss
