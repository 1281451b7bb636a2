"""Fault injection: a run killed with SIGKILL at any point (a step, a checkpoint's write, before the
first checkpoint, after the last) and continued with `--resume auto` ends with the weights, the
metrics.csv and the files of a run never stopped; a full disk stops a run with one line, its last
checkpoint whole; two processes never share a run folder; and a crafted checkpoint runs no code
through any entry point."""

import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import export
import main
import main_linear
import utils.checkpoint
from pretrained import load_backbone
from utils.checkpoint import load_checkpoint
from utils.logging import MetricsLogger
from utils.misc import UserError, run_cli

pytestmark = [pytest.mark.full, pytest.mark.usefixtures("small_test_set")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 steps per epoch, 2 epochs: 8 steps, a checkpoint (and an epoch file) after each epoch
FLAGS = [
    "--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16",
    "--device", "cpu", "--num_workers", "0", "--limit", "64", "--batch_size", "16",
    "--model_name", "simclr", "--optimizer", "sgd", "--base_lr", "0.1", "--warmup_epochs", "1",
    "--num_epochs", "2", "--print_freq", "1", "--save_freq", "1", "--seed", "7",
    "--knn_freq", "1", "--rankme_images", "64",
]  # fmt: skip
STEPS = 8
TIMED = ("images_per_s", "data_wait", "wall_time_s")  # the wall clock's figures


def dirs(root) -> list[str]:
    return ["--logs_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpts")]


def run(root, *extra) -> dict:
    return main.main(main.get_args_parser().parse_args([*FLAGS, *dirs(root), *extra]))


def killed(root, fault: str, *extra) -> subprocess.CompletedProcess:
    """main.py in a subprocess that kills itself with SIGKILL at `fault` (tests/fault_run.py)."""
    command = [sys.executable, "tests/fault_run.py", fault, *FLAGS, *dirs(root), *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def metrics(log_dir) -> list[dict]:
    with open(os.path.join(log_dir, "metrics.csv"), newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMED} for row in csv.DictReader(f)]


def summary(log_dir) -> dict:
    """summary.json without the wall clock, its figures to metrics.csv's 6 digits."""
    with open(os.path.join(log_dir, "summary.json")) as f:
        record = json.load(f)
    shown = lambda v: f"{v:.6g}" if isinstance(v, float) else v  # noqa: E731
    return {k: shown(v) for k, v in record.items() if k not in (*TIMED, "checkpoint")}


def one_error_line(err: str) -> str:
    """The error line of a run's stderr (progress bars aside), asserting it is the only one and
    the last, with no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert "Traceback" not in err and len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    return errors[0]


def files(folder) -> list[str]:
    """A run folder's files, less TensorBoard's event files (one per process that wrote)."""
    return sorted(f for f in os.listdir(folder) if not f.startswith("events.out.tfevents."))


def assert_same_run(log_dir, ckpt_dir, straight):
    """Weights, metrics.csv (less the wall clock), the checkpoint files and the summary."""
    got = load_checkpoint(os.path.join(ckpt_dir, "last.pt"))["model"]
    assert got.keys() == straight["weights"].keys()
    for key, value in got.items():
        assert torch.equal(value, straight["weights"][key]), key
    assert metrics(log_dir) == straight["metrics"]
    assert files(ckpt_dir) == straight["ckpt_files"]  # no temporary file, no lock left
    assert files(log_dir) == straight["log_files"]
    assert summary(log_dir) == straight["summary"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: the run never stopped."""
    root = tmp_path_factory.mktemp("straight")
    out = run(root, "--run_name", "r")
    return {
        "weights": load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))["model"],
        "metrics": metrics(out["log_dir"]),
        "ckpt_files": files(out["ckpt_dir"]),
        "log_files": files(out["log_dir"]),
        "summary": summary(out["log_dir"]),
    }


RANDOM_STEP = random.randint(1, STEPS)  # one more point each session, named in the test's id


