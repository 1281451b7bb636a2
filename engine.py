"""The training loop shared by pretraining (main.py), linear evaluation and fine-tuning
(main_linear.py): each entry point says only what one step computes (`step_fn`) and what an
epoch ends with (`after_epoch`); the engine does the rest the same way for all of them:

- the per-step lr schedule (an array indexed by the global step, docs/networks.md), and the weight
  decay's when one is given (--final_weight_decay: DINO's and I-JEPA's cosine rise);
- mixed precision: autocast is the step's business, the fp16 gradient scaler the engine's;
- a non-finite loss skips its step (--skip_nonfinite) or stops the run (TrainingGuard);
- SIGINT / SIGTERM: the step finishes, a resumable checkpoint is written, the process exits;
- exact mid-epoch resume: epoch order from (seed, epoch), the skipped batches never loaded, the
  RNG state in the checkpoint;
- logging (metrics.csv rows every --print_freq steps and per epoch, each with the averages of
  what the step returned over its window: the online probe's accuracy, the collapse monitors),
  the progress bar, last.pt every epoch and epoch_NNNN.pt every --save_freq epochs;
- the data-wait fraction: the share of the wall time spent waiting for the next batch, per
  logged window and per epoch, with a hint when it passes DATA_WAIT_HINT.
"""

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from optimizers.cosine_decay_warmup import adjust_learning_rate
from utils.checkpoint import epoch_file_due, rng_state, save_checkpoint
from utils.distributed import (
    barrier,
    gather_objects,
    is_main_process,
    mean_over_processes,
    sum_over_processes,
)
from utils.logging import MetricsLogger, NullLogger
from utils.run import TrainingGuard, seed_epoch

# what a step returns: its loss (a tensor with a graph), the number of images it used over all
# processes, and this process's per-image sums (e.g. correct predictions x 100), which the
# engine sums over the processes and averages over each logged window and over the epoch
StepOutput = tuple[Tensor, int, dict[str, Tensor]]
DATA_WAIT_HINT = 0.2  # an epoch that waits longer than this share of its time for data: a hint


