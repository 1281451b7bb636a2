"""scripts/make_tables.py and scripts/compare_runs.py on hand-made result files."""

import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from utils.logging import MetricsLogger

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import compare_runs  # noqa: E402
import make_tables  # noqa: E402
import methods_table  # noqa: E402

RESULTS = {
    "linear_simclr": dict(
        model_name="simclr", eval="linear", epochs=100, acc1=91.234, acc5=99.8,
        pretrain_epochs=800, wall_time_s=3725.0, random_init=False, finetune=False,
        precompute_features=False, data_fraction=1.0,
    ),
    "knn_byol": dict(
        model_name="byol", eval="knn", epochs=0, acc1=88.0, acc5=98.5, pretrain_epochs=800,
        wall_time_s=75.2, random_init=False, finetune=False, precompute_features=False,
        data_fraction=1.0,
    ),
    "finetune_simclr": dict(
        model_name="simclr", eval="linear", epochs=30, acc1=70.0, acc5=95.0, pretrain_epochs=800,
        wall_time_s=605.0, random_init=False, finetune=True, precompute_features=False,
        data_fraction=0.1,
    ),
    "fast_simclr": dict(
        model_name="simclr", eval="linear", epochs=100, acc1=89.5, acc5=99.6, pretrain_epochs=800,
        wall_time_s=9.4, random_init=False, finetune=False, precompute_features=True,
        data_fraction=1.0,
    ),
    # written before the finetune/precompute/fraction keys existed: read as the defaults
    "linear_random": dict(
        model_name="simclr", eval="linear", epochs=100, acc1=35.5, acc5=80.01, pretrain_epochs=0,
        wall_time_s=59.6, random_init=True,
    ),
}  # fmt: skip

EXPECTED = """\
| method | backbone | data set | eval | epochs | Acc@1 | Acc@5 | pretrain epochs | wall time |
|---|---|---|---|---:|---:|---:|---:|---:|
| simclr | resnet18 | cifar10 | finetune, 10% labels | 30 | 70.00 | 95.00 | 800 | 10 min 05 s |
| byol | resnet18 | cifar10 | knn | - | 88.00 | 98.50 | 800 | 1 min 15 s |
| random init (baseline) | resnet18 | cifar10 | linear | 100 | 35.50 | 80.01 | - | 1 min 00 s |
| simclr | resnet18 | cifar10 | linear | 100 | 91.23 | 99.80 | 800 | 1 h 02 min |
| simclr | resnet18 | cifar10 | linear (precomputed) | 100 | 89.50 | 99.60 | 800 | 9 s |"""


@pytest.fixture
def logs(tmp_path):
    for run, results in RESULTS.items():
        os.makedirs(tmp_path / "logs" / run)
        common = dict(backbone="resnet18", dataset_name="cifar10")
        with open(tmp_path / "logs" / run / "results.json", "w") as f:
            json.dump({**common, **results}, f)
    os.makedirs(tmp_path / "logs" / "pretrain_run")  # no results.json: skipped
    return tmp_path / "logs"


def test_make_tables_builds_the_expected_markdown(logs, capsys):
    assert make_tables.main([str(logs)]) == EXPECTED  # a folder of run folders
    assert capsys.readouterr().out.strip() == EXPECTED
    # globs and single run folders name the same files; each file counts once
    assert make_tables.main([str(logs / "*"), str(logs / "knn_byol")]) == EXPECTED


