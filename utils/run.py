"""Plumbing shared by main.py and main_linear.py: run folders, data loaders, the lr schedule."""

import os
import signal
import sys
import time
from argparse import Namespace
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from optimizers import Optimization, scale_lr
from optimizers.cosine_decay_warmup import cosine_scheduler
from utils.accel import Speed, check_options
from utils.checkpoint import find_checkpoint, global_step, run_name_of
from utils.data import EpochSampler, ShardSampler
from utils.distributed import (
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    is_main_process,
    rank,
    world_size,
)
from utils.logging import truncate_metrics
from utils.misc import UserError, resolve_device, settings_of
from utils.runfolder import (
    TEMPORARY,
    check_run_name,
    checkpoints_in,
    holds_a_run,
    later_checkpoints,
    lock,
    remove_matching,
    start_afresh,
)


@dataclass(frozen=True)
class Run:
    """What names a run and where it lives (its flags, resolved once in main()): what it trains
    (method, backbone, data set: the default name, the checkpoints --resume auto finds), its
    folders and name (None: one made from the clock), the checkpoint it continues, its seed,
    device and loader processes."""

    model_name: str
    backbone: str
    dataset_name: str
    logs_dir: str = "./logs/"
    ckpt_dir: str = "./ckpts/"
    run_name: str | None = None
    resume: str | None = None
    seed: int = 123
    device: str = "cuda"
    num_workers: int = 4

    @classmethod
    def of(cls, args: Namespace) -> "Run":
        return settings_of(cls, args)


def default_run_name(run: Run, prefix: str = "") -> str:
    """`<prefix><method>_<backbone>_<dataset>_<timestamp>`, with a suffix when runs started in
    the same second (a script launching several) would otherwise share the folder. A timm
    backbone's colon becomes a dash (`timm-convnext_tiny`), a valid folder name everywhere."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backbone = run.backbone.replace(":", "-")
    name = base = f"{prefix}{run.model_name}_{backbone}_{run.dataset_name}_{stamp}"
    count = 1
    while any(os.path.exists(os.path.join(d, name)) for d in (run.logs_dir, run.ckpt_dir)):
        count += 1
        name = f"{base}-{count}"
    return name


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
    behind: the name stays inside both folders, an existing run folder is locked for this
    process (utils.runfolder: a second process is refused), one holding a run (a checkpoint, a
    final record) is not reused unless resuming, and both must be writable. Under DDP every
    process takes rank 0's run name (a default one comes from the clock)."""
    run_name = broadcast_object(run_name)
    log_dir = os.path.join(logs_dir, run_name)
    ckpt_dir = os.path.join(ckpt_dir, run_name)
    if not is_main_process():
        return run_name, log_dir, ckpt_dir
    check_run_name(run_name)
    for flag, folder in (("--logs_dir", log_dir), ("--ckpt_dir", ckpt_dir)):
        blocked = writable_parent(folder)
        if blocked is not None:
            raise UserError(
                f"{flag}: cannot create {folder} ({blocked} is not a writable folder): "
                f"pass a {flag} you can write to"
            )
    for folder in (log_dir, ckpt_dir):
        if os.path.isdir(folder):
            lock(folder)
    existing = [d for d in (log_dir, ckpt_dir) if holds_a_run(d)]
    if existing and not resuming:
        raise UserError(
            f"run folder {' and '.join(existing)} already exists: pass another --run_name, "
            f"or --resume auto to continue it"
        )
    return run_name, log_dir, ckpt_dir


def resume_path(run: Run, kind: str = "pretrain") -> str | None:
    """The checkpoint --resume names: a path as given; `auto`, --run_name's last.pt, or the
    newest `kind` checkpoint of the same method, backbone and data set under --ckpt_dir (None
    when there is none: a new run starts)."""
    if run.resume is None or run.resume != "auto":
        return run.resume
    if run.run_name:  # its last.pt, else its newest epoch_NNNN.pt (last.pt deleted by hand)
        folder = os.path.join(run.ckpt_dir, run.run_name)
        names = checkpoints_in(folder) if os.path.isdir(folder) else []
        if not names:
            return None
        return os.path.join(folder, "last.pt" if "last.pt" in names else names[-1])
    return find_checkpoint(run.ckpt_dir, run.model_name, run.backbone, run.dataset_name, kind=kind)