@dataclass
class Engine:
    """One training run's loop state: optimizer, per-step lr, scaler, guard and logger.

    `before_step(step)` runs before each step's forward (the global step: per-step schedules of
    the method, DINOv2's teacher temperature), `before_optimizer_step()` after backward
    (gradients unscaled), `after_optimizer_step(step, total_steps)` after each update: the
    method hooks of main.py (EMA, frozen layers)."""

    optimizer: torch.optim.Optimizer
    lr_schedule: np.ndarray
    steps_per_epoch: int
    num_epochs: int
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    guard: TrainingGuard = field(default_factory=TrainingGuard)
    logger: MetricsLogger | NullLogger = field(default_factory=NullLogger)
    print_freq: int = 10
    debug: bool = False  # 5 steps per epoch
    before_optimizer_step: Callable[[], None] = lambda: None
    after_optimizer_step: Callable[[int, int], None] = lambda step, total: None
    wd_schedule: np.ndarray | None = None  # per step, for the groups that are decayed
    on_log: Callable[[dict], str | None] = lambda window: None  # a warning to print, or None
    before_step: Callable[[int], None] = lambda step: None  # per-step method schedules

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        # the groups with weight decay at the start: the schedule moves theirs only (those
        # excluded, biases and norms under AdamW, stay at 0)
        self.decayed = [g["weight_decay"] > 0 for g in self.optimizer.param_groups]

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    def update(self, loss: Tensor, step: int, lr: float) -> float | None:
        """Backward and optimizer step for one loss; returns its value (the same on every DDP
        process), or None when it was not finite and the step was skipped."""
        loss_value = mean_over_processes(loss)  # one host sync per step
        self.optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss_value):
            self.guard.nonfinite_loss(loss_value, step, lr)  # exits unless allowed
            return None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # hooks and LARS see true gradients
        self.before_optimizer_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.after_optimizer_step(step, self.total_steps)
        return loss_value

    def train_epoch(
        self,
        loader,
        epoch: int,
        step_fn: Callable[..., StepOutput],
        first_step: int = 0,
        carried: dict | None = None,
    ) -> dict[str, float]:
        """Steps `first_step` .. steps_per_epoch - 1 of `epoch` (the loader skips the ones
        before); returns as soon as a stop signal arrives, `steps_done` telling where and
        `partial` holding the epoch's running sums, which a checkpoint keeps so that the epoch's
        averages after a resume (`carried`) are those of a run never stopped."""
        steps = self.steps_per_epoch
        last_step = steps if not self.debug else min(steps, first_step + 5)
        carried = carried or {}
        total_loss, seen = carried.get("loss", 0.0), carried.get("images", 0)
        sums, window_sums = dict(carried.get("sums", {})), dict(carried.get("window_sums", {}))
        start = window_start = fetch_start = time.time()
        window_images, waited, window_waited = carried.get("window_images", 0), 0.0, 0.0
        bar = tqdm(
            loader,
            total=last_step - first_step,
            desc=f"epoch {epoch + 1}/{self.num_epochs}",
            dynamic_ncols=True,
            mininterval=1.0,
            leave=False,
            disable=not is_main_process(),
        )
        done, lr = first_step, float(self.lr_schedule[epoch * steps + first_step])
        for batch in bar:
            wait = time.time() - fetch_start  # the loader's time for this batch
            waited, window_waited = waited + wait, window_waited + wait
            it = epoch * steps + done  # the global step: indexes per-step schedules
            lr = float(self.lr_schedule[it])
            adjust_learning_rate(self.optimizer, lr)
            if self.wd_schedule is not None:
                for group, decayed in zip(self.optimizer.param_groups, self.decayed, strict=True):
                    if decayed:
                        group["weight_decay"] = float(self.wd_schedule[it])
            self.before_step(it)
            loss, count, step_sums = step_fn(*batch)
            loss_value = self.update(loss, it, lr)
            done += 1
            if loss_value is not None:
                total_loss += loss_value * count
                seen += count
                window_images += count
                for key, value in step_sums.items():
                    value = value.detach()  # tensors: no host sync
                    sums[key] = sums.get(key, 0) + value
                    window_sums[key] = window_sums.get(key, 0) + value
            if done % self.print_freq == 0 or done == last_step:
                now = time.time()
                elapsed = max(now - window_start, 1e-9)
                window = sum_over_processes(window_sums)  # one collective per log, not per step
                window = {k: v / max(window_images, 1) for k, v in window.items()}
                window["images_per_s"] = window_images / elapsed
                window["data_wait"] = window_waited / elapsed
                window_start, window_images, window_sums, window_waited = now, 0, {}, 0.0
                shown = loss_value if loss_value is not None else float("nan")
                bar.set_postfix(
                    loss=f"{shown:.4f}", lr=f"{lr:.4g}", img_s=f"{window['images_per_s']:.1f}",
                    wait=f"{window['data_wait']:.0%}",
                )  # fmt: skip
                self.logger.log("step", epoch + done / steps, it + 1, loss=shown, lr=lr, **window)
                warning = self.on_log(window) if is_main_process() else None
                if warning:
                    tqdm.write(warning)
            # stop before the loader draws the next batch: a resumed run then augments that
            # batch with the same random numbers as a run that never stopped
            if done == last_step or self.guard.should_stop(self.device):
                break
            fetch_start = time.time()
        bar.close()
        elapsed = time.time() - start
        stats = {
            "loss": total_loss / max(seen, 1),
            "images_per_s": seen / elapsed,
            "lr": lr,
            "data_wait": waited / max(elapsed, 1e-9),
        }
        if stats["data_wait"] > DATA_WAIT_HINT and is_main_process():
            tqdm.write(
                f"hint: {stats['data_wait']:.0%} of epoch {epoch + 1}'s time went into waiting for "
                "data: more --num_workers, --in_memory (decode once) or --gpu_augment (views on "
                "the GPU) would make it faster"
            )
        partial = {"loss": total_loss, "images": seen, "sums": sums}
        partial |= {"window_sums": window_sums, "window_images": window_images}
        stats |= {k: v / max(seen, 1) for k, v in sum_over_processes(sums).items()}
        return {**stats, "steps_done": done, "partial": partial}


