"""Plumbing shared by main.py and main_linear.py: run folders, data loaders, the lr schedule."""

import json
import os
import signal
import sys
import time
from argparse import Namespace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from optimizers import scale_lr
from optimizers.cosine_decay_warmup import cosine_scheduler
from utils.accel import check_options
from utils.data import EpochSampler, ShardSampler
from utils.distributed import (
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    is_main_process,
    rank,
    world_size,
)
from utils.logging import write_json
from utils.misc import UserError, git_sha, resolve_device


def default_run_name(args: Namespace, prefix: str = "") -> str:
    """`<prefix><method>_<backbone>_<dataset>_<timestamp>`, with a suffix when runs started in
    the same second (a script launching several) would otherwise share the folder. A timm
    backbone's colon becomes a dash (`timm-convnext_tiny`), a valid folder name everywhere."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backbone = args.backbone.replace(":", "-")
    name = base = f"{prefix}{args.model_name}_{backbone}_{args.dataset_name}_{stamp}"
    count = 1
    while any(os.path.exists(os.path.join(d, name)) for d in (args.logs_dir, args.ckpt_dir)):
        count += 1
        name = f"{base}-{count}"
    return name


# what makes a folder a run worth protecting; an empty one (a failed start) is not
RUN_FILES = ("metrics.csv", "results.json", "summary.json", "last.pt")


def holds_a_run(folder: str) -> bool:
    """Whether `folder` holds a checkpoint or metrics of a run (not just empty folders)."""
    if not os.path.isdir(folder):
        return os.path.exists(folder)  # a file of that name is in the way
    for _, _, files in os.walk(folder):
        if any(f in RUN_FILES or f.endswith(".pt") for f in files):
            return True
    return False


def writable_parent(path: str) -> str | None:
    """The nearest existing folder above (or at) `path` when it cannot be written to, else None."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        return parent
    return None


def with_values(args: Namespace, **values) -> Namespace:
    """A copy of `args` with the values `main()` derives from the flags (the run name, the
    pretraining checkpoint found): the caller's namespace is never written into, and args.json
    and the checkpoints record the copy."""
    return Namespace(**{**vars(args), **values})


def check_run_dirs(
    logs_dir: str, ckpt_dir: str, run_name: str, resuming: bool
) -> tuple[str, str, str]:
    """The run name and its folders `<logs_dir>/<run_name>` and `<ckpt_dir>/<run_name>`, checked
    but not created (see `make_run_dirs`), so that a start which fails later leaves nothing
    behind: a folder holding a run (a checkpoint or metrics) is not reused unless resuming, and
    both must be writable. Under DDP every process takes rank 0's run name (a default one comes
    from the clock)."""
    run_name = broadcast_object(run_name)
    log_dir = os.path.join(logs_dir, run_name)
    ckpt_dir = os.path.join(ckpt_dir, run_name)
    if not is_main_process():
        return run_name, log_dir, ckpt_dir
    for flag, folder in (("--logs_dir", log_dir), ("--ckpt_dir", ckpt_dir)):
        blocked = writable_parent(folder)
        if blocked is not None:
            raise UserError(
                f"{flag}: cannot create {folder} ({blocked} is not a writable folder): "
                f"pass a {flag} you can write to"
            )
    existing = [d for d in (log_dir, ckpt_dir) if holds_a_run(d)]
    if existing and not resuming:
        raise UserError(
            f"run folder {' and '.join(existing)} already exists: pass another --run_name, "
            f"or --resume auto to continue it"
        )
    return run_name, log_dir, ckpt_dir


def make_run_dirs(log_dir: str, ckpt_dir: str) -> None:
    """Create the run folders (rank 0), once everything before training has worked."""
    if not is_main_process():
        return
    for folder in (log_dir, ckpt_dir):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the run folder {folder}: {err}") from err


def start_process(args: Namespace) -> torch.device:
    """This process's device: joins torchrun's process group when there is one (rank 0 alone
    prints from then on) and checks the speed options against the device."""
    device = init_distributed(resolve_device(args.device))
    check_options(args, device)
    if not is_main_process():
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks and writes for all
    cores = usable_workers(args.num_workers)
    if args.num_workers > cores:  # torch would warn once per loader
        print(f"note: --num_workers {args.num_workers} > {cores} CPU cores here: using {cores}")
    return device


