"""The reference of scripts/whole_process.py: SimCLR pretraining as a textbook PyTorch loop, on
the same images, views, model, loss, optimizer, batch and loader workers as main.py, and nothing
else (no schedule, logging, checkpoints, monitors, progress bar or guard).

    python scripts/bare_loop.py --data_dir DIR --steps N [--batch_size 64] [--num_workers 2]
"""

import argparse
import os
import sys

import torch
from torchvision import datasets

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from methods import build_method  # noqa: E402
from networks import build_backbone  # noqa: E402
from transformations import pretrain_transform  # noqa: E402
from utils.data import DATASETS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="an ImageFolder tree with train/")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.03 * 64 / 256)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    info = DATASETS["imagefolder"]
    views = pretrain_transform("simclr", image_size=args.image_size, mean=info.mean, std=info.std)
    images = datasets.ImageFolder(os.path.join(args.data_dir, "train"), transform=views)
    loader = torch.utils.data.DataLoader(
        images, batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
    )  # fmt: skip
    model = build_method("simclr", *build_backbone(args.backbone, args.image_size))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for step, (batch, labels) in enumerate(loader):
        if step == args.steps:
            break
        loss = model(batch, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(f"bare loop: {args.steps} steps of {args.batch_size}")


if __name__ == "__main__":
    main()
