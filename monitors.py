"""What a user watching a pretraining run wants to know early: is it learning (the online linear
probe), is it collapsing (label-free monitors), is it starved of data (engine.py's data-wait
fraction). All of them read the run without changing it: the same seed gives the same loss curve
with or without them (tests/test_monitors.py).

Online linear probe (solo-learn's protocol): a linear classifier on the detached backbone
features of each batch's first view, trained at every step by its own SGD (no gradient into the
backbone); its train Acc@1 is logged per step window, its test Acc@1/Acc@5 with the kNN monitor
and at the end, its head and optimizer are checkpointed. Cost: one Linear forward and backward per
step (MAE and I-JEPA, whose encoders see masked images, add a no-gradient backbone pass).

Collapse monitors, label-free:
  embedding_std   the standard deviation of the L2-normalised embeddings (the method's
                  projections z) per dimension, averaged over dimensions (SimSiam's monitor):
                  about 1/sqrt(d) for spread-out embeddings, 0 when they collapse to a point.
                  Logged as std x sqrt(d) (`collapse_std`: ~1 healthy, -> 0 collapsed). Cost O(Nd)
                  per step.
  alignment       E ||f(x) - f(y)||^2 over the two views' normalised embeddings, and
  uniformity      log E exp(-2 ||f(x) - f(x')||^2) over pairs of a batch (Wang and Isola 2020):
                  alignment near 0 with uniformity near 0 (its maximum) is collapse. Cost O(N^2 d).
  rankme          exp of the entropy of the normalised singular values of the backbone's features
                  of a fixed set of images (Garrido et al. 2023): the effective rank, at most
                  min(n, d); 1 for a collapse to a line. Per epoch, on the first --rankme_images
                  (1024) test images: one forward pass of them, none at kNN epochs (the test
                  features are there).
A one-line warning when `collapse_std` stays below COLLAPSE_STD for COLLAPSE_LOGS logged windows in
a row, with what usually causes it for the method (its `collapse_hint`).
"""

import math
from argparse import Namespace
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import METHODS
from utils.distributed import all_reduce_sum, world_size
from utils.misc import settings_of

COLLAPSE_STD = 0.1  # collapse_std (std x sqrt(d)) below this ...
COLLAPSE_LOGS = 3  # ... for this many logged windows in a row: warn


def embedding_std(z: Tensor) -> Tensor:
    """Std of the L2-normalised rows of z [N, d] per dimension, averaged, times sqrt(d)."""
    z = F.normalize(z.float(), dim=1)
    return z.std(dim=0).mean() * math.sqrt(z.shape[1])


def alignment(z1: Tensor, z2: Tensor) -> Tensor:
    """E ||f(x) - f(y)||^2 of the normalised embeddings of two views (alpha 2)."""
    return (F.normalize(z1.float(), dim=1) - F.normalize(z2.float(), dim=1)).pow(2).sum(1).mean()


def uniformity(z: Tensor) -> Tensor:
    """log E_{i != j} exp(-2 ||f(x_i) - f(x_j)||^2) of the normalised embeddings (t 2)."""
    z = F.normalize(z.float(), dim=1)
    return torch.pdist(z).pow(2).mul(-2).exp().mean().log()


def rankme(features: Tensor, eps: float = 1e-7) -> float:
    """exp(H(p)), p the singular values of features [n, d] divided by their sum (+ eps)."""
    s = torch.linalg.svdvals(features.float())
    p = s / s.sum() + eps
    return math.exp(-(p * p.log()).sum().item())


