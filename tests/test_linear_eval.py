"""main_linear.py's evaluation modes: precomputed features, fine-tuning, label fractions, t-SNE,
and the flag combinations it refuses."""

import csv
import functools
import json
import os
from collections import Counter

import pytest
import torch
from conftest import small_test_split
from threadpoolctl import threadpool_limits

import main
import main_linear
from methods import build_method
from networks import build_backbone
from pretrained import Evaluated, backbone_weights
from transformations import eval_transform
from utils.checkpoint import load_checkpoint
from utils.misc import UserError, run_cli
from utils.subsets import class_balanced_fraction
from utils.tsne import plot_tsne

TINY = [
    "--dataset_name",
    "synthetic",
    "--backbone",
    "small_cnn",
    "--image_size",
    "16",
    "--device",
    "cpu",
    "--num_workers",
    "0",
    "--model_name",
    "simclr",
]
LINEAR = [
    "--limit",
    "200",
    "--batch_size",
    "50",
    "--optimizer",
    "sgd",
    "--base_lr",
    "2",
    "--weight_decay",
    "0",
    "--warmup_epochs",
    "0",
    "--probe_bn",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread per torch/OpenMP/BLAS pool here: on 2 cores shared with other work, two
    spinning threads per pool made scikit-learn's t-SNE of 90 points take 41 s instead of 0.3 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A one-epoch SimCLR checkpoint of small_cnn (64 images), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("pretrain")
    args = main.get_args_parser().parse_args(
        [*TINY, "--logs_dir", str(tmp / "logs"), "--ckpt_dir", str(tmp / "ckpts")]
        + ["--limit", "64", "--batch_size", "32", "--num_epochs", "1", "--warmup_epochs", "0"]
        + ["--optimizer", "sgd", "--base_lr", "0.1", "--run_name", "pre"]
    )
    main.main(args)
    return str(tmp / "ckpts" / "pre" / "last.pt")


def run_linear(run_dirs, ckpt, *extra):
    argv = [*TINY, *LINEAR, *run_dirs, "--ckpt", ckpt, *extra]
    return main_linear.main(main_linear.get_args_parser().parse_args(argv))


def epoch_rows(run_dirs, run_name):
    with open(os.path.join(run_dirs[1], run_name, "metrics.csv"), newline="") as f:
        return [r for r in csv.DictReader(f) if r["kind"] == "epoch"]


def test_precomputed_features_train_the_same_head_faster(pretrained, run_dirs, monkeypatch):
    """Without augmentation the image path and the cached-feature path see the same images in
    the same batches (same seed), so their curves agree to float precision; only the time
    differs (the image path runs the backbone over train and test sets every epoch)."""
    monkeypatch.setattr(  # the one intended difference between the paths, switched off
        main_linear,
        "linear_train_transform",
        lambda randaugment, random_erasing, **kw: eval_transform(native_size=32, **kw),
    )
    epochs = ["--num_epochs", "4"]
    slow = run_linear(run_dirs, pretrained, *epochs, "--run_name", "images")
    fast = run_linear(
        run_dirs, pretrained, *epochs, "--run_name", "cached", "--precompute_features"
    )
    assert (slow["precompute_features"], fast["precompute_features"]) == (False, True)
    slow_rows, fast_rows = epoch_rows(run_dirs, "images"), epoch_rows(run_dirs, "cached")
    assert len(slow_rows) == len(fast_rows) == 4
    for a, b in zip(slow_rows, fast_rows, strict=True):
        assert a["step"] == b["step"] and float(a["lr"]) == pytest.approx(float(b["lr"]))
        for key in ("loss", "train_acc1", "val_loss"):  # same batches: same training
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-3, abs=1e-3), key
        assert abs(float(a["val_acc1"]) - float(b["val_acc1"])) <= 0.5
    assert abs(slow["acc1"] - fast["acc1"]) <= 0.5 and abs(slow["acc5"] - fast["acc5"]) <= 0.5
    assert fast["wall_time_s"] < slow["wall_time_s"], (fast["wall_time_s"], slow["wall_time_s"])
    run = os.path.join(run_dirs[1], "cached")
    for name in ("results.json", "metrics.csv", "accuracy.png", "loss.png", "lr.png"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    assert json.load(open(os.path.join(run, "results.json"))) == fast


def backbone_weights_of(checkpoint_path):
    model = load_checkpoint(checkpoint_path)["model"]
    return {k[len("backbone.") :]: v for k, v in model.items() if k.startswith("backbone.")}


def test_finetune_changes_the_backbone_and_the_probe_does_not(pretrained, run_dirs, monkeypatch):
    loaded = []

    def recording_load_backbone(want, weights, info=None, path=""):
        backbone, feat_dim = load_backbone(want, weights, info, path)
        loaded.append(backbone)
        return backbone, feat_dim

    load_backbone = main_linear.evaluated_backbone
    monkeypatch.setattr(main_linear, "evaluated_backbone", recording_load_backbone)
    before = backbone_weights_of(pretrained)
    one_epoch = ["--num_epochs", "1", "--limit", "100"]
    probe = run_linear(run_dirs, pretrained, *one_epoch, "--run_name", "probe")
    tuned = run_linear(run_dirs, pretrained, *one_epoch, "--run_name", "tuned", "--finetune")
    assert (probe["finetune"], tuned["finetune"]) == (False, True)

    frozen, finetuned = (b.state_dict() for b in loaded)
    for key, value in before.items():  # BatchNorm running statistics included
        assert torch.equal(frozen[key].cpu(), value), key
    params = [name for name, _ in loaded[1].named_parameters()]
    assert any(not torch.equal(finetuned[k].cpu(), before[k]) for k in params)

    state = load_checkpoint(os.path.join(run_dirs[3], "tuned", "last.pt"))
    assert state["kind"] == "finetune" and set(state["backbone"]) == set(before)
    groups = state["optimizer"]["param_groups"]
    head_lr = [g["lr"] for g in groups if not g["name"].startswith("backbone")]
    backbone_lr = [g["lr"] for g in groups if g["name"].startswith("backbone")]
    assert backbone_lr and backbone_lr[0] == pytest.approx(0.1 * head_lr[0])  # the default


def test_dino_probes_a_vit_on_its_last_4_blocks_and_knn_on_the_last(run_dirs):
    """eval_linear.py --n_last_blocks 4 (ViT-S): a head on 4 x 192 features of vit_tiny; the
    kNN (eval_knn.py) and the other methods read the last block only; args.json records it."""
    vit = ["--backbone", "vit_tiny", "--image_size", "32", "--random_init"]
    vit += ["--limit", "50", "--batch_size", "50", "--num_epochs", "1", "--precompute_features"]

    def run(*extra):
        argv = [*TINY, *LINEAR, *run_dirs, *vit, *extra]
        main_linear.main(main_linear.get_args_parser().parse_args(argv))
        with open(os.path.join(run_dirs[1], extra[-1], "args.json")) as f:
            return json.load(f)["n_last_blocks"]

    with small_test_split(50):
        blocks = run("--model_name", "dino", "--run_name", "dino")
        head = load_checkpoint(os.path.join(run_dirs[3], "dino", "last.pt"))["model"]["fc.weight"]
        assert blocks == 4 and head.shape == (10, 4 * 192)
        assert run("--model_name", "dino", "--eval", "knn", "--run_name", "knn") == 1
        assert run("--model_name", "simclr", "--run_name", "simclr") == 1
        assert run("--model_name", "simclr", "--n_last_blocks", "2", "--run_name", "two") == 2
        run("--model_name", "dino", "--avgpool_patchtokens", "--run_name", "avg")
        head = load_checkpoint(os.path.join(run_dirs[3], "avg", "last.pt"))["model"]["fc.weight"]
        assert head.shape == (10, 5 * 192)  # 4 class tokens and the patch tokens' mean


def test_class_balanced_fraction_is_balanced_and_deterministic():
    targets = [0] * 500 + [1] * 300 + [2] * 200  # imbalanced on purpose
    ten = class_balanced_fraction(targets, 0.1, seed=0)
    assert len(ten) == 100 and ten == sorted(set(ten))
    counts = Counter(targets[i] for i in ten)
    assert max(counts.values()) - min(counts.values()) <= 1  # same number per class
    assert ten == class_balanced_fraction(targets, 0.1, seed=0)
    assert ten != class_balanced_fraction(targets, 0.1, seed=1)
    one = class_balanced_fraction(targets, 0.001, seed=0)  # at least one image per class
    assert sorted(targets[i] for i in one) == [0, 1, 2]
    assert class_balanced_fraction(targets, 1.0, seed=3) == list(range(1000))


def test_knn_with_a_label_fraction_and_tsne(pretrained, run_dirs, monkeypatch):
    # t-SNE of 2000 points takes ~20 s on 2 cores; 150 are enough to see the file appear
    monkeypatch.setattr(main_linear, "plot_tsne", functools.partial(plot_tsne, max_points=150))
    argv = ["--eval", "knn", "--knn_k", "5", "--data_fraction", "0.1", "--tsne"]
    results = run_linear(run_dirs, pretrained, *argv, "--run_name", "knn")
    assert results["train_images"] == 20 and results["data_fraction"] == 0.1  # of --limit 200
    assert results["eval"] == "knn" and 0 <= results["acc1"] <= results["acc5"] <= 100
    assert os.path.getsize(os.path.join(run_dirs[1], "knn", "tsne.png")) > 0
    args = json.load(open(os.path.join(run_dirs[1], "knn", "args.json")))
    assert args["data_fraction"] == 0.1
    assert args["eval_interpolation"] == "bicubic"  # SimCLR's official evaluation resize


def test_plot_tsne_writes_a_png(tmp_path):
    torch.manual_seed(0)
    labels = torch.arange(3).repeat(40)
    features = torch.randn(120, 64) + 4 * torch.eye(64)[labels]
    path = plot_tsne(features, labels, str(tmp_path / "t.png"), "toy", max_points=90)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--finetune", "--precompute_features"], "--precompute_features"),
        (["--finetune", "--eval", "knn"], "--eval knn"),
        (["--backbone_lr", "0.1"], "--finetune"),
        (["--finetune", "--base_lr", "0"], "--base_lr"),
        (["--data_fraction", "0"], "--data_fraction"),
        (["--data_fraction", "1.5"], "--data_fraction"),
        (["--randaugment", "9"], "--finetune"),
        (["--finetune", "--randaugment", "11"], "from 0 to 10"),
        (["--random_erasing", "0.25"], "--finetune"),
        (["--finetune", "--random_init", "--fc_norm"], "Vision Transformer"),
        (["--finetune", "--random_init", "--fc_norm", "--backbone", "vit_tiny"], "--pool mean"),
        (
            ["--random_init", "--n_last_blocks", "2"],
            "not a Vision Transformer with one class token",
        ),
        (["--random_init", "--n_last_blocks", "13", "--backbone", "vit_tiny"], "has 12 blocks"),
        (["--random_init", "--avgpool_patchtokens"], "not a Vision Transformer"),
        (
            ["--random_init", "--avgpool_patchtokens", "--backbone", "vit_tiny", "--pool", "mean"],
            "drop --pool mean",
        ),
    ],
)
def test_bad_combinations_exit_with_code_2_and_one_line(argv, message, run_dirs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main_linear.main, main_linear.get_args_parser(), [*TINY, *run_dirs, *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not os.path.exists(run_dirs[1])  # refused before anything was written


@pytest.mark.parametrize(
    ("method", "prefix"), [("byol", "target_backbone."), ("dino", "teacher_backbone.")]
)
def test_momentum_backbone_loads_the_ema_copy(method, prefix):
    backbone, feat_dim = build_backbone("small_cnn", 16)
    model = build_method(method, backbone, feat_dim, proj_hidden_dim=32, num_prototypes=8)
    with torch.no_grad():  # an EMA copy that differs from the online backbone
        for p in getattr(model, prefix[:-1]).parameters():
            p.add_(1.0)
    checkpoint = {"args": {"model_name": method, "backbone": "small_cnn", "image_size": 16}}
    checkpoint["model"] = model.state_dict()
    want = Evaluated(method, "small_cnn", 16, "synthetic")
    loaded, _ = main_linear.evaluated_backbone(want, backbone_weights(checkpoint, momentum=True))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, checkpoint["model"][prefix + key]), key
    online, _ = main_linear.evaluated_backbone(want, backbone_weights(checkpoint))
    first = next(iter(online.state_dict()))
    assert torch.equal(online.state_dict()[first], checkpoint["model"]["backbone." + first])
    assert not torch.equal(online.state_dict()[first], loaded.state_dict()[first])

    checkpoint["args"]["model_name"] = "simclr"
    checkpoint["model"] = {
        k: v for k, v in checkpoint["model"].items() if k.startswith("backbone.")
    }
    with pytest.raises(UserError, match="simclr keeps no momentum backbone"):
        backbone_weights(checkpoint, momentum=True)


def test_the_probe_writes_epoch_checkpoints_every_save_freq_and_leaves_args_alone(
    pretrained, run_dirs
):
    """--save_freq 2 over 3 epochs: epoch_0002.pt and the last epoch's, besides last.pt; the
    namespace main() was given is not written into (the run name, the checkpoint found and the
    backbone lr are derived into a copy, which args.json records)."""
    ckpt_dir = os.path.dirname(os.path.dirname(pretrained))  # no --ckpt: the newest there
    argv = [*TINY, *LINEAR, "--logs_dir", run_dirs[1], "--ckpt_dir", ckpt_dir]
    argv += ["--num_epochs", "3", "--save_freq", "2", "--precompute_features"]
    args = main_linear.get_args_parser().parse_args([*argv, "--run_name", "saved"])
    given = dict(vars(args))
    main_linear.main(args)
    assert vars(args) == given
    saved = sorted(os.listdir(os.path.join(ckpt_dir, "saved")))
    assert saved == ["epoch_0002.pt", "epoch_0003.pt", "last.pt"]
    assert load_checkpoint(os.path.join(ckpt_dir, "saved", "epoch_0002.pt"))["epoch"] == 2
    recorded = json.load(open(os.path.join(run_dirs[1], "saved", "args.json")))
    assert recorded["ckpt"] == pretrained and recorded["run_name"] == "saved"


def test_a_pretraining_flag_in_a_recipe_is_refused(tmp_path, run_dirs, capsys):
    """The pretraining flags are refused whether typed or given by a --config recipe."""
    recipe = tmp_path / "r.args"
    recipe.write_text("--temperature 0.2  # a SimCLR hyper-parameter\n--num_crops 2\n")
    argv = [*TINY, *LINEAR, *run_dirs, "--random_init", "--config", str(recipe)]
    with pytest.raises(SystemExit) as exit_:
        run_cli(main_linear.main, main_linear.get_args_parser(), argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num_crops, --temperature are pretraining options" in err[0], err
