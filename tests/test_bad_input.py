"""Bad input, as a new user types it: every case ends with exit code 2 and one line on stderr (no
traceback), and leaves no file or folder behind under the output folders, so that the corrected
command runs under the same --run_name. In-process (`run_cli`, as the command line runs it)."""

import os
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image
from test_errors import TINY  # the tiny SimCLR run of the error tests

import main
import main_linear
from utils.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from utils.misc import run_cli

pytestmark = pytest.mark.full  # whole runs: the full suite only (conftest --fast)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny pretraining checkpoint, forged variants of it, and image folders of bad shapes."""
    root = tmp_path_factory.mktemp("inputs")
    argv = [*TINY, "--logs_dir", str(root / "logs"), "--ckpt_dir", str(root / "ckpts")]
    out = main.main(main.get_args_parser().parse_args([*argv, "--run_name", "ok"]))
    good = os.path.join(out["ckpt_dir"], "last.pt")
    state = load_checkpoint(good)
    paths = {"good": good, "root": str(root)}
    forged = {
        "barlow": {**state, "args": {**state["args"], "model_name": "barlowtwins"}},
        "linear": {**state, "kind": "linear"},
        "size24": {**state, "args": {**state["args"], "image_size": 24}},
    }
    for name, content in forged.items():
        paths[name] = str(root / f"{name}.pt")
        save_checkpoint(content, paths[name])
    paths["newer"] = str(root / "newer.pt")
    torch.save({**state, "format_version": FORMAT_VERSION + 1}, paths["newer"])
    paths["older"] = str(root / "older.pt")
    torch.save({**state, "format_version": FORMAT_VERSION - 1}, paths["older"])
    paths["truncated"] = str(root / "truncated.pt")
    with open(good, "rb") as f:
        open(paths["truncated"], "wb").write(f.read()[:2000])
    paths["text"] = str(root / "notes.txt")
    open(paths["text"], "w").write("epoch 10: loss 3.2\n")
    paths["empty_file"] = str(root / "empty.pt")
    open(paths["empty_file"], "w").close()
    paths["no_rng"] = str(root / "no_rng.pt")
    save_checkpoint({k: v for k, v in state.items() if k != "rng"}, paths["no_rng"])
    paths["binary"] = str(root / "binary.args")
    open(paths["binary"], "wb").write(bytes(range(256)))
    for name, other in (("a", "b"), ("b", "a")):  # recipes that include each other
        paths[f"cycle_{name}"] = str(root / f"{name}.args")
        open(paths[f"cycle_{name}"], "w").write(f"--config {other}.args\n--base_lr 0.1\n")

    def image(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)

    for i in range(4):
        image(str(root / "flat" / f"{i}.png"))  # images, no train/ folder
        image(str(root / "noclass" / "train" / f"{i}.png"))  # train/ without class folders
        image(str(root / "notest" / "train" / "cat" / f"{i}.png"))  # no test/ split
    os.makedirs(root / "nodata")
    os.makedirs(root / "emptytrain" / "train" / "cat")
    open(root / "a_file", "w").close()
    return paths


