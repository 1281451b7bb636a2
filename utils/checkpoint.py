"""Checkpoints: atomic writes, clear errors on bad files, the newest matching run for main_linear.

A checkpoint is a plain dict: format_version, args, epoch (epochs completed), step, model,
optimizer, rng, plus whatever a method needs to resume exactly. It holds tensors and plain Python
values only, and every load uses `torch.load(weights_only=True)`: unpickling arbitrary objects can
run code, so a file that needs it (a crafted one) is refused in one line. A checkpoint of another
format than this code's (FORMAT_VERSION) is refused in one line too: the code reads only its own.
"""

import errno
import glob
import json
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from utils.distributed import rank, world_size
from utils.misc import UserError

# the checkpoints this code writes and reads: data only, the run's resolved record inside
FORMAT_VERSION = 3
# what --resume reads from a training checkpoint
RESUME_ENTRIES = ("args", "kind", "epoch", "model", "optimizer", "rng")


@contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """A temporary path in `path`'s folder to write, renamed to `path` when the block succeeds
    and removed when it fails: a crash never leaves half a file, nor a failed check a file. The
    extension stays last (`last.tmp.pt`): some writers insist on theirs (torch.export: .pt2)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    base, ext = os.path.splitext(path)
    tmp = f"{base}.tmp{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


FULL_BELOW = 16 * 2**20  # bytes free after a failed write that mean the disk is full


def save_checkpoint(state: dict, path: str) -> None:
    """Write the checkpoint atomically (atomic_file). torch.save reports a full disk as a
    RuntimeError of its zip writer: raised here as the OSError (ENOSPC) it is."""
    with atomic_file(path) as tmp:
        try:
            torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
        except RuntimeError as err:
            if shutil.disk_usage(os.path.dirname(os.path.abspath(tmp))).free < FULL_BELOW:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from err
            raise


class NeedsPickle(UserError):
    """A file that only unpickling arbitrary objects can read: refused unless trusted."""


def pickled_global(err: Exception) -> str:
    """The object a weights-only load refused (`numpy.core.multiarray._reconstruct`), from the
    error torch raises, or '' when it does not name one."""
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    return found.group(1) if found else ""


def safe_load(path: str, **kwargs):
    """torch.load of tensors and plain values only; a file that needs more is a NeedsPickle
    naming the file and the object it asks for."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        needed = pickled_global(err)
        if not needed and "weights_only" not in str(err).lower().replace(" ", "_"):
            raise
        raise NeedsPickle(
            f"{path} holds more than tensors and plain values (it needs "
            f"{needed or 'a pickled object'}), and unpickling it could run code: refused (this "
            "toolkit's checkpoints hold data only)"
        ) from None


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint on the CPU, data only (safe_load); a missing, truncated, code-carrying
    file, or one of another format than this code's, is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # the start of one, without its end
                raise UserError(f"checkpoint {path} is unreadable (truncated or damaged)")
        raise UserError(f"{path} is {describe_file(path)}, not a checkpoint of this toolkit")
    try:
        state = safe_load(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        message = f"checkpoint {path} is unreadable (truncated or not a checkpoint): {err}"
        raise UserError(message) from err
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint of this toolkit (no 'model' entry)")
    version = state.get("format_version", 0)
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise UserError(
            f"checkpoint {path} has format {version}, {'newer' if newer else 'older'} than this "
            f"code's {FORMAT_VERSION}, which reads only its own: "
            + (
                "update the toolkit"
                if newer
                else "use the version of the toolkit that wrote it "
                "(its run's config.json names the git_sha), or train again"
            )  # fmt: skip
        )
    return state


def describe_file(path: str) -> str:
    """What a file that is not a checkpoint looks like: empty, text, or some other binary."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of another format"
    return "a text file"


def kind_of(checkpoint: dict) -> str:
    """What wrote a checkpoint, for the errors that refuse it: "a pretraining", "a linear
    probe's", "a fine-tuning run's", or "not a" (then "... checkpoint" reads right)."""
    kinds = {"pretrain": "a pretraining", "linear": "a linear probe's"}
    return {**kinds, "finetune": "a fine-tuning run's"}.get(checkpoint.get("kind"), "not a")


def check_entries(state: dict, path: str, entries: tuple[str, ...] = RESUME_ENTRIES) -> None:
    """Refuse, in one line, a checkpoint that lacks what the caller reads from it."""
    missing = [key for key in entries if key not in state]
    if missing:
        raise UserError(
            f"{path} is not a complete checkpoint of this toolkit (no {', '.join(missing)}): "
            "pass the last.pt or epoch_NNNN.pt of a run"
        )


def find_checkpoint(
    ckpt_dir: str, model_name: str, backbone: str, dataset_name: str, kind: str = "pretrain"
) -> str | None:
    """The most recently written `last.pt` of `kind` (pretrain, linear, finetune) under
    `ckpt_dir` whose run used the same method, backbone and data set (read from the args stored
    inside, memory-mapped, so cheap). Data only, always: a file that needs a pickle is skipped
    with a note naming it."""
    candidates = glob.glob(os.path.join(ckpt_dir, "*", "last.pt"))
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        try:
            state = safe_load(path, mmap=True)
            args = state["args"]
        except NeedsPickle:
            print(f"note: skipped {path}: it needs a pickle to load, which could run code")
            continue
        except Exception:  # a broken file is skipped here; loading it explicitly reports why
            continue
        if state.get("kind") == kind and (
            args.get("model_name"),
            args.get("backbone"),
            args.get("dataset_name"),
        ) == (
            model_name,
            backbone,
            dataset_name,
        ):
            return path
    return None


def rng_state() -> dict:
    """The random state of Python, numpy and torch, as tensors and plain values (numpy's
    Mersenne Twister keys as an int64 tensor, so that no numpy object needs a pickle)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore rng_state()."""
    random.setstate(state["python"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (saved["name"], keys, saved["position"], saved["has_gauss"], saved["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore(checkpoint: dict, optimizer, **modules) -> tuple[int, int]:
    """Continue a run from its checkpoint: each module's weights (stored under its keyword's
    name), the optimizer, the random state (under DDP each process its own, when the
    checkpoint holds one per process of the same number); returns the (epoch, step in epoch)
    to start at."""
    for key, module in modules.items():
        module.load_state_dict(checkpoint[key])
    optimizer.load_state_dict(checkpoint["optimizer"])
    set_rng_state(own_rng_state(checkpoint))
    return checkpoint["epoch"], checkpoint.get("step_in_epoch", 0)


def own_rng_state(checkpoint: dict) -> dict:
    """This process's random state in `checkpoint`: its own of `rng_per_rank` when that was
    saved by as many processes, else rank 0's (`rng`)."""
    states = checkpoint.get("rng_per_rank", [])
    return states[rank()] if len(states) == world_size() else checkpoint["rng"]


def run_name_of(path: str) -> str:
    """The run a checkpoint belongs to: the name of its folder (`<ckpt_dir>/<run_name>/last.pt`)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


# flags that may differ on --resume: where files go, how fast and how often things happen, what
# is watched; every other recorded flag shapes the training and must equal the run's
RESUME_FREE = ("resume", "run_name", "logs_dir", "ckpt_dir", "config")
RESUME_FREE += ("device", "num_workers", "compile", "channels_last", "in_memory", "download")
RESUME_FREE += ("print_freq", "save_freq", "skip_nonfinite", "knn_freq", "knn_k")
RESUME_FREE += ("knn_temperature", "tsne", "rankme_images", "eval_data_dir")
RESUME_FREE += ("data_dir",)  # the data may move (a node's local disk); its size is checked


def shown(value) -> str:
    """A setting's value as the refusals of a changed setting print it: as typed on the command
    line (`0.9 0.999`, `unset`), structured values (the views, the parameter groups) as JSON."""
    if value is None:
        return "unset"
    if isinstance(value, list | tuple) and not any(isinstance(v, dict | list) for v in value):
        return " ".join(str(v) for v in value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, separators=(",", ":"))[:80]
    return str(value)


def check_unchanged(saved: dict, current: dict, path: str) -> None:
    """Refuse, in one line naming each flag and its two values, a resumed run whose settings
    differ from those its checkpoint recorded (RESUME_FREE may differ). A flag the checkpoint
    does not record (one only the other entry point has) is not compared."""
    differ = [
        key
        for key in sorted(saved)
        if key in current and key not in RESUME_FREE and saved[key] != current[key]
    ]
    if differ:
        listed = "; ".join(
            f"--{k} {shown(saved[k])} there, {shown(current[k])} here" for k in differ
        )
        raise UserError(
            f"--resume {path}: the run was trained with other settings: {listed}. Give the run's "
            "values (its args.json), or start a new run"
        )


def check_same_data(
    checkpoint: dict, images: int, ckpt_path: str, dataset_name: str, data_dir: str
) -> None:
    """A resumed run must train on the data it started on (--data_dir may move, not change):
    as many training images as its checkpoint recorded."""
    before = checkpoint.get("data", {}).get("train_images")
    if before is not None and before != images:
        raise UserError(
            f"--resume {ckpt_path}: the run trained on {before} images of "
            f"{dataset_name}, and --data_dir {data_dir} holds {images}: point "
            "--data_dir at the run's data"
        )


def global_step(path: str) -> int:
    """A checkpoint's global step, read memory-mapped (-1 when it cannot be read as data)."""
    try:
        return int(safe_load(path, mmap=True)["step"])
    except Exception:  # a broken or foreign file: no checkpoint to protect
        return -1


def epoch_file_due(epoch: int, save_freq: int | None, num_epochs: int) -> bool:
    """Whether a run writes epoch_NNNN.pt after `epoch` epochs: every --save_freq, and the last."""
    return bool(save_freq) and epoch > 0 and (epoch % save_freq == 0 or epoch == num_epochs)


def restore_epoch_file(
    ckpt_path: str, ckpt_dir: str, epoch: int, save_freq: int | None, num_epochs: int
) -> None:
    """Write epoch_NNNN.pt of `epoch` from `ckpt_path` (its state at the end of that epoch) when
    it is due (epoch_file_due) and missing: a run killed while writing it."""
    target = os.path.join(ckpt_dir, f"epoch_{epoch:04d}.pt")
    if not epoch_file_due(epoch, save_freq, num_epochs) or os.path.isfile(target):
        return
    with atomic_file(target) as tmp:
        shutil.copyfile(ckpt_path, tmp)
    print(f"note: wrote the missing {target} (a run stopped while writing it)")
