"""End to end: a tiny pretraining then linear evaluation writes every file a run promises."""

import csv
import json
import math
import os

import pytest
import torch

import main
import main_linear
import probe
from methods import METHODS
from tests.conftest import backbone_for
from utils import tsne
from utils.accel import Speed
from utils.checkpoint import load_checkpoint

# whole runs: the full suite only (conftest --fast); files and formats are tested here, not
# accuracy: 200 test images, not 2,000
pytestmark = [pytest.mark.full, pytest.mark.usefixtures("small_test_set")]


TINY = [
    "--dataset_name",
    "synthetic",
    "--backbone",
    "resnet18",
    "--image_size",
    "16",
    "--device",
    "cpu",
    "--num_workers",
    "0",
    "--limit",
    "64",
    "--batch_size",
    "32",
]


def pretrain(run_dirs, *extra):
    args = main.get_args_parser().parse_args(
        [
            *TINY,
            *run_dirs,
            "--model_name",
            "simclr",
            "--optimizer",
            "sgd",
            "--base_lr",
            "0.1",
            "--warmup_epochs",
            "1",
            "--num_epochs",
            "2",
            "--save_freq",
            "1",
            "--print_freq",
            "1",
            "--run_name",
            "pre",
            *extra,
        ]
    )
    return main.main(args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    dirs = ["--logs_dir", str(tmp / "logs"), "--ckpt_dir", str(tmp / "ckpts")]
    pretrain(dirs)
    linear_args = main_linear.get_args_parser().parse_args(
        [
            *TINY,
            *dirs,
            "--model_name",
            "simclr",
            "--num_epochs",
            "2",
            "--warmup_epochs",
            "0",
            "--base_lr",
            "1",
            "--weight_decay",
            "0",
            "--run_name",
            "lin",
            "--print_freq",
            "1",
        ]
    )
    results = main_linear.main(linear_args)
    return tmp, dirs, results


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pretraining_writes_logs_plots_and_checkpoints(runs):
    tmp, _, _ = runs
    for name in ("args.json", "metrics.csv", "loss.png", "lr.png"):
        assert os.path.getsize(tmp / "logs" / "pre" / name) > 0, name
    for name in ("last.pt", "epoch_0001.pt", "epoch_0002.pt"):
        assert os.path.isfile(tmp / "ckpts" / "pre" / name), name
    assert not [f for f in os.listdir(tmp / "ckpts" / "pre") if ".tmp" in f]
    rows = read_csv(tmp / "logs" / "pre" / "metrics.csv")
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(steps) == 4  # 64 images / 32 per batch = 2 steps x 2 epochs
    # epoch 0: the untrained network's monitors (RankMe), then the two epochs
    assert [r["epoch"] for r in epochs] == ["0", "1", "2"] and float(epochs[0]["rankme"]) > 1
    assert all(float(r["loss"]) > 0 and float(r["images_per_s"]) > 0 for r in steps)
    # warmup over epoch 1 (lr 0 -> 0.0125), then cosine from 0.1 x 32/256 = 0.0125
    assert [float(r["lr"]) for r in steps][:3] == pytest.approx([0.0, 0.00625, 0.0125])
    args = json.load(open(tmp / "logs" / "pre" / "args.json"))
    assert args["model_name"] == "simclr" and args["lr"] == pytest.approx(0.0125)


def test_checkpoint_holds_what_resuming_needs(runs):
    tmp, _, _ = runs
    state = load_checkpoint(str(tmp / "ckpts" / "pre" / "last.pt"))
    assert {"args", "epoch", "model", "optimizer", "rng", "step", "format_version"} <= set(state)
    assert state["epoch"] == 2 and state["step"] == 4 and state["kind"] == "pretrain"
    assert any(k.startswith("backbone.") for k in state["model"])


def test_linear_evaluation_writes_results_and_plots(runs):
    tmp, _, results = runs
    run = tmp / "logs" / "lin"
    for name in ("args.json", "metrics.csv", "loss.png", "lr.png", "accuracy.png", "results.json"):
        assert os.path.getsize(run / name) > 0, name
    saved = json.load(open(run / "results.json"))
    assert saved == results
    assert saved["pretrain_checkpoint"].endswith(os.path.join("pre", "last.pt"))
    for key in ("model_name", "backbone", "dataset_name", "epochs", "acc1", "acc5", "wall_time_s"):
        assert key in saved
    assert 0 <= saved["acc1"] <= saved["acc5"] <= 100
    epochs = [r for r in read_csv(run / "metrics.csv") if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(r["val_acc1"] and r["val_acc5"] for r in epochs)


def test_linear_probe_keeps_the_backbone_frozen(tmp_path):
    from engine import Engine
    from networks import build_backbone
    from networks.heads import LinearClassifier
    from utils.logging import MetricsLogger

    backbone, feat_dim = build_backbone("resnet18", 16)
    backbone.requires_grad_(False)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    classifier = LinearClassifier(feat_dim, 10)
    weight_before = classifier.fc.weight.clone()
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.1)
    loader = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)]
    args = main_linear.get_args_parser().parse_args(["--num_epochs", "1", "--print_freq", "1"])
    logger = MetricsLogger(str(tmp_path), ["loss", "lr", "images_per_s"], tensorboard=False)
    device = torch.device("cpu")
    loop = Engine(optimizer, [0.1] * 3, 3, 1, device, logger=logger)
    backbone.eval()  # as probe.train_classifier's before_epoch leaves a frozen backbone
    step = probe.classifier_step(classifier, backbone, device, Speed.of(args), finetune=False)
    loop.train_epoch(loader, 0, step)
    for key, value in backbone.state_dict().items():  # BatchNorm running stats included
        assert torch.equal(value, before[key]), key
    assert not torch.equal(classifier.fc.weight, weight_before)