def cases(files) -> dict[str, tuple[object, list[str], str]]:
    """Each case: (entry point, its flags, a word the error line must contain)."""
    r = files["root"]
    folder = lambda name: ["--dataset_name", "imagefolder", "--data_dir", os.path.join(r, name)]
    pre, lin = main, main_linear
    under_a_file, good, rand = os.path.join(r, "a_file", "x"), files["good"], "--random_init"
    table = {
        # typos and impossible values, refused by the parser
        "typo_in_value": (pre, ["--backbone=resnet18--batch_size=512"], "invalid choice"),
        "unknown_method": (pre, ["--model_name", "simclrr"], "invalid choice"),
        "unknown_optimizer": (pre, ["--optimizer", "rmsprop"], "invalid choice"),
        "zero_batch": (pre, ["--batch_size", "0"], "positive integer"),
        "negative_lr": (pre, ["--base_lr", "-1"], ">= 0"),
        "zero_epochs": (pre, ["--num_epochs", "0"], "positive integer"),
        "nan_lr": (pre, ["--base_lr", "nan"], ">= 0"),
        "bool_typo": (pre, ["--in_memory", "maybe"], "boolean"),
        "negative_seed": (pre, ["--seed", "-1"], "0 to 2^32 - 1"),
        "seed_beyond_2_32": (pre, ["--seed", str(2**32)], "0 to 2^32 - 1"),
        "knn_temperature_zero": (pre, ["--knn_temperature", "0"], "> 0"),
        "knn_temperature_nan": (lin, [rand, "--knn_temperature", "nan"], "> 0"),
        "knn_temperature_negative": (pre, ["--knn_temperature", "-0.1"], "> 0"),
        "billion_epochs": (pre, ["--num_epochs", "1000000000"], "lower --num_epochs"),
        "batch_of_one": (pre, ["--batch_size", "1"], "2 or more"),
        "limit_of_one": (pre, ["--limit", "1"], "2 or more"),
        "finetune_batch_of_one": (lin, [rand, "--finetune", "--batch_size", "1"], "2 or more"),
        # recipes
        "binary_config": (pre, ["--config", files["binary"]], "not a text file of flags"),
        "recipes_in_a_cycle": (pre, ["--config", files["cycle_a"]], "include each other"),
        # run names that would leave --logs_dir and --ckpt_dir
        "run_name_up": (pre, ["--run_name", "../../x"], "plain folder name"),
        "run_name_absolute": (pre, ["--run_name", os.path.join(r, "x")], "plain folder name"),
        "run_name_hidden": (pre, ["--run_name", ".x"], "plain folder name"),
        "linear_run_name_up": (lin, [rand, "--run_name", "../x"], "plain folder name"),
        "meta_device": (pre, ["--device", "meta"], "not a device to train on"),
        # flags the method does not take
        "foreign_flag": (pre, ["--model_name", "barlowtwins", "--temperature", "0.3"], "lambd"),
        "foreign_view_flag": (pre, ["--num_crops", "4"], "--num_crops"),
        # data
        "no_train_folder": (pre, folder("nodata"), "train"),
        "flat_folder": (pre, folder("flat"), "train"),
        "train_without_classes": (pre, folder("noclass"), "class"),
        "empty_train_class": (pre, folder("emptytrain"), "no images in"),
        "knn_without_test": (pre, [*folder("notest"), "--knn_freq", "1"], "test"),
        "batch_larger_than_data": (pre, [*folder("notest"), "--limit", "0"], "positive integer"),
        # sizes and devices
        "image_too_small": (pre, ["--image_size", "7"], "smallest that works is 8"),
        "fp16_on_cpu": (pre, ["--amp", "fp16"], "--amp fp16 needs a CUDA device"),
        "bad_device": (pre, ["--device", "tpu0"], "--device"),
        # output folders
        "logs_dir_under_a_file": (pre, ["--logs_dir", under_a_file], "--logs_dir"),
        "ckpt_dir_under_a_file": (pre, ["--ckpt_dir", under_a_file], "--ckpt_dir"),
        "logs_dir_not_writable": (pre, ["--logs_dir", "/proc/x"], "/proc/x"),
        "run_name_clash": (pre, ["--run_name", "ok"], "already exists"),
        # checkpoints given to --resume
        "resume_missing": (pre, ["--resume", os.path.join(r, "none.pt")], "not found"),
        "resume_other_method": (pre, ["--resume", files["barlow"]], "model_name"),
        "resume_truncated": (pre, ["--resume", files["truncated"]], "truncated"),
        "resume_text_file": (pre, ["--resume", files["text"]], "a text file"),
        "resume_without_rng": (pre, ["--resume", files["no_rng"]], "(no rng)"),
        "resume_a_probe": (pre, ["--resume", files["linear"]], "linear probe's checkpoint"),
        # a resume must keep every setting that shapes the training
        "resume_other_batch": (pre, ["--resume", good, "--batch_size", "16"],
                               "--batch_size 32 there, 16 here"),
        "resume_other_lr_and_seed": (pre, ["--resume", good, "--base_lr", "0.5", "--seed", "9"],
                                     "--base_lr 1.0 there, 0.5 here; --seed 123 there, 9 here"),
        "resume_other_size": (pre, ["--resume", good, "--image_size", "24"], "--image_size 16"),
        # checkpoints given to main_linear.py
        "ckpt_text_file": (lin, ["--ckpt", files["text"]], "a text file"),
        "ckpt_empty_file": (lin, ["--ckpt", files["empty_file"]], "an empty file"),
        "ckpt_missing": (lin, ["--ckpt", os.path.join(r, "none.pt")], "not found"),
        "ckpt_truncated": (lin, ["--ckpt", files["truncated"]], "truncated"),
        "ckpt_too_new": (lin, ["--ckpt", files["newer"]], "newer than this code"),
        "ckpt_too_old": (lin, ["--ckpt", files["older"]], "older than this code's 3, which"),
        "ckpt_other_method": (lin, ["--ckpt", files["barlow"]], "--model_name barlowtwins"),
        "ckpt_other_backbone": (lin, ["--ckpt", good, "--backbone", "resnet18"], "small_cnn"),
        "ckpt_other_image_size": (lin, ["--ckpt", files["size24"]], "--image_size 24"),
        "ckpt_of_a_probe": (lin, ["--ckpt", files["linear"]], "linear probe's checkpoint"),
        "no_checkpoint_found": (lin, ["--ckpt_dir", os.path.join(r, "nodata")], "no pretraining"),
        "momentum_of_simclr": (lin, ["--ckpt", good, "--momentum_backbone"], "momentum"),
        "random_init_and_ckpt": (lin, [rand, "--ckpt", good], "drop one"),
        # combinations main_linear.py cannot do
        "linear_gpu_augment": (lin, [rand, "--gpu_augment"], "pretraining option"),
        "linear_compile": (lin, [rand, "--compile"], "pretraining option"),
        "linear_method_flag": (lin, [rand, "--temperature", "0.3"], "--temperature"),
        "finetune_precomputed": (lin, [rand, "--finetune", "--precompute_features"], "drop"),
        "backbone_lr_alone": (lin, [rand, "--backbone_lr", "0.1"], "--finetune"),
        "zero_data_fraction": (lin, [rand, "--data_fraction", "0"], "fraction"),
        "linear_image_too_small": (lin, [rand, "--image_size", "7"], "smallest that works"),
        # a grid of 4x4 patches: no room for I-JEPA's target blocks (refused before the run)
        "ijepa_grid_too_small": (pre, ["--model_name", "ijepa", "--backbone", "vit_tiny",
                                       "--image_size", "16"], "--image_size"),
    }  # fmt: skip
    return table


