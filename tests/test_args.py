"""Flags: the defaults, the original commands parse as written, bad values fail in a line."""

import os
import shlex
import subprocess
import sys

import pytest

import main
import main_linear
from config import with_recipe
from methods import METHODS
from tests.conftest import ROOT

# the scripts call `python`: this interpreter's (its virtual environment's) first on PATH
SCRIPT_ENV = {
    **os.environ,
    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
}

ORIGINAL_COMMANDS = [
    "python main.py --model_name=simclr --backbone=resnet18 --batch_size=512 --optimizer=lars_simclr "  # noqa: E501
    "--weight_decay=0.0001 --momentum=0.9 --warmup_epochs=10 --warmup_lr=0 --base_lr=1.0 "
    "--final_lr=0 --num_epochs=1000",
    "python main.py --model_name=simsiam --backbone=resnet18 --batch_size=512 --optimizer=sgd "
    "--weight_decay=0.0005 --momentum=0.9 --warmup_epochs=10 --warmup_lr=0 --base_lr=0.03 "
    "--final_lr=0 --num_epochs=800",
    "python main_linear.py --model_name=simsiam --backbone=resnet18 --batch_size=256 "
    "--optimizer=sgd --weight_decay=0 --momentum=0.9 --warmup_epochs=0 --base_lr=30 --final_lr=0 "
    "--num_epochs=100",
    "python main_linear.py --model_name=simsiam --backbone=resnet18 --batch_size=256 "
    "--optimizer=lars --weight_decay=0 --momentum=0.9 --warmup_epochs=0 --base_lr=0.02 "
    "--final_lr=0 --num_epochs=100",
]


def parse(command: str):
    words = shlex.split(command)
    module = main if words[1] == "main.py" else main_linear
    return module.get_args_parser().parse_args(words[2:])


def test_main_defaults_follow_design():
    """The flags left unset: the default method's recipe (SimSiam's on CIFAR)."""
    args, _ = with_recipe(main.get_args_parser().parse_args([]), {"sources": {}})
    expected = dict(
        debug=False,
        data_dir="./data/",
        ckpt_dir="./ckpts/",
        logs_dir="./logs/",
        device="cuda",
        seed=123,
        model_name="simsiam",
        backbone="resnet18",
        save_freq=10,
        dataset_name="cifar10",
        image_size=32,
        batch_size=512,
        num_workers=4,
        weight_decay=5e-4,
        momentum=0.9,
        warmup_epochs=10,
        warmup_lr=0.0,
        base_lr=0.03,
        final_lr=0.0,
        num_epochs=800,
        run_name=None,
        limit=None,
        download=False,
        resume=None,
    )
    assert {k: getattr(args, k) for k in expected} == expected


def test_linear_defaults_follow_design():
    args = main_linear.get_args_parser().parse_args([])
    assert (args.batch_size, args.base_lr, args.num_epochs) == (256, 30.0, 100)
    assert args.num_classes is None and args.ckpt is None and args.eval == "linear"


@pytest.mark.parametrize("command", ORIGINAL_COMMANDS)
def test_design_commands_parse(command):
    args = parse(command)
    assert args.backbone == "resnet18"
    assert args.optimizer in {"lars_simclr", "sgd", "lars"}
    assert args.warmup_lr == 0 and args.final_lr == 0


def test_design_command_values():
    args = parse(ORIGINAL_COMMANDS[0])
    assert (args.model_name, args.optimizer, args.batch_size) == ("simclr", "lars_simclr", 512)
    assert (args.weight_decay, args.base_lr, args.num_epochs) == (1e-4, 1.0, 1000)


