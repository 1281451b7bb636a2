"""Data sets by name (README.md, `--dataset_name`): synthetic, cifar10, cifar100, stl10, svhn,
imagefolder, and folder (every image under --data_dir, without labels: ImageFiles).

Every data set is returned as a torch Dataset of (transformed image, int label) pairs, so the
pretraining and evaluation loops never need to know which one they read; `folder`'s label is
NO_LABEL (-1).
"""

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, Subset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader
from torchvision.transforms import functional as TF
from tqdm import tqdm

from utils.folder import cache_path, list_images, walk_images
from utils.misc import UserError
from utils.synthetic import SyntheticShapes

NO_LABEL = -1  # the label of an image of `folder`


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int | None  # None: read from the folder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int  # native size: decides whether the eval transform resizes


IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

DATASETS = {
    "synthetic": DatasetInfo(10, (0.501, 0.500, 0.496), (0.295, 0.298, 0.291), 32),
    "cifar10": DatasetInfo(10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32),
    "cifar100": DatasetInfo(100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32),
    "stl10": DatasetInfo(10, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), 96),
    "svhn": DatasetInfo(10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 32),
    "imagefolder": DatasetInfo(None, *IMAGENET_MEAN_STD, 224),
    "folder": DatasetInfo(None, *IMAGENET_MEAN_STD, 224),  # no labels
}
UNLABELLED = ("folder",)


def _torchvision_dataset(name: str, root: str, train: bool, transform, download: bool) -> Dataset:
    split = "train" if train else "test"
    builders = {
        "cifar10": lambda: datasets.CIFAR10(
            root, train=train, transform=transform, download=download
        ),
        "cifar100": lambda: datasets.CIFAR100(
            root, train=train, transform=transform, download=download
        ),
        "stl10": lambda: datasets.STL10(root, split=split, transform=transform, download=download),
        "svhn": lambda: datasets.SVHN(root, split=split, transform=transform, download=download),
    }
    try:
        return builders[name]()
    except RuntimeError as err:
        if download:
            raise UserError(f"could not download {name} into {root}: {err}") from err
        raise UserError(
            f"{name} not found under {os.path.abspath(root)}: pass --download to fetch it, "
            f"or --data_dir pointing at the folder that holds it"
        ) from err
    except OSError as err:  # no network while downloading
        raise UserError(f"could not download {name} into {root}: {err}") from err


def warn_above_progress_bar(message: str) -> None:
    """A warning on its own line above the progress bar, not in the middle of it: tqdm.write in
    the training process; a loader worker, which cannot see the bar, first clears the terminal
    line that the bar is drawn on (the bar redraws itself below at its next update)."""
    if torch.utils.data.get_worker_info() is None:
        tqdm.write(message, file=sys.stderr)
    else:
        clear = "\r\x1b[2K" if sys.stderr.isatty() else ""
        sys.stderr.write(f"{clear}{message}\n")
        sys.stderr.flush()


class SkipsUnreadable:
    """Mixin for a data set of files: an item whose file cannot be read (truncated or corrupt,
    a non-image with an image extension) is replaced by the next readable one, with a warning
    naming the file and a count, instead of ending a long run. Subclasses give `read(index)` and
    `path_of(index)`, and set `unreadable = set()` and `root`."""

    unreadable: set[str]
    root: str

    def read(self, index: int):
        raise NotImplementedError

    def path_of(self, index: int) -> str:
        raise NotImplementedError

    def __getitem__(self, index: int):
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            path = self.path_of(i)
            if path in self.unreadable:
                continue
            try:
                return self.read(i)
            # what PIL raises on bad files, and on images too large to be safe to decode
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                self.unreadable.add(path)
                warn_above_progress_bar(
                    f"warning: skipping unreadable image {path} ({type(err).__name__}: {err}); "
                    f"{len(self.unreadable)} skipped so far in this process"
                )
        raise UserError(f"no readable image in {self.root}")


