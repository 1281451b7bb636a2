"""Speed options on the CPU: bf16 autocast and channels_last train the same model to nearly the
same loss as fp32, fp16 is refused with a clear message, the gradient scaler is on only for fp16,
and (slow) torch.compile gives the eager step's loss."""

import math

import pytest
import torch

import main
from utils.accel import Speed, autocast, grad_scaler
from utils.logging import read_metrics
from utils.misc import UserError

FLAGS = ["--model_name", "simclr", "--backbone", "small_cnn", "--image_size", "16",
         "--dataset_name", "synthetic", "--limit", "128", "--batch_size", "64",
         "--num_epochs", "1", "--device", "cpu", "--num_workers", "0", "--print_freq", "1",
         "--optimizer", "adam", "--base_lr", "0.001", "--warmup_epochs", "0"]  # fmt: skip


def losses(run_dirs, name, *extra):
    args = main.get_args_parser().parse_args([*FLAGS, *run_dirs, "--run_name", name, *extra])
    out = main.main(args)
    return [float(r["loss"]) for r in read_metrics(out["log_dir"]) if r["kind"] == "step"]


def test_bf16_and_channels_last_follow_fp32(run_dirs):
    fp32 = losses(run_dirs, "fp32")
    bf16 = losses(run_dirs, "bf16", "--amp", "bf16", "--channels_last")
    assert len(fp32) == len(bf16) == 2
    assert all(math.isfinite(x) for x in bf16)
    # same weights and batches; bf16 keeps ~3 significant digits, the loss (about ln 127) ~1%
    assert bf16 == pytest.approx(fp32, rel=0.02)
    assert bf16 != fp32  # the autocast really ran in lower precision


def test_autocast_lowers_matmuls_only_when_asked():
    args = main.get_args_parser().parse_args(["--amp", "bf16"])
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast(Speed.of(args), torch.device("cpu")):
        assert layer(x).dtype == torch.bfloat16
    args.amp = "none"
    with autocast(Speed.of(args), torch.device("cpu")):
        assert layer(x).dtype == torch.float32


def test_the_scaler_is_on_for_fp16_only():
    args = main.get_args_parser().parse_args(["--amp", "bf16"])
    assert not grad_scaler(Speed.of(args), torch.device("cpu")).is_enabled()
    args.amp = "fp16"
    assert grad_scaler(
        Speed.of(args), torch.device("cpu")
    ).is_enabled()  # (it runs on CUDA in practice)


def test_fp16_on_the_cpu_is_refused(run_dirs):
    args = main.get_args_parser().parse_args([*FLAGS, *run_dirs, "--amp", "fp16"])
    with pytest.raises(UserError, match="--amp fp16 needs a CUDA device: use --amp bf16"):
        main.main(args)


@pytest.mark.slow
def test_compile_gives_the_eager_loss(run_dirs):
    eager = losses(run_dirs, "eager")
    compiled = losses(run_dirs, "compiled", "--compile")
    assert compiled == pytest.approx(eager, rel=1e-3)
