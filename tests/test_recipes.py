"""Each method's own training recipe (methods/recipe.py): the regimes it declares against a table
read off the official codes (docs/fidelity.md's block lists each value beside its source), a
source for every value, the flags left unset filled from it and recorded so, the command line and
recipe files over it, and a resumed run's own values over today's recipe."""

import json
import os
import subprocess
import sys

import pytest

import main
from config import with_recipe
from flags.method_help import view_defaults
from methods import METHODS, Method, method_options
from methods.recipe import RECIPE_FLAGS, Recipe, training_recipe
from optimizers import OPTIMIZERS
from scripts import recipes_table
from utils.misc import UserError, parse_with_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (method, image size, ViT) -> optimizer, base lr, lr scaling, weight decay (start, end),
# biases and norms excluded, warmup epochs, batch, epochs: read off the official files (the
# CIFAR-size rows: the official CIFAR command where there is one, else solo-learn's configs)
EXPECTED = {
    ("barlowtwins", 32, False): ("larc", 0.3, "linear", 1e-4, None, True, 10, 256, 1000),
    ("barlowtwins", 224, False): ("lars", 0.2, "linear", 1e-6, None, True, 10, 2048, 1000),
    ("byol", 32, False): ("larc", 1.0, "linear", 1e-5, None, True, 10, 256, 1000),
    ("byol", 224, False): ("lars", 0.2, "linear", 1.5e-6, None, True, 10, 4096, 1000),
    ("dino", 32, False): ("larc", 0.3, "linear", 1e-6, None, True, 10, 256, 1000),
    ("dino", 224, False): ("sgd", 0.03, "linear", 1e-4, None, True, 10, 512, 100),
    ("dino", 224, True): ("adamw", 5e-4, "linear", 0.04, 0.4, True, 10, 1024, 100),
    ("ijepa", 32, True): ("adamw", 1e-3, "none", 0.04, 0.4, True, 40, 2048, 300),
    ("ijepa", 224, True): ("adamw", 1e-3, "none", 0.04, 0.4, True, 40, 2048, 300),
    ("mae", 32, True): ("adamw", 2e-4, "linear", 0.05, None, False, 10, 256, 1000),
    ("mae", 224, True): ("adamw", 1.5e-4, "linear", 0.05, None, True, 40, 4096, 800),
    ("mocov2", 32, False): ("sgd", 0.3, "linear", 1e-4, None, False, 10, 256, 1000),
    ("mocov2", 224, False): ("sgd", 0.03, "none", 1e-4, None, False, 0, 256, 200),
    ("mocov3", 32, False): ("larc", 0.3, "linear", 1e-6, None, True, 10, 256, 1000),
    ("mocov3", 224, False): ("lars", 0.6, "linear", 1e-6, None, True, 10, 4096, 100),
    ("mocov3", 224, True): ("adamw", 1.5e-4, "linear", 0.1, None, False, 40, 4096, 300),
    ("nnclr", 32, False): ("larc", 0.4, "linear", 1e-5, None, True, 10, 256, 1000),
    ("nnclr", 224, False): ("larc", 0.4, "linear", 1e-5, None, True, 10, 256, 400),
    ("simclr", 32, False): ("lars_simclr", 1.0, "linear", 1e-4, None, True, 10, 512, 1000),
    ("simclr", 224, False): ("lars_simclr", 1.2, "sqrt", 1e-4, None, True, 10, 4096, 100),
    ("simsiam", 32, False): ("sgd", 0.03, "linear", 5e-4, None, False, 10, 512, 800),
    ("simsiam", 224, False): ("sgd", 0.05, "linear", 1e-4, None, False, 0, 512, 100),
    ("supcon", 32, False): ("sgd", 0.5, "none", 1e-4, None, False, 10, 1024, 1000),
    ("supcon", 224, False): ("sgd", 0.5, "none", 1e-4, None, False, 10, 1024, 1000),
    ("swav", 32, False): ("larc", 0.6, "linear", 1e-6, None, True, 10, 256, 1000),
    ("swav", 224, False): ("larc", 4.8, "none", 1e-6, None, False, 10, 4096, 800),
    ("vicreg", 32, False): ("larc", 0.3, "linear", 1e-4, None, True, 10, 256, 1000),
    ("vicreg", 224, False): ("lars", 0.2, "linear", 1e-6, None, True, 10, 2048, 1000),
}
KEYS = ("optimizer", "base_lr", "lr_scaling", "weight_decay", "final_weight_decay")
KEYS += ("exclude_bias_and_norm", "warmup_epochs", "batch_size", "num_epochs")
# the regimes' settings beyond the training values: the views and hyper-parameters that differ
SETTINGS = {
    ("simclr", 224, False): {"temperature": 0.1, "jitter_strength": 1.0},
    ("swav", 224, False): {"larc_trust_coefficient": 0.001, "larc_clip": False, "warmup_lr": 0.3,
                           "final_lr": 0.0048},
    ("mae", 224, True): {"betas": (0.9, 0.95)},
    ("ijepa", 224, True): {"warmup_lr": 2e-4, "final_lr": 1e-6},
    ("barlowtwins", 224, False): {"final_lr": 2e-4},
    ("mocov3", 224, False): {"crop_min_scale": 0.2},
    ("dino", 224, False): {"crop_min_scale": 0.14},
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}px-vit{int(k[2])}")
def test_each_method_declares_its_official_recipe(key):
    method, size, vit = key
    recipe = training_recipe(METHODS[method], size, vit)
    values = recipe.values()
    assert tuple(values[k] for k in KEYS) == EXPECTED[key]
    for name, value in SETTINGS.get(key, {}).items():
        assert values[name] == value, name


