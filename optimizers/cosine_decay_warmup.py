"""Per-step learning-rate schedule: linear warmup, then cosine decay (docs/networks.md).

    warmup (t < W):  lr_t = warmup_lr + (base - warmup_lr) * t / W
    cosine (t >= W): lr_t = final + ½ (base - final) (1 + cos(π (t - W) / T)),  T = total - W

with W = warmup_epochs x steps per epoch. The whole schedule is an array indexed by the global
step (as in DINO), so resuming at step s continues with exactly lr_schedule[s].
"""

import numpy as np
import torch


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Value of every step of `epochs` epochs of `niter_per_ep` steps."""
    total = epochs * niter_per_ep
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_iters > total:
        raise ValueError(f"warmup_epochs {warmup_epochs} is longer than the run ({epochs} epochs)")
    warmup = start_warmup_value + (base_value - start_warmup_value) * np.arange(warmup_iters) / max(
        warmup_iters, 1
    )
    t = np.arange(total - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * t / max(len(t), 1))
    )
    schedule = np.concatenate([warmup, cosine])
    assert len(schedule) == total
    return schedule


def adjust_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr (times its `lr_scale`), except groups marked `fix_lr`, which keep the
    lr they were built with (SimSiam's predictor with --fix_pred_lr)."""
    for group in optimizer.param_groups:
        if not group.get("fix_lr", False):
            group["lr"] = lr * group.get("lr_scale", 1.0)
