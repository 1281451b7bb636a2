"""t-SNE map of features (van der Maaten & Hinton 2008), coloured by class: a quick look at whether
a backbone separates the classes, beside the kNN and linear numbers.

    plot_tsne(features, labels, "tsne.png", "simclr / resnet18: cifar10 test features")
"""

import matplotlib
import numpy as np
import torch
from torch import Tensor

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from utils.plots import save_figure  # noqa: E402

# More classes than this get a colour bar instead of a legend (CIFAR-100 would fill the figure)
MAX_LEGEND_CLASSES = 20
PCA_DIM = 50  # the usual reduction before t-SNE: faster, and it drops the noisiest directions


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, 2] t-SNE coordinates of [N, D] features (PCA to 50 dimensions first when D > 50)."""
    from sklearn.decomposition import PCA  # sklearn imports slowly: only when drawing
    from sklearn.manifold import TSNE

    n = features.shape[0]
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {n}")
    if features.shape[1] > PCA_DIM and n > PCA_DIM:
        features = PCA(n_components=PCA_DIM, random_state=seed).fit_transform(features)
    perplexity = min(30.0, (n - 1) / 3)  # sklearn requires perplexity < n
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed
    )
    return tsne.fit_transform(features)


def plot_tsne(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    path: str,
    title: str,
    max_points: int = 2000,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> str:
    """Write a PNG of the t-SNE map of `features` [N, D] coloured by `labels` [N] to `path`.

    At most `max_points` rows are drawn, a random choice fixed by `seed` (t-SNE is quadratic in
    N; 2000 points take some seconds on a CPU). Returns `path`.
    """
    x = torch.as_tensor(features).detach().float().cpu().numpy()
    y = torch.as_tensor(labels).detach().cpu().numpy().astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
    if len(x) > max_points:
        keep = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x, y = x[keep], y[keep]
    xy = tsne_embedding(x, seed)

    classes = np.unique(y)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    if len(classes) <= MAX_LEGEND_CLASSES:
        for i, c in enumerate(classes):
            name = class_names[c] if class_names and c < len(class_names) else str(c)
            mask = y == c
            ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=cmap(i), label=name, alpha=0.8)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8)
    else:
        points = ax.scatter(xy[:, 0], xy[:, 1], s=6, c=y, cmap="nipy_spectral", alpha=0.8)
        fig.colorbar(points, ax=ax, label="class")
    ax.set_title(f"{title} (t-SNE, {len(x)} points)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    return path
