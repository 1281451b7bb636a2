"""SupCon: Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, "Supervised
Contrastive Learning", NeurIPS 2020 (https://arxiv.org/abs/2004.11362).

Loss (L_out, the paper's eq. 2): with z the N·V L2-normalised projections of N images under V
views, sim(a, b) = a.b / T, A(i) all anchors but i and P(i) ⊂ A(i) those with i's label,

    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(sim(z_i, z_p)) / sum_{a in A(i)} exp(sim(z_i, z_a)) ),

averaged over all N·V anchors. With V = 2 and all labels distinct, P(i) is the other view of the
same image and the loss is SimCLR's NT-Xent.

The official code (HobbitLong/SupContrast) multiplies the loss by T / base_temperature
(0.07 / 0.07 = 1 by default); that factor is left out here, so this is the paper's formula.

Default recipe (paper, CIFAR-10): ResNet-50, 2-layer projection MLP (2048 hidden, 128 out),
T = 0.1 (0.07 in the official code's examples), batch 1024, SGD momentum 0.9 with lr 0.5 and
cosine (LARS for ImageNet), weight decay 1e-4, 1000 epochs; then a linear probe on frozen features.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from networks.heads import build_mlp
from utils.distributed import gather, gather_with_grad


def supcon_loss(z: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss L_out over the N·V views of a batch.

    Args:
        z: [N, V, D] projections: V views of each of N images; L2-normalised here.
        labels: [N] integer class labels; views with the same label are positives.
        temperature: T dividing the cosine similarities.

    Returns:
        Scalar: mean over the N·V anchors of minus the mean log-probability of the anchor's
        positives, each softmax taken over the N·V - 1 other views. An anchor without any
        positive (only possible with V = 1) contributes 0, as in the official code.
    """
    n, v, _ = z.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    # view-major order: rows 0..N-1 are view 0, rows N..2N-1 are view 1, ...
    z = F.normalize(z.transpose(0, 1).reshape(n * v, -1), dim=1)  # NV x D
    labels = labels.repeat(v)  # NV
    logits = z @ z.T / temperature  # NV x NV
    self_mask = torch.eye(n * v, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is not its own contrast
    log_prob = F.log_softmax(logits, dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask  # NV x NV
    # masked_fill, not a product: log_prob is -inf on the diagonal
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(1)
    num_pos = positives.sum(1).clamp(min=1)
    return -(pos_log_prob / num_pos).mean()


@register("supcon")
class SupCon(Method):
    """Backbone + projection MLP; supervised contrastive loss over two views, using the labels."""

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = build_mlp(2, feat_dim, proj_hidden_dim, proj_dim)
        self.temperature = temperature

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        if labels is None:
            raise ValueError("SupCon is supervised: forward(views, labels) needs the class labels")
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        z = gather_with_grad(torch.stack([z1, z2], dim=1))
        loss = supcon_loss(z, gather(labels), self.temperature)
        return {"loss": loss, "z1": z1, "z2": z2}
