"""NNCLR: Dwibedi, Aytar, Tompson, Sermanet, Zisserman, "With a Little Help from My Friends:
Nearest-Neighbor Contrastive Learning of Visual Representations", ICCV 2021
(https://arxiv.org/abs/2104.14548).

SimCLR with a borrowed positive: the positive of view 1's projection z_i is not z_i itself but
its nearest neighbour (cosine) in a support set Q of projections of past batches,
NN(z_i, Q) = argmax_{q in Q} cos(z_i, q), and the other view's prediction p_i+ = h(z_i+) must
pick it out among the predictions of the batch:

    L_i = -log( exp(NN(z_i).p_i+ / T) / sum_k exp(NN(z_i).p_k+ / T) ),

with all vectors L2-normalised. As in the paper's implementation details the loss is also
taken over the columns of the similarity matrix, -log( exp(NN(z_i).p_i+ / T) /
sum_k exp(NN(z_k).p_i+ / T) ), and over both views (`nnclr_loss`):

    L = 1/2 (nnclr_loss(NN(z1), p2) + nnclr_loss(NN(z2), p1)).

No gradient flows through the neighbours (they are rows of the support set). After each step
the normalised projections of the first view, gathered from all processes, replace the oldest
rows of the support set (first in, first out), as VISSL ("following original authors") and
solo-learn do.

Default recipe (paper, ImageNet): ResNet-50, T = 0.1, a support set of 98,304, LARS, batch
4096, 1000 epochs, BYOL's asymmetric views; heads as solo-learn builds them after the paper
(solo/methods/nnclr.py): projector 3 layers 2048 - 2048 - 256 with BatchNorm after each, the
output's too, every one affine (learnt scale and shift; lightly's NNCLRProjectionHead the same;
`--affine_last_bn false`: none on the output's, as the short tables' rows were measured),
predictor 4096 - 256 without BatchNorm on its output.
solo-learn on CIFAR: the same heads, T = 0.2, a support set of 65,536, LARS lr 0.4, weight
decay 1e-5, batch 256. VISSL's implementation and the Keras example give the column term and
the first-view-only update above.

Choice here: the nearest neighbour is searched among the rows filled so far, and before the
first enqueue a view's own (detached) projection is its positive. solo-learn and the Keras
example instead start from random unit vectors, whose "neighbours" carry no information until
queue_size / batch steps have replaced them all (98,304 / 128 = 768 steps: longer than this
project's short CPU runs). Once the support set is full both are the same.
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import (
    CONCAT_VIEWS,
    PRED_HIDDEN_DIM,
    PROJ_DIM,
    PROJ_HIDDEN_DIM,
    TEMPERATURE,
    Flag,
)
from methods.moco import enqueue
from methods.recipe import solo_learn
from networks.heads import build_mlp
from utils.distributed import gather, gather_with_grad
from utils.misc import non_negative_int


@torch.no_grad()
def nearest_neighbours(z: Tensor, support: Tensor) -> Tensor:
    """For each row of `z` [N, D], the row of `support` [M, D] with the largest cosine
    similarity to it (ties: the first); returns [N, D] rows of `support`, no gradient."""
    similarity = F.normalize(z, dim=1) @ F.normalize(support, dim=1).T  # N x M
    return support[similarity.argmax(dim=1)]


def nnclr_loss(neighbours: Tensor, p: Tensor, temperature: float = 0.1) -> Tensor:
    """NNCLR's contrastive loss between neighbours of one view and predictions of the other.

    With s_ik = n_i . p_k / T, n the neighbours (rows L2-normalised inside):

        L = 1/(2N) sum_i [ -log(exp(s_ii) / sum_k exp(s_ik)) - log(exp(s_ii) / sum_k exp(s_ki)) ]

    Args:
        neighbours: [N, D] nearest neighbours of the first view's projections; no gradient.
        p: [N, D] predictions of the second view; row i the positive of neighbour i.
        temperature: T.

    Returns:
        Scalar: the mean of the row-wise and column-wise cross-entropies of the N x N logits.
    """
    logits = F.normalize(neighbours.detach(), dim=1) @ F.normalize(p, dim=1).T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


SUPPORT_SET = Flag(
    "support set: past projections kept in a queue (an ImageNet value, over CIFAR's 50,000 "
    "images: use 4096-16384 there)",
    non_negative_int,
)


AFFINE_LAST_BN = Flag(
    "the projector's last BatchNorm learns a scale and a shift (solo-learn's and lightly's; "
    "false: a plain normalisation, as the short tables' rows were measured)"
)


@register("nnclr")
class NNCLR(Method):
    """Backbone + projector + predictor; a support set (queue) of past projections."""

    loss_summary = "`nnclr_loss`, support set"
    augmentation = "byol"
    # no official code: solo-learn's pretrain_dataloader.py crops BICUBIC, evaluates bilinear
    view_options = {"interpolation": "bicubic"}
    recipes = (
        solo_learn(
            "cifar/nnclr.yaml",
            "(a reproduction: the authors released no code)",
            base_lr=0.4,
            weight_decay=1e-05,
            settings={"temperature": 0.2, "queue_size": 65536},
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "cifar/nnclr.yaml:31-38 (lars, clip_lr True, eta 0.02); "
                    "solo/utils/lars.py:141-150 (clip: min(lars_lr / lr, 1))"
                ),
                "exclude_bias_and_norm": (
                    "cifar/nnclr.yaml:39 (exclude_bias_n_norm True); lars.py:140 (1-D parameters: "
                    "no adaptation, no decay)"
                ),
                "base_lr, lr_scaling, batch_size": (
                    "cifar/nnclr.yaml:32-33 (batch_size 256, lr 0.4); "
                    "solo/args/pretrain.py:153-154 (lr x batch / 256)"
                ),
                "num_epochs": "cifar/nnclr.yaml:50 (max_epochs 1000)",
                "weight_decay, final_weight_decay": (
                    "cifar/nnclr.yaml:35 (weight_decay 1e-5, constant)"
                ),
                "temperature, queue_size": (
                    "cifar/nnclr.yaml:19,23 (temperature 0.2, queue_size 65536)"
                ),
            },
        ),
        solo_learn(
            "imagenet-100/nnclr.yaml",
            "(ImageNet-100, ResNet-18; solo-learn has no ImageNet-1k NNCLR config). The paper's "
            "ImageNet setting differs: ResNet-50, LARS, batch 4096, 1000 epochs, T 0.1, support "
            "set 98,304",
            images="large",
            base_lr=0.4,
            num_epochs=400,
            weight_decay=1e-05,
            settings={"temperature": 0.2, "queue_size": 65536},
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "imagenet-100/nnclr.yaml:31-38 (lars, clip_lr True, eta 0.02); "
                    "solo/utils/lars.py:141-150"
                ),
                "exclude_bias_and_norm": (
                    "imagenet-100/nnclr.yaml:39 (exclude_bias_n_norm True); lars.py:140 (1-D: no "
                    "adaptation, no decay)"
                ),
                "base_lr, lr_scaling, batch_size": (
                    "imagenet-100/nnclr.yaml:32-33,51 (128 x 2 devices, lr 0.4); "
                    "solo/args/pretrain.py:153-154 (x batch/256)"
                ),
                "num_epochs": "imagenet-100/nnclr.yaml:50 (max_epochs 400)",
                "weight_decay, final_weight_decay": (
                    "imagenet-100/nnclr.yaml:35 (weight_decay 1e-5, constant)"
                ),
                "temperature, queue_size": (
                    "imagenet-100/nnclr.yaml:19,23 (temperature 0.2, queue_size 65536)"
                ),
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, PROJ_HIDDEN_DIM] = 2048,
        proj_dim: Annotated[int, PROJ_DIM] = 256,
        pred_hidden_dim: Annotated[int, PRED_HIDDEN_DIM] = 4096,
        temperature: Annotated[float, TEMPERATURE] = 0.1,
        queue_size: Annotated[int, SUPPORT_SET] = 98304,
        concat_views: Annotated[bool, CONCAT_VIEWS] = False,
        affine_last_bn: Annotated[bool, AFFINE_LAST_BN] = True,
    ) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"nnclr needs a support set: queue_size >= 1, got {queue_size}")
        self.backbone = backbone
        self.projector = build_mlp(3, feat_dim, proj_hidden_dim, proj_dim, last_bn=True)
        if affine_last_bn:  # solo-learn's nn.BatchNorm1d(proj_output_dim): learnt scale, shift
            self.projector[-1] = nn.BatchNorm1d(proj_dim)
        self.predictor = build_mlp(2, proj_dim, pred_hidden_dim, proj_dim)
        self.temperature = temperature
        self.concat_views = concat_views
        # normalised projections; the same on every process (each enqueues the gathered batch)
        self.register_buffer("queue", torch.zeros(queue_size, proj_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    def neighbours(self, z: Tensor) -> Tensor:
        """NN(z, Q) among the filled rows of the support set; z itself (detached) while empty."""
        filled = int(self.queue_filled)
        if filled == 0:
            return F.normalize(z.detach(), dim=1)
        return nearest_neighbours(z, self.queue[:filled])

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        # each view in its own call (solo-learn's base.py forwards every crop separately)
        z1, z2 = self.per_view(lambda x: self.projector(self.backbone(x)), views[:2])
        p1, p2 = self.per_view(self.predictor, (z1, z2))
        nn1, nn2 = self.neighbours(z1), self.neighbours(z2)
        # the global batch's predictions are the candidates (as SimCLR's negatives)
        loss = (
            nnclr_loss(gather(nn1), gather_with_grad(p2), self.temperature)
            + nnclr_loss(gather(nn2), gather_with_grad(p1), self.temperature)
        ) / 2
        if self.training:
            # enqueued once the step is taken (after_optimizer_step), so that a skipped step
            # with a non-finite loss leaves the support set clean; gathered here, where every
            # process runs
            self._pending = gather(F.normalize(z1.detach(), dim=1))
        return {"loss": loss, "z1": z1, "z2": z2}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if self._pending is not None:
            enqueue(self.queue, self.queue_ptr, self._pending)
            self.queue_filled.fill_(
                min(int(self.queue_filled) + len(self._pending), len(self.queue))
            )
            self._pending = None
