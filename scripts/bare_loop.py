"""The reference of scripts/benchmark.py --whole_process: SimCLR pretraining as a textbook
PyTorch loop, on the same images, views, model, loss, optimizer, batch and loader workers as
main.py, and nothing else (no schedule, logging, checkpoints, monitors, progress bar or guard).

    python scripts/bare_loop.py --data_dir DIR --steps N [--batch_size 64] [--num_workers 2]
        [--skip 10]

Its last line is a JSON object: the images/s of the steps after the first --skip by its own
clock (loader waits included), the figure `benchmark.py --whole_process` compares with main.py's
metrics.csv windows after the first (it passes --skip equal to main.py's --print_freq).
"""

import argparse
import json
import os
import sys
import time

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
    parser.add_argument("--skip", type=int, default=10, help="steps before the clock starts")
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
    clock = None
    for step, (batch, labels) in enumerate(loader):
        loss = model(batch, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step + 1 == args.skip:
            clock = time.perf_counter()
        if step + 1 == args.steps:
            break
    timed = args.steps - args.skip
    rate = timed * args.batch_size / (time.perf_counter() - clock) if clock and timed else None
    print(json.dumps({"steps": args.steps, "batch_size": args.batch_size, "images_per_s": rate}))


if __name__ == "__main__":
    main()
