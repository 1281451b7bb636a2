"""Data sets by name: class-balanced --limit, clear errors for missing data, image folders."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from transformations import eval_transform, simclr_transform
from utils.data import (
    DATASETS,
    InMemory,
    balanced_subset,
    build_dataset,
    dataset_targets,
    num_classes_of,
)
from utils.misc import UserError


def test_limit_is_class_balanced_and_takes_the_first_images():
    dataset = build_dataset("synthetic", "unused", train=True)
    subset = balanced_subset(dataset, 25)
    targets = dataset_targets(subset)
    counts = np.bincount(targets, minlength=10)
    assert len(subset) == 25 and counts.max() - counts.min() <= 1
    first_of_class0 = [i for i, t in enumerate(dataset.targets) if t == 0][:3]
    assert [i for i in subset.indices if dataset.targets[i] == 0] == first_of_class0
    assert num_classes_of(subset) == 10
    assert balanced_subset(dataset, None) is dataset


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "svhn"])
def test_missing_torchvision_data_set_names_path_and_flag(tmp_path, name):
    with pytest.raises(UserError) as info:
        build_dataset(name, str(tmp_path), train=True)
    message = str(info.value)
    assert str(tmp_path) in message and "--download" in message and "\n" not in message


def test_download_failure_offline_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(UserError, match="could not download cifar10"):
        build_dataset("cifar10", str(tmp_path), train=True, download=True)


def test_missing_image_folder_names_what_was_looked_for(tmp_path):
    with pytest.raises(UserError, match="train"):
        build_dataset("imagefolder", str(tmp_path), train=True)
    with pytest.raises(UserError, match="test.*val"):
        build_dataset("imagefolder", str(tmp_path), train=False)


def test_image_folder_with_val_split(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            os.makedirs(tmp_path / split / cls)
            for i in range(3):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    info = DATASETS["imagefolder"]
    transform = eval_transform(image_size=16, native_size=224, mean=info.mean, std=info.std)
    test = build_dataset("imagefolder", str(tmp_path), train=False, transform=transform)
    image, label = test[5]
    assert image.shape == (3, 16, 16) and label == 1 and num_classes_of(test) == 2


def test_two_views_differ_and_have_the_requested_size():
    info = DATASETS["synthetic"]
    transform = simclr_transform(image_size=24, mean=info.mean, std=info.std)
    dataset = build_dataset("synthetic", "unused", train=True, transform=transform)
    (v1, v2), label = dataset[0]
    assert v1.shape == v2.shape == (3, 24, 24)
    assert not (v1 == v2).all()
    assert isinstance(label, int)


def test_corrupt_images_are_skipped_with_a_warning(tmp_path, capsys):
    for cls in ("cat", "dog"):
        os.makedirs(tmp_path / "train" / cls)
        for i in range(2):
            pixels = np.full((8, 8, 3), 40 * i, dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / cls / f"{i}.png")
    good = (tmp_path / "train" / "cat" / "0.png").read_bytes()
    (tmp_path / "train" / "cat" / "0.png").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "train" / "dog" / "9.jpg").write_bytes(b"not an image")
    data = build_dataset("imagefolder", str(tmp_path), train=True, transform=T.PILToTensor())
    images = [data[i] for i in range(len(data))]
    assert len(images) == 5
    # the truncated cat/0.png is replaced by the next image (cat/1.png, label 0)
    assert images[0][1] == 0 and torch.equal(images[0][0], images[1][0])
    out = capsys.readouterr().err  # above the progress bar (tqdm.write), on stderr
    assert "cat/0.png" in out and "dog/9.jpg" in out and "2 skipped so far" in out


def test_in_memory_gives_the_same_items_as_the_files(tmp_path):
    """--in_memory: the decoded images of a (subset of an) ImageFolder, the same pixels and labels,
    through the same transform; images of different sizes are refused with a clear message."""
    generator = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            os.makedirs(tmp_path / split / c)
            for i in range(3):
                pixels = torch.randint(0, 256, (8, 8, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(tmp_path / split / c / f"{i}.png")
    files = build_dataset("imagefolder", str(tmp_path), True, T.ToTensor())
    subset = torch.utils.data.Subset(files, [0, 2, 3, 5])
    memory = InMemory(subset)
    assert memory.images.shape == (4, 8, 8, 3) and memory.images.dtype == torch.uint8
    assert memory.classes == ["a", "b"] and memory.targets == [0, 0, 1, 1]
    for i in range(4):
        assert torch.equal(memory[i][0], subset[i][0]) and memory[i][1] == subset[i][1]
    assert files.transform is not None  # the wrapped set keeps its transform

    Image.new("RGB", (5, 7), (9, 9, 9)).save(tmp_path / "train" / "a" / "odd.png")
    mixed = build_dataset("imagefolder", str(tmp_path), True, T.ToTensor())
    memory = InMemory(mixed)  # several sizes: one tensor each, the same items as the files
    assert [tuple(im.shape) for im in memory.images].count((7, 5, 3)) == 1
    for i in range(len(mixed)):
        assert torch.equal(memory[i][0], mixed[i][0])
    with pytest.raises(UserError, match="--gpu_augment needs images of one size"):
        InMemory(mixed, raw=True)
    squared = InMemory(mixed, raw=True, side=6)  # batches need one size: resized, centre-cropped
    assert squared.images.shape == (len(mixed), 6, 6, 3)
    assert squared[0][0].shape == (3, 6, 6) and squared[0][0].dtype == torch.uint8
    # resampled as the views' crops (a bicubic method's): the odd image as TF.resize gives it
    pixels = torch.randint(0, 256, (7, 5, 3), generator=generator, dtype=torch.uint8)
    odd = Image.fromarray(pixels.numpy())
    odd.save(tmp_path / "train" / "a" / "odd.png")
    index = next(i for i, (path, _) in enumerate(mixed.samples) if path.endswith("odd.png"))
    squared = {}
    for mode in ("bilinear", "bicubic"):
        expected = TF.center_crop(TF.resize(odd, 6, TF.InterpolationMode(mode)), 6)
        squared[mode] = InMemory(mixed, raw=True, side=6, interpolation=mode)[index][0]
        assert torch.equal(squared[mode], TF.pil_to_tensor(expected))
    assert not torch.equal(squared["bilinear"], squared["bicubic"])
