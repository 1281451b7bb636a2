"""SupCon: Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan, "Supervised
Contrastive Learning", NeurIPS 2020 (https://arxiv.org/abs/2004.11362).

Loss (L_out, the paper's eq. 2): with z the N·V L2-normalised projections of N images under V
views, sim(a, b) = a.b / T, A(i) all anchors but i and P(i) ⊂ A(i) those with i's label,

    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(sim(z_i, z_p)) / sum_{a in A(i)} exp(sim(z_i, z_a)) ),

averaged over all N·V anchors. With V = 2 and all labels distinct, P(i) is the other view of the
same image and the loss is SimCLR's NT-Xent.

The official code (HobbitLong/SupContrast losses.py) multiplies the loss by T / base_T with
base_T = 0.07; `supcon_loss` takes it as `base_temperature` (default: T, a factor 1, the paper's
formula) and the method passes 0.07, so at T = 0.1 its loss is 0.1 / 0.07 = 1.43 times the
paper's formula, as official.

Architecture as the official code (networks/resnet_big.py SupConResNet, head='mlp'): the
projection head is Linear(d, d)-ReLU-Linear(d, 128) with d the backbone's feature size and no
BatchNorm; no zero-initialised residual BatchNorm (zero_init_residual=False there); both views
as one batch of 2N (main_supcon.py concatenates them).

Default recipe (paper, CIFAR-10; the official README's command `--batch_size 1024
--learning_rate 0.5 --temp 0.1 --cosine`): ResNet-50, T = 0.1 (0.07 is the code's default),
batch 1024, SGD momentum 0.9 with lr 0.5 and cosine (LARS for ImageNet), weight decay 1e-4,
1000 epochs, crops of 20-100 % of the image; then a linear probe on frozen features.
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import PROJ_DIM, PROJ_WIDTH_OF_FEATURES, TEMPERATURE, Flag
from methods.recipe import Recipe
from networks.heads import build_mlp
from utils.distributed import gather, gather_with_grad


def supcon_loss(
    z: Tensor, labels: Tensor, temperature: float = 0.1, base_temperature: float | None = None
) -> Tensor:
    """Supervised contrastive loss L_out over the N·V views of a batch.

    Args:
        z: [N, V, D] projections: V views of each of N images; L2-normalised here.
        labels: [N] integer class labels; views with the same label are positives.
        temperature: T dividing the cosine similarities.
        base_temperature: the loss is multiplied by T / base_temperature (the official code's
            factor, base 0.07); None: by 1, the paper's formula.

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
    scale = 1.0 if base_temperature is None else temperature / base_temperature
    return -scale * (pos_log_prob / num_pos).mean()


BASE_TEMPERATURE = Flag(
    "the loss is multiplied by temperature / base_temperature (0.07: the official code; the "
    "temperature itself: the paper's formula)"
)


@register("supcon")
class SupCon(Method):
    """Backbone + projection MLP; supervised contrastive loss over two views, using the labels."""

    loss_summary = "`supcon_loss` (labels)"
    needs_labels = True
    # official main_supcon.py set_loader: RandomResizedCrop(scale=(0.2, 1)), no blur at any size
    view_options = {"crop_min_scale": 0.2, "blur_prob": 0.0}
    # the official code has CIFAR commands only (no ImageNet recipe): one regime for every size
    recipes = (
        Recipe(
            source="HobbitLong/SupContrast 66a8fe5, README's SupCon pretraining command (CIFAR, "
            "ResNet-50)",
            images="any",
            optimizer="sgd",
            momentum=0.9,
            exclude_bias_and_norm=False,
            base_lr=0.5,
            lr_scaling="none",
            batch_size=1024,
            num_epochs=1000,
            weight_decay=1e-4,
            warmup_epochs=10,
            warmup_lr=0.01,
            final_lr=0.0005,
            sources={
                "batch_size, base_lr": "README.md:73-76 (--batch_size 1024 --learning_rate 0.5 "
                "--temp 0.1 --cosine)",
                "lr_scaling": "util.py:78-83 (SGD lr=opt.learning_rate: not scaled by batch)",
                "optimizer, momentum, exclude_bias_and_norm": "util.py:78-83 (SGD(model."
                "parameters(), momentum, weight_decay): every parameter decayed)",
                "num_epochs": "main_supcon.py:38-39 (--epochs 1000)",
                "weight_decay, final_weight_decay": "main_supcon.py:48-49 (--weight_decay 1e-4, "
                "constant)",
                "warmup_epochs, warmup_lr": "main_supcon.py:106-112 (batch > 256: warm, "
                "warmup_from 0.01, warm_epochs 10); util.py:68-75",
                "final_lr": "util.py:53-58 (cosine eta_min = lr x lr_decay_rate^3 = 0.5 x 0.1^3 = "
                "5e-4; main_supcon.py:46-47)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int | None, PROJ_WIDTH_OF_FEATURES] = None,
        proj_dim: Annotated[int, PROJ_DIM] = 128,
        temperature: Annotated[float, TEMPERATURE] = 0.1,
        base_temperature: Annotated[float, BASE_TEMPERATURE] = 0.07,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = proj_hidden_dim or feat_dim  # official: Linear(dim_in, dim_in)
        self.proj_hidden_dim = hidden  # resolved, for the run's record
        self.projector = build_mlp(2, feat_dim, hidden, proj_dim, batch_norm=False)
        self.temperature = temperature
        self.base_temperature = base_temperature

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        if labels is None:
            raise ValueError("SupCon is supervised: forward(views, labels) needs the class labels")
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        z = gather_with_grad(torch.stack([z1, z2], dim=1))
        loss = supcon_loss(z, gather(labels), self.temperature, self.base_temperature)
        return {"loss": loss, "z1": z1, "z2": z2}