class FeatureTap:
    """Records what a module returns while it is on (`with tap:`, around a training step's
    forward; a forward hook): the backbone's outputs in call order, so that the first view's
    features are the first N rows of their concatenation (one call per view, one call on the
    views concatenated, or one per resolution group)."""

    def __init__(self, module: nn.Module) -> None:
        self.outputs: list[Tensor] = []
        self.on = False
        self.handle = module.register_forward_hook(self.record)

    def record(self, module: nn.Module, inputs, output: Tensor) -> None:
        if self.on:
            self.outputs.append(output.detach())

    def __enter__(self) -> "FeatureTap":
        self.on, self.outputs = True, []
        return self

    def __exit__(self, *exc) -> None:
        self.on = False

    def take(self) -> Tensor | None:
        outputs, self.outputs = self.outputs, []
        return torch.cat(outputs) if outputs else None


class OnlineProbe(nn.Module):
    """A linear classifier trained alongside pretraining on detached features, with its own SGD
    (solo-learn's online classifier: lr 0.1, momentum 0.9, no weight decay, no schedule). Its
    initial weights come from a generator of their own, so the run's random state is untouched.

    `batch_norm`: a BatchNorm without affine parameters before the linear layer, as MAE's linear
    probe. Features whose shared component dwarfs their spread (an I-JEPA ViT-Tiny's mean-pooled
    tokens after 234 CIFAR-10 steps: norm 13.14, of which the mean vector 12.95, per-dimension
    std 0.138) send plain SGD at lr 0.1 astray: 14.35 % on its frozen features in 234 steps,
    29.15 % normalised (scripts/online_probe_check.py); the probe then reads the spread whatever
    its scale."""

    def __init__(
        self, feat_dim: int, num_classes: int, lr: float, seed: int, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(feat_dim, affine=False) if batch_norm else nn.Identity()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own draws leave no trace
            self.fc = nn.Linear(feat_dim, num_classes)
        generator = torch.Generator().manual_seed(seed + 1)
        bound = 1 / math.sqrt(feat_dim)
        with torch.no_grad():  # nn.Linear's own initialisation, from that generator
            self.fc.weight.uniform_(-bound, bound, generator=generator)
            self.fc.bias.uniform_(-bound, bound, generator=generator)
        self.optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    def train_step(self, features: Tensor, labels: Tensor) -> Tensor:
        """One update on a batch; returns its correct predictions x 100 (a tensor: no sync)."""
        self.train()
        logits = self.fc(self.bn(features.detach().float()))
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if world_size() > 1:  # one head for all processes: the mean of their gradients
            for p in self.parameters():
                p.grad = all_reduce_sum(p.grad) / world_size()
            for name, b in self.bn.named_buffers():  # and of their BatchNorm statistics
                if name != "num_batches_tracked":
                    b.copy_(all_reduce_sum(b) / world_size())
        self.optimizer.step()
        return 100.0 * (logits.argmax(dim=1) == labels).sum()

    @torch.no_grad()
    def evaluate(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        self.eval()
        logits = self.fc(self.bn(features.float().to(self.fc.weight.device)))
        labels = labels.to(logits.device)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        acc1 = 100.0 * (top5[:, 0] == labels).float().mean().item()
        acc5 = 100.0 * (top5 == labels[:, None]).any(dim=1).float().mean().item()
        return {"online_acc1": acc1, "online_acc5": acc5}

    def state(self) -> dict:
        return {"head": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict) -> None:
        self.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def clean_features(backbone: nn.Module, images: Tensor) -> Tensor:
    """The backbone's features of `images` in eval mode (BatchNorm statistics untouched), then
    back to train mode: an extra pass that leaves the training as it was."""
    backbone.eval()
    try:
        return backbone(images)
    finally:
        backbone.train()


class Monitors:
    """Per step, from the backbone's features (FeatureTap) and the method's output: the online
    probe's update and the collapse figures, as per-image sums for the engine to average over
    each logged window and epoch (tensors: no host sync per step)."""

    def __init__(self, tap: FeatureTap | None, probe: OnlineProbe | None, method: str) -> None:
        self.tap, self.probe, self.method = tap, probe, method
        self.low_logs, self.warned = 0, False

    def step(self, out: dict, views: list[Tensor], labels: Tensor, backbone: nn.Module) -> dict:
        n = labels.shape[0]
        sums = {}
        features = self.tap.take() if self.tap is not None else None
        if self.probe is not None:
            if features is None:  # MAE's, I-JEPA's encoders see masked images; --compile
                features = clean_features(backbone, views[0])
            sums["online_train_acc1"] = self.probe.train_step(features[:n], labels)
        if "z1" in out and "z2" in out:
            z1, z2 = out["z1"].detach(), out["z2"].detach()
            sums["collapse_std"] = embedding_std(z1) * n
            sums["alignment"] = alignment(z1, z2) * n
            sums["uniformity"] = uniformity(z1) * n
        return sums

    def check(self, window: dict[str, float]) -> str | None:
        """After a logged window: the collapse warning (once), or None."""
        std = window.get("collapse_std")
        if std is None or self.warned:
            return None
        self.low_logs = self.low_logs + 1 if std < COLLAPSE_STD else 0
        if self.low_logs < COLLAPSE_LOGS:
            return None
        self.warned = True
        cause = METHODS[self.method].collapse_hint
        return (
            f"warning: the embeddings are collapsing (collapse_std {std:.3g} < {COLLAPSE_STD} "
            f"for {COLLAPSE_LOGS} logs; 1 is healthy): for {self.method} this usually means {cause}"
        )


@dataclass(frozen=True)
class Monitoring:
    """What main.py watches after each epoch (its flags, resolved once in main()): the kNN
    monitor's period, k and temperature, RankMe's images, the t-SNE plot, over `num_epochs`."""

    num_epochs: int
    knn_freq: int = 0
    knn_k: int = 200
    knn_temperature: float = 0.1
    rankme_images: int = 1024
    tsne: bool = False

    @classmethod
    def of(cls, args: Namespace) -> "Monitoring":
        return settings_of(cls, args)


def epoch_monitor(
    watch: Monitoring, backbone: nn.Module, loaders, probe, device, tsne_path, title: str
):
    """The after-epoch hook of main.py (epoch -1: the untrained network, the baseline).
    `loaders`: the kNN memory bank and the test set (None without labels), and the monitor set,
    the first --rankme_images of the test set (of the training set for an unlabelled folder).
      - every --knn_freq epochs and after the last: the weighted kNN Acc@1 on the test set;
      - after the last epoch, and with the kNN monitor: the online probe's test Acc@1/Acc@5;
      - every epoch: RankMe of the monitor set's features (one forward pass of --rankme_images
        images, none when the test set's features were computed anyway; 0: off);
      - with --tsne, the last epoch's test features drawn to `tsne_path` (None: not this
        process), computed for it when no monitor did."""
    from utils.knn import extract_features, knn_evaluate
    from utils.tsne import plot_tsne

    bank, test_loader, fixed = loaders

    def after_epoch(epoch: int) -> dict:
        last = epoch + 1 == watch.num_epochs
        knn_epoch = watch.knn_freq and (last or epoch < 0 or (epoch + 1) % watch.knn_freq == 0)
        values, test = {}, None
        if knn_epoch and bank is not None:
            (values["knn_acc1"],), test = knn_evaluate(
                backbone, bank, test_loader, device, watch.knn_k, watch.knn_temperature, ks=(1,)
            )
        elif last and test_loader is not None and (probe is not None or watch.tsne):
            test = extract_features(backbone, test_loader, device)
        if probe is not None and test is not None and epoch >= 0:
            values |= probe.evaluate(*test)
        monitored = test
        if watch.rankme_images:
            if monitored is None:
                monitored = extract_features(backbone, fixed, device)
            values["rankme"] = rankme(monitored[0][: watch.rankme_images])
        if watch.tsne and last and tsne_path and monitored is not None:
            plot_tsne(*monitored, tsne_path, f"{title}: test features, epoch {epoch + 1}")
        return values

    return after_epoch
