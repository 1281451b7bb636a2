"""DCL and DCLW: Yeh, Hong, Hsu, Liu, Chen, LeCun, "Decoupled Contrastive Learning", ECCV 2022
(https://arxiv.org/abs/2110.06848). SimCLR with one change to its loss.

NT-Xent's denominator holds the positive pair itself; its gradient is then scaled by a factor
that shrinks when the positive is easy or the negatives are few ("negative-positive coupling"),
which is why SimCLR needs large batches. DCL removes the positive from the denominator. With z
the L2-normalised projections of N images under two views, s(a, b) = a.b / T, and for anchor
z1_i (positive z2_i) the negatives the other 2N - 2 projections of the batch:

    l_i = -s(z1_i, z2_i) + log( sum_{k != i} exp(s(z1_i, z1_k)) + sum_{k != i} exp(s(z1_i, z2_k)) )

DCL = mean_i l_i(z1, z2) + mean_i l_i(z2, z1): both directions summed, as the reference code the
paper points to (raminnakhli/Decoupled-Contrastive-Learning `loss.py`, `loss_fn(z1, z2) +
loss_fn(z2, z1)`) and as SimCLR's official loss_a + loss_b (`nt_xent_scale` 2, kept).

DCLW weighs each positive term by the negative von Mises-Fisher weight

    w_i = 2 - N exp(z1_i.z2_i / sigma) / sum_j exp(z1_j.z2_j / sigma),   sigma = 0.5,

so that positives far apart (hard) count more than easy ones; the weights average to 1 over the
batch, and their gradient is kept (the reference code and lightly's DCLWLoss do not detach them).

Everything else is SimCLR's (`methods/simclr.py`): the projection head, one pass over both views
(BatchNorm over all 2N images), the views and the recipe of each regime; the paper's own
ImageNet runs use batch 256 for 200 epochs with SimCLR's other settings (its abstract), which is
DCL's ImageNet-size recipe here. Negatives are gathered from every process, as SimCLR's.
"""

from dataclasses import replace
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import register
from methods.hparams import HEAD_INIT, PROJ_DIM, PROJ_WIDTH_OF_FEATURES, TEMPERATURE, Flag
from methods.simclr import NT_XENT_SCALE, SimCLR
from utils.distributed import gather_with_grad
from utils.misc import positive_float


def dcl_loss(
    z1: Tensor, z2: Tensor, temperature: float = 0.1, sigma: float | None = None
) -> Tensor:
    """Decoupled contrastive loss of the anchors z1 against their positives z2 (one direction).

    Args:
        z1: [N, D] projections of the first views (the anchors).
        z2: [N, D] projections of the second views; row i is the positive of z1's row i.
        temperature: T dividing the cosine similarities.
        sigma: DCLW's weighting temperature; None for DCL (every weight 1).

    Returns:
        Scalar: mean over the N anchors of -w_i s(z1_i, z2_i) + log sum over the 2N - 2
        negatives of exp(s(z1_i, k)).
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    cross = z1 @ z2.T / temperature  # [N, N]: the diagonal holds the positives
    within = z1 @ z1.T / temperature  # [N, N]: the diagonal holds the anchors themselves
    positive = cross.diagonal()
    if sigma is not None:
        weight = 2 - n * torch.softmax((z1 * z2).sum(dim=1) / sigma, dim=0)
        positive = weight * positive
    own = torch.eye(n, dtype=torch.bool, device=z1.device)
    negatives = torch.cat([within.masked_fill(own, float("-inf")),
                           cross.masked_fill(own, float("-inf"))], dim=1)  # fmt: skip
    return (torch.logsumexp(negatives, dim=1) - positive).mean()


DCLW_SIGMA = Flag(
    "DCLW's temperature of the von Mises-Fisher weights of the positives (the paper's 0.5)",
    positive_float,
)


@register("dcl")
class DCL(SimCLR):
    """SimCLR's network and views; the decoupled contrastive loss, summed over both directions."""

    loss_summary = "`dcl_loss`"
    collapse_hint = "too high a --temperature"
    recipes = (
        SimCLR.recipes[0],
        replace(
            SimCLR.recipes[1],
            source="the paper's ImageNet setting (abstract and section 4: SimCLR with batch 256, "
            "200 epochs) over google-research/simclr 383d414's ImageNet recipe",
            batch_size=256,
            num_epochs=200,
            sources={
                **{k: v for k, v in SimCLR.recipes[1].sources.items() if "batch_size" not in k},
                "temperature": "google-research/simclr README.md:102 (--temperature=0.1), as the "
                "paper's ImageNet runs",
                "batch_size, num_epochs": "arXiv 2110.06848 abstract (batch size 256 within 200 "
                "epochs pre-training)",
            },
        ),
    )

    # SimCLR's constructor and hyper-parameters; DCLW's weighting temperature (None: every
    # positive weighs 1)
    sigma: float | None = None

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        # one pass over both views (BatchNorm over all 2N images), as SimCLR
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        a, b = gather_with_grad(z1), gather_with_grad(z2)
        t, sigma = self.temperature, self.sigma
        loss = dcl_loss(a, b, t, sigma) + dcl_loss(b, a, t, sigma)  # both directions summed
        # nt_xent_scale 2 (the default) is that sum; 1 its mean
        return {"loss": self.nt_xent_scale / 2 * loss, "z1": z1, "z2": z2}


@register("dclw")
class DCLW(DCL):
    """DCL with each positive weighted by the negative von Mises-Fisher weight (`sigma`)."""

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int | None, PROJ_WIDTH_OF_FEATURES] = None,
        proj_dim: Annotated[int, PROJ_DIM] = 128,
        temperature: Annotated[float, TEMPERATURE] = 0.5,
        nt_xent_scale: Annotated[float, NT_XENT_SCALE] = 2.0,
        head_init: Annotated[str, HEAD_INIT] = "normal",
        sigma: Annotated[float, DCLW_SIGMA] = 0.5,
    ) -> None:
        super().__init__(
            backbone, feat_dim, proj_hidden_dim, proj_dim, temperature, nt_xent_scale, head_init
        )
        self.sigma = sigma