def test_make_tables_writes_the_readme_block(logs, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold table\n<!-- results:end -->\nend\n")
    make_tables.main([str(logs / "linear_*"), "--readme", str(readme), "--block", "results"])
    rows = [line for line in EXPECTED.splitlines() if "| linear |" in line]
    expected_table = "\n".join(EXPECTED.splitlines()[:2] + rows)
    assert readme.read_text() == (
        f"intro\n<!-- results:begin -->\n{expected_table}\n<!-- results:end -->\nend\n"
    )


def test_make_tables_refuses_a_missing_path(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        make_tables.main([str(tmp_path / "nowhere")])


def write_metrics(run_dir, columns, rows):
    os.makedirs(run_dir, exist_ok=True)
    logger = MetricsLogger(str(run_dir), columns, tensorboard=False)
    for kind, epoch, step, values in rows:
        logger.log(kind, epoch, step, **values)
    logger.close()


def test_compare_runs_writes_a_png_and_prints_a_table(logs, tmp_path, capsys):
    pretrain = tmp_path / "runs" / "simclr_pre"
    write_metrics(
        pretrain,
        ["loss", "lr", "knn_acc1"],
        [("epoch", 0, 0, dict(knn_acc1=12.0))]
        + [("step", e + 0.5, 2 * e + 1, dict(loss=5.0 - e, lr=0.1)) for e in range(3)]
        + [
            ("epoch", e + 1, 2 * e + 2, dict(loss=4.5 - e, lr=0.1, knn_acc1=20.0 + e))
            for e in range(3)
        ],
    )
    linear = logs / "linear_simclr"  # holds results.json already
    write_metrics(
        linear,
        ["loss", "lr", "train_acc1", "val_loss", "val_acc1", "val_acc5"],
        [
            ("epoch", e + 1, e + 1, dict(loss=1.0, lr=0.1, train_acc1=80, val_acc1=90))
            for e in range(2)
        ],
    )
    output = tmp_path / "compare.png"
    text = compare_runs.main([str(pretrain), str(linear), "--output", str(output)])
    with open(output, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert text in out and "knn_acc1" in out and str(output) in out
    assert "| linear_simclr | simclr | resnet18 | cifar10 | linear | 100 | 91.23 |" in text
    assert "| simclr_pre | 3 | 2.5 | 0.1 | 22 |" in text  # the last epoch's loss, lr, kNN
    assert "train_acc1" in out.splitlines()[-1] and "val_acc1" in out.splitlines()[-1]


def test_compare_runs_refuses_a_folder_without_metrics(tmp_path):
    with pytest.raises(SystemExit, match="no metrics.csv"):
        compare_runs.main([str(tmp_path), "--output", str(tmp_path / "c.png")])


def test_methods_table_rows_from_result_files(tmp_path):
    """scripts/methods_table.py: over the seeds of each row, the mean ± standard deviation of
    kNN at epoch 0 and at the end, of their difference and of the probe, how many seeds end
    above their initialisation, beside the untrained probe of the same seeds; and only the
    flags a row changed (on/off flags by name, with `false` where a row turns one off)."""
    shared = dict(optimizer="adam", base_lr=0.004, weight_decay=0.0, num_epochs=8)
    shared.update(crop_min_scale=0.5, backbone="small_cnn", image_size=16)
    runs = {
        "simclr": dict(shared, temperature=0.2, fix_pred_lr=None),
        "supcon": dict(shared, fix_pred_lr=None),
        "simsiam": dict(
            shared, optimizer="sgd", base_lr=0.1, fix_pred_lr=False, interpolation="bicubic"
        ),
        "dino": dict(shared, num_epochs=40, use_bn_in_head=True, norm_last_layer=False),
        "mae": dict(shared, backbone="vit_tiny", image_size=32),  # a ViT: its own baseline
    }
    for i, (method, args) in enumerate(runs.items()):
        for seed, init, knn, acc in ((1, 13.0, 20.0 + i, 30.0 + i), (2, 15.0, 14.0, 32.0 + i)):
            run = tmp_path / f"pretrain_{method}_s{seed}"
            run.mkdir()
            logger = MetricsLogger(str(run), ["loss", "knn_acc1"], tensorboard=False)
            logger.log("epoch", 0, 0, knn_acc1=init)
            logger.log("epoch", 8, 248, loss=1.0, knn_acc1=knn)
            logger.close()
            (run / "args.json").write_text(json.dumps(args))
            summary = {"wall_time_s": 120.0 + seed}
            if method == "supcon":  # a run with the online probe
                summary["online_acc1"] = 40.0 + seed
            (run / "summary.json").write_text(json.dumps(summary))
            os.makedirs(tmp_path / f"linear_{method}_s{seed}")
            result = {"acc1": acc, "acc5": 90.0}
            (tmp_path / f"linear_{method}_s{seed}" / "results.json").write_text(json.dumps(result))
            if method == "simsiam":  # a probe with bicubic resizes
                probe_args = json.dumps({"interpolation": "bicubic"})
                (tmp_path / f"linear_{method}_s{seed}" / "args.json").write_text(probe_args)
    os.makedirs(tmp_path / "pretrain_vicreg_s1")  # unfinished row (no probe): left out
    for seed, acc1 in ((1, 16.0), (2, 17.0)):
        os.makedirs(tmp_path / f"linear_random_s{seed}")
        random = {"acc1": acc1, "acc5": 66.0}
        (tmp_path / f"linear_random_s{seed}" / "results.json").write_text(json.dumps(random))
        os.makedirs(tmp_path / f"linear_random_mae_s{seed}")
        random = {"acc1": acc1 + 10, "acc5": 70.0}
        (tmp_path / f"linear_random_mae_s{seed}" / "results.json").write_text(json.dumps(random))
        os.makedirs(tmp_path / f"linear_random_bicubic_s{seed}")  # scripts/interpolation_check.sh
        random = {"acc1": acc1 + 2, "acc5": 68.0}
        (tmp_path / f"linear_random_bicubic_s{seed}" / "results.json").write_text(
            json.dumps(random)
        )
    (tmp_path / "wall_seconds.txt").write_text("100 simclr supcon\n20 simsiam\n")

    text = methods_table.table(str(tmp_path))
    lines = text.splitlines()
    assert "linear Acc@1 (random init: 16.50 ± 0.71)" in lines[0] and "pretraining time" in lines[0]
    assert "| seeds above init | online probe Acc@1 | linear Acc@1" in lines[0]
    row = {line.split(" | ")[0][3:-1]: line for line in lines[2:7]}  # rows in registry order
    assert "vicreg" not in row
    # kNN 13 -> 20 and 15 -> 14: gains 7 and -1 (mean 3, sd 5.66), one seed of two above init
    assert row["simclr"] == (
        "| `simclr` | simclr | `nt_xent_loss` | `--temperature 0.2` | 248 | 2 | "
        "14.00 ± 1.41 → 17.00 ± 4.24 | 3.00 ± 5.66 | 1/2 | – | 31.00 ± 1.41 | 90.00 ± 0.00 | "
        "2 min 02 s |"
    )
    assert "| `supcon` | simclr | `supcon_loss` (labels) | (paper defaults) |" in row["supcon"]
    assert "| 1/2 | 41.50 ± 0.71 | 32.00 ± 1.41 |" in row["supcon"]
    assert (
        "| `--optimizer sgd` `--base_lr 0.1` `--fix_pred_lr false` `--interpolation bicubic` "
        "| 248 | 2 |" in (row["simsiam"])
    )
    # a longer schedule, and on/off flags switched either way from main.py's defaults
    flags = "`--num_epochs 40` `--norm_last_layer false` `--use_bn_in_head`"
    assert f"| {flags} | 248 | 2 |" in row["dino"]
    # another backbone: named in the row, beside its own untrained probe (26.5 ± 0.71)
    assert "| `--backbone vit_tiny` `--image_size 32` | 248 | 2 |" in row["mae"]
    assert (
        "| 35.00 ± 1.41 (untrained: 26.50 ± 0.71) | 90.00 ± 0.00 (untrained: 70.00 ± 0.00) |"
        in (row["mae"])
    )
    assert "(untrained" not in row["simclr"]
    # probed with bicubic resizes: beside the baseline so resampled (18.5 ± 0.71)
    assert "| 33.00 ± 1.41 (untrained, bicubic resizes: 18.50 ± 0.71) |" in row["simsiam"]
    assert lines[-1].startswith("Mean ± standard deviation over the seeds 1, 2 ")
    assert lines[-1].endswith(
        "Shared by the runs unless their row says otherwise: `--backbone small_cnn`, "
        "`--image_size 16`, `--optimizer adam`, `--base_lr 0.004`, `--weight_decay 0.0`, "
        "`--num_epochs 8`, `--crop_min_scale 0.5`. "
        "Pretraining time: mean per run."
    )
    assert methods_table.wall_seconds(str(tmp_path)) == 120


# the kept rows of the short tables and the shared recipe file their scripts pass first
TABLES = {"methods": "recipes/short/synthetic.args", "cifar10_cpu": "recipes/short/cifar10.args"}
# what a row's args.json records that is not a setting of its training
NOT_TRAINING = {"data_dir", "logs_dir", "ckpt_dir", "run_name", "seed", "device", "num_workers"}
NOT_TRAINING |= {"git_sha", "resume", "config", "print_freq", "save_freq", "print_config"}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_each_kept_row_is_what_its_recipe_files_resolve_today(table):
    """Every setting a table's row recorded (its args.json, as the flags were given) equals what
    its script's recipe files give today, the method's own recipe filling the flags left unset:
    a changed recipe or default that would change a row fails here until the row is re-measured
    or the short recipe pins the measured value."""
    import main
    from config import with_recipe
    from methods import METHODS
    from methods.hparams import resolve_aliases
    from utils.misc import parse_with_config

    folder = os.path.join(ROOT, "results", table)
    rows = sorted(d for d in os.listdir(folder) if d.startswith("pretrain_") and d.endswith("s123"))
    assert rows
    for row in rows:
        with open(os.path.join(folder, row, "args.json")) as f:
            kept = json.load(f)
        record = os.path.join(folder, row, "config.json")
        if os.path.exists(record):  # a row that recorded every value it used, and its source:
            # those the method or a rule chose count as left unset, as older rows recorded them
            with open(record) as f:
                parts = json.load(f).values()
            chosen = {
                k for part in parts for k, e in part.items() if e["source"] in ("method", "derived")
            }
            kept = {k: None if k in chosen else v for k, v in kept.items()}
        method = kept["model_name"]
        argv = ["--config", TABLES[table], "--config", f"recipes/short/{method}.args"]
        argv += ["--model_name", method, "--num_epochs", str(kept["num_epochs"])]
        argv += ["--limit", str(kept["limit"])] if kept.get("limit") else []
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            args = parse_with_config(main.get_args_parser(), argv)
            flags = main.flag_sources(main.get_args_parser(), args)
            now, _ = with_recipe(args, flags)
        finally:
            os.chdir(cwd)
        # a method's aliases under the names they stand for (--num_prototypes is DINO's --out_dim)
        kept = resolve_aliases(METHODS[method], kept)
        now = resolve_aliases(METHODS[method], vars(now))
        # biases and norms were left out of decay by adamw (and inside lars) before the flag
        kept.setdefault(
            "exclude_bias_and_norm", kept["optimizer"] in ("adamw", "lars", "lars_simclr")
        )
        # a setting the row left to the method (None) may be given today only by a recipe file
        # (pinning the value it had); the method's recipe must not set it
        changed = {
            k: (v, now[k])
            for k, v in kept.items()
            if k in now
            and k not in NOT_TRAINING
            and now[k] != v
            and (v is not None or flags["sources"][k].startswith("method recipe"))
        }
        assert not changed, f"{table}/{row}: recorded vs today {changed}"


def test_the_results_pages_and_the_readme_summary_are_what_the_kept_files_give():
    """docs/results/*.md and the README's `results` block are written by
    scripts/results_pages.py from results/: a kept file changed without rewriting them fails."""
    import results_pages

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        stale = [p for p, text in results_pages.outputs().items() if open(p).read() != text]
    finally:
        os.chdir(cwd)
    assert not stale, f"run python scripts/results_pages.py: {stale}"


def write_rows(root, rows: dict[str, list[tuple[float, float, float]]], baseline: list[float]):
    """A methods table's result files: per method, per seed (kNN at init, kNN at the end, probe
    Acc@1); the untrained probe of each seed."""
    for method, seeds in rows.items():
        for seed, (init, knn, acc1) in enumerate(seeds, start=1):
            run = root / f"pretrain_{method}_s{seed}"
            run.mkdir()
            logger = MetricsLogger(str(run), ["loss", "knn_acc1"], tensorboard=False)
            logger.log("epoch", 0, 0, knn_acc1=init)
            logger.log("epoch", 8, 248, loss=1.0, knn_acc1=knn)
            logger.close()
            (run / "args.json").write_text(json.dumps({"backbone": "small_cnn"}))
            os.makedirs(root / f"linear_{method}_s{seed}")
            result = json.dumps({"acc1": acc1, "acc5": 90.0})
            (root / f"linear_{method}_s{seed}" / "results.json").write_text(result)
    for seed, acc1 in enumerate(baseline, start=1):
        os.makedirs(root / f"linear_random_s{seed}")
        result = json.dumps({"acc1": acc1, "acc5": 60.0})
        (root / f"linear_random_s{seed}" / "results.json").write_text(result)


def test_what_a_results_page_says_follows_its_numbers(tmp_path):
    """The findings are computed: who ends above its initialisation in every seed, whose probe
    clears the untrained one's by more than the spreads, the largest spread, the leaders."""
    import results_pages

    write_rows(tmp_path, {
        "simclr": [(10.0, 20.0, 30.0), (11.0, 19.0, 32.0)],  # gains 10, 8; probe 31 ± 1.41
        "simsiam": [(10.0, 9.0, 17.0), (11.0, 10.5, 20.0)],  # below init; probe 18.5 ± 2.12
    }, baseline=[16.0, 18.0])  # 17 ± 1.41  # fmt: skip
    lines = results_pages.methods_findings(str(tmp_path))
    assert lines[0].startswith("1 of 2 methods end above their initialisation")
    assert "`simsiam` end at or below it in every seed" in lines[0]
    assert lines[1].startswith("1 of 2 probes end above") and "(not: `simsiam`)" in lines[1]
    assert "2.12 probe points (`simsiam`)" in lines[2]
    assert lines[3].startswith("Largest kNN gains: `simclr` (+9.00), `simsiam` (-0.75)")


def test_the_fidelity_table_of_the_official_checks_is_what_their_result_files_say():
    import official_check

    with open(os.path.join(ROOT, "docs", "fidelity.md")) as f:
        text = f.read()
    block = text.split("<!-- official_check:begin -->\n")[1].split("\n<!-- official_check:end")[0]
    assert block == official_check.table(), "run: python scripts/official_check.py --table FILE"


def test_the_official_check_maps_every_tensor_or_stops():
    """Every official parameter and buffer needs its counterpart (in order, same shape) unless
    an adapter names it; one left over stops the check."""
    import torch
    from official_adapters import Pair
    from official_check import state_mapping

    official = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ours = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False), torch.nn.BatchNorm1d(4))
    pair = Pair(official, ours, lambda views, labels: None, groups=[("", "")])
    with pytest.raises(SystemExit, match=r"has 7 entries, ours \* 6: \[.0.bias.\]"):
        state_mapping(pair)
    pair.zeroed = {"0.bias": "a bias before a BatchNorm"}
    mapping = state_mapping(pair)
    assert mapping["0.weight"] == "0.weight" and mapping["1.running_var"] == "1.running_var"


def test_the_fidelity_table_of_views_and_recipes_is_what_their_result_files_say():
    import official_recipes

    with open(os.path.join(ROOT, "docs", "fidelity.md")) as f:
        text = f.read()
    block = text.split("<!-- official_recipes:begin -->\n")[1]
    block = block.split("\n<!-- official_recipes:end")[0]
    assert block == official_recipes.table(), "run: python scripts/official_recipes.py --table F"


def test_official_values_are_read_from_the_parser_and_the_command_over_it(tmp_path):
    """Defaults by dest (store_true as False), then a README command's flags in their
    defaults' types: a switch takes no value (the positional after it stays one), a float
    default of 0 takes 0.0048, a list takes every value; a sentence gives its code only."""
    from official_recipes import command, parser_defaults

    script = tmp_path / "main.py"
    script.write_text(
        "p.add_argument('--lr', default=0.05, type=float)\n"
        "p.add_argument('--final_lr', default=0, type=float)\n"
        "p.add_argument('--fix-pred-lr', action='store_true')\n"
        "p.add_argument('--nmb_crops', type=int, default=[2], nargs='+')\n"
        "p.add_argument('-b', '--batch-size', default=256, type=int)\n"
    )
    defaults = parser_defaults(str(script))
    assert defaults["lr"] == (0.05, "main.py:1") and defaults["fix_pred_lr"][0] is False
    assert defaults["batch_size"] == (256, "main.py:5")
    readme = tmp_path / "README.md"
    readme.write_text(
        "python main.py \\\n  --fix-pred-lr --final_lr 0.0048 \\\n  --nmb_crops 2 6 \\\n"
        "  [your imagenet-folder]\nTo run v2, set `--batch-size 512`, then wait.\n"
    )
    args = command(str(tmp_path), "README.md", 1, defaults)
    assert args["fix_pred_lr"] == (True, "README.md:1") and args["final_lr"][0] == 0.0048
    assert args["nmb_crops"][0] == [2, 6] and args["lr"] == (0.05, "main.py:1")
    assert command(str(tmp_path), "README.md", 5, args)["batch_size"] == (512, "README.md:5")


def test_a_view_is_described_the_same_whoever_built_it():
    """torchvision's transforms and an official repository's own blur class (its `p`, and the
    sigma its __call__ draws) give the same settings, probabilities multiplied through
    RandomApply."""
    import torchvision.transforms as T
    from official_recipes import describe

    class GaussianBlur:  # as Barlow Twins' main.py writes it
        def __init__(self, p):
            self.p = p

        def __call__(self, img):
            sigma = np.random.rand() * 1.9 + 0.1  # noqa: F841
            return img

    theirs = T.Compose([
        T.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        T.RandomApply([GaussianBlur(p=0.5)], p=0.5),
        T.Normalize((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)),
    ])  # fmt: skip
    view = describe(theirs)
    assert view["scale"] == (0.2, 1.0) and view["interpolation"] == "bicubic"
    assert view["jitter"] == (0.4, 0.4, 0.2, 0.1) and view["jitter_p"] == 0.8
    assert view["blur_p"] == 0.25 and view["blur_sigma"] == (0.1, 2.0)
    ours = describe(T.RandomApply([T.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.25))
    assert ours["blur_p"] == view["blur_p"] and ours["blur_sigma"] == view["blur_sigma"]
