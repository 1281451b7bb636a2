"""The two collectives the losses need, written once. Without a process group (one process, the
usual case) both are the identity, so every loss reads as its single-GPU formula.

Losses that need the whole global batch (NT-Xent and SupCon negatives, VICReg and Barlow Twins
statistics) call `gather_with_grad` on their embeddings; SwAV's Sinkhorn calls `all_reduce_sum`
on its normalisers. BYOL and SimSiam need neither: their loss is a mean of per-sample terms.
Below them: joining the process group that `torchrun` sets up, and the few helpers main.py uses
so that only rank 0 writes.
"""

import os

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient of the gathered tensor over
    the processes and returns this process's slice. Written here rather than taken from
    torch.distributed.nn.functional.all_gather, whose backward gave wrong gradients under gloo
    for SupCon's gathered [N, V, D] tensor (tests/test_distributed.py); NT-Xent's were right."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // world_size()
        return grad[rank() * n : (rank() + 1) * n]


class _ScaleGrad(torch.autograd.Function):
    """The identity forward; the gradient times `scale` backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """`x` unchanged, its gradient multiplied by `scale` (the value logged stays the loss)."""
    return _ScaleGrad.apply(x, scale)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate `x` from all processes along dim 0, in rank order, keeping the autograd graph
    (every process must pass the same shape: training batches are equal, drop_last).

    Each process's gradient w.r.t. its own `x` is the sum over processes of their copies of the
    loss's gradient, so after DDP averages parameter gradients each process holds
    d(global loss)/d(parameters): the same gradients as one process on the concatenated batch.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


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


def mean_over_processes(x: Tensor) -> float:
    """The mean of the scalar `x` over all processes, as a float: the loss every process logs
    and tests for NaN, so that they all skip (or stop at) the same step."""
    if world_size() == 1:
        return x.item()
    x = x.detach().float().clone()
    dist.all_reduce(x)
    return x.item() / world_size()


def sum_over_processes(sums: dict[str, Tensor | float]) -> dict[str, float]:
    """Each value of `sums` summed over all processes, as floats: one collective for the lot,
    made where the engine logs (every process holds the same keys there, in the same order)."""
    if world_size() == 1 or not sums:
        return {key: float(value) for key, value in sums.items()}
    device = next((v.device for v in sums.values() if isinstance(v, Tensor)), torch.device("cpu"))
    stacked = torch.stack(
        [torch.as_tensor(v, dtype=torch.float64, device=device) for v in sums.values()]
    )
    dist.all_reduce(stacked)
    return dict(zip(sums, stacked.tolist(), strict=True))


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(device: torch.device) -> torch.device:
    """Join the process group that `torchrun` describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT: the `env://` rendezvous), and return this process's device:
    NCCL with one GPU per process (cuda:LOCAL_RANK) on CUDA, gloo on the CPU. Without torchrun
    (no WORLD_SIZE, or 1) nothing happens and `device` is returned unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return device


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def broadcast(x: Tensor) -> Tensor:
    """Rank 0's `x` on every process, in place (a random permutation drawn there)."""
    if world_size() > 1:
        dist.broadcast(x, src=0)
    return x


def broadcast_object(obj):
    """Rank 0's `obj` on every process (a run name drawn from the clock, say)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order, on every process (each one's random state)."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