def run_folders(
    run: Run, ckpt_path: str | None, checkpoint: dict | None, new_name: str
) -> tuple[str, str, str, str | None]:
    """The run's name and folders, checked and locked (check_run_dirs), and where a resumed
    run's metrics come from (None: a new run, named `new_name`). A run resumes in its own
    folder, unless --run_name names another: then it continues there, in a new folder, from the
    checkpoint and the metrics up to it. Resuming in place from a checkpoint older than others
    of its folder (`--resume .../epoch_0002.pt` of a run at epoch 5) would overwrite them:
    refused."""
    source = run_name_of(ckpt_path) if checkpoint else None
    run_name = run.run_name or source or new_name
    in_place = checkpoint is not None and os.path.realpath(
        os.path.dirname(ckpt_path)
    ) == os.path.realpath(os.path.join(run.ckpt_dir, run_name))
    run_name, log_dir, ckpt_dir = check_run_dirs(
        run.logs_dir, run.ckpt_dir, run_name, resuming=in_place
    )
    if checkpoint is None:
        return run_name, log_dir, ckpt_dir, None
    if in_place:
        later = later_checkpoints(ckpt_dir, checkpoint["epoch"], checkpoint["step"], global_step)
        if later:
            raise UserError(
                f"--resume {ckpt_path}: its run folder holds later checkpoints "
                f"({', '.join(later)}), which continuing there would overwrite: pass "
                "--run_name NEW to continue from it in a new run folder"
            )
        return run_name, log_dir, ckpt_dir, log_dir
    return run_name, log_dir, ckpt_dir, os.path.join(run.logs_dir, source)


def make_run_dirs(
    log_dir: str, ckpt_dir: str, resume_step: int | None = None, metrics_from: str | None = None
) -> None:
    """Create and lock the run folders (rank 0), once everything before training has worked.
    A new run clears what a start that never reached a checkpoint left there; a resumed one
    (`resume_step`, its checkpoint's global step) removes the temporary files of an interrupted
    write and cuts metrics.csv back to that step, copied from `metrics_from` (the log folder of
    the run it continues, when that is another: a run continued into a new folder)."""
    if not is_main_process():
        return
    for folder in (log_dir, ckpt_dir):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the run folder {folder}: {err}") from err
        lock(folder)
    if resume_step is None:
        start_afresh((log_dir, ckpt_dir))
        return
    for folder in (log_dir, ckpt_dir):
        removed = remove_matching(folder, TEMPORARY)
        if removed:
            print(f"note: removed {', '.join(removed)} from {folder}: an interrupted write")
    dropped = truncate_metrics(metrics_from or log_dir, log_dir, resume_step)
    if dropped:
        print(
            f"note: metrics.csv cut back to step {resume_step}, the checkpoint's: {dropped} "
            "row(s) logged after it are logged again"
        )


def start_process(run: Run, speed: Speed) -> torch.device:
    """This process's device: joins torchrun's process group when there is one (rank 0 alone
    prints from then on) and checks the speed options against the device."""
    device = init_distributed(resolve_device(run.device))
    check_options(speed, device)
    if not is_main_process():
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks and writes for all
    cores = usable_workers(run.num_workers)
    if run.num_workers > cores:  # torch would warn once per loader
        print(f"note: --num_workers {run.num_workers} > {cores} CPU cores here: using {cores}")
    return device