class TolerantImageFolder(SkipsUnreadable, datasets.ImageFolder):
    """ImageFolder that skips unreadable files (SkipsUnreadable), and lists each class folder
    as `folder` does (utils.folder.walk_images): symbolic links followed once each (no loop
    listing the same images again), folders it may not read named in a warning."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unreadable = set()

    @staticmethod
    def make_dataset(directory, class_to_idx, *args, **kwargs) -> list[tuple[str, int]]:
        samples, unreadable = [], []
        for name in sorted(class_to_idx):
            files, _, refused = walk_images(os.path.join(directory, name))
            if not files:
                raise FileNotFoundError(f"no image in its class folder {name}")
            samples += [(os.path.join(directory, name, f), class_to_idx[name]) for f in files]
            unreadable += [os.path.join(name, f) for f in refused]
        if unreadable:
            print(
                f"warning: {len(unreadable)} folder(s) under {directory} could not be read, "
                f"their images left out: {', '.join(unreadable[:3])}",
                file=sys.stderr,
            )
        return samples

    def path_of(self, index: int) -> str:
        return self.samples[index][0]

    def read(self, index: int):
        return datasets.ImageFolder.__getitem__(self, index)


class ImageFiles(SkipsUnreadable, Dataset):
    """`--dataset_name folder`: every image under `root` (recursively, utils.folder), in sorted
    path order, as (transform(image), NO_LABEL): any size and mode, converted to RGB (greyscale,
    RGBA, palette, CMYK); unreadable files skipped (SkipsUnreadable). `cache`: the listing's
    cache file (default: utils.folder.cache_path; None: walk the folder every time)."""

    classes = None

    def __init__(self, root: str, transform=None, cache: str | None = "default") -> None:
        root = os.path.expanduser(root)
        if not os.path.isdir(root):
            raise UserError(f"--data_dir {root}: no such folder (--dataset_name folder reads it)")
        self.root, self.transform, self.unreadable = os.path.abspath(root), transform, set()
        start = time.time()
        files, source = list_images(self.root, cache_path(root) if cache == "default" else cache)
        if not files:
            raise UserError(f"--data_dir {root}: no images under it ({', '.join(IMG_EXTENSIONS)})")
        self.samples = [os.path.join(self.root, f) for f in files]
        self.targets = [NO_LABEL] * len(files)
        print(
            f"folder: {len(files)} images under {self.root}, {source}, {time.time() - start:.2f} s"
        )

    def __len__(self) -> int:
        return len(self.samples)

    def path_of(self, index: int) -> str:
        return self.samples[index]

    def read(self, index: int):
        image = default_loader(self.samples[index])  # PIL, converted to RGB
        return (self.transform(image) if self.transform else image), NO_LABEL


def _image_folder(root: str, train: bool, transform) -> Dataset:
    candidates = ["train"] if train else ["test", "val"]
    for sub in candidates:
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            try:
                return TolerantImageFolder(path, transform=transform)
            except (FileNotFoundError, RuntimeError) as err:
                raise UserError(f"no images in {path}: {err}") from err
    looked = " or ".join(os.path.join(os.path.abspath(root), s) for s in candidates)
    raise UserError(
        f"image folder not found: looked for {looked}; "
        f"set --data_dir to a folder holding train/ and test/ (or val/) class folders"
    )


def build_dataset(
    name: str,
    data_dir: str,
    train: bool,
    transform: Callable | None = None,
    download: bool = False,
    seed: int = 0,
) -> Dataset:
    """The train or test split of data set `name`, images passed through `transform`."""
    if name == "synthetic":
        # the data seed is fixed, not --seed: every run sees the same images
        return SyntheticShapes(train=train, transform=transform, seed=0)
    if name == "imagefolder":
        return _image_folder(data_dir, train, transform)
    if name == "folder":
        if not train:
            raise UserError(
                "--dataset_name folder has no labels and no test split: evaluate on a labelled "
                "set (main.py's --eval_data_dir, main_linear.py's --dataset_name imagefolder)"
            )
        return ImageFiles(data_dir, transform)
    if name in DATASETS:
        return _torchvision_dataset(name, data_dir, train, transform, download)
    raise UserError(f"unknown data set {name!r}; choose from {sorted(DATASETS)}")


def dataset_targets(dataset: Dataset) -> list[int]:
    """Labels of every item, read without decoding a single image."""
    if isinstance(dataset, Subset):
        targets = dataset_targets(dataset.dataset)
        return [targets[i] for i in dataset.indices]
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return [int(t) for t in getattr(dataset, attr)]
    raise TypeError(f"cannot read the labels of {type(dataset).__name__}")


def num_classes_of(dataset: Dataset) -> int:
    if isinstance(dataset, Subset):
        return num_classes_of(dataset.dataset)
    if getattr(dataset, "classes", None) is not None:
        return len(dataset.classes)
    return int(max(dataset_targets(dataset))) + 1


def balanced_subset(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` images, taking the same number from every class (for smoke runs)."""
    if limit is None or limit >= len(dataset):
        return dataset
    targets = torch.tensor(dataset_targets(dataset))
    classes = targets.unique()
    per_class, extra = divmod(limit, len(classes))
    indices = []
    for rank, c in enumerate(classes.tolist()):
        take = per_class + (1 if rank < extra else 0)
        indices.extend((targets == c).nonzero().flatten()[:take].tolist())
    return Subset(dataset, sorted(indices))


