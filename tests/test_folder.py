"""`--dataset_name folder`: every image under a folder, without labels (utils.data.ImageFiles),
its cached listing (utils.folder), and pretraining on it through main.py."""

import csv
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

import main
import main_linear
from utils import folder
from utils.data import NO_LABEL, ImageFiles, InMemory, build_dataset
from utils.misc import UserError, run_cli


def make_photos(root, count: int = 12) -> list[str]:
    """`count` images of several sizes and modes (RGB, greyscale, RGBA, palette, CMYK JPEG) in
    nested folders, plus a truncated JPEG, a text file and a hidden image; their paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        sub = ["", "a", os.path.join("a", "b")][i % 3]
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        h, w = rng.integers(20, 60, 2)
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mode, ext = [("RGB", "png"), ("L", "jpg"), ("RGBA", "png"), ("P", "PNG"), ("CMYK", "jpeg")][
            i % 5
        ]
        path = os.path.join(root, sub, f"img{i:02d}.{ext}")
        image.convert(mode).save(path)
        paths.append(path)
    with open(os.path.join(root, "a", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + b"\x00" * 64)  # a JPEG header, then nothing
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not an image")
    Image.new("RGB", (8, 8)).save(os.path.join(root, ".hidden.png"))
    return paths


def test_every_image_under_the_folder_in_rgb_without_labels(tmp_path, capsys):
    paths = make_photos(tmp_path / "photos")
    files = ImageFiles(str(tmp_path / "photos"), T.Compose([T.Resize((8, 8)), T.ToTensor()]))
    broken = str(tmp_path / "photos" / "a" / "broken.jpg")
    assert sorted(files.samples) == sorted(paths + [broken])  # no text file, no hidden file
    assert files.targets == [NO_LABEL] * len(files.samples)
    items = [files[i] for i in range(len(files))]
    assert all(x.shape == (3, 8, 8) and label == NO_LABEL for x, label in items)
    err = capsys.readouterr().err
    assert f"skipping unreadable image {broken}" in err and "1 skipped so far" in err
    assert files.unreadable == {broken}


def test_the_listing_is_cached_and_refreshed_when_a_folder_changes(tmp_path, monkeypatch, capsys):
    root = tmp_path / "photos"
    make_photos(root)
    first = ImageFiles(str(root))
    cache = root / folder.CACHE_FOLDER / "images.json"
    assert cache.is_file() and "cached in" in capsys.readouterr().out

    def no_walk(path):
        raise AssertionError("walked although the cache was valid")

    with monkeypatch.context() as patch:
        patch.setattr(folder, "walk_images", no_walk)
        again = ImageFiles(str(root))
    assert again.samples == first.samples and "from the cache" in capsys.readouterr().out

    Image.new("RGB", (9, 9)).save(root / "a" / "b" / "new.png")  # a change two levels down
    grown = ImageFiles(str(root))
    assert str(root / "a" / "b" / "new.png") in grown.samples
    assert len(grown) == len(first) + 1 and "walked" in capsys.readouterr().out
    os.remove(root / "img00.png")
    assert str(root / "img00.png") not in ImageFiles(str(root)).samples

    # a folder it cannot write to: the user's cache, keyed by the folder's path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(folder.os, "access", lambda path, mode: False)
    elsewhere = folder.cache_path(str(root))
    assert elsewhere.startswith(str(tmp_path / "cache" / "ssl_toolkit" / "images"))
    ImageFiles(str(root))
    assert os.path.isfile(elsewhere)


def test_symbolic_links_are_followed_once_and_a_loop_lists_nothing_twice(tmp_path):
    """A link back up the tree (a loop) and a second link to a folder already walked: the
    images under it are listed once, for `folder` and for an `imagefolder` class."""
    root = tmp_path / "photos"
    paths = make_photos(root, count=6)
    os.symlink(root, root / "a" / "loop")  # photos/a/loop -> photos
    os.symlink(root / "a" / "b", root / "again")  # a second path to photos/a/b
    files = ImageFiles(str(root), cache=None)
    assert len(files) == len(paths) + 1  # and broken.jpg; nothing through the links
    (tmp_path / "set" / "train").mkdir(parents=True)
    os.symlink(root, tmp_path / "set" / "train" / "cat")
    os.symlink(tmp_path / "set" / "train", root / "up")  # up the tree from inside the class
    classes = build_dataset("imagefolder", str(tmp_path / "set"), True)
    assert len(classes) == len(paths) + 1 and classes.classes == ["cat"]


def test_a_folder_it_may_not_read_is_named_and_found_after_a_chmod(tmp_path, monkeypatch, capsys):
    """A sub-folder without read permission (os.scandir refused, as for a user without the
    permission: root reads everything) leaves its images out with a warning naming it, and the
    listing is not cached, so that the next start finds them once it is readable."""
    root = tmp_path / "photos"
    make_photos(root, count=6)
    refused, scandir = str(root / "a" / "b"), os.scandir

    def no_permission(path="."):
        if os.fspath(path) == refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    with monkeypatch.context() as patch:
        patch.setattr(os, "scandir", no_permission)
        partial = ImageFiles(str(root))
    captured = capsys.readouterr()
    assert "1 folder(s) under" in captured.err and os.path.join("a", "b") in captured.err
    assert "not cached: unreadable folders" in captured.out
    whole = ImageFiles(str(root))  # readable again: walked, not taken from a cache
    assert len(whole) == len(partial) + 2 and "walked" in capsys.readouterr().out


def test_an_image_too_large_to_decode_safely_is_skipped_with_a_warning(
    tmp_path, monkeypatch, capsys
):
    """PIL refuses an image of more than 2 x MAX_IMAGE_PIXELS (a decompression bomb): the file
    is skipped as an unreadable one (here the limit is lowered so that a 64 x 64 image is one)."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "a.png")
    Image.new("RGB", (64, 64)).save(root / "b.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000
    files = ImageFiles(str(root), T.ToTensor(), cache=None)
    assert files[1][0].shape == (3, 8, 8)  # b.png's place taken by the next readable image
    err = capsys.readouterr().err
    assert "skipping unreadable image" in err and "DecompressionBombError" in err


@pytest.mark.full  # a loader worker process
def test_no_readable_image_is_one_line_from_a_loader_worker(tmp_path, run_dirs, capsys):
    """The error a loader worker raises reaches the user as its one line, without the
    worker's traceback that the DataLoader wraps around it."""
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(8):
        (root / f"{i}.png").write_bytes(b"not a png")
    argv = ["--dataset_name", "folder", "--data_dir", str(root), "--backbone", "small_cnn"]
    argv += ["--image_size", "16", "--device", "cpu", "--batch_size", "4", "--num_workers", "1"]
    argv += ["--model_name", "simclr", "--num_epochs", "1", "--rankme_images", "0", *run_dirs]
    with pytest.raises(SystemExit) as stop:
        run_cli(main.main, main.get_args_parser(), argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert stop.value.code == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].endswith(f"no readable image in {root}"), err[-3000:]


def test_missing_or_empty_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        ImageFiles(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="no images under it"):
        ImageFiles(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no labels and no test split"):
        build_dataset("folder", str(tmp_path), False)


def test_images_of_several_sizes_in_memory(tmp_path):
    make_photos(tmp_path / "photos", count=6)
    files = ImageFiles(str(tmp_path / "photos"), T.ToTensor(), cache=None)
    memory = InMemory(files)
    assert isinstance(memory.images, list) and len(memory.images) == len(files)
    for i in (0, 3):
        assert torch.equal(memory[i][0], files[i][0])
    squared = InMemory(files, raw=True, side=24)  # --gpu_augment: one size for whole batches
    assert squared.images.shape == (len(files), 24, 24, 3)


PRETRAIN = ["--backbone", "small_cnn", "--image_size", "16", "--device", "cpu"]
PRETRAIN += ["--num_workers", "0", "--batch_size", "8", "--num_epochs", "1", "--warmup_epochs", "0"]


def labelled_set(root) -> None:
    """train/ and test/ with two classes of four 16 px images each (imagefolder layout)."""
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c, colour in (("dark", 40), ("light", 215)):
            os.makedirs(root / split / c)
            for i in range(4):
                pixels = np.clip(colour + rng.normal(0, 20, (16, 16, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / c / f"{i}.png")


@pytest.mark.full
def test_pretraining_on_an_unlabelled_folder(tmp_path, run_dirs, capsys):
    """BYOL pretrains on the folder (the broken file reported); the kNN monitor runs on the
    labelled --eval_data_dir, and without it is off with one line."""
    make_photos(tmp_path / "photos", count=16)
    labelled_set(tmp_path / "labelled")
    flags = [
        *PRETRAIN,
        *run_dirs,
        "--dataset_name",
        "folder",
        "--data_dir",
        str(tmp_path / "photos"),
    ]
    flags += ["--model_name", "byol", "--in_memory"]
    args = main.get_args_parser().parse_args(
        flags + ["--eval_data_dir", str(tmp_path / "labelled"), "--knn_freq", "1", "--knn_k", "3"]
    )
    result = main.main(args)
    out, err = capsys.readouterr()
    assert "skipping unreadable image" in err and "folder: 17 images" in out
    with open(os.path.join(result["log_dir"], "metrics.csv"), newline="") as f:
        epochs = [r for r in csv.DictReader(f) if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == ["0", "1"] and all(r["knn_acc1"] for r in epochs)
    assert os.path.isfile(os.path.join(result["ckpt_dir"], "last.pt"))

    args = main.get_args_parser().parse_args(flags + ["--knn_freq", "1", "--run_name", "no_knn"])
    main.main(args)
    assert "no labels, so the kNN monitor is off" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("entry", "argv", "message"),
    [
        (main, ["--model_name", "supcon"], "supcon trains on labels"),
        (main_linear, ["--model_name", "byol", "--random_init"], "has no labels to evaluate"),
        (main, ["--dataset_name", "synthetic", "--eval_data_dir", "x"], "--eval_data_dir is for"),
    ],
)
def test_labels_that_are_not_there_are_one_line_errors(entry, argv, message, tmp_path, capsys):
    make_photos(tmp_path / "photos", count=3)
    flags = [*PRETRAIN, "--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "c")]
    flags += ["--dataset_name", "folder", "--data_dir", str(tmp_path / "photos"), *argv]
    with pytest.raises(SystemExit) as exit_:
        run_cli(entry.main, entry.get_args_parser(), flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "logs").exists() and not (tmp_path / "c").exists()
