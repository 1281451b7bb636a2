"""LARS: You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", 2017
(https://arxiv.org/abs/1708.03888), in the form of BYOL, Barlow Twins and moco-v3.

For each parameter p with gradient g, weight decay wd, trust coefficient eta, momentum m:

    p has more than one dimension (or exclusion is off):
        d = g + wd * p
        q = eta * ||p|| / ||d||   if ||p|| > 0 and ||d|| > 0, else 1
        d = q * d
    p has at most one dimension (bias, norm weight or scale) and exclusion is on:
        d = g                     (no decay, no adaptation)
    buf = m * buf + d             (buf starts at zero)
    p = p - lr * buf

The lr multiplies the buffer at every step, so a schedule that changes lr takes effect at once.
SimCLR's variant, which puts lr inside the buffer, is `optimizers.lars_simclr.LARSSimCLR`.
"""

import torch
from torch.optim import Optimizer


def trust_ratio(p: torch.Tensor, d: torch.Tensor, eta: float) -> torch.Tensor:
    """eta * ||p|| / ||d||, or 1 when either norm is zero (shared with LARSSimCLR)."""
    p_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
    # torch.where instead of `if`: no GPU-to-host sync per parameter
    return torch.where((p_norm > 0) & (d_norm > 0), eta * p_norm / d_norm, 1.0)


class LARS(Optimizer):
    """Momentum SGD with layer-wise trust ratios. `weight_decay`, `eta`, `momentum` and
    `exclude_bias_and_norm` may be overridden per parameter group."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        exclude_bias_and_norm: bool = True,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError(
                f"LARS needs lr, momentum, weight_decay >= 0 and eta > 0; got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}, eta={eta}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            exclude_bias_and_norm=exclude_bias_and_norm,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1 or not group["exclude_bias_and_norm"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    d = d.mul(trust_ratio(p, d, group["eta"]))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])
        return loss
