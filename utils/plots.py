"""PNG plots of a run, drawn from its metrics.csv (so they always show what was logged)."""

import os

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from utils.checkpoint import atomic_file  # noqa: E402
from utils.logging import read_metrics  # noqa: E402


def save_figure(fig, path: str) -> None:
    """Write `fig` to `path` atomically (a full disk leaves the old plot, never half a PNG) and
    close it."""
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def _series(rows: list[dict], kind: str, key: str) -> tuple[list[float], list[float]]:
    points = [(float(r["epoch"]), float(r[key])) for r in rows if r["kind"] == kind and r.get(key)]
    return [p[0] for p in points], [p[1] for p in points]


def _plot(path: str, title: str, ylabel: str, curves: list[tuple[str, list, list, str]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, xs, ys, style in curves:
        if xs:
            ax.plot(xs, ys, style, label=label, markersize=4)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_run(run_dir: str, title: str) -> list[str]:
    """Write loss.png and lr.png (and accuracy.png / knn.png when measured) into `run_dir`."""
    rows = read_metrics(run_dir)
    paths = []

    def out(name: str) -> str:
        paths.append(os.path.join(run_dir, name))
        return paths[-1]

    loss_curves = [
        ("train loss (steps)", *_series(rows, "step", "loss"), "-"),
        ("train loss (epoch mean)", *_series(rows, "epoch", "loss"), "o-"),
    ]
    val_loss = _series(rows, "epoch", "val_loss")
    if val_loss[0]:
        loss_curves.append(("validation loss", *val_loss, "s-"))
    _plot(out("loss.png"), f"{title}: loss", "loss", loss_curves)
    _plot(
        out("lr.png"),
        f"{title}: learning rate",
        "learning rate",
        [
            ("lr", *_series(rows, "step", "lr"), "-"),
        ],
    )
    acc1, acc5 = _series(rows, "epoch", "val_acc1"), _series(rows, "epoch", "val_acc5")
    if acc1[0]:
        _plot(
            out("accuracy.png"),
            f"{title}: validation accuracy",
            "accuracy (%)",
            [
                ("Acc@1", *acc1, "o-"),
                ("Acc@5", *acc5, "s-"),
            ],
        )
    knn, online = _series(rows, "epoch", "knn_acc1"), _series(rows, "epoch", "online_acc1")
    if knn[0] or online[0]:
        curves = [("kNN Acc@1 (test)", *knn, "o-"), ("online probe Acc@1 (test)", *online, "s-")]
        if online[0]:
            curves.append(
                ("online probe Acc@1 (train)", *_series(rows, "step", "online_train_acc1"), "-")
            )
        _plot(out("knn.png"), f"{title}: accuracy while pretraining", "Acc@1 (%)", curves)
    if any(r.get("collapse_std") or r.get("rankme") or r.get("data_wait") for r in rows):
        _plot_monitors(out("monitors.png"), f"{title}: monitors", rows)
    return paths


# (metrics.csv column, label, row kind) of the panels of monitors.png
MONITORS = [
    [("collapse_std", "std of normalised z x sqrt(d) (1: spread, 0: collapsed)", "step")],
    [("alignment", "alignment (0: views agree)", "step"), ("uniformity", "uniformity", "step")],
    [("rankme", "RankMe: effective rank of the features", "epoch")],
    [("data_wait", "share of time waiting for data", "step")],
]


def _plot_monitors(path: str, title: str, rows: list[dict]) -> None:
    """The label-free monitors and the data-wait share, one panel each, against epochs."""
    fig, axes = plt.subplots(len(MONITORS), 1, figsize=(6, 2.2 * len(MONITORS)), dpi=100)
    for ax, curves in zip(axes, MONITORS, strict=True):
        for key, label, kind in curves:
            xs, ys = _series(rows, kind, key)
            if xs:
                ax.plot(xs, ys, "o-" if kind == "epoch" else "-", label=label, markersize=3)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
        else:  # e.g. no online probe: say so rather than leave a blank panel
            names = ", ".join(label for _, label, _ in curves)
            ax.text(
                0.5,
                0.5,
                f"not measured: {names}",
                ha="center",
                va="center",
                fontsize=7,
                transform=ax.transAxes,
            )
    axes[-1].set_xlabel("epoch")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# (metrics.csv column, axis label, preferred row kind) of the curves `plot_compare` overlays
COMPARE_METRICS = [
    ("loss", "train loss", "epoch"),
    ("val_loss", "test loss", "epoch"),
    ("lr", "learning rate", "step"),
    ("knn_acc1", "kNN Acc@1 (%)", "epoch"),
    ("train_acc1", "train Acc@1 (%)", "epoch"),
    ("val_acc1", "test Acc@1 (%)", "epoch"),
]


def plot_compare(runs: dict[str, list[dict]], path: str, title: str = "") -> list[str]:
    """One PNG overlaying several runs (name -> metrics.csv rows): one subplot per metric of
    COMPARE_METRICS that some run logged, each read from the preferred row kind when the run
    has it there, else from the other kind. Returns the metrics drawn."""
    panels = []
    for key, label, kind in COMPARE_METRICS:
        curves = []
        for name, rows in runs.items():
            xs, ys = _series(rows, kind, key)
            if not xs:
                xs, ys = _series(rows, "step" if kind == "epoch" else "epoch", key)
            if xs:
                curves.append((name, xs, ys))
        if curves:
            panels.append((key, label, curves))
    if not panels:
        raise ValueError("none of the runs logged " + ", ".join(k for k, _, _ in COMPARE_METRICS))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), dpi=100, squeeze=False)
    for ax, (_, label, curves) in zip(axes.flat, panels, strict=False):
        for name, xs, ys in curves:
            ax.plot(xs, ys, "-" if len(xs) > 20 else "o-", label=name, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return [key for key, _, _ in panels]


def plot_reconstructions(rows: dict, mean, std, path: str, title: str) -> str:
    """A grid of images, one row per entry of `rows` (e.g. original, masked, reconstructed), the
    columns the same images; each [N, 3, H, W] in the normalised space, shown un-normalised."""
    import torch

    names = list(rows)
    count = rows[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), count, figsize=(1.2 * count, 1.3 * len(names)), dpi=100)
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    for r, name in enumerate(names):
        for c in range(count):
            ax = axes[r][c]
            image = (rows[name][c].detach().float().cpu() * std + mean).clamp(0, 1)
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path
