"""BYOL: Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning",
NeurIPS 2020 (https://arxiv.org/abs/2006.07733).

Loss: an online network (backbone, projector, predictor q) predicts the projection z' that a
target network (backbone', projector', no predictor, no gradient) gives of the other view:

    L = byol(q1, z2') + byol(q2, z1'),   byol(p, z) = 2 - 2 cos(p, z), averaged over the batch,

so the minimum is 0 and the maximum 8. After every optimizer step the target's weights follow
the online ones by an exponential moving average, xi <- tau xi + (1 - tau) theta, with tau rising
from tau_base = 0.996 at the first step to 1 at the last on a cosine:
tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2. The target is saved in checkpoints.

Architecture as the official code (deepmind-research byol/byol_experiment.py,
utils/networks.py): projector and predictor are MLPs Linear-BN-ReLU-Linear, 4096 -> 256, the
last Linear without bias, every Linear initialised as haiku's hk.Linear (truncated normal of
standard deviation 1/sqrt(fan_in); `--head_init pytorch` gives nn.Linear's own, which the short
CPU recipe keeps); each view goes through the online network (backbone, projector,
predictor) and the target network in its own call, so BatchNorm normalises each view with its
own statistics (`--concat_views`: one pass of 2N); the last BatchNorm of each Bottleneck block
starts at zero (haiku's ResNet BlockV1 `scale_init=jnp.zeros`, bottleneck blocks only: BYOL's
ResNet-18 and -34 keep the usual initialisation). The target's base momentum depends on the
schedule's length in configs/byol.py: 0.97 for 40 epochs, 0.99 for 100-300, 0.996 for 1000.

Default recipe (paper, ImageNet): ResNet-50; LARS, lr 0.2 x B/256, weight decay 1.5e-6, biases
and BN excluded; batch 4096, 10 warmup epochs then cosine, 1000 epochs; asymmetric views
(transformations.byol_transform). On CIFAR, solo-learn uses LARS lr 1.0, weight decay 1e-5 and
tau_base 0.99.
"""

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import (
    CONCAT_VIEWS,
    EMA_MOMENTUM,
    HEAD_INIT,
    PRED_HIDDEN_DIM,
    PROJ_DIM,
    PROJ_HIDDEN_DIM,
)
from methods.momentum import cosine_momentum, ema_update, frozen_copy
from methods.recipe import Recipe, solo_learn
from networks.heads import build_mlp, init_linears


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """2 - 2 cos(p, stopgrad(z)), averaged over the batch (the MSE of the L2-normalised vectors).

    Args:
        p: [N, D] online predictions.
        z: [N, D] target projections of the other view; no gradient flows into them.
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


@register("byol")
class BYOL(Method):
    """Online backbone + projector + predictor; EMA target backbone + projector."""

    loss_summary = "`byol_loss`, EMA target"
    augmentation = "byol"
    momentum_backbone = "target_backbone"
    slow_start = 5  # scripts/short_recipes.sh: 5x the short tables' epochs
    collapse_hint = "too low an EMA momentum (--ema_momentum) or too high an lr"
    # official byol/utils/dataset.py: every crop (pretraining, linear, eval) resized BICUBIC
    view_options = {"interpolation": "bicubic"}
    eval_interpolation = "bicubic"
    zero_init_residual = "bottleneck"
    recipes = (
        solo_learn(
            "cifar/byol.yaml",
            "(a reproduction: the official code has no CIFAR recipe)",
            base_lr=1.0,
            weight_decay=1e-05,
            settings={"ema_momentum": 0.99, "head_init": "pytorch"},
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "byol.yaml:32-39 (lars, clip_lr True, eta 0.02); solo/utils/lars.py:140-150"
                ),
                "exclude_bias_and_norm": (
                    "byol.yaml:40 (exclude_bias_n_norm True: p.ndim == 1 gets neither trust ratio "
                    "nor decay, lars.py:140)"
                ),
                "base_lr, batch_size": "byol.yaml:33-34 (batch_size 256 on devices [0], lr 1.0)",
                "num_epochs": "byol.yaml:51 (max_epochs 1000)",
                "weight_decay, final_weight_decay": "byol.yaml:36 (weight_decay 1e-5, constant)",
                "ema_momentum": "byol.yaml:22-24 (base_tau 0.99, final_tau 1.0, cosine)",
                "head_init": "solo/methods/byol.py:50-72 (nn.Linear heads: PyTorch's own init)",
            },
        ),
        Recipe(
            source=(
                "google-deepmind/deepmind-research f5de0ed, byol/ ImageNet defaults "
                "(main_loop.py: 1000 epochs, batch 4096; lr, weight decay and EMA base by the "
                "schedule's length)"
            ),
            images="large",
            optimizer="lars",
            momentum=0.9,
            lars_eta=1e-3,
            exclude_bias_and_norm=True,
            base_lr=0.2,
            lr_scaling="linear",
            batch_size=4096,
            num_epochs=1000,
            weight_decay=1.5e-6,
            warmup_epochs=10,
            warmup_lr=0.0,
            final_lr=0.0,
            presets={
                epochs: {"base_lr": lr, "weight_decay": wd, "ema_momentum": ema}
                for epochs, lr, wd, ema in (
                    (40, 0.45, 1e-6, 0.97),
                    (100, 0.45, 1e-6, 0.99),
                    (300, 0.3, 1e-6, 0.99),
                    (1000, 0.2, 1.5e-6, 0.996),
                )
            },
            preset_source=(
                "configs/byol.py:21-23,30,38,58,63 (_LR_PRESETS, _WD_PRESETS, _EMA_PRESETS for "
                "40, 100, 300 or 1000 epochs, the only lengths it accepts)"
            ),
            sources={
                "optimizer, momentum, lars_eta": (
                    "byol_experiment.py:191 (optimizers.lars); configs/byol.py:59-60 "
                    "(eta 1e-3, momentum .9)"
                ),
                "exclude_bias_and_norm": (
                    "byol_experiment.py:193-194 (both filters exclude_bias_and_norm: "
                    "utils/optimizers.py:30-35)"
                ),
                "base_lr, lr_scaling": (
                    "configs/byol.py:21,63 (_LR_PRESETS[1000] 0.2); utils/schedules.py:34 "
                    "(x batch_size / 256)"
                ),
                "batch_size, num_epochs": (
                    "main_loop.py:36-37 (pretrain_epochs 1000, batch_size 4096)"
                ),
                "weight_decay, final_weight_decay": (
                    "configs/byol.py:22,58 (_WD_PRESETS[1000] 1.5e-6, constant)"
                ),
                "warmup_epochs": "configs/byol.py:64 (warmup_steps = 10 epochs)",
                "warmup_lr, final_lr": (
                    "utils/schedules.py:35-43,51 (linear from 0, then cosine to 0)"
                ),
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, PROJ_HIDDEN_DIM] = 4096,
        proj_dim: Annotated[int, PROJ_DIM] = 256,
        pred_hidden_dim: Annotated[int, PRED_HIDDEN_DIM] = 4096,
        ema_momentum: Annotated[float, EMA_MOMENTUM] = 0.996,
        concat_views: Annotated[bool, CONCAT_VIEWS] = False,
        head_init: Annotated[str, HEAD_INIT] = "truncated_normal",
    ) -> None:
        super().__init__()
        if not 0 <= ema_momentum <= 1:
            raise ValueError(f"ema_momentum must be in [0, 1], got {ema_momentum}")
        self.backbone = backbone
        self.projector = build_mlp(2, feat_dim, proj_hidden_dim, proj_dim, bias=False)
        self.predictor = build_mlp(2, proj_dim, pred_hidden_dim, proj_dim, bias=False)
        for head in (self.projector, self.predictor):  # official: hk.Linear's default init
            init_linears(head, head_init)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.ema_momentum = ema_momentum
        self.current_momentum = ema_momentum
        self.concat_views = concat_views

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        z1, z2 = self.per_view(lambda x: self.projector(self.backbone(x)), views[:2])
        p1, p2 = self.per_view(self.predictor, (z1, z2))
        with torch.no_grad():
            target = lambda x: self.target_projector(self.target_backbone(x))
            t1, t2 = self.per_view(target, views[:2])
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return {"loss": loss, "z1": z1, "z2": z2}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.current_momentum = cosine_momentum(step, total_steps, self.ema_momentum)
        ema_update(self.target_backbone, self.backbone, self.current_momentum)
        ema_update(self.target_projector, self.projector, self.current_momentum)
