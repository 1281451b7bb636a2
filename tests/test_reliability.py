"""Interrupted and failing runs: a run stopped part-way and resumed ends with exactly the weights
of a run that never stopped; SIGTERM saves a resumable checkpoint; a NaN loss stops the run (or is
skipped with --skip_nonfinite) and keeps the last good checkpoint."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import engine
import main
from utils.checkpoint import load_checkpoint
from utils.misc import UserError, run_cli

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


TIMED = ("images_per_s", "data_wait")  # metrics.csv's wall-clock columns


def metrics(log_dir) -> list[dict]:
    with open(os.path.join(log_dir, "metrics.csv"), newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMED} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: 2 epochs without a stop (a checkpoint file after each)."""
    root = tmp_path_factory.mktemp("straight")
    dirs = ["--logs_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpts")]
    out = run(dirs, "straight", "--save_freq", "1")
    return {"weights": weights(out["ckpt_dir"]), "metrics": metrics(out["log_dir"]), "out": out}


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


def resumes_as_straight(flags: list[str], monkeypatch) -> dict:
    """main.py with `flags` run straight, and stopped by SIGTERM at its third step then resumed:
    the same weights and metrics (asserted); the resumed run's weights."""
    run_with = lambda *extra: main.main(main.get_args_parser().parse_args([*flags, *extra]))  # noqa: E731
    straight = run_with("--run_name", "straight")
    stop_at_call(monkeypatch, 3)
    with pytest.raises(SystemExit) as stopped:
        run_with("--run_name", "stopped")
    assert stopped.value.code == 128 + signal.SIGTERM
    monkeypatch.undo()
    resumed = run_with("--run_name", "stopped", "--resume", "auto")
    assert_same_weights(weights(resumed["ckpt_dir"]), weights(straight["ckpt_dir"]))
    assert metrics(resumed["log_dir"]) == metrics(straight["log_dir"])
    return weights(resumed["ckpt_dir"])


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
    assert_same_weights(weights(out["ckpt_dir"]), straight["weights"])
    # metrics.csv continues: every step logged once, and the interrupted epoch's averages
    # (its running sums were in the checkpoint) are those of the run never stopped
    assert metrics(out["log_dir"]) == straight["metrics"]


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
    assert_same_weights(weights(out["ckpt_dir"]), straight["weights"])


def test_a_second_sigterm_stops_at_once_with_one_line(run_dirs, monkeypatch, capsys):
    """Asked twice, the run stops without a checkpoint: one line, exit code 130, and the last
    checkpoint (epoch 1's) intact for --resume."""
    calls, original = {"n": 0}, engine.adjust_learning_rate

    def twice(optimizer, lr):
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(optimizer, lr)

    monkeypatch.setattr(engine, "adjust_learning_rate", twice)
    argv = [*FLAGS, *run_dirs, "--run_name", "twice"]
    with pytest.raises(SystemExit) as stopped:
        run_cli(main.main, main.get_args_parser(), argv)
    err = [line for line in capsys.readouterr().err.splitlines() if "interrupted" in line]
    assert stopped.value.code == 130 and len(err) == 1 and "stopped without saving" in err[0]
    assert load_checkpoint(os.path.join(run_dirs[3], "twice", "last.pt"))["epoch"] == 1


def test_resuming_from_an_older_checkpoint_continues_in_a_new_folder_only(
    straight, run_dirs, capsys
):
    """epoch_0001.pt of a finished 2-epoch run: resuming in its folder would overwrite
    epoch_0002.pt and last.pt, so it is refused; with --run_name it continues in a new folder,
    whose metrics.csv starts with the rows up to that checkpoint: it ends as the run did."""
    source = straight["out"]
    epoch_1 = os.path.join(source["ckpt_dir"], "epoch_0001.pt")
    dirs = ["--logs_dir", os.path.dirname(source["log_dir"])]
    dirs += ["--ckpt_dir", os.path.dirname(source["ckpt_dir"])]
    before = {name: os.path.getmtime(os.path.join(source["ckpt_dir"], name))
              for name in os.listdir(source["ckpt_dir"])}  # fmt: skip
    with pytest.raises(UserError, match="later checkpoints \\(last.pt, epoch_0002.pt\\)"):
        run(dirs, "straight", "--resume", epoch_1, "--save_freq", "1")
    out = run(dirs, "branch", "--resume", epoch_1)
    assert out["log_dir"] != source["log_dir"]
    assert_same_weights(weights(out["ckpt_dir"]), straight["weights"])
    assert metrics(out["log_dir"]) == straight["metrics"]
    assert before == {name: os.path.getmtime(os.path.join(source["ckpt_dir"], name))
                      for name in os.listdir(source["ckpt_dir"])}  # fmt: skip


def test_resume_on_other_data_is_refused(run_dirs, tmp_path, monkeypatch):
    """--data_dir may move (a node's local disk), not change: a run stopped on 8 images and
    resumed on a folder of 12 is refused, naming both counts."""
    for count, name in ((8, "a"), (12, "b")):
        for split in ("train", "test"):
            os.makedirs(tmp_path / name / split / "cat")
            for i in range(count):
                path = tmp_path / name / split / "cat" / f"{i}.png"
                Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(path)
    flags = ["--dataset_name", "imagefolder", "--batch_size", "4", "--rankme_images", "0"]
    stop_at_call(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run(run_dirs, "moved", *flags, "--data_dir", str(tmp_path / "a"))
    monkeypatch.undo()
    with pytest.raises(UserError, match="trained on 8 images .* holds 12"):
        run(run_dirs, "moved", *flags, "--data_dir", str(tmp_path / "b"), "--resume", "auto")


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
