"""The training loop shared by pretraining, linear evaluation and fine-tuning (engine.py): a
probe or a fine-tuning run stopped by SIGTERM and resumed ends with the weights of one that never
stopped, and the fp16 gradient scaler leaves the update as without it."""

import os
import signal

import pytest
import torch
from torch import nn

import engine
import main_linear
from engine import Engine
from tests.test_reliability import stop_at_call
from utils.checkpoint import load_checkpoint
from utils.misc import UserError

# exact resumption is tested here, not accuracy: the test passes over 2,000 images would cost
# most of the time, 200 serve
pytestmark = pytest.mark.usefixtures("small_test_set")

# the untrained small_cnn (no pretraining needed), 4 steps per epoch, 2 epochs
FLAGS = [
    "--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16",
    "--device", "cpu", "--num_workers", "0", "--limit", "200", "--batch_size", "50",
    "--model_name", "simclr", "--random_init", "--base_lr", "0.5", "--warmup_epochs", "1",
    "--num_epochs", "2", "--print_freq", "1", "--seed", "3",
]  # fmt: skip
MODES = {"probe": [], "finetune": ["--finetune"], "features": ["--precompute_features"]}
MODES["finetune_vit"] = [  # MAE's protocol (recipes/cifar10/finetune_vit.args) on a ViT
    "--finetune", "--backbone", "vit_tiny", "--optimizer", "adamw", "--base_lr", "1e-3",
    "--backbone_lr", "1e-3", "--layer_decay", "0.75", "--drop_path", "0.1",
    "--label_smoothing", "0.1", "--mixup", "0.8", "--cutmix", "1.0", "--randaugment", "9",
    "--random_erasing", "0.25", "--pool", "mean", "--fc_norm",
    "--limit", "100", "--batch_size", "25",  # still 4 steps per epoch, at half the cost
]  # fmt: skip


def evaluate(run_dirs, name, *extra):
    args = main_linear.get_args_parser().parse_args([*FLAGS, *run_dirs, "--run_name", name, *extra])
    return main_linear.main(args)


def last(ckpt_root, name):
    return load_checkpoint(os.path.join(ckpt_root, name, "last.pt"))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_stopped_and_resumed_evaluation_equals_a_straight_one(mode, run_dirs, monkeypatch):
    flags = MODES[mode]
    straight = evaluate(run_dirs, "straight", *flags)
    stop_at_call(monkeypatch, 3)  # mid-epoch: 3 of 4 steps of the first epoch
    with pytest.raises(SystemExit) as stopped:
        evaluate(run_dirs, "stopped", *flags)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert last(run_dirs[3], "stopped")["step"] == 3
    monkeypatch.undo()
    resumed = evaluate(run_dirs, "stopped", *flags, "--resume", "auto")
    a, b = last(run_dirs[3], "straight"), last(run_dirs[3], "stopped")
    for part in ("model", "backbone") if mode.startswith("finetune") else ("model",):
        for key in a[part]:
            assert torch.allclose(a[part][key].float(), b[part][key].float(), atol=1e-6), key
    assert (resumed["acc1"], resumed["acc5"]) == (straight["acc1"], straight["acc5"])
    if mode == "finetune_vit":  # a fresh fc_norm in place of the final norm, as MAE's
        assert "fc_norm.weight" in a["backbone"] and "encoder.ln.weight" not in a["backbone"]
    with open(os.path.join(run_dirs[1], "stopped", "metrics.csv")) as f:
        steps = [line.split(",")[2] for line in f if line.startswith("step,")]
    assert steps == [str(i) for i in range(1, 9)]  # every step logged once


def test_resume_refuses_a_checkpoint_of_another_kind(run_dirs):
    evaluate(run_dirs, "probe")
    path = os.path.join(run_dirs[3], "probe", "last.pt")
    with pytest.raises(UserError, match="is a linear probe's checkpoint, not one of a finetune"):
        evaluate(run_dirs, "other", "--finetune", "--resume", path)
    with pytest.raises(UserError, match="--probe_bn"):
        evaluate(run_dirs, "other", "--probe_bn", "--resume", path)


def test_resume_without_momentum_backbone_takes_the_stopped_runs(run_dirs, monkeypatch):
    """--momentum_backbone unset (None: the method's choice) is recorded as evaluated, and a
    resumed run without the flag continues with the stopped run's; a contrary flag is still
    refused, and so is a changed lr."""
    stop_at_call(monkeypatch, 3)
    with pytest.raises(SystemExit):
        evaluate(run_dirs, "stopped")
    monkeypatch.undo()
    path = os.path.join(run_dirs[3], "stopped", "last.pt")
    state = load_checkpoint(path)
    assert state["args"]["momentum_backbone"] is False
    with pytest.raises(UserError, match="--random_init evaluates none"):
        evaluate(run_dirs, "stopped", "--momentum_backbone", "true", "--resume", path)
    with pytest.raises(UserError, match="--base_lr 0.5 there, 0.2 here"):
        evaluate(run_dirs, "stopped", "--base_lr", "0.2", "--resume", path)
    evaluate(run_dirs, "stopped", "--resume", path)
    assert last(run_dirs[3], "stopped")["args"]["momentum_backbone"] is False


def one_update(scaler):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    loop = Engine(
        optimizer, [0.1], 1, 1, torch.device("cpu"), scaler,
        before_optimizer_step=lambda: seen.append(model.weight.grad.clone()),
    )  # fmt: skip
    loss = model(torch.ones(2, 4)).pow(2).mean()
    value = loop.update(loss, step=0, lr=0.1)
    return value, seen[0], model.weight.detach().clone()


def test_the_fp16_gradient_scaler_scales_the_loss_and_unscales_before_the_step():
    plain = one_update(torch.amp.GradScaler("cpu", enabled=False))
    scaled = one_update(torch.amp.GradScaler("cpu", init_scale=1024.0))
    assert plain[0] == pytest.approx(scaled[0])  # the loss as computed, not as scaled
    assert torch.allclose(plain[1], scaled[1])  # the hooks (and LARS) see true gradients
    assert torch.allclose(plain[2], scaled[2])  # the same update


def test_a_nonfinite_loss_skips_the_update_when_allowed(capsys):
    model = nn.Linear(4, 1)
    before = model.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loop = Engine(optimizer, [0.1], 1, 1, torch.device("cpu"), guard=engine.TrainingGuard(1))
    assert loop.update(model(torch.ones(1, 4)).sum() * float("nan"), step=0, lr=0.1) is None
    assert torch.equal(model.weight, before) and "step skipped" in capsys.readouterr().out