def test_resume_flag_forms():
    parser = main.get_args_parser()
    assert parser.parse_args(["--resume"]).resume == "auto"
    assert parser.parse_args(["--resume", "x/last.pt"]).resume == "x/last.pt"


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--backbone=resnet18--batch_size=512"], "argument --backbone: invalid choice"),
        (["--num_epochs=-3"], "argument --num_epochs"),
        (["--batch_size=0"], "argument --batch_size"),
        (["--optimizer=lamb"], "argument --optimizer: invalid choice"),
        (["--lr_scaling=cubic"], "argument --lr_scaling: invalid choice"),
    ],
)
@pytest.mark.full  # a subprocess per case
def test_bad_flag_is_one_line_exit_2(flags, needle):
    proc = subprocess.run(
        [sys.executable, "main.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    if "invalid choice" in needle:
        assert "resnet18" in lines[0] or "sgd" in lines[0] or "linear" in lines[0]


def recipe_args(parser, *words):
    from utils.misc import parse_with_config

    return parse_with_config(parser, list(words))


@pytest.mark.parametrize("script", ["synthetic", "cifar10"])
def test_short_recipes_parse_and_build(script):
    """recipes/short/ (the README tables' runs): each method's file after its script's shared
    one parses with main.py's parser, gives only flags of that method (none refused) and builds
    it; the shared probe recipe parses with main_linear.py's; the slow starters get a
    whole-number multiple of the script's epochs."""
    from methods import METHODS, build_method
    from networks import build_backbone

    shared = f"recipes/short/{script}.args"
    for method in METHODS:
        path = os.path.join(ROOT, "recipes", "short", f"{method}.args")
        args = recipe_args(main.get_args_parser(), "--config", os.path.join(ROOT, shared),
                           "--config", path, "--model_name", method)  # fmt: skip
        assert args.model_name == method
        main.check_method_flags(args)
        build_method(method, *build_backbone(args.backbone, args.image_size), **vars(args))
    linear = os.path.join(ROOT, "recipes", "short", f"{script}_linear.args")
    main_linear.check_args(recipe_args(main_linear.get_args_parser(), "--config", linear))
    listing = subprocess.run(
        ["bash", "-c", 'source scripts/short_recipes.sh; for m in "${!EPOCH_FACTOR[@]}"; do '
         'echo "$m ${EPOCH_FACTOR[$m]}"; done'],
        cwd=ROOT, capture_output=True, text=True, check=True, env=SCRIPT_ENV,
    ).stdout.split()  # fmt: skip
    factors = dict(zip(listing[::2], map(int, listing[1::2]), strict=True))
    assert {m for m, f in factors.items() if f > 1} == {"byol", "swav", "dino"}
    assert factors == {m: cls.slow_start for m, cls in METHODS.items()}  # their declarations


def test_reference_recipes_are_flags_of_their_methods(tmp_path):
    """recipes/cifar10/ through scripts/cifar10_reference.sh (DRY_RUN=1 prints its commands):
    every pretraining command parses, names its own method's recipe and passes no flag that
    method does not take; the probe's recipe parses with main_linear.py's flags."""
    out = subprocess.run(
        ["bash", "scripts/cifar10_reference.sh", str(tmp_path / "ref")],
        cwd=ROOT,
        env={**SCRIPT_ENV, "DRY_RUN": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    methods = set()
    for line in out.splitlines():
        words = shlex.split(line)
        if "main.py" in words:
            args = recipe_args(main.get_args_parser(), *words[words.index("main.py") + 1 :])
            assert args.config == [f"recipes/cifar10/{args.model_name}.args"]
            main.check_method_flags(args)
            methods.add(args.model_name)
        elif "main_linear.py" in words:
            main_linear.check_args(
                recipe_args(
                    main_linear.get_args_parser(), *words[words.index("main_linear.py") + 1 :]
                )
            )
    assert len(methods) == len(METHODS)


def test_a_recipe_sets_defaults_and_the_command_line_wins(tmp_path):
    recipe = tmp_path / "r.args"
    recipe.write_text("# a comment\n--model_name simclr --temperature 0.3  # why\n--num_epochs 3\n")
    args = recipe_args(main.get_args_parser(), "--config", str(recipe), "--num_epochs", "5")
    assert (args.model_name, args.temperature, args.num_epochs) == ("simclr", 0.3, 5)
    assert args.config == [str(recipe)]
    later = tmp_path / "later.args"
    later.write_text("--temperature 0.4\n")
    args = recipe_args(main.get_args_parser(), "--config", str(recipe), "--config", str(later))
    assert args.temperature == 0.4  # a later file wins


def test_a_recipe_includes_another_applied_first(tmp_path):
    """`--config base.args` inside a recipe applies base first (beside the including file), so
    the including recipe's own flags win, then the command line's; args.config lists both."""
    (tmp_path / "base.args").write_text("--num_epochs 3\n--temperature 0.3\n--seed 5\n")
    recipe = tmp_path / "r.args"
    recipe.write_text("--config base.args\n--model_name simclr --temperature 0.4\n")
    args = recipe_args(main.get_args_parser(), "--config", str(recipe), "--seed", "6")
    assert (args.model_name, args.temperature, args.num_epochs, args.seed) == (
        "simclr", 0.4, 3, 6,
    )  # fmt: skip
    assert args.config == [str(tmp_path / "base.args"), str(recipe)]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("--bogus 1", "unrecognized arguments: --bogus"),
        ("--num_epochs x", "invalid positive_int value"),
        (None, "cannot read it"),
    ],
)
@pytest.mark.full  # a subprocess per case
def test_a_bad_recipe_is_one_line_naming_the_file(tmp_path, text, needle):
    recipe = tmp_path / "bad.args"
    if text is not None:
        recipe.write_text(text + "\n")
    proc = subprocess.run(
        [sys.executable, "main.py", "--config", str(recipe)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"--config {recipe}" in lines[0] and needle in lines[0]