def usable_workers(num_workers: int) -> int:
    """--num_workers, at most the CPU cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(num_workers, cores or num_workers)


def fit_batch_size(batch_size: int, num_images: int, limit: int | None, at_least: int = 1) -> int:
    """The global training batch: --batch_size, or for a smoke run (--limit) of a recipe whose
    batch exceeds the images left, one batch of (nearly) all of them, the lr scaled to match.
    Each process's share must hold `at_least` images (2 where BatchNorm normalises over the
    batch in training, or a loss compares its images)."""
    if batch_size > num_images and not limit:
        raise UserError(
            f"--batch_size {batch_size} is larger than the training set ({num_images} images): "
            "lower --batch_size"
        )
    if batch_size > num_images:
        print(
            f"note: --batch_size {batch_size} > {num_images} images after --limit; "
            f"using batches of {num_images}"
        )
        batch_size = num_images - num_images % world_size()
    if batch_size // world_size() < at_least:
        raise UserError(
            f"batches of {batch_size // world_size()} image(s) per process: training needs "
            f"{at_least} or more (BatchNorm, and losses that compare the images of a batch): "
            f"raise --batch_size{' and --limit' if limit else ''}"
        )
    return batch_size


def make_loader(
    dataset: Dataset, device: torch.device, train: bool, batch_size: int, seed: int, workers: int
) -> DataLoader:
    """A loader of global batches of `batch_size` (fit_batch_size for training) read by
    `workers` processes (--num_workers, at most the cores); for training, shuffled in an order
    fixed by (`seed`, epoch) through `seed_epoch`, so that the order of an
    epoch does not depend on what ran before it (a resumed run sees the same batches). Under DDP
    each of the W processes loads B/W images of each batch; evaluation loaders read one
    contiguous shard each (utils.data.ShardSampler)."""
    if batch_size % world_size():
        raise UserError(
            f"--batch_size {batch_size} (the global batch) does not divide among "
            f"{world_size()} processes: use a multiple of {world_size()}"
        )
    if train:
        sampler = EpochSampler(len(dataset), seed, rank(), world_size())
    else:
        sampler = ShardSampler(len(dataset), rank(), world_size()) if world_size() > 1 else None
    generator = torch.Generator().manual_seed(seed)  # workers' seeds, per epoch below
    workers = usable_workers(workers)
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


# the most steps a run may take: its per-step schedules (lr, weight decay, EMA) hold one float64
# each, 0.8 GB apiece at this bound; ImageNet at batch 32 for 1000 epochs takes 40 M
MAX_STEPS = 100_000_000


def build_lr_schedule(
    opt: Optimization, steps_per_epoch: int, batch_size: int
) -> tuple[np.ndarray, float]:
    """Scale base/warmup/final lr by the global batch once (--lr_scaling, docs/fidelity.md), print
    it; return the per-step cosine schedule with linear warmup (docs/networks.md) and the scaled
    base lr."""
    total = opt.num_epochs * steps_per_epoch
    if total > MAX_STEPS:
        raise UserError(
            f"--num_epochs {opt.num_epochs} x {steps_per_epoch} steps per epoch = {total:,} "
            f"steps, more than {MAX_STEPS:,} (each per-step schedule would take "
            f"{total * 8 / 2**30:.1f} GiB): lower --num_epochs"
        )
    scale = lambda lr: scale_lr(lr, batch_size, opt.lr_scaling)  # noqa: E731
    lr = scale(opt.base_lr)
    warmup_epochs = opt.warmup_used
    if warmup_epochs != opt.warmup_epochs:
        print(
            f"note: --warmup_epochs {opt.warmup_epochs} >= --num_epochs {opt.num_epochs}; "
            f"warming up for {warmup_epochs} epoch(s) instead"
        )
    print(
        f"lr = {opt.base_lr} x {batch_size}/256 -> {lr:.6g} ({opt.lr_scaling} scaling); "
        f"warmup from {scale(opt.warmup_lr):.6g} over {warmup_epochs} epoch(s), "
        f"cosine to {scale(opt.final_lr):.6g}"
    )
    schedule = cosine_scheduler(
        lr,
        scale(opt.final_lr),
        opt.num_epochs,
        steps_per_epoch,
        warmup_epochs=warmup_epochs,
        start_warmup_value=scale(opt.warmup_lr),
    )
    return schedule, lr


def build_wd_schedule(opt: Optimization, steps_per_epoch: int) -> np.ndarray | None:
    """--final_weight_decay: the weight decay of every step, a cosine from --weight_decay to it
    over the whole run (DINO's `cosine_scheduler(weight_decay, weight_decay_end, ...)`, I-JEPA's
    CosineWDSchedule); None when it stays constant (unset, or equal to --weight_decay)."""
    if opt.final_weight_decay is None or opt.final_weight_decay == opt.weight_decay:
        return None
    if opt.weight_decay == 0:
        raise UserError("--final_weight_decay needs --weight_decay > 0 to start from")
    return cosine_scheduler(
        opt.weight_decay, opt.final_weight_decay, opt.num_epochs, steps_per_epoch
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