def test_resume_refuses_a_longer_schedule_and_leaves_a_finished_run_as_it_was(run_dirs, capsys):
    """--num_epochs shapes the lr schedule: a finished 1-epoch run resumed with 2 is refused,
    naming the flag and both values; resumed as it was, it trains nothing and rewrites
    nothing (its summary keeps its figures)."""
    from utils.misc import UserError

    first = pretrain(run_dirs, "--num_epochs", "1")
    summary = os.path.join(first["log_dir"], "summary.json")
    before = {
        p: os.path.getmtime(p) for p in (summary, os.path.join(first["log_dir"], "metrics.csv"))
    }
    with pytest.raises(UserError, match="--num_epochs 1 there, 2 here"):
        pretrain(run_dirs, "--resume", "auto")
    again = pretrain(run_dirs, "--resume", "auto", "--num_epochs", "1")
    assert "trained all its 1 epochs already" in capsys.readouterr().out
    assert again["loss"] == first["loss"] and again["online_acc1"] == first["online_acc1"]
    assert {p: os.path.getmtime(p) for p in before} == before


def test_existing_run_folder_is_not_overwritten(run_dirs):
    pretrain(run_dirs, "--num_epochs", "1")
    from utils.misc import UserError

    with pytest.raises(UserError, match="already exists"):
        pretrain(run_dirs, "--num_epochs", "1")


def test_a_left_over_checkpoint_folder_is_named_in_the_error(tmp_path):
    """Only the checkpoint folder holds a run (its logs were deleted): the error names that one.
    Empty folders (a failed start of an older version) are no run to protect."""
    from utils.misc import UserError
    from utils.run import check_run_dirs

    args = (str(tmp_path / "logs"), str(tmp_path / "ckpts"), "r")
    os.makedirs(tmp_path / "ckpts" / "r")
    os.makedirs(tmp_path / "logs" / "r")
    assert check_run_dirs(*args, resuming=False)  # empty: not a run
    (tmp_path / "ckpts" / "r" / "last.pt").write_bytes(b"")
    with pytest.raises(UserError) as error:
        check_run_dirs(*args, resuming=False)
    assert str(tmp_path / "ckpts" / "r") in str(error.value) and "logs" not in str(error.value)
    assert check_run_dirs(*args, resuming=True) == (
        "r",
        str(tmp_path / "logs" / "r"),
        str(tmp_path / "ckpts" / "r"),
    )


def test_design_commands_run_end_to_end(run_dirs):
    """The original SimSiam pretraining and both linear commands (SGD base_lr 30, LARS base_lr
    0.02), as written plus tiny-run overrides (small_cnn for speed), chain through the
    newest-checkpoint lookup."""
    from test_args import ORIGINAL_COMMANDS

    tiny = [*TINY, *run_dirs, "--num_epochs", "1", "--limit", "32", "--backbone", "small_cnn"]
    for command in ORIGINAL_COMMANDS[1:]:
        script, *argv = command.split()[1:]
        module = main if script == "main.py" else main_linear
        args = module.get_args_parser().parse_args([*argv, *tiny])
        out = module.main(args)
        if module is main_linear:
            assert os.path.basename(os.path.dirname(out["pretrain_checkpoint"])).startswith(
                "simsiam_small_cnn"
            )
            assert 0 <= out["acc1"] <= out["acc5"] <= 100


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_pretrains_through_main(method, run_dirs):
    """Each registered method runs main.py end to end (small_cnn, 2 steps) with a finite loss
    and a checkpoint of its own."""
    extra = {"barlowtwins": ["--lambd", "0.01"], "vicreg": ["--cov_coeff", "2"]}.get(method, [])
    if method in ("barlowtwins", "vicreg"):  # the official 8192 wide heads: 136 M parameters
        extra += ["--proj_hidden_dim", "1024", "--proj_dim", "1024"]
    extra += {"mae": ["--decoder_depth", "2"], "ijepa": ["--pred_depth", "2"],
              "lejepa": ["--num_crops", "2"],
              "dinov2": ["--num_crops", "2", "--image_size", "16", "--small_crop_size", "8",
                         "--out_dim", "256", "--proj_hidden_dim", "128"],
              }.get(method, [])  # fmt: skip
    backbone, size = backbone_for(method)
    args = main.get_args_parser().parse_args(
        [*TINY, *run_dirs, "--backbone", backbone, "--model_name", method, "--num_epochs", "1"]
        + ["--warmup_epochs", "0", "--run_name", method, "--image_size", str(size), *extra]
        + ["--rankme_images", "64"]
        + (["--online_probe", "false"] if backbone != "small_cnn" else [])  # ViT test passes
    )
    out = main.main(args)
    assert math.isfinite(out["loss"])
    ckpt = load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))
    assert ckpt["args"]["model_name"] == method and ckpt["epoch"] == 1
    # its record (config.json, kept in the checkpoint) resolves every setting the run used
    with open(os.path.join(out["log_dir"], "config.json")) as f:
        record = json.load(f)
    assert ckpt["config"] == record
    assert all(e["value"] is not None for part in record.values() for e in part.values())


