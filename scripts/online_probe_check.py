"""Does the online probe read a pretrained backbone's features? monitors.OnlineProbe (its SGD at
lr 0.1, momentum 0.9, as in pretraining) trained for --steps batches on the frozen features of
training images, with and without its BatchNorm (--online_probe_bn), then tested; and the
features' geometry: their mean norm, the norm of their mean vector (the part all images share)
and the per-dimension standard deviation (their spread).

    python scripts/online_probe_check.py CKPT --data_dir path/to/cifar10

--data_dir is an ImageFolder root with train/ and test/ (CIFAR-10's layout); the images are
prepared by the checkpoint's own evaluation transform. Measured on the CIFAR-10 CPU
table's seed-124 checkpoints (results/cifar10_cpu/ckpts/pretrain_{ijepa,mae}_s124/last.pt,
234 steps; one thread beside two table runs, about 3 min each): I-JEPA's features have norm
13.14, their mean vector 12.95, per-dimension std 0.138, and the probe gets 14.35 % without
BatchNorm, 29.15 % with it; MAE's 13.88, 12.52, 0.396: 22.00 % and 32.70 %. (Their linear probes
over 10 epochs with --probe_bn: 38.08 and 43.75 %.)"""

import argparse
import os
import random
import sys

import torch
from torchvision.datasets import ImageFolder

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from monitors import OnlineProbe  # noqa: E402
from pretrained import load_backbone  # noqa: E402


@torch.no_grad()
def features(backbone, transform, root: str, count: int, seed: int):
    data = ImageFolder(root)
    chosen = random.Random(seed).sample(range(len(data)), min(count, len(data)))
    feats, labels = [], []
    for start in range(0, len(chosen), 250):
        batch = [data[i] for i in chosen[start : start + 250]]
        feats.append(backbone(torch.stack([transform(image) for image, _ in batch])))
        labels += [label for _, label in batch]
    return torch.cat(feats), torch.tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a main.py checkpoint or an export.py file")
    parser.add_argument("--data_dir", required=True, help="ImageFolder root with train/, test/")
    parser.add_argument("--train_images", type=int, default=8000)
    parser.add_argument("--test_images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=234, help="probe updates (default: 234)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    args = parser.parse_args()

    backbone, info = load_backbone(args.ckpt)
    train = features(
        backbone, info.transform, os.path.join(args.data_dir, "train"), args.train_images, 0
    )
    test = features(
        backbone, info.transform, os.path.join(args.data_dir, "test"), args.test_images, 1
    )
    x = train[0]
    print(
        f"{args.ckpt}: features norm {x.norm(dim=1).mean():.2f}, mean vector norm "
        f"{x.mean(dim=0).norm():.2f}, per-dimension std {x.std(dim=0).mean():.3f}"
    )
    classes = int(train[1].max()) + 1
    for batch_norm in (False, True):
        probe = OnlineProbe(x.shape[1], classes, args.lr, seed=0, batch_norm=batch_norm)
        order = torch.Generator().manual_seed(0)
        for _ in range(args.steps):
            rows = torch.randint(0, len(x), (args.batch_size,), generator=order)
            probe.train_step(x[rows], train[1][rows])
        accuracy = probe.evaluate(*test)["online_acc1"]
        print(f"  online probe {'with' if batch_norm else 'without'} BatchNorm: {accuracy:.2f} %")


if __name__ == "__main__":
    main()
