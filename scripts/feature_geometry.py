"""How a backbone's features spread over a data set's test images: the norm of their mean (the
part every image shares) beside the mean norm of each image's deviation from it, and RankMe of
the features as they are (the training monitor's) and centred. A shared part that grows while
the deviations shrink is a partial collapse: a cosine kNN still ranks the small deviations, but
an un-normalised linear head (the online probe) reads mostly the shared part.

    python scripts/feature_geometry.py CKPT [CKPT ...] --data_dir path/to/cifar10
    python scripts/feature_geometry.py --init ijepa --backbone vit_tiny --image_size 32 ...
        (the untrained backbone, initialised as that method does, with its seed)

--data_dir (or DATA=path/to/cifar10 in the environment) is required for every data set but
`synthetic`: with the default --dataset_name imagefolder, a folder with test/ (CIFAR-10's layout).
"""

import argparse
import os
import sys

import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from methods import METHODS, build_method  # noqa: E402
from monitors import rankme  # noqa: E402
from networks import build_backbone  # noqa: E402
from networks.vit import set_pool  # noqa: E402
from pretrained import load_backbone  # noqa: E402
from transformations import eval_transform  # noqa: E402
from utils.data import DATASETS, build_dataset  # noqa: E402


def geometry(features: Tensor) -> dict[str, float]:
    """|mean|, the mean |f - mean|, RankMe of the features and of the centred features."""
    mean = features.mean(dim=0)
    centred = features - mean
    return {
        "shared": mean.norm().item(),
        "deviation": centred.norm(dim=1).mean().item(),
        "rankme": rankme(features),
        "rankme_centred": rankme(centred),
    }


def test_images(dataset: str, data_dir: str | None, size: int, count: int, seed: int) -> Tensor:
    info = DATASETS[dataset]
    plain = eval_transform(
        image_size=size, native_size=info.image_size, mean=info.mean, std=info.std
    )
    images = build_dataset(dataset, data_dir, False, plain, False)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return torch.stack([images[int(i)][0] for i in order[:count]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpts", nargs="*", help="main.py checkpoints or exported backbones")
    parser.add_argument("--init", help="also the untrained backbone, as this method initialises it")
    parser.add_argument("--backbone", default="vit_tiny")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--dataset_name", default="imagefolder", choices=sorted(DATASETS))
    parser.add_argument("--data_dir", default=os.environ.get("DATA"), help="default: $DATA")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    if args.dataset_name != "synthetic" and not (args.data_dir and os.path.isdir(args.data_dir)):
        print(
            f"error: --data_dir (or DATA=) must name the {args.dataset_name} folder, got "
            f"{args.data_dir!r}",
            file=sys.stderr,
        )
        sys.exit(2)
    x = test_images(args.dataset_name, args.data_dir, args.image_size, args.images, args.seed)
    backbones = []
    if args.init:
        torch.manual_seed(args.seed)  # as main.py: the seed, then the backbone and the method
        backbone, feat_dim = build_backbone(args.backbone, args.image_size)
        build_method(args.init, backbone, feat_dim)
        set_pool(backbone, METHODS[args.init].pool, args.backbone)
        backbones.append((f"{args.init} untrained", backbone))
    backbones += [(path, load_backbone(path)[0]) for path in args.ckpts]
    print(f"{len(x)} test images of {args.dataset_name}")
    for name, backbone in backbones:
        with torch.no_grad():
            g = geometry(backbone.eval()(x))
        print(
            f"{name}: |shared| {g['shared']:.2f}, |deviation| {g['deviation']:.2f}, "
            f"RankMe {g['rankme']:.2f}, centred {g['rankme_centred']:.2f}"
        )


if __name__ == "__main__":
    main()