def usable_workers(num_workers: int) -> int:
    """--num_workers, at most the CPU cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(num_workers, cores or num_workers)


def fit_batch_size(batch_size: int, num_images: int, limit: int | None) -> int:
    """The global training batch: --batch_size, or for a smoke run (--limit) of a recipe whose
    batch exceeds the images left, one batch of (nearly) all of them, the lr scaled to match."""
    if batch_size <= num_images:
        return batch_size
    if not limit:
        raise UserError(
            f"--batch_size {batch_size} is larger than the training set ({num_images} images): "
            "lower --batch_size"
        )
    print(
        f"note: --batch_size {batch_size} > {num_images} images after --limit; "
        f"using batches of {num_images}"
    )
    return num_images - num_images % world_size()


def save_args(log_dir: str, args: Namespace, **derived) -> None:
    """args.json: every flag, the values derived from them (`derived`: the scaled lr, the batch
    used, the number of processes) and the code version."""
    record = {**vars(args), **derived, "world_size": world_size(), "git_sha": git_sha()}
    write_json(os.path.join(log_dir, "args.json"), record)


def print_args(args: Namespace) -> None:
    print(f"git sha: {git_sha()}")
    print(json.dumps(vars(args), indent=None, sort_keys=True, default=str))


def make_loader(
    dataset: Dataset, args: Namespace, device: torch.device, train: bool, batch_size: int
) -> DataLoader:
    """A loader of global batches of `batch_size` (fit_batch_size for training); for training,
    shuffled in an order fixed by (seed, epoch) through `seed_epoch`, so that the order of an
    epoch does not depend on what ran before it (a resumed run sees the same batches). Under DDP
    each of the W processes loads B/W images of each batch; evaluation loaders read one
    contiguous shard each (utils.data.ShardSampler)."""
    if batch_size % world_size():
        raise UserError(
            f"--batch_size {batch_size} (the global batch) does not divide among "
            f"{world_size()} processes: use a multiple of {world_size()}"
        )
    if train:
        sampler = EpochSampler(len(dataset), args.seed, rank(), world_size())
    else:
        sampler = ShardSampler(len(dataset), rank(), world_size()) if world_size() > 1 else None
    generator = torch.Generator().manual_seed(args.seed)  # workers' seeds, per epoch below
    workers = usable_workers(args.num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size // world_size(),
        sampler=sampler,
        drop_last=train,  # equal batches: BatchNorm and contrastive losses dislike a tiny last one
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=generator,
    )


def seed_epoch(loader, epoch: int, skip_batches: int = 0) -> None:
    """Set the shuffled order (and the workers' seeds) of epoch `epoch` from (--seed, epoch), then
    skip its first `skip_batches` batches (a run resumed part-way through the epoch). Processes
    of a DDP run draw different augmentations (their workers' seeds differ by rank)."""
    sampler = loader.sampler
    sampler.set_epoch(epoch, skip_batches * loader.batch_size * sampler.num_replicas)
    loader.generator.manual_seed(sampler.seed * 100_003 + epoch + 7919 * sampler.rank)


def build_lr_schedule(
    args: Namespace, steps_per_epoch: int, batch_size: int
) -> tuple[np.ndarray, float]:
    """Scale base/warmup/final lr by the global batch once (DESIGN §2), print it; return the
    per-step cosine schedule with linear warmup (DESIGN §6) and the scaled base lr."""
    scale = lambda lr: scale_lr(lr, batch_size, args.lr_scaling)  # noqa: E731
    lr = scale(args.base_lr)
    warmup_epochs = args.warmup_epochs
    if warmup_epochs >= args.num_epochs:
        warmup_epochs = max(args.num_epochs - 1, 0)
        print(
            f"note: --warmup_epochs {args.warmup_epochs} >= --num_epochs {args.num_epochs}; "
            f"warming up for {warmup_epochs} epoch(s) instead"
        )
    print(
        f"lr = {args.base_lr} x {batch_size}/256 -> {lr:.6g} ({args.lr_scaling} scaling); "
        f"warmup from {scale(args.warmup_lr):.6g} over {warmup_epochs} epoch(s), "
        f"cosine to {scale(args.final_lr):.6g}"
    )
    schedule = cosine_scheduler(
        lr,
        scale(args.final_lr),
        args.num_epochs,
        steps_per_epoch,
        warmup_epochs=warmup_epochs,
        start_warmup_value=scale(args.warmup_lr),
    )
    return schedule, lr


def build_wd_schedule(args: Namespace, steps_per_epoch: int) -> np.ndarray | None:
    """--final_weight_decay: the weight decay of every step, a cosine from --weight_decay to it
    over the whole run (DINO's `cosine_scheduler(weight_decay, weight_decay_end, ...)`, I-JEPA's
    CosineWDSchedule); None when it stays constant."""
    if args.final_weight_decay is None:
        return None
    if args.weight_decay == 0:
        raise UserError("--final_weight_decay needs --weight_decay > 0 to start from")
    return cosine_scheduler(
        args.weight_decay, args.final_weight_decay, args.num_epochs, steps_per_epoch
    )


class TrainingGuard:
    """The two ways a long run ends badly, handled at step boundaries.

    SIGINT (Ctrl-C) and SIGTERM (a scheduler's time limit) only set `signal`; the training loop
    finishes its step, saves a resumable checkpoint and exits. A second Ctrl-C aborts at once.
    A non-finite loss skips its step up to `max_nonfinite` times in the whole run, then stops.
    """

    def __init__(self, max_nonfinite: int = 0) -> None:
        self.signal: int | None = None
        self.max_nonfinite, self.nonfinite = max_nonfinite, 0
        self._previous: dict = {}

    def __enter__(self) -> "TrainingGuard":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt  # asked twice: stop now, without a checkpoint
        self.signal = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
            "(Ctrl-C again to abort without saving)",
            flush=True,
        )

    def should_stop(self, device: torch.device) -> bool:
        """Whether a stop signal arrived; under DDP, whether any process got one, so that all
        of them stop after the same step (one that did not see it stops as if sent SIGTERM)."""
        if world_size() == 1:
            return self.signal is not None
        flag = all_reduce_sum(torch.tensor([float(self.signal is not None)], device=device))
        if flag.item() > 0 and self.signal is None:
            self.signal = signal.SIGTERM
        return flag.item() > 0

    def nonfinite_loss(self, loss: float, step: int, lr: float) -> None:
        """Warn, and let the caller skip the step; exit once the allowance is spent."""
        self.nonfinite += 1
        where = f"loss is {loss} at step {step} (lr {lr:.4g})"
        if self.nonfinite > self.max_nonfinite:
            sys.exit(
                f"error: {where}; the last good checkpoint is kept. Likely causes: lr too high for "
                "this batch size or optimizer (lower --base_lr, raise --warmup_epochs), or fp16 "
                f"overflow. --skip_nonfinite N tolerates N such steps ({self.max_nonfinite} now)."
            )
        print(f"warning: {where}; step skipped ({self.nonfinite}/{self.max_nonfinite} allowed)")