def test_every_regime_of_every_method_is_declared_and_sourced():
    for method, cls in METHODS.items():
        families = [True] if cls.requires_vit else [False, True]
        for size in (32, 224):
            for vit in families:
                assert training_recipe(cls, size, vit) is not None, (method, size, vit)
        takes = method_options(method) | set(view_defaults(method))
        for recipe in cls.recipes:
            unsourced = [k for k in recipe.values() if recipe.source_of(k) is None]
            assert not unsourced, (method, recipe.regime(), unsourced)
            assert set(recipe.settings) <= takes, (method, set(recipe.settings) - takes)
            for preset in recipe.presets.values():  # by the schedule's length: sourced, taken
                assert recipe.preset_source and set(preset) <= takes | set(RECIPE_FLAGS), method
            assert recipe.optimizer in OPTIMIZERS and recipe.lr_scaling in {
                "linear", "sqrt", "none"
            }  # fmt: skip


def resolved(*argv: str):
    parser = main.get_args_parser()
    args = parse_with_config(parser, list(argv))
    flags = main.flag_sources(main.get_args_parser(), args)
    return (*with_recipe(args, flags), flags["sources"])


def test_unset_flags_take_the_recipe_and_given_ones_win(tmp_path):
    args, recipe, sources = resolved("--model_name", "byol", "--image_size", "224")
    assert (args.optimizer, args.base_lr, args.batch_size) == ("lars", 0.2, 4096)
    assert sources["optimizer"].startswith("method recipe: ") and "byol" in recipe.source
    assert sources["betas"] == "toolkit default"  # lars reads no betas: the dataclass's
    file = tmp_path / "r.args"
    file.write_text("--base_lr 0.3 --batch_size 256\n")
    args, _, sources = resolved("--model_name", "byol", "--config", str(file), "--base_lr", "0.4")
    assert (args.base_lr, args.batch_size, args.optimizer) == (0.4, 256, "larc")
    assert sources["base_lr"] == "command line"
    assert sources["batch_size"] == f"recipe file {file}"
    # the regime's hyper-parameters too, unless given
    args, _, _ = resolved("--model_name", "simclr", "--image_size", "224")
    assert (args.temperature, args.jitter_strength) == (0.1, 1.0)
    args, _, _ = resolved("--model_name", "simclr", "--image_size", "224", "--temperature", "0.2")
    assert args.temperature == 0.2
    # given under another name (DINO's --num_prototypes for --out_dim): the recipe leaves it
    args, _, _ = resolved("--model_name", "dino", "--num_prototypes", "64")
    assert (args.num_prototypes, args.out_dim) == (64, None)


