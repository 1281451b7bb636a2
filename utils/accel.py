"""Speed and scale options of the training step, in one place: mixed precision (`--amp`), the
NHWC layout (`--channels_last`), SyncBatchNorm and DistributedDataParallel under torchrun
(`--sync_bn`), and `torch.compile` (`--compile`). Each is off by default; docs/speed.md says when
each one helps.
"""

import contextlib
import inspect
from argparse import Namespace
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.distributed import world_size
from utils.misc import UserError, settings_of

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# newer PyTorch renamed DDP's broadcast_buffers (and warns on the old name)
NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


@dataclass(frozen=True)
class Speed:
    """The speed options of a run (--amp, --channels_last, --compile, --sync_bn), resolved once
    at the top of main() and passed to what they change."""

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False

    @classmethod
    def of(cls, args: Namespace) -> "Speed":
        """The part of the parsed flags it holds (main_linear.py has no --compile, --sync_bn)."""
        return settings_of(cls, args)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 where it is in half precision (a loss computed under --amp), else as it
    is (float64 stays float64: the official-code checks run in it)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_options(speed: Speed, device: torch.device) -> None:
    """Refuse combinations that cannot work here, before any work is done."""
    if speed.amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device: use --amp bf16 on the CPU")
    if speed.amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16")
    if speed.sync_bn and world_size() > 1 and device.type != "cuda":
        raise UserError("--sync_bn needs CUDA (SyncBatchNorm has no CPU kernel): drop --sync_bn")
    if speed.sync_bn and world_size() == 1:
        print("note: --sync_bn has no effect in a single process (start with torchrun)")


def autocast(speed: Speed, device: torch.device):
    """The forward pass's precision: a no-op context unless `--amp` is fp16 or bf16."""
    if speed.amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[speed.amp])


def grad_scaler(speed: Speed, device: torch.device) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none, so
    the scaler is disabled (its calls pass through) except under fp16."""
    return torch.amp.GradScaler(device.type, enabled=speed.amp == "fp16")


def prepare_model(model: nn.Module, speed: Speed, device: torch.device) -> nn.Module:
    """Convert `model` in place (SyncBatchNorm, memory layout) and return the module to call for
    the forward pass: `model` itself, or DDP and/or torch.compile wrappers around it. Hooks,
    checkpoints and evaluation keep using `model`, so checkpoint keys never change."""
    if speed.sync_bn and world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = model
    if world_size() > 1:
        # Buffers are not broadcast from rank 0 at every forward: SwAV's queue is per process,
        # and BatchNorm statistics are per process unless --sync_bn (rank 0's are saved).
        forward = DistributedDataParallel(model, device_ids=device_ids(device), **NO_BUFFER_SYNC)
    if speed.compile:
        forward = torch.compile(forward)
    return forward


def device_ids(device: torch.device) -> list[int] | None:
    """DDP's `device_ids`: this process's GPU, or None on the CPU."""
    return [device.index] if device.type == "cuda" else None


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images