class InMemory(Dataset):
    """A data set decoded once into one uint8 tensor [N, H, W, 3] (`--in_memory`): CIFAR's 50,000
    training images take 150 MB, and an epoch then reads no file and decodes no JPEG. Items are
    PIL images re-made from the tensor, passed through the transform the wrapped set had, so the
    augmentations are those of the files; with `raw`, they are the uint8 tensors [3, H, W]
    themselves, for augmentation of whole batches on the GPU (`--gpu_augment`, BatchViews).
    Loader workers share the tensor (fork, copy on write).

    Images of several sizes (`folder`, `imagefolder`) are kept as a list of [H, W, 3] tensors;
    batches of `raw` images need one size, so there each image is first resized to a shorter side
    of `side` and centre-cropped to a square (main.py passes --image_size x 256/224, the
    evaluation resize ratio, and the views' `interpolation`), before the batch's random resized
    crops are drawn from it.
    """

    def __init__(
        self,
        dataset: Dataset,
        raw: bool = False,
        side: int | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        self.raw = raw
        base = dataset
        while isinstance(base, Subset):
            base = base.dataset
        self.transform, base.transform = base.transform, None  # read the raw images
        try:
            items = [dataset[i] for i in range(len(dataset))]
        finally:
            base.transform = self.transform
        images = [image.convert("RGB") for image, _ in items]
        if raw and len({image.size for image in images}) > 1:
            if side is None:
                raise UserError("--gpu_augment needs images of one size: drop --gpu_augment")
            mode = TF.InterpolationMode(interpolation)
            images = [TF.center_crop(TF.resize(image, side, mode), side) for image in images]
            print(f"in memory: images of several sizes, each resized and cropped to {side} px")
        arrays = [np.array(image) for image in images]  # a copy: writable
        if len({a.shape for a in arrays}) == 1:
            self.images = torch.from_numpy(np.stack(arrays))
        else:  # several sizes: one tensor each
            self.images = [torch.from_numpy(a) for a in arrays]
        self.targets = [int(label) for _, label in items]
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if self.raw:
            return self.images[index].permute(2, 0, 1), self.targets[index]
        image = Image.fromarray(self.images[index].numpy())
        return (self.transform(image) if self.transform else image), self.targets[index]


class EpochSampler(Sampler[int]):
    """Random order drawn from (seed, epoch) alone, so that an epoch's order does not depend on
    what ran before it, and able to start part-way: a run resumed at batch k of an epoch sees
    exactly the images it had not seen, without loading (and augmenting) the skipped ones.

    Under DDP every process draws the same order and takes every `num_replicas`-th item from
    position `rank`, so with per-process batches of B/W the W processes' j-th batches together
    hold the same images as the j-th batch of B of a single process (the tail that does not
    divide by W is dropped, as drop_last drops a short batch).
    """

    def __init__(self, num_samples: int, seed: int, rank: int = 0, num_replicas: int = 1) -> None:
        self.num_samples, self.seed = num_samples, seed
        self.rank, self.num_replicas = rank, num_replicas
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw epoch `epoch`'s permutation; skip its first `start` items (of all processes)."""
        self.epoch, self.start = epoch, start

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)[self.start :]
        end = len(order) - len(order) % self.num_replicas
        return iter(order[self.rank : end : self.num_replicas].tolist())

    def __len__(self) -> int:
        return (self.num_samples - self.start) // self.num_replicas


class ShardSampler(Sampler[int]):
    """In-order evaluation under DDP: process r reads the r-th contiguous block of ceil(N/W)
    items, the last block padded with its final index, so that gathering the blocks in rank
    order and keeping the first N rows gives the data set's order (utils.knn.extract_features)."""

    def __init__(self, num_samples: int, rank: int, num_replicas: int) -> None:
        self.num_samples = num_samples
        self.block = -(-num_samples // num_replicas)
        self.begin = min(rank * self.block, num_samples)

    def __iter__(self):
        indices = list(range(self.begin, min(self.begin + self.block, self.num_samples)))
        return iter(indices + [self.num_samples - 1] * (self.block - len(indices)))

    def __len__(self) -> int:
        return self.block


def in_memory(
    dataset: Dataset,
    wanted: bool,
    raw: bool = False,
    side: int | None = None,
    interpolation: str = "bilinear",
) -> Dataset:
    """`dataset` held in memory when `wanted` (--in_memory, InMemory); `raw` (--gpu_augment)
    keeps it there as uint8 tensors for transformations.BatchViews (images of several sizes
    squared to `side`, resampled as the views' crops)."""
    if not wanted:
        return dataset
    start = time.time()
    dataset = InMemory(dataset, raw=raw, side=side, interpolation=interpolation)
    print(f"in memory: {len(dataset)} images in {time.time() - start:.0f} s")
    return dataset
