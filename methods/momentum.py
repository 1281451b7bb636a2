"""Momentum (EMA) targets, shared by the methods with a slowly moving copy of the network (BYOL;
MoCo and DINO use the same two pieces)."""

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule: tau_k = final - (final - base) (cos(pi k / K) + 1) / 2, so base at step 0
    rising to `final` at step K."""
    return final - (final - base) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter. Buffers
    (BatchNorm statistics) are not averaged: the target keeps its own, as in BYOL's code."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, 1.0 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that the optimizer never sees (requires_grad off)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target
