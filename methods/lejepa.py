"""LeJEPA: Balestriero and LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without
the Heuristics", 2025 (https://arxiv.org/abs/2511.08544); the authors' release rbalestr-lab/lejepa
(MINIMAL.md's training script, `lejepa/univariate/epps_pulley.py`,
`lejepa/multivariate/slicing.py`, the README's recipe).

No teacher, no stop-gradient, no predictor network: one backbone and projector embed every view;
each view's embedding predicts the mean embedding of the global views, and SIGReg (Sketched
Isotropic Gaussian Regularisation) pulls the distribution of each view's embeddings towards an
isotropic Gaussian, which rules collapse out:

    L = (1 - lambda) L_pred + lambda SIGReg,   lambda 0.02 (MINIMAL.md's command),
    L_pred = mean over views v, images n and dimensions of (mu_n - z_{v,n})^2,
             mu_n = the mean of image n's global-view embeddings,
    SIGReg = mean over views v and slices a of EP(z_v a),

with `num_slices` random unit directions a (one draw per step from a generator seeded by the
step, shared by every view and process: `SlicingUnivariateTest`'s synchronised global_step) and
EP the Epps-Pulley statistic of a one-dimensional sample x_1..x_N against N(0, 1):

    EP(x) = N * integral over t in [-3, 3] of |mean_n exp(i t x_n) - exp(-t^2 / 2)|^2
                * exp(-t^2 / 2) dt,

computed on [0, 3] with 17 trapezoid knots whose weights are doubled for the symmetric half (the
release's quadrature: the end weights dt, the others 2 dt). Under DDP the characteristic
function's means run over every process's images (the release all-reduces them): here each
view's embeddings are gathered, with their gradient, before the statistic.

The projector is torchvision's `MLP(d, [2048, 2048, proj_dim], norm_layer=BatchNorm1d)` of the
release, Linear-BN-ReLU twice then a Linear, applied to all views in one batch; the release puts
it on a timm model whose head is a Linear to 512, here on the backbone's pooled features.
"""

from typing import Annotated

import torch
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import PROJ_DIM, PROJ_HIDDEN_DIM, Flag
from methods.recipe import Recipe
from networks.heads import build_mlp
from transformations import MultiView, View
from utils.distributed import gather_with_grad
from utils.misc import positive_int, unit_float


def epps_pulley(x: Tensor, knots: int = 17, t_max: float = 3.0) -> Tensor:
    """The Epps-Pulley statistic of each column of `x` [N, S] against N(0, 1): N times the
    integral over [-t_max, t_max] of |empirical CF - exp(-t^2/2)|^2 weighted by exp(-t^2/2), by
    the release's trapezoid rule on [0, t_max] with doubled weights. Returns [S]."""
    t = torch.linspace(0, t_max, knots, dtype=x.dtype, device=x.device)
    weights = torch.full_like(t, 2 * t_max / (knots - 1))
    weights[[0, -1]] = t_max / (knots - 1)
    gaussian = torch.exp(-t.square() / 2)  # the CF of N(0, 1), and the integral's window
    xt = x.unsqueeze(-1) * t  # [N, S, knots]
    error = (xt.cos().mean(0) - gaussian).square() + xt.sin().mean(0).square()
    return (error @ (weights * gaussian)) * x.shape[0]


def random_directions(dim: int, slices: int, step: int, like: Tensor) -> Tensor:
    """`slices` unit vectors in R^dim [dim, slices], drawn in float32 from a CPU generator
    seeded by `step` (the release's `SlicingUnivariateTest` draws, on the CPU), normalised in
    `like`'s dtype: the same on every process and again after a resume."""
    generator = torch.Generator().manual_seed(int(step))
    directions = torch.randn(dim, slices, generator=generator)
    directions = directions.to(device=like.device, dtype=like.dtype)
    return directions / directions.norm(dim=0)


def lejepa_loss(
    embeddings: Tensor,
    num_global: int,
    directions: Tensor,
    lamb: float = 0.02,
    tested: Tensor | None = None,
    knots: int = 17,
) -> Tensor:
    """LeJEPA's loss (1 - lamb) L_pred + lamb SIGReg of the views' embeddings [V, N, K], the
    first `num_global` the global views, with the slicing directions [K, S]. SIGReg's statistic
    runs over `tested` [V, M, K] (every process's rows, gathered; default `embeddings`)."""
    tested = embeddings if tested is None else tested
    centres = embeddings[:num_global].mean(dim=0)
    prediction = (centres - embeddings).square().mean()
    sigreg = torch.stack([epps_pulley(view @ directions, knots).mean() for view in tested]).mean()
    return (1 - lamb) * prediction + lamb * sigreg


def lejepa_transform(
    *,
    image_size: int,
    mean,
    std,
    crop_min_scale: float = 0.3,
    jitter_strength: float = 1.0,
    num_crops: int = 6,
    small_crop_size: int | None = None,
    small_crop_scale: tuple[float, float] = (0.05, 0.3),
    interpolation: str = "bilinear",
) -> MultiView:
    """LeJEPA's views (the release's README, "Data augmentation and views"): 2 global crops of
    30-100 % of the image and `num_crops` local crops of 5-30 % at 98/224 of the size, every one
    with the same colour and geometry: flip p=0.5, jitter (0.4, 0.4, 0.2, 0.1) x strength with
    p=0.8, grayscale p=0.2, blur p=0.5, solarisation p=0.2. The global views come first."""
    small_crop_size = small_crop_size or max(8, round(image_size * 98 / 224))
    common = dict(
        mean=mean, std=std, jitter=tuple(jitter_strength * x for x in (0.4, 0.4, 0.2, 0.1)),
        blur_prob=0.5, solarize_prob=0.2, interpolation=interpolation,
    )  # fmt: skip
    glob = View(image_size=image_size, crop_scale=(crop_min_scale, 1.0), **common)
    local = View(image_size=small_crop_size, crop_scale=small_crop_scale, **common)
    return MultiView([glob, glob] + [local] * num_crops)