@pytest.mark.parametrize(
    "fault",
    [
        "step:2",  # before the first checkpoint: the folder holds no checkpoint
        "step:7",  # in the middle of epoch 2: rows logged after epoch 1's checkpoint
        "save:last.pt:2",  # writing epoch 2's last.pt: a half temporary file
        "save:epoch_0002.pt:1",  # writing the last epoch_NNNN.pt, after last.pt
        "summary",  # after the last checkpoint, before summary.json
        f"step:{RANDOM_STEP}",
    ],
)
def test_sigkill_at_any_point_then_resume_equals_a_run_never_stopped(fault, straight, tmp_path):
    done = killed(tmp_path, fault, "--run_name", "r")
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    log_dir, ckpt_dir = tmp_path / "logs" / "r", tmp_path / "ckpts" / "r"
    assert (log_dir / ".lock").exists()  # left by the kill: a lock no process holds
    if fault.startswith("save:"):
        name, ext = os.path.splitext(fault.split(":")[1])
        assert (ckpt_dir / f"{name}.tmp{ext}").exists()  # what a kill mid-write leaves
    out = run(tmp_path, "--run_name", "r", "--resume", "auto")
    assert out["log_dir"] == str(log_dir)
    assert_same_run(str(log_dir), str(ckpt_dir), straight)


def test_two_runs_under_one_name_the_second_is_refused_while_the_first_lives(tmp_path, capsys):
    first = subprocess.Popen(
        [sys.executable, "tests/fault_run.py", "none", *FLAGS, *dirs(tmp_path), "--run_name", "r"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lock, deadline = tmp_path / "logs" / "r" / ".lock", time.time() + 120
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    with pytest.raises(SystemExit) as second:
        run_cli(main.main, main.get_args_parser(), [*FLAGS, *dirs(tmp_path), "--run_name", "r"])
    err = capsys.readouterr().err.strip().splitlines()
    assert second.value.code == 2 and len(err) == 1 and "in use by process" in err[0], err
    assert f"process {first.pid} " in err[0]
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output[-3000:]
    with open(tmp_path / "logs" / "r" / "metrics.csv") as f:
        assert f.read().count("kind,epoch,step") == 1  # one header: one run wrote it
    assert not lock.exists()  # released at the end


def mount_tmpfs(path, size: str) -> bool:
    """A small tmpfs at `path` (root only), for a disk that fills up; False where not allowed."""
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True)  # fmt: skip
    except OSError:
        return False
    return done.returncode == 0


def test_a_full_disk_stops_with_one_line_and_the_last_checkpoint_resumes(
    straight, tmp_path, monkeypatch, capsys
):
    """The checkpoint folder on a 6 MB file system: epoch 1's last.pt (4 MB) fits, epoch 2's
    temporary one does not. The run stops with one line and exit 2, last.pt whole, no temporary
    file; with room again, --resume auto ends as a run never stopped. Where no tmpfs can be
    mounted, the full disk is simulated (torch.save's error, no space free)."""
    disk = tmp_path / "disk"
    mounted = mount_tmpfs(disk, "6m")
    if not mounted:
        os.makedirs(disk)
        original = torch.save

        def full(state, path):
            if ".tmp" in str(path) and os.path.isfile(disk / "r" / "last.pt"):
                open(path, "wb").write(b"PK\x03\x04")
                raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos")
            return original(state, path)

        monkeypatch.setattr(utils.checkpoint.torch, "save", full)
        free = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(utils.checkpoint.shutil, "disk_usage", lambda p: free._replace(free=0))
    argv = [*FLAGS, "--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(disk)]
    argv += ["--run_name", "r", "--save_freq", "100"]
    try:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            run_cli(main.main, main.get_args_parser(), argv)
        assert stop.value.code == 2 and "no space left" in one_error_line(capsys.readouterr().err)
        assert files(disk / "r") == ["last.pt"]  # whole, no temporary file, lock released
        assert load_checkpoint(str(disk / "r" / "last.pt"))["epoch"] == 1
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        else:
            monkeypatch.undo()
        out = main.main(main.get_args_parser().parse_args([*argv, "--resume", "auto"]))
        got = load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))["model"]
        assert all(torch.equal(got[k], straight["weights"][k]) for k in got)
        assert metrics(out["log_dir"]) == straight["metrics"]
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_log_folder_is_one_line_and_the_run_starts_again(tmp_path, monkeypatch, capsys):
    calls, log = {"n": 0}, MetricsLogger.log

    def full(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        return log(self, *args, **kwargs)

    monkeypatch.setattr(MetricsLogger, "log", full)
    argv = [*FLAGS, *dirs(tmp_path), "--run_name", "r", "--num_epochs", "1"]
    with pytest.raises(SystemExit) as stop:
        run_cli(main.main, main.get_args_parser(), argv)
    line = one_error_line(capsys.readouterr().err)
    assert stop.value.code == 2 and "no space left" in line and "metrics.csv" in line
    monkeypatch.undo()
    out = main.main(main.get_args_parser().parse_args([*argv, "--resume", "auto"]))
    assert "starting it afresh" in capsys.readouterr().out
    assert load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))["epoch"] == 1


