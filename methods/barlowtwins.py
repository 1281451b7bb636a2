"""Barlow Twins: Zbontar, Jing, Misra, LeCun, Deny, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML 2021 (https://arxiv.org/abs/2103.03230).

Loss: standardise each of the D dimensions of both views' projections over the batch (zero mean,
unit biased std, as BatchNorm1d without affine), take the D x D cross-correlation
C = z1ᵀ z2 / N, and push it to the identity:

    L = sum_i (1 - C_ii)² + λ sum_i sum_{j != i} C_ij².

No negatives, no predictor, no stop-gradient: decorrelating the dimensions prevents collapse.

Architecture as the official code (facebookresearch/barlowtwins main.py): a projector of 3
bias-free linear layers 8192-8192-8192 with BN and ReLU between them (none after the last); each
view through backbone and projector in its own call (`z1 = projector(backbone(y1))`: BatchNorm
statistics per view; `--concat_views` gives one pass of 2N); the last BatchNorm of each
residual block starts at zero (`resnet50(zero_init_residual=True)`).

Default recipe (paper, ImageNet): ResNet-50, λ = 5e-3 (0.0051 in main.py, the default here),
LARS with lr 0.2 for the weights and 0.0048 for the biases and BatchNorm parameters (every 1-D
parameter), both x B/256: here the scheduled lr is the weights' and `bias_lr_scale` = 0.0048 /
0.2 = 0.024 scales it for the 1-D parameters (their own param group); batch 2048, 10 warmup
epochs then cosine to 0.001 of the peak, weight decay 1.5e-6 (1e-6 in main.py), 1000 epochs.
The projector is the official 8192-8192-8192 by default (solo-learn's CIFAR configuration,
`--proj_hidden_dim 2048 --proj_dim 2048`, takes a quarter of the width:
recipes/cifar10/barlowtwins.args).

Under DDP the official main.py sums the processes' cross-correlations with an `all_reduce` that
autograd does not see, so each process's gradient comes from its own images only and DDP's
average of the parameter gradients is 1/W of the whole batch's (W processes): an lr W times
smaller than one process on the whole batch. That is the default here (`--official_ddp_gradient`;
false: the whole batch's gradient, as the other methods' gathered losses give).
"""

from typing import Annotated

import torch
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import CONCAT_VIEWS, PROJ_DIM, PROJ_HIDDEN_DIM, Flag
from methods.recipe import Recipe, solo_learn
from networks.heads import build_mlp
from utils.distributed import gather_with_grad, scale_gradient, world_size
from utils.misc import non_negative_float


