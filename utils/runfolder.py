"""One run per folder: the run folders' names, locks, states and repairs.

A run owns `<logs_dir>/<run_name>` and `<ckpt_dir>/<run_name>`. While it lives it holds a lock on
each (`flock` of a `.lock` file, removed at the end: the kernel drops the lock when the process
dies, however it dies, so a file left by a crash is never in the way); a second process asking for
the same folder is refused in one line naming the first. What a folder holds decides what a new
start may do with it:

- a checkpoint (`last.pt`, `epoch_NNNN.pt`) or a final record (`summary.json`, `results.json`): a
  run, continued only by --resume, never overwritten;
- only what a start writes before its first checkpoint (args.json, metrics.csv, plots, TensorBoard
  events): a start that stopped early, with nothing to resume, so it is started afresh, saying so;
- on --resume, the leftovers of an interrupted write (`*.tmp.pt`, `*.tmp`) are removed and
  metrics.csv is cut back to the checkpoint's step (utils.logging.truncate_metrics), so that the
  rows the resumed run logs again appear once.
"""

import errno
import fcntl
import functools
import glob
import os
import socket
import time

from utils.misc import UserError

LOCK_FILE = ".lock"
RECORDS = ("summary.json", "results.json")  # written when a run has finished
# what a start writes before its first checkpoint: removed when it is started afresh
START_FILES = ("args.json", "metrics.csv", "*.png", "events.out.tfevents.*", "*.tmp", "*.tmp.*")
TEMPORARY = ("*.tmp", "*.tmp.*", "*.tmp[0-9]*")  # atomic writes interrupted before their rename

_held: dict[str, tuple[str, int]] = {}  # real path of a locked folder -> its lock file, open


def check_run_name(name: str) -> None:
    """A run name is one plain folder name: no separator, no `..`, not absolute or hidden, so
    that logs and checkpoints stay inside --logs_dir and --ckpt_dir."""
    bad = (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or os.sep in name
        or (os.altsep and os.altsep in name)
        or "\0" in name
    )
    if bad:
        raise UserError(
            f"--run_name {name!r} is not a plain folder name (no '/', no '..', not starting "
            "with '.'): runs live in <logs_dir>/<run_name> and <ckpt_dir>/<run_name>"
        )


def checkpoints_in(folder: str) -> list[str]:
    """The checkpoints in a run folder (last.pt, epoch_NNNN.pt), sorted."""
    names = ["last.pt"] if os.path.isfile(os.path.join(folder, "last.pt")) else []
    names += sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "epoch_*.pt")))
    return [n for n in names if ".tmp" not in n]


def holds_a_run(folder: str) -> bool:
    """Whether `folder` holds a run to protect: a checkpoint or a final record (a file of that
    name in the way counts too). Files of a start that never reached a checkpoint do not."""
    if not os.path.isdir(folder):
        return os.path.exists(folder)
    if checkpoints_in(folder):
        return True
    return any(os.path.isfile(os.path.join(folder, name)) for name in RECORDS)


def lock(folder: str) -> None:
    """Hold `folder`'s lock for the rest of this call of main() (release_locks), or refuse in
    one line when another process holds it. Where the file system has no locks (some network
    file systems), a note, and no protection."""
    key = os.path.realpath(folder)
    if key in _held:
        return
    path = os.path.join(folder, LOCK_FILE)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(f"cannot lock the run folder {folder}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                os.close(fd)
                raise UserError(
                    f"run folder {folder} is in use by {holder or 'another process'}: wait for "
                    "it to end, or pass another --run_name"
                ) from None
            print(f"note: {folder}: no file locks here ({err.strerror}); two runs under one "
                  "name would not be stopped")  # fmt: skip
        try:  # the file a releasing process removed after we opened it is no lock: again
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since {started}".encode(), 0)
    _held[key] = (path, fd)


def release_locks() -> None:
    """Drop every lock this process holds (the end of main(); the kernel does it at exit),
    removing the lock file while still holding it (a crash leaves it: an unheld lock, no
    obstacle)."""
    for path, fd in _held.values():
        try:
            os.remove(path)
        except OSError:
            pass
        os.close(fd)
    _held.clear()


def releases_locks(main):
    """Decorator of an entry point's main(): its run folders' locks end with the call, so that
    in-process callers (tests, notebooks) may start the next run under the same name."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        finally:
            release_locks()

    return wrapper


def remove_matching(folder: str, patterns: tuple[str, ...]) -> list[str]:
    """Remove the files of `folder` (not below) whose names match `patterns`; their names."""
    removed = set()
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(folder), pattern)):
            if os.path.isfile(path):
                os.remove(path)
                removed.add(os.path.basename(path))
    return sorted(removed)


def start_afresh(folders: tuple[str, ...]) -> None:
    """Clear the files of a start that never reached a checkpoint, saying so."""
    removed = [f for folder in folders for f in remove_matching(folder, START_FILES)]
    if removed:
        print(
            f"note: run folder {folders[-1]} holds no checkpoint (a start that stopped before its "
            f"first one): starting it afresh (removed {', '.join(sorted(set(removed)))})"
        )


def later_checkpoints(folder: str, epoch: int, step: int, steps_of) -> list[str]:
    """The checkpoints of `folder` past (epoch, global step): what resuming from an older one
    there would overwrite. `steps_of(path)` reads a checkpoint's global step."""
    later = []
    for name in checkpoints_in(folder):
        if name == "last.pt":
            if steps_of(os.path.join(folder, name)) > step:
                later.append(name)
        elif name[len("epoch_") : -len(".pt")].isdigit():
            if int(name[len("epoch_") : -len(".pt")]) > epoch:
                later.append(name)
    return later
