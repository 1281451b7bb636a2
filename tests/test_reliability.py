"""Interrupted and failing runs: a run stopped part-way and resumed ends with exactly the weights
of a run that never stopped; SIGTERM saves a resumable checkpoint; a NaN loss stops the run (or is
skipped with --skip_nonfinite) and keeps the last good checkpoint."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import engine
import main
from utils.checkpoint import load_checkpoint

# whole runs: the full suite only (conftest --fast); exact resumption is tested here, not
# accuracy: 200 test images, not 2,000
pytestmark = [pytest.mark.full, pytest.mark.usefixtures("small_test_set")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 4 steps per epoch, 2 epochs, SwAV-free simclr on small_cnn: seconds per run
FLAGS = [
    "--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16",
    "--device", "cpu", "--num_workers", "0", "--limit", "200", "--batch_size", "50",
    "--model_name", "simclr", "--optimizer", "sgd", "--base_lr", "0.1", "--warmup_epochs", "1",
    "--num_epochs", "2", "--print_freq", "1", "--seed", "7",
]  # fmt: skip


def run(run_dirs, name, *extra):
    args = main.get_args_parser().parse_args([*FLAGS, *run_dirs, "--run_name", name, *extra])
    return main.main(args)


def weights(ckpt_dir):
    return load_checkpoint(os.path.join(ckpt_dir, "last.pt"))["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 2 epochs without a stop."""
    root = tmp_path_factory.mktemp("straight")
    out = run(["--logs_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpts")], "straight")
    return weights(out["ckpt_dir"])


def stop_at_call(monkeypatch, n):
    """Send SIGTERM to this process from inside the training loop (engine.py, shared by
    pretraining and evaluation) at its n-th step."""
    calls = {"n": 0}
    original = engine.adjust_learning_rate

    def counting(optimizer, lr):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(optimizer, lr)

    monkeypatch.setattr(engine, "adjust_learning_rate", counting)


@pytest.mark.parametrize("stop_step", [3, 4])  # mid-epoch; at the end of an epoch
def test_stopped_and_resumed_run_equals_a_straight_run(
    stop_step, straight, run_dirs, monkeypatch, capsys
):
    stop_at_call(monkeypatch, stop_step)
    with pytest.raises(SystemExit) as stopped:
        run(run_dirs, "stopped")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "--resume" in capsys.readouterr().out
    ckpt_dir = run_dirs[3] + "/stopped"
    state = load_checkpoint(os.path.join(ckpt_dir, "last.pt"))
    assert state["step"] == stop_step  # the signal's step finishes, then the run stops
    monkeypatch.undo()

    out = run(run_dirs, "stopped", "--resume", "auto")
    assert_same_weights(weights(out["ckpt_dir"]), straight)
    # metrics.csv continues: every step logged once
    with open(os.path.join(out["log_dir"], "metrics.csv")) as f:
        steps = [line.split(",")[2] for line in f if line.startswith("step,")]
    assert steps == [str(i) for i in range(1, 9)]


def test_sigterm_in_a_subprocess_saves_and_resumes(straight, run_dirs, tmp_path):
    log = tmp_path / "logs" / "killed" / "metrics.csv"
    proc = subprocess.Popen(
        [sys.executable, "main.py", *FLAGS, *run_dirs, "--run_name", "killed"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\nstep,") >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "stopped by SIGTERM" in output and "--resume" in output

    out = run(run_dirs, "killed", "--resume", "auto")
    assert_same_weights(weights(out["ckpt_dir"]), straight)


def nan_at_call(monkeypatch, n):
    import methods.simclr

    calls = {"n": 0}
    original = methods.simclr.nt_xent_loss

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == n else loss

    monkeypatch.setattr(methods.simclr, "nt_xent_loss", sometimes_nan)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(run_dirs, monkeypatch):
    nan_at_call(monkeypatch, 6)  # epoch 2, after epoch 1's checkpoint
    with pytest.raises(SystemExit) as stopped:
        run(run_dirs, "nan")
    message = str(stopped.value.code)
    assert "loss is nan at step 5" in message and "lr" in message and "--base_lr" in message
    state = load_checkpoint(os.path.join(run_dirs[3], "nan", "last.pt"))
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0
    assert all(torch.isfinite(v.float()).all() for v in state["model"].values())


def test_skip_nonfinite_skips_the_step_and_finishes(run_dirs, monkeypatch, capsys):
    nan_at_call(monkeypatch, 6)
    out = run(run_dirs, "skipped", "--skip_nonfinite", "1")
    assert "step skipped (1/1 allowed)" in capsys.readouterr().out
    assert all(torch.isfinite(v.float()).all() for v in weights(out["ckpt_dir"]).values())


def test_debug_runs_five_logged_steps_per_epoch(run_dirs):
    out = run(run_dirs, "debug", "--debug", "--print_freq", "10", "--limit", "400")
    with open(os.path.join(out["log_dir"], "metrics.csv")) as f:
        steps = [line.split(",")[2] for line in f if line.startswith("step,")]
    assert steps == ["1", "2", "3", "4", "5", "9", "10", "11", "12", "13"]  # 8 steps per epoch
    torch.autograd.set_detect_anomaly(False)  # main() leaves the mode on; later tests want speed