def _standardise(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-dimension (z - mean) / sqrt(biased var + eps) over the batch: BatchNorm1d(affine=False)
    in training mode."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 5e-3) -> Tensor:
    """Barlow Twins redundancy-reduction loss.

    Args:
        z1: [N, D] projections of the first views.
        z2: [N, D] projections of the second views; row i is the same image as z1's row i.
        lambd: λ, the weight of the off-diagonal (redundancy) term.

    Returns:
        Scalar: sum_i (1 - C_ii)² + λ sum_{i != j} C_ij², C = standardised z1ᵀ z2 / N ([D, D]).
    """
    n, d = z1.shape
    c = _standardise(z1).T @ _standardise(z2) / n  # D x D
    off_diagonal = ~torch.eye(d, dtype=torch.bool, device=c.device)
    on_diag = (1 - c.diagonal()).pow(2).sum()
    off_diag = c[off_diagonal].pow(2).sum()
    return on_diag + lambd * off_diag


LAMBD = Flag("weight of the off-diagonal terms", non_negative_float)
OFFICIAL_DDP_GRADIENT = Flag(
    "under DDP (torchrun), the official gradient: main.py all-reduces the cross-correlation "
    "outside autograd, so each process's gradient flows through its own images only and DDP's "
    "average makes it 1/W of the whole batch's (W processes); false: the whole batch's, as one "
    "process on it (one process: the same either way)"
)
BIAS_LR_SCALE = Flag(
    "lr of the biases and BatchNorm parameters as a fraction of the weights' (0.024 = 0.0048 / "
    "0.2: the official code; 1: the same lr)",
    non_negative_float,
)


@register("barlowtwins")
class BarlowTwins(Method):
    """Backbone + 3-layer projector (BN+ReLU between layers, none after the last); the loss
    standardises the projections itself."""

    loss_summary = "`barlow_twins_loss`"
    augmentation = "byol"  # the paper uses BYOL's asymmetric views
    collapse_hint = "too large a --lambd or too narrow a projector"
    # official main.py: RandomResizedCrop(224, interpolation=Image.BICUBIC); evaluate.py bilinear
    view_options = {"interpolation": "bicubic"}
    zero_init_residual = True
    recipes = (
        solo_learn(
            "cifar/barlow.yaml",
            "(a reproduction: the official code has no CIFAR recipe)",
            base_lr=0.3,
            weight_decay=0.0001,
            settings={"proj_hidden_dim": 2048, "proj_dim": 2048, "bias_lr_scale": 1.0},
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "barlow.yaml:29-36 (lars, clip_lr True, eta 0.02); solo/utils/lars.py:140-150"
                ),
                "exclude_bias_and_norm": (
                    "barlow.yaml:37 (exclude_bias_n_norm True: p.ndim == 1 gets neither trust "
                    "ratio nor decay, lars.py:140)"
                ),
                "base_lr, batch_size": "barlow.yaml:30-31 (batch_size 256 on devices [0], lr 0.3)",
                "num_epochs": "barlow.yaml:48 (max_epochs 1000)",
                "weight_decay, final_weight_decay": "barlow.yaml:33 (weight_decay 1e-4, constant)",
                "proj_hidden_dim, proj_dim": (
                    "barlow.yaml:19-20 (proj_hidden_dim 2048, proj_output_dim 2048)"
                ),
                "bias_lr_scale": (
                    "solo/methods/barlow_twins.py:90, base.py:323 (no lr of their own: one lr for "
                    "every parameter)"
                ),
            },
        ),
        Recipe(
            source=(
                "facebookresearch/barlowtwins 8e8d284, main.py defaults (README.md:54-57: "
                "`python main.py`, 1000 epochs, batch 2048)"
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
                    "main.py:99,225 (LARS(...), defaults momentum=0.9, eta=0.001)"
                ),
                "exclude_bias_and_norm": (
                    "main.py:100-101,233-234 (weight_decay_filter, lars_adaptation_filter: "
                    "p.ndim == 1)"
                ),
                "base_lr, lr_scaling": (
                    "main.py:33,158,167 (learning-rate-weights 0.2 x batch_size / 256; "
                    "biases 0.0048, :35,168)"
                ),
                "batch_size, num_epochs": (
                    "main.py:29-32 (epochs 1000, batch-size 2048); README.md:30-31"
                ),
                "weight_decay, final_weight_decay": (
                    "main.py:37 (weight-decay 1e-6, constant; the paper says 1.5e-6)"
                ),
                "warmup_epochs, warmup_lr": "main.py:157-160 (10 epochs, linear from 0)",
                "final_lr": "main.py:164-166 (cosine to end_lr = 0.001 x the peak)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, PROJ_HIDDEN_DIM] = 8192,
        proj_dim: Annotated[int, PROJ_DIM] = 8192,
        lambd: Annotated[float, LAMBD] = 0.0051,  # official main.py --lambd (the paper: 5e-3)
        bias_lr_scale: Annotated[float, BIAS_LR_SCALE] = 0.0048 / 0.2,
        concat_views: Annotated[bool, CONCAT_VIEWS] = False,
        official_ddp_gradient: Annotated[bool, OFFICIAL_DDP_GRADIENT] = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = build_mlp(3, feat_dim, proj_hidden_dim, proj_dim, bias=False)
        self.lambd = lambd
        self.bias_lr_scale = bias_lr_scale
        self.concat_views = concat_views
        self.official_ddp_gradient = official_ddp_gradient

    def param_group(self, name: str, param: nn.Parameter) -> dict:
        # official main.py: `param.ndim == 1` (biases, BatchNorm) get learning_rate_biases
        return {"lr_scale": self.bias_lr_scale} if param.ndim == 1 else {}

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        z1, z2 = self.per_view(lambda x: self.projector(self.backbone(x)), views[:2])
        # statistics over the global batch (with gradient): one process on the whole batch
        loss = barlow_twins_loss(gather_with_grad(z1), gather_with_grad(z2), self.lambd)
        if self.official_ddp_gradient and world_size() > 1:  # the official main.py's gradient
            loss = scale_gradient(loss, 1 / world_size())
        return {"loss": loss, "z1": z1, "z2": z2}
