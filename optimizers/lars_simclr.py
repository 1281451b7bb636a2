"""LARS as in SimCLR's code (google-research/simclr, lars_optimizer.py, "classic momentum"),
after You, Gitman, Ginsburg 2017 (https://arxiv.org/abs/1708.03888).

For each parameter p with gradient g, weight decay wd, trust coefficient eta, momentum m:

    p has more than one dimension (or exclusion is off):
        d = g + wd * p
        trust = eta * ||p|| / ||d||   if ||p|| > 0 and ||d|| > 0, else 1
    p has at most one dimension (bias, norm weight or scale) and exclusion is on:
        d = g, trust = 1              (SimCLR's exclude_from_weight_decay and
                                       exclude_from_layer_adaptation, for bias and batch norm)
    v = m * v + lr * trust * d        (v starts at zero and is kept across steps)
    p = p - v                         nesterov: p = p - (m * v + lr * trust * d)

How it differs from `optimizers.lars.LARS`: the lr sits inside the momentum buffer, so updates
made at an earlier lr keep their size when a schedule changes lr (LARS applies the current lr to
the whole buffer); it also offers Nesterov momentum.
"""

import torch
from torch.optim import Optimizer

from optimizers.lars import trust_ratio


class LARSSimCLR(Optimizer):
    """SimCLR's LARS. `weight_decay`, `eta`, `momentum`, `exclude_bias_and_norm` and `nesterov`
    may be overridden per parameter group."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        exclude_bias_and_norm: bool = True,
        nesterov: bool = False,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"LARSSimCLR needs lr, momentum, weight_decay >= 0 and eta > 0; got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            exclude_bias_and_norm=exclude_bias_and_norm,
            nesterov=nesterov,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1 or not group["exclude_bias_and_norm"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    scaled = d.mul(trust_ratio(p, d, group["eta"]) * lr)  # lr * trust * d
                else:
                    scaled = d.mul(lr)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(m).add_(scaled)
                if group["nesterov"]:
                    p.sub_(v.mul(m).add_(scaled))
                else:
                    p.sub_(v)
        return loss