def test_byols_lr_decay_and_ema_follow_the_schedules_length_as_its_presets():
    """configs/byol.py sets lr, weight decay and EMA base by the number of epochs (40, 100, 300,
    1000); between them, the longest preset not longer than the run; a given flag wins."""
    expected = {40: (0.45, 1e-6, 0.97), 100: (0.45, 1e-6, 0.99), 200: (0.45, 1e-6, 0.99),
                300: (0.3, 1e-6, 0.99), 999: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996),
                20: (0.45, 1e-6, 0.97)}  # fmt: skip
    for epochs, values in expected.items():
        argv = ["--model_name", "byol", "--image_size", "224", "--num_epochs", str(epochs)]
        args, _, sources = resolved(*argv)
        assert (args.base_lr, args.weight_decay, args.ema_momentum) == values, epochs
        assert "preset" in sources["ema_momentum"] and "configs/byol.py" in sources["base_lr"]
    args, _, _ = resolved("--model_name", "byol", "--image_size", "224", "--ema_momentum", "0.9")
    assert (args.ema_momentum, args.base_lr) == (0.9, 0.2)  # 1000 epochs, the recipe's
    args, _, _ = resolved("--model_name", "byol", "--num_epochs", "100")  # CIFAR: no presets
    assert (args.ema_momentum, args.base_lr) == (0.99, 1.0)


def test_a_resumed_run_keeps_its_own_values_over_todays_recipe():
    args = main.get_args_parser().parse_args(["--model_name", "swav"])
    saved = {**vars(args), "optimizer": "sgd", "base_lr": 0.1, "queue_size": None}
    resumed, _ = with_recipe(args, {"sources": {}}, {"args": saved})
    assert (resumed.optimizer, resumed.base_lr) == ("sgd", 0.1)
    assert resumed.queue_size is None  # unset when it ran: the method's own default then
    assert resumed.weight_decay == 1e-6  # a value the checkpoint lacks: the recipe's


def test_a_method_without_a_recipe_for_the_run_needs_the_training_flags():
    class NoRecipe(Method):
        recipes = (Recipe("x", {}, "sgd", 0.1, 8, 1, 0.0, images="small"),)

    assert training_recipe(NoRecipe, 224, False) is None
    METHODS["norecipe"] = NoRecipe
    try:
        args = main.get_args_parser().parse_args(["--image_size", "224"])
        args.model_name = "norecipe"
        with pytest.raises(UserError, match="declares no training recipe .* give --optimizer"):
            with_recipe(args, {"sources": {}})
    finally:
        METHODS.pop("norecipe")


@pytest.mark.full
def test_print_config_shows_the_recipe_at_cifar_and_imagenet_sizes(tmp_path):
    """The command a user types: --print_config of a method at 32 and 224 px, nothing written."""
    printed = {}
    for size in ("32", "224"):
        argv = ["--model_name", "simclr", "--dataset_name", "synthetic", "--image_size", size,
                "--limit", "64", "--device", "cpu", "--num_workers", "0",
                "--logs_dir", str(tmp_path / "l"), "--ckpt_dir", str(tmp_path / "c")]  # fmt: skip
        out = subprocess.run([sys.executable, "main.py", *argv, "--print_config"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        printed[size] = json.loads(out)
    small, large = printed["32"]["optimization"], printed["224"]["optimization"]
    assert small["optimizer"]["value"] == large["optimizer"]["value"] == "lars_simclr"
    assert (small["lr_scaling"]["value"], large["lr_scaling"]["value"]) == ("linear", "sqrt")
    assert large["base_lr"]["source"].startswith("method recipe: ")
    assert (
        "README" in small["training_recipe"]["value"]
        and "images <= 64 px" in small["training_recipe"]["value"]
    )
    assert printed["224"]["method"]["temperature"]["value"] == 0.1
    groups = {g["name"]: g["weight_decay"] for g in small["param_groups"]["value"]}
    assert groups["weight_decay=0.0"] == 0.0  # biases and norms: no decay
    assert not os.path.exists(tmp_path / "l") and not os.path.exists(tmp_path / "c")


def test_fidelity_page_lists_the_declared_recipes():
    with open(os.path.join(ROOT, "docs", "fidelity.md")) as f:
        text = f.read()
    block = text.split("<!-- recipes:begin -->\n")[1].split("\n<!-- recipes:end -->")[0]
    assert block == recipes_table.table(), "run: python scripts/recipes_table.py --readme " + (
        "docs/fidelity.md"
    )
