"""SwAV: Caron, Misra, Mairal, Goyal, Bojanowski, Joulin, "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020 (https://arxiv.org/abs/2006.09882).

Each crop's L2-normalised projection z is scored against K L2-normalised prototypes c_k,
s = z C (cosine similarities). For each of the two high-resolution crops, a code q is computed
without gradient by Sinkhorn-Knopp, which spreads the batch equally over the prototypes:

    Q = argmax_{Q in Q_equipartition} Tr(Qᵀ S) + eps H(Q),  solved by a few row/column scalings
    of exp(S / eps).

Every other crop (the other high-resolution one and all low-resolution ones) must predict that
code from its own scores, softmax(s / T):

    L = 1 / (2 (V - 1)) sum_{i in high-res} sum_{v != i} CE(q_i, softmax(s_v / T)).

The prototypes are re-normalised after every step and frozen during the first epoch(s); with
small batches a queue of past high-resolution embeddings joins the batch inside Sinkhorn.

Default recipe (paper, ImageNet): ResNet-50, projector 2048 (BN, ReLU) -> 128, 3000 prototypes,
T = 0.1, eps = 0.05, 3 Sinkhorn iterations, multi-crop 2 x 224 + 6 x 96 px, LARC (trust 0.001,
no clipping) on SGD lr 4.8 for batch 4096 (10 warmup epochs from 0.3, cosine to 0.0048), weight
decay 1e-6, prototypes frozen for the first epoch; batch 256 (lr 0.6 to 0.0006, no warmup) adds a
3840-long queue from epoch 15.
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import PROJ_DIM, PROJ_HIDDEN_DIM, TEMPERATURE, Flag
from methods.recipe import Recipe, solo_learn
from networks.heads import build_mlp
from utils.accel import at_least_float32
from utils.distributed import all_reduce_sum, world_size
from utils.misc import non_negative_int


@torch.no_grad()
def sinkhorn(
    scores: Tensor, epsilon: float = 0.05, iterations: int = 3, samples: Tensor | None = None
) -> Tensor:
    """Codes of a batch by Sinkhorn-Knopp: equal mass per prototype, mass 1 per sample.

    Args:
        scores: [B, K] prototype scores (cosine similarities) of B samples.
        epsilon: entropic regularisation (DINOv2's teacher temperature); smaller gives sharper
            codes.
        iterations: rounds of row and column normalisation.
        samples: the number of samples over all processes, when they hold different numbers
            (DINOv2's masked patches); default B x the number of processes.

    Returns:
        [B, K] codes whose rows sum to 1 (each column sums to B/K after the last round).
        Under DDP the sums run over the global batch.
    """
    q = torch.exp(at_least_float32(scores) / epsilon).T  # K x B; float32 even under AMP
    q /= all_reduce_sum(q.sum())
    num_prototypes = q.shape[0]
    batch = q.shape[1] * world_size() if samples is None else samples
    for _ in range(iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= num_prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1/B
        q /= batch
    return (q * batch).T


def swav_loss(
    high_res: list[Tensor],
    low_res: list[Tensor],
    temperature: float = 0.1,
    sinkhorn_iterations: int = 3,
    epsilon: float = 0.05,
    queue_scores: list[Tensor] | None = None,
) -> Tensor:
    """Swapped prediction between crops.

    Args:
        high_res: [B, K] prototype scores of each high-resolution crop; each gives a code.
        low_res: [B, K] prototype scores of each low-resolution crop (may be empty).
        temperature: T of the predicted distributions softmax(scores / T).
        sinkhorn_iterations, epsilon: of `sinkhorn`.
        queue_scores: optional [Q, K] scores of queued embeddings, one per high-resolution crop,
            which join that crop's batch inside Sinkhorn (their codes are discarded).

    Returns:
        Scalar: mean over the high-resolution crops i and the other crops v of
        -sum_k q_i[k] log softmax(s_v / T)[k], averaged over the batch.
    """
    crops = list(high_res) + list(low_res)
    if len(crops) < 2:
        raise ValueError("swav_loss needs at least two crops")
    log_probs = [F.log_softmax(s / temperature, dim=1) for s in crops]
    total = 0.0
    for i, scores in enumerate(high_res):
        batch = scores.detach()
        if queue_scores is not None:
            batch = torch.cat([queue_scores[i].detach(), batch])
        codes = sinkhorn(batch, epsilon, sinkhorn_iterations)[-scores.shape[0] :]
        for v, log_p in enumerate(log_probs):
            if v != i:
                total = total - (codes * log_p).sum(dim=1).mean()
    return total / (len(high_res) * (len(crops) - 1))


SWAV_QUEUE = Flag(
    "embeddings of past batches used for the codes, 0 = off (the paper: 3840 for batches of 256 "
    "or less)",
    non_negative_int,
    alias="queue_length",  # the official name
)
EPOCH_QUEUE_STARTS = Flag("epoch from which the queue is filled and used", non_negative_int)
FREEZE_PROTOTYPES = Flag("epochs during which the prototypes are not updated", non_negative_int)


@register("swav")
class SwAV(Method):
    """Backbone + projector + prototypes (a bias-free linear layer with unit-norm rows)."""

    loss_summary = "`swav_loss`, `sinkhorn`"
    augmentation = "multicrop"
    slow_start = 5  # scripts/short_recipes.sh: 5x the short tables' epochs
    collapse_hint = "too few prototypes or too small an epsilon for the batch (--epsilon)"
    recipes = (
        solo_learn(
            "cifar/swav.yaml",
            "(a reproduction: the official code has no CIFAR recipe)",
            base_lr=0.6,
            weight_decay=1e-06,
            settings={
                "num_crops": 0,
                "queue_size": 3840,
                "epoch_queue_starts": 50,
                "freeze_prototypes_epochs": 2,
            },
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "cifar/swav.yaml:33-40 (lars, clip_lr True, eta 0.02); "
                    "solo/utils/lars.py:141-150 (clip: min(lars_lr / lr, 1))"
                ),
                "exclude_bias_and_norm": (
                    "cifar/swav.yaml:41 (exclude_bias_n_norm True); lars.py:140 (1-D parameters: "
                    "no adaptation, no decay)"
                ),
                "base_lr, lr_scaling, batch_size": (
                    "cifar/swav.yaml:34-35 (batch_size 256, lr 0.6); solo/args/pretrain.py:153-154"
                    " (lr x batch / 256)"
                ),
                "num_epochs": "cifar/swav.yaml:52 (max_epochs 1000)",
                "weight_decay, final_weight_decay": (
                    "cifar/swav.yaml:37 (weight_decay 1e-6, constant)"
                ),
                "num_crops, crop_min_scale": (
                    "cifar/augmentations/symmetric.yaml:3,21-22 (crops of 8-100 %, 2 of 32 px, no "
                    "small ones)"
                ),
                "queue_size, epoch_queue_starts": (
                    "cifar/swav.yaml:20,23 (queue_size 3840, epoch_queue_starts 50)"
                ),
                "freeze_prototypes_epochs": "cifar/swav.yaml:24 (freeze_prototypes_epochs 2)",
            },
        ),
        Recipe(
            source="facebookresearch/swav 06b1b7c, scripts/swav_800ep_pretrain.sh (README: 800 "
            "epochs, batch 4096, 2x224 + 6x96, 75.3 %)",
            images="large",
            optimizer="larc",
            momentum=0.9,
            larc_trust_coefficient=0.001,
            larc_clip=False,
            exclude_bias_and_norm=False,
            base_lr=4.8,
            lr_scaling="none",
            batch_size=4096,
            num_epochs=800,
            weight_decay=1e-6,
            warmup_epochs=10,
            warmup_lr=0.3,
            final_lr=0.0048,
            sources={
                "optimizer, momentum, larc_trust_coefficient, larc_clip": "main_swav.py:171-177 "
                "(SGD(momentum=0.9), LARC(trust_coefficient=0.001, clip=False))",
                "exclude_bias_and_norm": "main_swav.py:171-172 (SGD(model.parameters()): every "
                "parameter decayed and adapted)",
                "base_lr, lr_scaling": "scripts/swav_800ep_pretrain.sh:41 (--base_lr 4.8); "
                "main_swav.py:173,178 (used as given)",
                "batch_size": "scripts/swav_800ep_pretrain.sh:10,40 (64 GPUs x --batch_size 64 = "
                "4096); README.md:29",
                "num_epochs": "scripts/swav_800ep_pretrain.sh:39 (--epochs 800); README.md:29 "
                "(75.3 top-1)",
                "weight_decay, final_weight_decay": "scripts/swav_800ep_pretrain.sh:44 (--wd "
                "0.000001, constant)",
                "warmup_epochs, warmup_lr": "scripts/swav_800ep_pretrain.sh:45-46 "
                "(--warmup_epochs 10 --start_warmup 0.3); main_swav.py:178",
                "final_lr": "scripts/swav_800ep_pretrain.sh:42 (--final_lr 0.0048); "
                "main_swav.py:179-182 (per-step cosine to it)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, PROJ_HIDDEN_DIM] = 2048,
        proj_dim: Annotated[int, PROJ_DIM] = 128,
        num_prototypes: Annotated[int, Flag("prototypes")] = 3000,
        temperature: Annotated[float, TEMPERATURE] = 0.1,
        epsilon: Annotated[float, Flag("entropic regularisation of Sinkhorn-Knopp")] = 0.05,
        sinkhorn_iterations: Annotated[int, Flag("Sinkhorn-Knopp iterations")] = 3,
        queue_size: Annotated[int, SWAV_QUEUE] = 0,
        epoch_queue_starts: Annotated[int, EPOCH_QUEUE_STARTS] = 15,
        freeze_prototypes_epochs: Annotated[int, FREEZE_PROTOTYPES] = 1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = build_mlp(2, feat_dim, proj_hidden_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.normalize_prototypes()
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.epoch_queue_starts = epoch_queue_starts
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        # each process queues its own share; Sinkhorn then sees queue_size embeddings in all
        self.register_buffer("queue", torch.zeros(2, queue_size // world_size(), proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        # backbone once per resolution, projector and prototypes once over all crops (official
        # resnet50.py: forward_backbone per group, then forward_head on the concatenation)
        features = self.features_by_resolution(self.backbone, views)
        z = F.normalize(self.projector(features), dim=1)
        scores = list(self.prototypes(z).chunk(len(views)))
        high_res, low_res = scores[:2], scores[2:]
        z_high = z[: 2 * views[0].shape[0]]

        queue_scores = None
        use_queue = self.queue.shape[1] > 0 and self.epoch >= self.epoch_queue_starts
        if use_queue and self.queue_filled >= self.queue.shape[1]:
            with torch.no_grad():
                queue_scores = [self.prototypes(self.queue[i]) for i in range(2)]
        loss = swav_loss(
            high_res,
            low_res,
            self.temperature,
            self.sinkhorn_iterations,
            self.epsilon,
            queue_scores,
        )
        if use_queue:
            self.enqueue(z_high.detach().chunk(2))
        z1, z2 = z_high.chunk(2)
        return {"loss": loss, "z1": z1, "z2": z2}

    @torch.no_grad()
    def enqueue(self, embeddings: tuple[Tensor, ...]) -> None:
        """Newest first: shift the queue by the batch size and write the batch at the front."""
        n = min(embeddings[0].shape[0], self.queue.shape[1])
        self.queue[:, n:] = self.queue[:, :-n].clone()
        for i, z in enumerate(embeddings):
            self.queue[i, :n] = z[:n]
        self.queue_filled += n

    def before_optimizer_step(self) -> None:
        if self.epoch < self.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None  # skipped by the optimizer, momentum included

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.normalize_prototypes()
