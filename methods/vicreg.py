"""VICReg: Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization for
Self-Supervised Learning", ICLR 2022 (https://arxiv.org/abs/2105.04906).

Loss: with z1, z2 the [N, D] embeddings (expander outputs) of two views,

    L = λ s(z1, z2) + μ [v(z1) + v(z2)] / 2 + ν [c(z1) + c(z2)],
    s = MSE(z1, z2)                                   (invariance, mean over N·D entries),
    v(z) = mean_j relu(1 - sqrt(Var(z_j) + ε))        (variance: hinge on each dimension's std),
    c(z) = sum_{i != j} Cov(z)_ij² / D                (covariance: decorrelate the dimensions),

with Var and Cov unbiased (N - 1) over the batch.

Architecture as the official code (facebookresearch/vicreg main_vicreg.py): an expander of 3
linear layers 8192-8192-8192 with BN and ReLU between them (none after the last, which has no
bias); each view through backbone and expander in its own call (`x = projector(backbone(x))`,
`y = projector(backbone(y))`: BatchNorm statistics per view; `--concat_views` gives one pass of
2N); the last BatchNorm of each residual block starts at zero (`zero_init_residual=True`).

Default recipe (paper, ImageNet): ResNet-50, λ = μ = 25, ν = 1, ε = 1e-4, LARS with lr 0.2 x
B/256 (base lr 0.2 in the paper), biases and BN excluded from weight decay and adaptation,
batch 2048, 10 warmup epochs then cosine, weight decay 1e-6, 1000 epochs. The expander is the
official 8192-8192-8192 by default (solo-learn's CIFAR configuration is 2048 wide,
`--proj_hidden_dim 2048 --proj_dim 2048`: recipes/cifar10/vicreg.args).
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import CONCAT_VIEWS, PROJ_DIM, PROJ_HIDDEN_DIM, Flag
from methods.recipe import Recipe, solo_learn
from networks.heads import build_mlp
from utils.distributed import gather_with_grad
from utils.misc import non_negative_float


def _variance_loss(z: Tensor, eps: float) -> Tensor:
    """mean over dimensions of relu(1 - sqrt(unbiased var + eps))."""
    return F.relu(1 - torch.sqrt(z.var(0) + eps)).mean()


def _covariance_loss(z: Tensor) -> Tensor:
    """Sum of the squared off-diagonal entries of the unbiased covariance, divided by D."""
    n, d = z.shape
    z = z - z.mean(0)
    cov = z.T @ z / (n - 1)  # D x D
    off_diagonal = ~torch.eye(d, dtype=torch.bool, device=z.device)
    return cov[off_diagonal].pow(2).sum() / d


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """VICReg: invariance + variance + covariance terms.

    Args:
        z1: [N, D] embeddings of the first views.
        z2: [N, D] embeddings of the second views; row i is the same image as z1's row i.
        sim_coeff: λ, weight of the invariance (MSE) term.
        std_coeff: μ, weight of the variance term (averaged over the two branches).
        cov_coeff: ν, weight of the covariance term (summed over the two branches).
        eps: ε added to the variance inside the square root.

    Returns:
        Scalar loss.
    """
    invariance = F.mse_loss(z1, z2)
    variance = 0.5 * (_variance_loss(z1, eps) + _variance_loss(z2, eps))
    covariance = _covariance_loss(z1) + _covariance_loss(z2)
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance


SIM_COEFF = Flag("weight of the invariance term", non_negative_float)
STD_COEFF = Flag("weight of the variance term", non_negative_float)
COV_COEFF = Flag("weight of the covariance term", non_negative_float)


@register("vicreg")
class VICReg(Method):
    """Backbone + 3-layer expander (BN+ReLU between layers, none after the last); VICReg loss."""

    loss_summary = "`vicreg_loss`"
    augmentation = "byol"  # the paper uses BYOL's asymmetric views
    collapse_hint = "too weak a variance term (--std_coeff) against the invariance term"
    # official augmentations.py: RandomResizedCrop(..., InterpolationMode.BICUBIC); evaluate.py
    # bilinear
    view_options = {"interpolation": "bicubic"}
    zero_init_residual = True
    recipes = (
        solo_learn(
            "cifar/vicreg.yaml",
            "(a reproduction: the official code has no CIFAR recipe)",
            base_lr=0.3,
            weight_decay=0.0001,
            settings={"proj_hidden_dim": 2048, "proj_dim": 2048},
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "vicreg.yaml:58-66 (lars, clip_lr True, eta 0.02); solo/utils/lars.py:140-150"
                ),
                "exclude_bias_and_norm": (
                    "vicreg.yaml:67 (exclude_bias_n_norm True: p.ndim == 1 gets neither trust "
                    "ratio nor decay, lars.py:140)"
                ),
                "base_lr, batch_size": "vicreg.yaml:60-61 (batch_size 256 on devices [0], lr 0.3)",
                "num_epochs": "vicreg.yaml:78 (max_epochs 1000)",
                "weight_decay, final_weight_decay": "vicreg.yaml:63 (weight_decay 1e-4, constant)",
                "proj_hidden_dim, proj_dim": (
                    "vicreg.yaml:18-19 (proj_hidden_dim 2048, proj_output_dim 2048)"
                ),
            },
        ),
        Recipe(
            source=(
                "facebookresearch/vicreg 4e12602, README.md:80 (1000 epochs, batch 2048, base-lr "
                "0.2: the 73.2 % ResNet-50)"
            ),
            images="large",
            optimizer="lars",
            momentum=0.9,
            lars_eta=0.001,
            exclude_bias_and_norm=True,
            base_lr=0.2,
            lr_scaling="linear",
            batch_size=2048,
            num_epochs=1000,
            weight_decay=1e-6,
            warmup_epochs=10,
            warmup_lr=0.0,
            final_lr=0.001 * 0.2,
            sources={
                "optimizer, momentum, lars_eta": (
                    "main_vicreg.py:109-115,251-252 (LARS, defaults momentum=0.9, eta=0.001)"
                ),
                "exclude_bias_and_norm": (
                    "main_vicreg.py:113-114,235-236 (both filters exclude_bias_and_norm: "
                    "p.ndim == 1)"
                ),
                "base_lr, lr_scaling": (
                    "README.md:80 (--base-lr 0.2); main_vicreg.py:170 (base_lr x batch_size / 256)"
                ),
                "batch_size, num_epochs": "README.md:80 (--epochs 1000 --batch-size 2048)",
                "weight_decay, final_weight_decay": "main_vicreg.py:54 (wd 1e-6, constant)",
                "warmup_epochs, warmup_lr": ("main_vicreg.py:169-172 (10 epochs, linear from 0)"),
                "final_lr": "main_vicreg.py:176-178 (cosine to end_lr = 0.001 x the peak)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, PROJ_HIDDEN_DIM] = 8192,
        proj_dim: Annotated[int, PROJ_DIM] = 8192,
        sim_coeff: Annotated[float, SIM_COEFF] = 25.0,
        std_coeff: Annotated[float, STD_COEFF] = 25.0,
        cov_coeff: Annotated[float, COV_COEFF] = 1.0,
        concat_views: Annotated[bool, CONCAT_VIEWS] = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = build_mlp(3, feat_dim, proj_hidden_dim, proj_dim, bias=False)
        self.sim_coeff = sim_coeff
        self.std_coeff = std_coeff
        self.cov_coeff = cov_coeff
        self.concat_views = concat_views

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        z1, z2 = self.per_view(lambda x: self.projector(self.backbone(x)), views[:2])
        # statistics over the global batch (with gradient), as the official code gathers them
        z1_all, z2_all = gather_with_grad(z1), gather_with_grad(z2)
        loss = vicreg_loss(z1_all, z2_all, self.sim_coeff, self.std_coeff, self.cov_coeff)
        return {"loss": loss, "z1": z1, "z2": z2}