# the case names, from the table itself (paths are not needed to list them)
CASES = list(cases(defaultdict(str)))


def tree(root: str) -> set[str]:
    return {os.path.join(d, n) for d, dirs, names in os.walk(root) for n in dirs + names}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_behind(case, files, capsys):
    entry, flags, needle = cases(files)[case]
    outputs = ["--logs_dir", os.path.join(files["root"], "logs")]
    outputs += ["--ckpt_dir", os.path.join(files["root"], "ckpts")]
    before = tree(files["root"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        # flags given later win: the case's own output folders replace the shared ones
        run_cli(entry.main, entry.get_args_parser(), [*TINY, *outputs, *flags])
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert tree(files["root"]) == before, sorted(tree(files["root"]) - before)


def test_a_failed_start_can_be_run_again_under_the_same_run_name(tmp_path):
    """The data is fixed after a failed start: the same command with the same --run_name runs,
    and so does one whose folders a failed start of an older version left empty."""
    data = tmp_path / "data"
    argv = [*TINY, "--dataset_name", "imagefolder", "--data_dir", str(data), "--limit", "8"]
    argv += ["--batch_size", "4", "--logs_dir", str(tmp_path / "logs")]
    argv += ["--ckpt_dir", str(tmp_path / "ckpts"), "--run_name", "mine"]
    with pytest.raises(SystemExit):
        run_cli(main.main, main.get_args_parser(), argv)
    assert not (tmp_path / "logs").exists() and not (tmp_path / "ckpts").exists()
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            os.makedirs(data / split / cls)
            for i in range(4):
                pixels = np.full((8, 8, 3), 60 * i, dtype=np.uint8)
                Image.fromarray(pixels).save(data / split / cls / f"{i}.png")
    run_cli(main.main, main.get_args_parser(), [*argv, "--image_size", "8"])
    assert (tmp_path / "ckpts" / "mine" / "last.pt").exists()
    os.makedirs(tmp_path / "logs" / "empty")  # left by an older version's failed start
    os.makedirs(tmp_path / "ckpts" / "empty")
    run_cli(main.main, main.get_args_parser(), [*argv, "--image_size", "8", "--run_name", "empty"])
    assert (tmp_path / "ckpts" / "empty" / "last.pt").exists()


def test_more_loader_workers_than_cores_is_said_once(capsys):
    from utils.accel import Speed
    from utils.run import Run, make_loader, start_process

    args = main.get_args_parser().parse_args([*TINY, "--num_workers", "64"])
    start_process(Run.of(args), Speed.of(args))
    cores = len(os.sched_getaffinity(0))
    out = capsys.readouterr().out
    assert out.count("--num_workers 64") == 1 and f"using {cores}" in out
    loader = make_loader(list(range(8)), torch.device("cpu"), False, 4, args.seed, args.num_workers)
    assert loader.num_workers == cores
