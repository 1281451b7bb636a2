"""SimSiam: Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021
(https://arxiv.org/abs/2011.10566).

Loss: with p = h(f(x)) the prediction and z = f(x) the projection of each view,

    L = ½ D(p1, stopgrad(z2)) + ½ D(p2, stopgrad(z1)),   D(p, z) = -cos(p, z),

so the minimum is -1. No negatives and no momentum encoder: the stop-gradient and the predictor
prevent collapse.

Default recipe (paper): projector of 3 layers, 2048 wide, BN on every layer including the output;
predictor 2048 -> 512 -> 2048 bottleneck (BN only on its hidden layer); SGD momentum 0.9, lr
0.05 x B/256 (0.03 on CIFAR), weight decay 1e-4 (5e-4 on CIFAR), cosine, predictor lr fixed
(--fix_pred_lr).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from networks.heads import build_mlp


def negative_cosine_similarity(p: Tensor, z: Tensor) -> Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch.

    Args:
        p: [N, D] predictions.
        z: [N, D] projections of the other view; no gradient flows into them.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@register("simsiam")
class SimSiam(Method):
    """Backbone + projector (BN on the output) + predictor bottleneck; symmetric loss."""

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 2048,
        pred_hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = build_mlp(3, feat_dim, proj_hidden_dim, proj_dim, last_bn=True)
        self.predictor = build_mlp(2, proj_dim, pred_hidden_dim, proj_dim)

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * (negative_cosine_similarity(p1, z2) + negative_cosine_similarity(p2, z1))
        return {"loss": loss, "z1": z1, "z2": z2}