def global_sums(partial: dict) -> dict:
    """An epoch's running sums as a checkpoint keeps them: summed over the DDP processes (the
    monitors' sums are each process's; loss and image count are global already), as floats."""
    sums, window = sum_over_processes(partial["sums"]), sum_over_processes(partial["window_sums"])
    return {**partial, "sums": sums, "window_sums": window}


def carried_here(partial: dict | None) -> dict | None:
    """The running sums this process carries into a resumed epoch: all of them on rank 0; the
    global loss and image count, but none of the monitors' sums, on the others (summed over the
    processes at the epoch's end, they are counted once)."""
    if partial is None or is_main_process():
        return partial
    return {**partial, "sums": {}, "window_sums": {}}


def fit(
    engine: Engine,
    loader,
    step_fn: Callable[..., StepOutput],
    training_state: Callable[[int, int], dict],
    ckpt_dir: str,
    start: tuple[int, int] = (0, 0),
    before_epoch: Callable[[int], None] = lambda epoch: None,
    after_epoch: Callable[[int], dict] | None = None,
    save_freq: int | None = None,
    on_save: Callable[[], None] = lambda: None,
    partial: dict | None = None,
) -> dict[str, float]:
    """Train from `start` = (epoch, step in that epoch) to the end; returns the last epoch's
    stats. `training_state(epoch, step_in_epoch)` is the checkpoint dict for that point (the
    engine adds the RNG state, and mid-epoch the epoch's running sums, which a resumed run
    passes back as `partial`); `after_epoch(epoch)` the epoch's evaluation (kNN, validation),
    merged into its stats; `on_save` runs with every epoch_NNNN.pt (plots)."""
    start_epoch, start_step = start
    last_path = os.path.join(ckpt_dir, "last.pt")
    main_rank = is_main_process()
    steps, stats = engine.steps_per_epoch, {}

    def save(path: str, epoch: int, step: int, sums: dict | None = None) -> None:
        states = gather_objects(rng_state())  # every process's: each draws its own views
        if main_rank:
            state = {**training_state(epoch, step), "rng": states[0], "rng_per_rank": states}
            save_checkpoint({**state, **({"epoch_sums": sums} if sums else {})}, path)

    def stop(message: str) -> None:
        barrier()  # no process exits (and makes torchrun stop rank 0) before the save
        engine.logger.close()
        print(message)
        sys.exit(128 + engine.guard.signal)

    with engine.guard:
        for epoch in range(start_epoch, engine.num_epochs):
            first_step = start_step if epoch == start_epoch else 0
            seed_epoch(loader, epoch, skip_batches=first_step)
            before_epoch(epoch)
            carried = partial if epoch == start_epoch and first_step else None
            stats = engine.train_epoch(loader, epoch, step_fn, first_step, carried_here(carried))
            done, sums = stats.pop("steps_done"), stats.pop("partial")
            if engine.guard.signal is not None and done < steps:
                save(last_path, epoch, done, global_sums(sums))
                stop(
                    f"stopped by {signal.Signals(engine.guard.signal).name} at epoch "
                    f"{epoch + 1}, step {done}/{steps}; saved {last_path}. Continue with the "
                    f"same command plus --resume {last_path}"
                )
            stats.update(after_epoch(epoch) if after_epoch else {})
            engine.logger.log("epoch", epoch + 1, (epoch + 1) * steps, **stats)
            print(
                f"epoch {epoch + 1}/{engine.num_epochs}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
            )
            save(last_path, epoch + 1, 0)
            if epoch_file_due(epoch + 1, save_freq, engine.num_epochs):
                save(os.path.join(ckpt_dir, f"epoch_{epoch + 1:04d}.pt"), epoch + 1, 0)
                if main_rank:
                    on_save()
            if engine.guard.should_stop(engine.device):  # arrived during the epoch's last step
                stop(f"stopped after epoch {epoch + 1}; continue with --resume {last_path}")
    engine.logger.close()
    return stats
