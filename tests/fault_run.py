"""main.py with a fault injected, for the fault-injection tests (test_faults.py):

    python tests/fault_run.py FAULT [main.py flags...]

FAULT is where this process kills itself with SIGKILL (no handler runs, as under a cluster's
preemption or the out-of-memory killer):
    step:N          at the start of the N-th optimizer step (counted from 1 in this process)
    save:NAME:K     during the K-th write of checkpoint NAME (last.pt, epoch_0002.pt): its
                    temporary file half written
    summary         after the last checkpoint, before summary.json is written
    none            no fault
The synthetic test split is cut to 200 images, as the in-process tests' small_test_split.
"""

import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from conftest import small_test_split  # noqa: E402

import engine  # noqa: E402
import main  # noqa: E402
import utils.checkpoint  # noqa: E402
from utils.misc import run_cli  # noqa: E402


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def inject(fault: str) -> None:
    kind, *where = fault.split(":")
    if kind == "step":
        calls, original = {"n": 0}, engine.adjust_learning_rate

        def step(optimizer, lr):
            calls["n"] += 1
            if calls["n"] == int(where[0]):
                die()
            return original(optimizer, lr)

        engine.adjust_learning_rate = step
    elif kind == "save":
        name, count = where[0], int(where[1])
        writes, save = {"n": 0}, torch.save
        stem, ext = os.path.splitext(name)

        def half_written(state, path):
            save(state, path)
            if os.path.basename(path) == f"{stem}.tmp{ext}":
                writes["n"] += 1
                if writes["n"] == count:
                    with open(path, "r+b") as f:
                        f.truncate(os.path.getsize(path) // 2)
                    die()

        utils.checkpoint.torch.save = half_written
    elif kind == "summary":
        main.write_summary = lambda *args, **kwargs: die()
    elif kind != "none":
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    inject(sys.argv[1])
    with small_test_split(200):
        run_cli(main.main, main.get_args_parser(), sys.argv[2:])
