"""Sanity report for the built-in synthetic data set.

Prints how long generation takes, how weak the baselines an SSL method must beat are (a linear
probe on raw pixels, kNN on a randomly initialised resnet18), how learnable the task is (a small
supervised CNN trained for about a minute), and saves a grid of 10 examples per class.

    python scripts/check_synthetic.py --out synthetic_grid.png
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.synthetic import CLASSES, make_synthetic  # noqa: E402


def raw_pixel_linear(x_train, y_train, x_test, y_test) -> float:
    """Test accuracy of logistic regression on standardised raw pixels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train.reshape(len(x_train), -1).astype(np.float32))
    train = scaler.transform(x_train.reshape(len(x_train), -1).astype(np.float32))
    test = scaler.transform(x_test.reshape(len(x_test), -1).astype(np.float32))
    clf = LogisticRegression(max_iter=300, C=0.01).fit(train, y_train)
    return float(clf.score(test, y_test))


def to_tensor(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """uint8 HWC images -> normalised float NCHW tensor."""
    t = torch.from_numpy(x).float().div_(255).permute(0, 3, 1, 2)
    mean_t, std_t = (torch.tensor(a, dtype=torch.float32).view(1, 3, 1, 1) for a in (mean, std))
    return (t - mean_t) / std_t


@torch.no_grad()
def random_resnet_knn(x_train, y_train, x_test, y_test, device, k: int = 20) -> float:
    """kNN (cosine, majority vote) accuracy on features of a randomly initialised resnet18."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # small-image stem, as the SSL backbones
    net.maxpool, net.fc = nn.Identity(), nn.Identity()
    net = net.to(device).eval()
    mean, std = x_train.mean((0, 1, 2)) / 255, x_train.std((0, 1, 2)) / 255

    def features(x):
        out = [net(to_tensor(x[i : i + 250], mean, std).to(device)) for i in range(0, len(x), 250)]
        return nn.functional.normalize(torch.cat(out), dim=1)

    f_train, f_test = features(x_train), features(x_test)
    idx = (f_test @ f_train.T).topk(k, dim=1).indices
    votes = torch.from_numpy(y_train).to(device)[idx]
    pred = torch.zeros(len(x_test), 10, device=device).scatter_add_(
        1, votes, torch.ones_like(votes, dtype=torch.float)
    )
    return float((pred.argmax(1).cpu().numpy() == y_test).mean())


def supervised_cnn(x_train, y_train, x_test, y_test, device, seconds: float) -> tuple[float, int]:
    """Test accuracy of a small CNN trained from scratch for about `seconds`; also the epochs."""
    torch.manual_seed(0)
    mean, std = x_train.mean((0, 1, 2)) / 255, x_train.std((0, 1, 2)) / 255

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    ).to(device)  # fmt: skip
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = to_tensor(x_train, mean, std), torch.from_numpy(y_train)
    start, epochs = time.time(), 0
    while time.time() - start < seconds:
        net.train()
        for idx in torch.randperm(len(xt)).split(128):
            # cosine decay over the time budget: the last epochs settle instead of oscillating
            done = min((time.time() - start) / seconds, 1.0)
            for group in opt.param_groups:
                group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * done))
            loss = nn.functional.cross_entropy(net(xt[idx].to(device)), yt[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        epochs += 1
    net.eval()
    with torch.no_grad():
        test = to_tensor(x_test, mean, std)
        pred = torch.cat([net(t.to(device)).argmax(1).cpu() for t in test.split(500)])
    return float((pred.numpy() == y_test).mean()), epochs


def save_grid(x: np.ndarray, y: np.ndarray, path: str, per_class: int = 10) -> None:
    """Save `per_class` examples of every class, one row per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(CLASSES), per_class, figsize=(per_class, len(CLASSES) * 1.05))
    for c, name in enumerate(CLASSES):
        for j, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            axes[c, j].imshow(x[i], interpolation="nearest")
            axes[c, j].set_xticks([])
            axes[c, j].set_yticks([])
        axes[c, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="synthetic_grid.png", help="where to save the grid PNG")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    parser.add_argument("--cnn_seconds", type=float, default=60.0, help="CNN training budget")
    parser.add_argument("--skip_resnet", action="store_true", help="skip the slow resnet18 kNN")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    start = time.time()
    x_train, y_train = make_synthetic(10_000, seed=args.seed, split="train")
    x_test, y_test = make_synthetic(2_000, seed=args.seed, split="test")
    print(f"generation of 12,000 images: {time.time() - start:.2f} s")
    mean, std = x_train.mean((0, 1, 2)) / 255, x_train.std((0, 1, 2)) / 255
    print(f"train mean {np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()}")
    save_grid(x_train, y_train, args.out)
    print(f"example grid saved to {args.out}")

    start = time.time()
    acc = raw_pixel_linear(x_train, y_train, x_test, y_test)
    print(f"raw-pixel logistic regression: {acc:.1%} test accuracy ({time.time() - start:.0f} s)")
    if not args.skip_resnet:
        start = time.time()
        acc = random_resnet_knn(x_train, y_train, x_test, y_test, device)
        print(f"random-init resnet18 kNN (k=20): {acc:.1%} ({time.time() - start:.0f} s)")
    acc, epochs = supervised_cnn(x_train, y_train, x_test, y_test, device, args.cnn_seconds)
    print(f"supervised small CNN, {args.cnn_seconds:.0f} s ({epochs} epochs, {device}): {acc:.1%}")


if __name__ == "__main__":
    main()