def test_method_flags_reach_the_modules():
    """main.py builds the method with build_method(..., **vars(args)): a flag sets the paper's
    value only when given."""
    from methods import build_method
    from networks import build_backbone

    argv = [*TINY, "--model_name", "vicreg", "--cov_coeff", "2", "--lambd", "0.01"]
    args = main.get_args_parser().parse_args(argv)
    vicreg = build_method("vicreg", build_backbone("small_cnn", 16)[0], 256, **vars(args))
    barlow = build_method("barlowtwins", build_backbone("small_cnn", 16)[0], 256, **vars(args))
    assert (vicreg.sim_coeff, vicreg.std_coeff, vicreg.cov_coeff) == (25.0, 25.0, 2.0)
    assert barlow.lambd == 0.01

    argv = [*TINY, "--ema_momentum", "0.99", "--num_prototypes", "30", "--queue_length", "64"]
    args = main.get_args_parser().parse_args(argv + ["--freeze_prototypes_epochs", "0"])
    byol = build_method("byol", build_backbone("small_cnn", 16)[0], 256, **vars(args))
    swav = build_method("swav", build_backbone("small_cnn", 16)[0], 256, **vars(args))
    assert byol.ema_momentum == 0.99 and byol.projector[-1].out_features == 256
    assert swav.prototypes.out_features == 30 and swav.queue.shape == (2, 64, 128)
    assert (swav.freeze_prototypes_epochs, swav.epoch_queue_starts, swav.epsilon) == (0, 15, 0.05)


def run_with_tsne(run_dirs, monkeypatch, epochs: str, *flags):
    """A small_cnn run with --tsne whose t-SNE is a stand-in recording its (features, labels,
    path) (t-SNE itself is tested in test_linear_eval.py and takes seconds)."""
    drawn = []
    monkeypatch.setattr(tsne, "plot_tsne", lambda x, y, path, title: drawn.append((x, y, path)))
    args = main.get_args_parser().parse_args(
        [*TINY, *run_dirs, "--backbone", "small_cnn", "--num_epochs", epochs, "--warmup_epochs"]
        + ["0", "--tsne", "--run_name", "tsne", *flags]
    )
    return main.main(args), drawn


def test_knn_monitor_logs_epoch_0_and_draws_knn_and_tsne(run_dirs, monkeypatch):
    """--knn_freq evaluates the untrained network (epoch 0) and then every N epochs; --tsne maps
    the test features of the last evaluation."""
    out, drawn = run_with_tsne(run_dirs, monkeypatch, "2", "--knn_freq", "2", "--knn_k", "5")
    epochs = [
        r for r in read_csv(os.path.join(out["log_dir"], "metrics.csv")) if r["kind"] == "epoch"
    ]
    assert [(r["epoch"], bool(r["knn_acc1"])) for r in epochs] == [
        ("0", True),
        ("1", False),
        ("2", True),
    ]
    assert all(0 <= float(r["knn_acc1"]) <= 100 for r in epochs if r["knn_acc1"])
    assert os.path.getsize(os.path.join(out["log_dir"], "knn.png")) > 0
    [(features, labels, path)] = drawn
    assert features.shape == (200, 256) and labels.shape == (200,)  # the (cut) synthetic test set
    assert path == os.path.join(out["log_dir"], "tsne.png")


def test_tsne_draws_the_test_set_with_every_monitor_off(run_dirs, monkeypatch):
    """--tsne alone (no kNN, online probe or RankMe, which otherwise compute the test features)
    still maps the whole test set after the last epoch."""
    off = ["--knn_freq", "0", "--online_probe", "false", "--rankme_images", "0"]
    out, drawn = run_with_tsne(run_dirs, monkeypatch, "1", *off)
    [(features, labels, path)] = drawn
    assert features.shape == (200, 256) and labels.shape == (200,)
    assert path == os.path.join(out["log_dir"], "tsne.png")