LAMB = Flag("SIGReg's weight lambda; the prediction loss weighs 1 - lambda", unit_float)
NUM_SLICES = Flag("random directions SIGReg tests along at each step", positive_int)
KNOTS = Flag("trapezoid knots of the Epps-Pulley integral on [0, 3]", positive_int)

# rbalestr-lab/lejepa (MINIMAL.md at 2f2d970, README.md at a0d6745)
_README_OPTIMIZER = {
    "optimizer, betas": 'README.md "Training Configuration" (AdamW; torch\'s default betas)',
    "final_lr": "README.md (final learning rate initial_lr / 1000)",
    "num_epochs": "README.md's results table (IN-1K, 100 epochs)",
    "batch_size, warmup_epochs, warmup_lr, lr_scaling": "MINIMAL.md (bs 256; LinearLR from 0.01 x "
    "over one epoch; lr as given): the README names none",
    "exclude_bias_and_norm": "MINIMAL.md (AdamW over net.parameters(): every parameter decays)",
}


def readme_recipe(backbones: str, named: str, weight_decay: float) -> Recipe:
    """The README's ImageNet-size recipe for a backbone family (its weight decay differs)."""
    return Recipe(
        source=f"rbalestr-lab/lejepa README's recipe for {named} (AdamW lr 5e-4, weight decay "
        f"{weight_decay:g}, cosine to lr / 1000; IN-1K, 100 epochs)",
        images="large",
        backbones=backbones,
        optimizer="adamw",
        base_lr=5e-4,
        lr_scaling="none",
        batch_size=256,
        num_epochs=100,
        weight_decay=weight_decay,
        warmup_epochs=1,
        warmup_lr=5e-6,
        final_lr=5e-7,
        sources={
            **_README_OPTIMIZER,
            "base_lr": "README.md (Learning Rate 5e-4)",
            "weight_decay, final_weight_decay": f"README.md ({weight_decay:g} for {named}, "
            "constant)",
        },
    )


@register("lejepa")
class LeJEPA(Method):
    """Backbone + projector over every view; the global views' mean predicted; SIGReg."""

    loss_summary = "`lejepa_loss` (prediction + SIGReg `epps_pulley`)"
    augmentation = lejepa_transform
    collapse_hint = "too small a --lamb (SIGReg's weight) or too few --num_slices"
    eval_last_blocks = 2  # README: the class tokens of the last two layers, concatenated
    recipes = (
        Recipe(
            source="rbalestr-lab/lejepa MINIMAL.md's command (ViT-S/8 on Imagenette at 128 px: "
            "+lamb=0.02 +V=4 +proj_dim=16 +lr=2e-3 +bs=256 +epochs=800); no CIFAR recipe there",
            images="small",
            optimizer="adamw",
            base_lr=2e-3,
            lr_scaling="none",
            batch_size=256,
            num_epochs=800,
            weight_decay=5e-2,
            warmup_epochs=1,
            warmup_lr=2e-5,
            final_lr=1e-3,
            settings={"proj_dim": 16},
            sources={
                "optimizer, betas, weight_decay, final_weight_decay": "MINIMAL.md (AdamW, "
                "weight_decay 5e-2 for the network, torch's default betas, constant)",
                "exclude_bias_and_norm": "MINIMAL.md (AdamW over net.parameters(): every "
                "parameter decays)",
                "base_lr, lr_scaling, batch_size, num_epochs, proj_dim": "MINIMAL.md's command "
                "(+lr=2e-3 +bs=256 +epochs=800 +proj_dim=16; the lr as given)",
                "warmup_epochs, warmup_lr": "MINIMAL.md (LinearLR(start_factor=0.01, "
                "total_iters=len(train)): one epoch from 0.01 x the lr)",
                "final_lr": "MINIMAL.md (CosineAnnealingLR(eta_min=1e-3), absolute)",
            },
        ),
        readme_recipe("vit", "ViTs", 5e-2),
        readme_recipe("convnet", "ResNets", 5e-4),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, PROJ_HIDDEN_DIM] = 2048,
        proj_dim: Annotated[int, PROJ_DIM] = 128,
        lamb: Annotated[float, LAMB] = 0.02,
        num_slices: Annotated[int, NUM_SLICES] = 256,
        knots: Annotated[int, KNOTS] = 17,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = build_mlp(3, feat_dim, proj_hidden_dim, proj_dim)
        self.lamb, self.num_slices, self.knots = lamb, num_slices, knots
        # the slicing draws' seed: one per training step, kept in checkpoints (exact resume)
        self.register_buffer("slicing_step", torch.zeros((), dtype=torch.long))

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        # the backbone once per resolution, the projector once over every view (its BatchNorm
        # over all of them, as the release's proj(emb) of the flattened views)
        z = self.projector(self.features_by_resolution(self.backbone, views))
        z = z.view(len(views), -1, z.shape[-1])
        directions = random_directions(z.shape[-1], self.num_slices, self.slicing_step, z)
        if self.training:
            self.slicing_step += 1
        everyone = torch.stack([gather_with_grad(view) for view in z])  # every process's rows
        loss = lejepa_loss(z, 2, directions, self.lamb, everyone, self.knots)
        return {"loss": loss, "z1": z[0], "z2": z[1]}
