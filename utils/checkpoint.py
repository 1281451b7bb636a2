"""Checkpoints: atomic writes, clear errors on bad files, the newest matching run for main_linear.

A checkpoint is a plain dict: format_version, args, epoch (epochs completed), step, model,
optimizer, rng, plus whatever a method needs to resume exactly.
"""

import glob
import os
import pickle
import random
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from utils.misc import UserError

FORMAT_VERSION = 1


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


def save_checkpoint(state: dict, path: str) -> None:
    """Write the checkpoint atomically (atomic_file)."""
    with atomic_file(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint on the CPU; a missing, truncated or too-new file is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # the start of one, without its end
                raise UserError(f"checkpoint {path} is unreadable (truncated or damaged)")
        raise UserError(f"{path} is {describe_file(path)}, not a checkpoint of this toolkit")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        message = f"checkpoint {path} is unreadable (truncated or not a checkpoint): {err}"
        raise UserError(message) from err
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint of this toolkit (no 'model' entry)")
    version = state.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise UserError(
            f"checkpoint {path} has format {version}, newer than this code's {FORMAT_VERSION}: "
            "update the toolkit"
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


def find_checkpoint(
    ckpt_dir: str, model_name: str, backbone: str, dataset_name: str, kind: str = "pretrain"
) -> str | None:
    """The most recently written `last.pt` of `kind` (pretrain, linear, finetune) under
    `ckpt_dir` whose run used the same method, backbone and data set (read from the args stored
    inside, memory-mapped, so cheap)."""
    candidates = glob.glob(os.path.join(ckpt_dir, "*", "last.pt"))
    for path in sorted(candidates, key=os.path.getmtime, reverse=True):
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
            args = state["args"]
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
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def restore(checkpoint: dict, optimizer, **modules) -> tuple[int, int]:
    """Continue a run from its checkpoint: each module's weights (stored under its keyword's
    name), the optimizer, the random state; returns the (epoch, step in epoch) to start at."""
    for key, module in modules.items():
        module.load_state_dict(checkpoint[key])
    optimizer.load_state_dict(checkpoint["optimizer"])
    set_rng_state(checkpoint["rng"])
    return checkpoint["epoch"], checkpoint.get("step_in_epoch", 0)


def run_name_of(path: str) -> str:
    """The run a checkpoint belongs to: the name of its folder (`<ckpt_dir>/<run_name>/last.pt`)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def resume_path(args, kind: str = "pretrain") -> str | None:
    """The checkpoint --resume names: a path as given; `auto`, --run_name's last.pt, or the
    newest `kind` checkpoint of the same method, backbone and data set under --ckpt_dir (None
    when there is none: a new run starts)."""
    if args.resume is None or args.resume != "auto":
        return args.resume
    if args.run_name:
        path = os.path.join(args.ckpt_dir, args.run_name, "last.pt")
        return path if os.path.isfile(path) else None
    return find_checkpoint(
        args.ckpt_dir, args.model_name, args.backbone, args.dataset_name, kind=kind
    )