# ---- a crafted checkpoint: unpickling it would create a file ----


class Opens:
    """Unpickled, this calls open(path, "w"): code a checkpoint must never run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def crafted(tmp_path):
    """`<tmp>/ckpts/evil/last.pt`: a pretraining checkpoint of the FLAGS' run in every other
    respect (so that the scans would pick it), carrying an object that opens a file."""
    marker = tmp_path / "executed"
    state = {"format_version": 2, "kind": "pretrain", "epoch": 3, "step": STEPS}
    state |= {"args": {**vars(main.get_args_parser().parse_args(FLAGS)), "run_name": "evil"}}
    state |= {"model": {}, "payload": Opens(str(marker))}
    path = tmp_path / "ckpts" / "evil" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path, marker


LINEAR = ["--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16",
          "--device", "cpu", "--num_workers", "0", "--limit", "64", "--batch_size", "16",
          "--model_name", "simclr", "--num_epochs", "1", "--eval", "knn"]  # fmt: skip


@pytest.mark.parametrize(
    "entry",
    ["main_linear_ckpt", "main_resume", "main_init_backbone", "export", "load_backbone",
     "main_linear_scan", "main_resume_auto_scan"],
)  # fmt: skip
def test_a_crafted_checkpoint_runs_no_code(entry, crafted, tmp_path, capsys):
    path, marker = crafted
    out = ["--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpts")]
    commands = {
        "main_linear_ckpt": (main_linear, [*LINEAR, *out, "--ckpt", str(path)]),
        "main_resume": (main, [*FLAGS, *out, "--resume", str(path)]),
        "main_init_backbone": (main, [*FLAGS, *out, "--init_backbone", str(path)]),
        "export": (
            export,
            ["--ckpt", str(path), "--format", "torchvision", "--output", str(tmp_path / "b.pth")],
        ),  # fmt: skip
        "main_linear_scan": (main_linear, [*LINEAR, *out]),  # the newest matching last.pt
        "main_resume_auto_scan": (main, [*FLAGS, *out, "--resume", "auto", "--num_epochs", "1"]),
    }
    if entry == "load_backbone":
        with pytest.raises(UserError, match="could run code: refused"):
            load_backbone(str(path))
    elif entry == "main_resume_auto_scan":  # skipped with a note: a new run starts
        module, argv = commands[entry]
        run_cli(module.main, module.get_args_parser(), argv)
        printed = capsys.readouterr().out
        assert f"skipped {path}: it needs a pickle" in printed and "a new run starts" in printed
    else:
        module, argv = commands[entry]
        with pytest.raises(SystemExit) as stop:
            run_cli(module.main, module.get_args_parser(), argv)
        err = capsys.readouterr().err.strip().splitlines()
        needle = "no pretraining checkpoint" if entry == "main_linear_scan" else "refused"
        assert stop.value.code == 2 and len(err) == 1 and needle in err[0], err
        if needle == "refused":
            assert f"{path} holds more than tensors" in err[0] and "io.open" in err[0]
    assert not marker.exists()


def test_a_checkpoint_of_another_format_is_one_line(straight, tmp_path, capsys):
    """A checkpoint of an older format (1 pickled numpy's random state) is refused in one line:
    this code reads only its own format."""
    state = {"format_version": 2, "kind": "pretrain", "epoch": 3, "step": STEPS}
    state |= {"args": vars(main.get_args_parser().parse_args(FLAGS)), "model": straight["weights"]}
    path = tmp_path / "old.pt"
    torch.save(state, path)
    argv = [*LINEAR, *dirs(tmp_path), "--ckpt", str(path)]
    with pytest.raises(SystemExit) as stop:
        run_cli(main_linear.main, main_linear.get_args_parser(), argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "format 2, older than this code's" in err[0]
