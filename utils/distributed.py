"""The two collectives the losses need, written once. Without a process group (one process, the
usual case) both are the identity, so every loss reads as its single-GPU formula.

Losses that need the whole global batch (NT-Xent and SupCon negatives, VICReg and Barlow Twins
statistics) call `gather_with_grad` on their embeddings; SwAV's Sinkhorn calls `all_reduce_sum`
on its normalisers. BYOL and SimSiam need neither: their loss is a mean of per-sample terms.
"""

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from all processes along dim 0, in rank order, keeping the autograd graph.

    The backward of torch.distributed.nn's all_gather sums the gradients of every process's copy
    of the loss, so after DDP averages gradients each process holds d(global loss)/d(its inputs):
    the same gradients as one process on the concatenated batch.
    """
    if world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # imported here: needs a process group

    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather(x: Tensor) -> Tensor:
    """Concatenate `x` (labels, indices: no gradient) from all processes along dim 0."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum `x` over all processes in place (no gradient) and return it."""
    if world_size() > 1:
        dist.all_reduce(x)
    return x
