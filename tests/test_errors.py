"""Bad input ends a run with one line that says what is wrong and how to fix it (a UserError,
which the command line turns into exit code 2), before anything is written or overwritten."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import main
import main_linear
from utils.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from utils.misc import UserError

pytestmark = pytest.mark.full  # whole runs: the full suite only (conftest --fast)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16",
    "--device", "cpu", "--num_workers", "0", "--limit", "64", "--batch_size", "32",
    "--num_epochs", "1", "--warmup_epochs", "0", "--model_name", "simclr",
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    argv = [*TINY, "--logs_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpts")]
    out = main.main(main.get_args_parser().parse_args([*argv, "--run_name", "ok"]))
    return os.path.join(out["ckpt_dir"], "last.pt")


def linear(run_dirs, *extra):
    argv = [*TINY, *run_dirs, "--num_epochs", "1", *extra]
    return main_linear.main(main_linear.get_args_parser().parse_args(argv))


def expect_error(needle, fn, *args):
    with pytest.raises(UserError) as err:
        fn(*args)
    message = str(err.value)
    assert needle in message and "\n" not in message, message


def test_bad_checkpoints(checkpoint, run_dirs, tmp_path):
    expect_error("checkpoint not found", linear, run_dirs, "--ckpt", str(tmp_path / "no.pt"))

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(checkpoint, "rb").read()[:2000])
    expect_error("unreadable (truncated", linear, run_dirs, "--ckpt", str(truncated))

    newer = str(tmp_path / "newer.pt")
    state = load_checkpoint(checkpoint)
    save_checkpoint(state, newer)
    torch.save(
        {**torch.load(newer, weights_only=False), "format_version": FORMAT_VERSION + 1}, newer
    )
    expect_error("newer than this code", linear, run_dirs, "--ckpt", newer)

    expect_error(
        "pretrained with --backbone small_cnn, but --backbone is resnet18",
        linear, run_dirs, "--ckpt", checkpoint, "--backbone", "resnet18",
    )  # fmt: skip


def test_resume_from_another_method_is_refused(checkpoint, run_dirs):
    args = main.get_args_parser().parse_args(
        [*TINY, *run_dirs, "--model_name", "byol", "--resume", checkpoint]
    )
    expect_error("checkpoint has model_name=simclr, but --model_name is byol", main.main, args)


def test_no_matching_pretraining_checkpoint(run_dirs):
    expect_error("no pretraining checkpoint of simclr/small_cnn/synthetic", linear, run_dirs)


def test_empty_data_folder_and_batch_larger_than_the_data(tmp_path, run_dirs):
    os.makedirs(tmp_path / "data" / "train" / "cat")
    argv = [*TINY, *run_dirs, "--dataset_name", "imagefolder", "--data_dir", str(tmp_path / "data")]
    argv.remove("--limit")
    argv.remove("64")
    expect_error("no images in", main.main, main.get_args_parser().parse_args(argv))

    for i in range(4):
        pixels = np.zeros((8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "data" / "train" / "cat" / f"{i}.png")
    args = main.get_args_parser().parse_args([*argv, "--run_name", "big_batch"])
    expect_error("--batch_size 32 is larger than the training set (4 images)", main.main, args)


def test_a_user_error_is_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "main_linear.py", *TINY, "--ckpt", str(tmp_path / "missing.pt")]
        + ["--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpts")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "checkpoint not found" in lines[0], proc.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ckpts").exists()  # nothing written


@pytest.mark.parametrize("flag", ["--compile", "--gpu_augment"])
def test_pretraining_only_options_are_refused_by_the_linear_evaluation(flag, run_dirs):
    expect_error(f"{flag} is a pretraining option", linear, run_dirs, flag)
