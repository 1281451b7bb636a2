"""The record of what a run used (config.py): every setting resolved, none null, each with where it
came from (the parser's default, a recipe file, the command line, the method, derived); written as
config.json and into the checkpoints, printed by --print_config without writing anything, read
back by the evaluation, and compared by --resume."""

import json
import os

import pytest

import main
import main_linear
from config import as_given
from pretrained import load_backbone
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.misc import UserError, parse_with_config, run_cli

pytestmark = [pytest.mark.full, pytest.mark.usefixtures("small_test_set")]

TINY = [
    "--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16",
    "--device", "cpu", "--num_workers", "0", "--limit", "64", "--batch_size", "32",
    "--num_epochs", "1", "--warmup_epochs", "0", "--model_name", "simclr",
]  # fmt: skip


def nulls(record: dict) -> list[str]:
    return [f"{part}.{key}" for part, settings in record.items()
            for key, entry in settings.items() if entry["value"] is None]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose flags come from all three places: a recipe file (--temperature, --base_lr),
    the command line (--seed, and --base_lr over the recipe's), the parser's defaults."""
    root = tmp_path_factory.mktemp("record")
    recipe = root / "r.args"
    recipe.write_text("--temperature 0.3 --base_lr 0.5\n")
    argv = [*TINY, "--config", str(recipe), "--seed", "5", "--base_lr", "0.2"]
    argv += ["--logs_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpts"), "--run_name", "r"]
    out = main.main(parse_with_config(main.get_args_parser(), argv))
    with open(os.path.join(out["log_dir"], "config.json")) as f:
        return {"record": json.load(f), "out": out, "argv": argv, "recipe": str(recipe)}


def test_the_record_resolves_every_setting_and_names_its_source(run):
    record = run["record"]
    assert not nulls(record)
    assert record["method"]["temperature"] == {
        "value": 0.3, "source": f"recipe file {run['recipe']}"
    }  # fmt: skip
    assert record["optimization"]["base_lr"] == {"value": 0.2, "source": "command line"}
    assert record["run"]["seed"] == {"value": 5, "source": "command line"}
    # unset training flags: SimCLR's CIFAR-size recipe (the official README's command)
    optimizer = record["optimization"]["optimizer"]
    assert optimizer["value"] == "lars_simclr" and optimizer["source"].startswith("method recipe")
    assert "README" in record["optimization"]["training_recipe"]["value"]
    # the method's own values, where no flag was given: SimCLR's projector is the backbone's width
    assert record["method"]["proj_hidden_dim"] == {"value": 256, "source": "method"}
    assert record["method"]["nt_xent_scale"] == {"value": 2.0, "source": "method"}
    assert record["views"]["crop_min_scale"] == {"value": 0.08, "source": "method"}
    assert record["views"]["interpolation"] == {"value": "bicubic", "source": "method"}
    assert record["model"]["zero_init_residual"] == {"value": True, "source": "method"}
    # derived from the others: the lr scaled by the batch, the schedule's constant decay
    assert record["optimization"]["lr"] == {"value": 0.2 * 32 / 256, "source": "derived"}
    assert record["optimization"]["final_weight_decay"]["value"] == 1e-4  # the recipe's, constant
    assert record["monitors"]["online_probe"] == {"value": True, "source": "derived"}
    views = record["views"]["views"]["value"]
    assert len(views) == 2 and views[0]["crop_scale"] == [0.08, 1.0]
    groups = record["optimization"]["param_groups"]["value"]  # SimCLR trains every parameter
    assert sum(g["values"] for g in groups) == record["model"]["parameters"]["value"]
    # the checkpoint keeps the same record; args.json its values, flat (every setting
    # the run used, resolved, none null)
    state = load_checkpoint(os.path.join(run["out"]["ckpt_dir"], "last.pt"))
    assert state["config"] == record
    with open(os.path.join(run["out"]["log_dir"], "args.json")) as f:
        args = json.load(f)
    assert args["temperature"] == 0.3 and args["proj_hidden_dim"] == 256 and args["lr"] == 0.025
    assert None not in args.values() and len(args) == sum(len(p) for p in record.values())
    # the tables read the flags as given back from it: what the method resolved is unset
    given = as_given(record)
    assert given["temperature"] == 0.3 and given["proj_hidden_dim"] is None


def test_print_config_prints_the_record_and_writes_nothing(run, tmp_path, capsys):
    argv = [*run["argv"][:-6], "--logs_dir", str(tmp_path / "l"), "--ckpt_dir", str(tmp_path / "c")]
    run_cli(main.main, main.get_args_parser(), [*argv, "--run_name", "r", "--print_config"])
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # stdout is the JSON alone; the start-up went to stderr
    assert printed["method"] == run["record"]["method"]
    assert printed["optimization"]["param_groups"] == run["record"]["optimization"]["param_groups"]
    assert not os.path.exists(tmp_path / "l") and not os.path.exists(tmp_path / "c")
    ckpt = os.path.join(run["out"]["ckpt_dir"], "last.pt")
    probe = [*TINY, "--ckpt", ckpt, "--logs_dir", str(tmp_path / "l"), "--print_config"]
    run_cli(main_linear.main, main_linear.get_args_parser(), probe)
    printed = json.loads(capsys.readouterr().out)
    assert not nulls(printed) and not os.path.exists(tmp_path / "l")
    assert printed["evaluation"]["eval_interpolation"] == {
        "value": "bicubic",
        "source": "checkpoint",
    }
    assert printed["backbone"]["ckpt"] == {"value": ckpt, "source": "command line"}
    assert printed["optimization"]["exclude_bias_and_norm"]["value"] is False  # sgd decays all
    run_cli(main_linear.main, main_linear.get_args_parser(), [*probe, "--optimizer", "lars"])
    printed = json.loads(capsys.readouterr().out)  # LARS leaves biases and norms alone
    assert printed["optimization"]["exclude_bias_and_norm"]["value"] is True


def test_evaluation_reads_the_checkpoints_record(run, tmp_path):
    """load_backbone and main_linear take a checkpoint's evaluation settings from its record,
    not from what the method declares today."""
    state = load_checkpoint(os.path.join(run["out"]["ckpt_dir"], "last.pt"))
    state["config"]["evaluation"]["eval_interpolation"]["value"] = "bilinear"
    path = str(tmp_path / "recorded.pt")
    save_checkpoint(state, path)
    _, info = load_backbone(path)
    assert info.interpolation == "bilinear"  # SimCLR declares bicubic
    probe = [*TINY, "--ckpt", path, "--logs_dir", str(tmp_path / "l"), "--print_config"]
    record = main_linear.main(main_linear.get_args_parser().parse_args(probe))["config"]
    assert record["evaluation"]["eval_interpolation"]["value"] == "bilinear"
    given = main_linear.get_args_parser().parse_args([*probe, "--eval_interpolation", "bicubic"])
    record = main_linear.main(given)["config"]  # the flag wins over the record
    assert record["evaluation"]["eval_interpolation"] == {
        "value": "bicubic",
        "source": "command line",
    }


def test_one_evaluation_setting_resolved_in_one_place():
    """Each evaluation setting: the flag given, else the pretraining run's record, else the
    method's declaration; the record's keys are read back where main.py writes them."""
    from evaluation import recorded_evaluation, resolve_evaluation

    official = resolve_evaluation("dino")  # DINO: its teacher, bicubic, the last 4 blocks
    assert (official.interpolation, official.last_blocks, official.momentum_backbone) == (
        "bicubic",
        4,
        True,
    )
    assert set(official.sources.values()) == {"method"}
    saved = recorded_evaluation({"args": {}, "config": {
        "model": {"pool": {"value": "mean", "source": "command line"}},
        "evaluation": {"eval_last_blocks": {"value": 1, "source": "method"}}}})  # fmt: skip
    assert saved == {"pool": "mean", "last_blocks": 1}
    both = resolve_evaluation("dino", {"pool": None, "last_blocks": 2}, saved)
    assert (both.pool, both.last_blocks, both.interpolation) == ("mean", 2, "bicubic")
    assert both.sources == {"interpolation": "method", "pool": "checkpoint",
                            "last_blocks": "given", "momentum_backbone": "method"}  # fmt: skip


def test_main_records_the_evaluation_resize_and_main_linear_refuses_the_views_one(run, tmp_path):
    """main.py's --eval_interpolation is its monitors' resize, recorded for the evaluations of
    its checkpoint; --interpolation (the views') means nothing to main_linear.py: one line."""
    argv = [*run["argv"][:-6], "--logs_dir", str(tmp_path / "l"), "--ckpt_dir", str(tmp_path / "c")]
    argv += ["--run_name", "r", "--print_config", "--eval_interpolation", "bilinear"]
    record = main.main(main.get_args_parser().parse_args(argv))["config"]
    assert record["evaluation"]["eval_interpolation"] == {
        "value": "bilinear",
        "source": "command line",
    }
    assert record["views"]["interpolation"]["value"] == "bicubic"  # SimCLR's views, unchanged
    probe = [*TINY, "--ckpt", os.path.join(run["out"]["ckpt_dir"], "last.pt"), "--interpolation"]
    with pytest.raises(UserError, match="--eval_interpolation: pass that instead"):
        main_linear.main(main_linear.get_args_parser().parse_args([*probe, "bilinear"]))


def test_resume_refuses_a_setting_whose_resolved_value_changed(run, tmp_path):
    """A checkpoint whose record holds another resolved value than this code resolves (a
    method default changed since, here SimCLR's nt_xent_scale) is refused, naming the flag."""
    state = load_checkpoint(os.path.join(run["out"]["ckpt_dir"], "last.pt"))
    state["config"]["method"]["nt_xent_scale"]["value"] = 1.0
    state["epoch"], state["step"] = 0, 1  # not finished: something to continue
    path = tmp_path / "ckpts" / "old" / "last.pt"
    save_checkpoint(state, str(path))
    argv = [*run["argv"][:-6], "--logs_dir", str(tmp_path / "logs"), "--ckpt_dir"]
    argv += [str(tmp_path / "ckpts"), "--run_name", "old", "--resume", "auto"]
    with pytest.raises(UserError, match="--nt_xent_scale 1.0 there, 2.0 here"):
        main.main(parse_with_config(main.get_args_parser(), argv))
    assert not os.path.exists(tmp_path / "logs")


def test_every_methods_record_has_no_null(tmp_path):
    """Each method's resolved hyper-parameters, on a CNN and on a ViT: none left None."""
    from methods import METHODS, build_method, resolved_hparams
    from networks import build_backbone
    from tests.conftest import backbone_for

    narrow = {"proj_hidden_dim": 32, "proj_dim": 32}
    smaller = {"barlowtwins": narrow, "vicreg": narrow, "dino": {"out_dim": 32}}
    smaller |= {"swav": {"num_prototypes": 8}, "mocov2": {"queue_size": 64}}
    smaller |= {"nnclr": {"queue_size": 64}}
    for name in sorted(METHODS):
        for backbone, size in {backbone_for(name), ("vit_tiny", 32)}:  # a CNN where it takes one
            small = smaller.get(name, {})
            model = build_method(name, *build_backbone(backbone, size), **small)
            found = resolved_hparams(model, small)
            assert all(v is not None for v, _ in found.values()), (name, backbone, found)
            assert {k for k, (_, given) in found.items() if given} == set(small)
