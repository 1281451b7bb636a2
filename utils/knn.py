"""Weighted kNN classifier on frozen features (Wu et al. 2018; the monitor of DINO and solo-learn),
and the feature helpers it shares with the linear probe on cached features.

A test image's k most cosine-similar training images vote for their labels with weight
exp(similarity / T); the class with the largest total wins.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.data import EpochSampler
from utils.distributed import gather, world_size


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """[M, C] summed vote weights of every class for each of the M test rows.

    Chunked over test rows so that 50,000 x 10,000 similarities never sit in memory at once.
    """
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device).long()
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(
            test_features[start : start + chunk_size].float().to(train.device), dim=1
        )
        sim, idx = (query @ train.T).topk(k, dim=1)  # chunk x k
        weights = (sim / temperature).exp()
        votes = torch.zeros(query.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def weighted_knn(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> Tensor:
    """Predicted label of each test row (weighted kNN: docs/evaluation.md)."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    return scores.argmax(dim=1)


@torch.no_grad()
def extract_features(backbone: nn.Module, loader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Features and labels of every image of `loader`, backbone in eval mode (kept on CPU).
    Under DDP each process computes its shard (utils.data.ShardSampler) and every process
    returns all of them, in the data set's order."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for images, targets in loader:
        features.append(backbone(images.to(device, non_blocking=True)).float().cpu())
        labels.append(targets)
    backbone.train(was_training)
    features, labels = torch.cat(features), torch.cat(labels)
    if world_size() > 1:  # shards padded to equal length: keep the data set's N rows
        count = len(loader.dataset)
        features = gather(features.to(device))[:count].cpu()
        labels = gather(labels.to(device))[:count].cpu()
    return features, labels


def knn_evaluate(
    backbone: nn.Module,
    train_loader,
    test_loader,
    device: torch.device,
    k: int,
    temperature: float,
    num_classes: int | None = None,
    ks: tuple[int, ...] = (1, 5),
) -> tuple[list[float], tuple[Tensor, Tensor]]:
    """Top-k accuracies (percent) of the weighted kNN classifier on the backbone's features,
    training images as the bank and test images as queries, and the test features with their
    labels (for a t-SNE map). The kNN monitor of main.py and main_linear.py --eval knn."""
    train_x, train_y = extract_features(backbone, train_loader, device)
    test_x, test_y = extract_features(backbone, test_loader, device)
    num_classes = num_classes or int(train_y.max()) + 1
    scores = knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
    return topk_accuracy(scores, test_y, ks), (test_x, test_y)


class FeatureLoader:
    """Mini-batches of (features, labels) from cached tensors, in the order a training DataLoader
    from utils.run.make_loader gives over the same items: with `shuffle`, the same EpochSampler
    (set by utils.run.seed_epoch) and the last partial batch dropped, so that a head trained on
    cached features takes the same steps as one trained on images. Indexing tensors directly
    costs microseconds per batch, where a DataLoader would collate item by item."""

    def __init__(
        self, features: Tensor, labels: Tensor, batch_size: int, shuffle: bool, seed: int = 0
    ) -> None:
        self.features, self.labels = features, labels.to(features.device)
        self.batch_size = batch_size
        self.sampler = EpochSampler(len(labels), seed) if shuffle else None
        self.generator = torch.Generator()  # only so that seed_epoch treats both loaders alike

    def __len__(self) -> int:
        if self.sampler is not None:
            return len(self.sampler) // self.batch_size
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        order = None
        if self.sampler is not None:
            order = torch.tensor(list(self.sampler)[: len(self) * self.batch_size])
            order = order.to(self.features.device)
        for i in range(len(self)):
            window = slice(i * self.batch_size, (i + 1) * self.batch_size)
            index = order[window] if order is not None else window
            yield self.features[index], self.labels[index]


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Percent of rows whose label is among the top-k scores, for each k (k capped at C)."""
    maxk = min(max(ks), scores.shape[1])
    top = scores.topk(maxk, dim=1).indices
    hits = top == labels.view(-1, 1).to(top.device)
    return [100.0 * hits[:, : min(k, maxk)].any(dim=1).float().mean().item() for k in ks]
